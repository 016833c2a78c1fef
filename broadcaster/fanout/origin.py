"""Receiver origin validation (WebSocket and SSE) against ALLOWED_HOSTS, with a log line for each refusal."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import ParseResult, urlparse

from channels.security.websocket import OriginValidator
from django.conf import settings

logger = logging.getLogger(__name__)


class OriginCheck(OriginValidator):
    """Channels' origin matching (used as a check, not as a wrapping application) that
    accepts a missing Origin and says why it refused a handshake."""

    def __init__(self, allowed_origins: list[str]) -> None:
        super().__init__(None, allowed_origins)

    def allows(self, scope: dict[str, Any]) -> bool:
        """Whether the handshake in `scope` may proceed."""
        return self.valid_origin(_origin(scope))

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        # Browsers always send Origin; the check exists to stop other sites' pages from
        # connecting with a visitor's cookies. Terminal and service clients send none.
        if parsed_origin is None:
            return True
        ok = bool(super().valid_origin(parsed_origin))
        if not ok:
            logger.warning(
                "Refused receiver: origin %s is not in ALLOWED_HOSTS %s",
                parsed_origin.geturl(),
                self.allowed_origins,
            )
        return ok


def _origin(scope: dict[str, Any]) -> ParseResult | None:
    for name, value in scope.get("headers", []):
        if name == b"origin":
            try:
                return urlparse(value.decode("latin1"))
            except UnicodeDecodeError:
                return None
    return None


def allowed_hosts_origin_check() -> OriginCheck:
    """Origins are checked against ALLOWED_HOSTS, as Channels' AllowedHostsOriginValidator does."""
    allowed_hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
    return OriginCheck(allowed_hosts)
