"""Request bodies over their limit are refused before daphne stores them.

Daphne (twisted.web) reads a request's whole body, into memory or a temporary file, before
the ASGI application sees the request: Django's DATA_UPLOAD_MAX_MEMORY_SIZE check came after
the server had stored it (an unauthenticated 500 MB POST to the API: +460 MB RSS, +500 MB on
disk, then 401). `install()` makes daphne build its requests from `LimitedRequest`, which
checks when the headers are in:

- a POST to the publish API without a bearer token: 401 at once;
- a declared `Content-Length` over the path's limit: 413 at once;
- a chunked body: counted as it arrives, 413 as soon as it passes the limit.

A refused request gets its JSON answer, and the server then reads and discards what the client
still sends (a client that sends its whole body before reading would otherwise see a reset
instead of the answer) for at most LINGER seconds, and closes the connection. The publish
API's limit is what its longest message can take as JSON (`api_body_limit()`); every other
path has Django's DATA_UPLOAD_MAX_MEMORY_SIZE.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

from django.conf import settings

from broadcaster import protocol
from broadcaster.bearer import ASK_FOR_BEARER, has_bearer
from broadcaster.compat import daphne
from broadcaster.log_throttle import Throttle
from broadcaster.server.answers import answer, refuse

logger = logging.getLogger(__name__)

# The publish API's path (set by `install()` from broadcaster.urls), and whether every other
# request's body is held to DATA_UPLOAD_MAX_MEMORY_SIZE too (the standalone site) or left to
# Django (a host project: its own uploads may be larger; Django still caps form data).
_api_path: bytes | None = b"/api/broadcasts/"
_limit_others = True

# How long a refused client may go on sending before the connection is dropped.
LINGER = 10.0

# The most one character of a message takes in a JSON body: a `\ud83d\ude00` escape pair.
_JSON_BYTES_PER_CHAR = 12


def api_body_limit() -> int:
    """The largest body the publish API accepts: its longest message, every character escaped,
    plus room for the rest of the object; never above DATA_UPLOAD_MAX_MEMORY_SIZE."""
    limit = _JSON_BYTES_PER_CHAR * settings.BROADCAST_MAX_LENGTH + 1024
    upload = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return limit if upload is None else min(limit, upload)


def _is_api(route: bytes) -> bool:
    """Whether `route` is the publish API's (it answers with and without the trailing slash)."""
    return _api_path is not None and route.rstrip(b"/") == _api_path.rstrip(b"/")


_SSE_SEEN = protocol.SSE_SEEN_PATH.encode()


def body_limit(route: bytes) -> int | None:
    """The body limit for a request path (None: no limit)."""
    if _is_api(route):
        return api_body_limit()
    if route == _SSE_SEEN:
        return protocol.MAX_CLIENT_FRAME  # SSE acks (broadcaster/fanout/sse.py)
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE if _limit_others else None


def _limited_request_class(base: type) -> type:
    """daphne's request class `base` with the checks (what they use of daphne and Twisted is
    checked at start-up: broadcaster/compat/daphne.py)."""

    class LimitedRequest(base):  # type: ignore[misc, valid-type]
        """daphne's request, refusing a body over its limit before storing it."""

        refused = False
        limit: int | None = None
        received = 0

        def gotLength(self, length: int | None) -> None:
            route = _route(self)
            self.limit = body_limit(route)
            line = daphne.request_line(self.channel)
            # (Django routes any spelling of the method as its upper case.)
            post = line is not None and line[1].upper() == b"POST"
            authorization = self.requestHeaders.getRawHeaders(b"Authorization") or ()
            if _is_api(route) and post and not has_bearer(authorization):
                self._refuse(401, "Unauthorized", ASK_FOR_BEARER, {"WWW-Authenticate": "Bearer"})
            elif length is not None and self.limit is not None and length > self.limit:
                self._refuse_size(f"{length:,} bytes")
            else:
                super().gotLength(length)

        def handleContentChunk(self, data: bytes) -> None:
            if self.refused:
                return  # read and dropped
            self.received += len(data)
            if self.limit is not None and self.received > self.limit:
                self._refuse_size(f"over {self.limit:,} bytes (chunked)")
            else:
                super().handleContentChunk(data)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            if self.refused:
                return None  # answered already; the connection closes
            return super().requestReceived(command, path, version)

        def _refuse_size(self, size: str) -> None:
            self._refuse(413, "Content Too Large", f"The body is over {self.limit} bytes.")
            if _refusals.due():
                route = _route(self).decode("latin-1")
                logger.warning("Refused a request body of %s to %s from %s (limit %s bytes)%s", size, route,
                               _peer(self), self.limit, _refusals.more())  # fmt: skip

        def _refuse(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None
                    ) -> None:  # fmt: skip
            """Answer now, then read and drop the rest for up to LINGER seconds."""
            self.refused = True
            self.content = _Discard()
            # No "100 Continue" after the answer: the client need not send the body.
            self.requestHeaders.removeHeader(b"Expect")
            refuse(self.channel.transport, answer(status, reason, message, headers=headers), linger=LINGER)

    return LimitedRequest


class _Discard:
    """The refused request's content: writes go nowhere."""

    closed = False

    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args: Any) -> int:
        return 0

    def read(self, *args: Any) -> bytes:
        return b""

    def tell(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


_refusals = Throttle()


def _route(request: Any) -> bytes:
    """The request's path (`route_of` its channel), or b"" when Twisted does not say."""
    route = route_of(request.channel)
    if route is None:
        global _said_no_path
        if not _said_no_path:
            _said_no_path = True
            logger.warning(
                "Twisted no longer keeps the request line before the body: the publish API's "
                "early token check and smaller body limit are off (DATA_UPLOAD_MAX_MEMORY_SIZE applies)"
            )
        return b""
    return route


def route_of(channel: Any) -> bytes | None:
    """The path of the request whose head `channel` (Twisted's HTTPChannel) is reading,
    %-decoded as Django routes it, without its query string; None if Twisted does not say.

    Twisted keeps the request line on the channel until the body is in; if a release stops
    doing so, every path gets the general limit and the API's token is checked by the view
    only (said once).
    """
    line = daphne.request_line(channel)
    if line is None:
        return None
    target = line[0].split(b"?", 1)[0]
    if not target.startswith(b"/"):  # absolute form: http://host/path
        target = b"/" + target.partition(b"://")[2].partition(b"/")[2]
    return urllib.parse.unquote_to_bytes(target)


_said_no_path = False


def _peer(request: Any) -> str:
    peer = request.channel.transport.getPeer()
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


def install(*, limit_others: bool) -> None:
    """Make daphne use LimitedRequest. The API's limit applies where broadcaster.urls puts it;
    other bodies are limited only with `limit_others`."""
    global _api_path, _limit_others
    from django.urls import NoReverseMatch, reverse

    try:
        _api_path = reverse("broadcaster:api-broadcasts").encode()
    except NoReverseMatch:
        _api_path = None  # the project did not include broadcaster.urls: no publish API
    _limit_others = limit_others
    daphne.replace_request_class(_limited_request_class)
