"""`Authorization: Bearer <secret>`: read in one place for the publish API, the metrics endpoint
and the request body limit (which reads daphne's raw headers before Django sees the request)."""

from __future__ import annotations

from collections.abc import Iterable

from django.http import HttpRequest

__all__ = ["ASK_FOR_BEARER", "bearer", "has_bearer"]

ASK_FOR_BEARER = "Send 'Authorization: Bearer <token>'."


def bearer(request: HttpRequest) -> str | None:
    """The secret of an `Authorization: Bearer <secret>` header (stripped; may be empty), or
    None without one."""
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else None


def has_bearer(raw_values: Iterable[bytes]) -> bool:
    """Whether any of a request's raw `Authorization` header values carries a bearer secret."""
    for value in raw_values:
        scheme, _, secret = value.partition(b" ")
        if scheme.lower() == b"bearer" and secret.strip():
            return True
    return False
