"""WebSocket origin validation against ALLOWED_HOSTS, with a log line for each refusal."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import ParseResult

from channels.security.websocket import OriginValidator
from django.conf import settings

logger = logging.getLogger(__name__)


class LoggingOriginValidator(OriginValidator):
    """Channels' OriginValidator that says why it refused a handshake."""

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        # Browsers always send Origin; the check exists to stop other sites' pages from
        # connecting with a visitor's cookies. Terminal and service clients send none.
        if parsed_origin is None:
            return True
        ok = bool(super().valid_origin(parsed_origin))
        if not ok:
            origin = parsed_origin.geturl() if parsed_origin is not None else "(none)"
            logger.warning(
                "Refused WebSocket handshake: origin %s is not in ALLOWED_HOSTS %s",
                origin,
                self.allowed_origins,
            )
        return ok


def allowed_hosts_origin_validator(application: Any) -> LoggingOriginValidator:
    """Validate origins against ALLOWED_HOSTS, as Channels' AllowedHostsOriginValidator does."""
    allowed_hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
    return LoggingOriginValidator(application, allowed_hosts)
