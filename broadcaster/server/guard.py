"""What every connection to daphne must do before it costs anything: arrive in time, fit the
limits, and leave the process descriptors for Redis and the database.

`install()` makes daphne's HTTP factory build `GuardedChannel`s (Twisted's HTTPChannel):

- A deadline (BROADCAST_REQUEST_TIMEOUT) for each request's head: the first from the
  connection's open, a later one (keep-alive) from its first byte. A client that sends its
  request a byte at a time, or nothing (slowloris, idle half-open connections), gets 408 and
  is closed. Where the path's body is limited (the publish API; every path on the standalone
  site) the body must be in by the same deadline. A connection idle after an answer is closed
  after the same time, once the answer has gone out (while the client still reads it, the
  time starts again; a client that took none of it in a whole period is dropped). A
  WebSocket's handshake is its request head; after it daphne's own handshake timeout and
  autobahn's pings apply.
- A request line over 16 KB gets 414 and a header block over 16 KB (or over 500 headers)
  gets 431, each a JSON answer; Twisted closed the first without a word and answered the
  second with a bare 400.
- Near the open-file limit a new connection is answered 503 at once, before it is read: the
  last RESERVED_FILES descriptors are kept for Redis, the database and log files, which
  otherwise failed with "Too many open files" and reached receivers as "Redis unreachable".

Twisted gives each accepted socket the lowest free descriptor number, so a new connection's
number is a count of the descriptors open below it: no count of connections to keep.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from django.conf import settings

from broadcaster.compat import daphne, twisted
from broadcaster.log_throttle import Throttle
from broadcaster.server.answers import answer, refuse

logger = logging.getLogger(__name__)

# Descriptors a new connection may not take (the admission ceiling keeps receivers under the
# open-file limit less admission.RESERVED_FILES, more than this).
RESERVED_FILES = 64
# How long a connection refused at the open-file limit, or closed idle, may linger (it holds a
# descriptor).
FULL_LINGER = 1.0

TOO_MANY_CONNECTIONS = (
    "Too many open connections: this server process is at its open-file limit. Retry later."
)
TOO_SLOW = "The request did not arrive in time (BROADCAST_REQUEST_TIMEOUT)."
LINE_TOO_LONG = "The request line is over 16384 bytes."
HEADERS_TOO_LARGE = "The request's header block is over 16384 bytes or 500 headers."

_open_file_limit: int | None = None
_refusals = Throttle()


def out_of_files(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it: redis-py wraps the OSError) is the process or the
    system running out of file descriptors, not the service it tried to reach failing."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in (errno.EMFILE, errno.ENFILE):
            return True
        if "Too many open files" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _channel_class() -> type:
    from twisted.web import http

    from broadcaster.server import body_limit

    class GuardedChannel(http.HTTPChannel):  # type: ignore[misc]
        """Twisted's HTTP/1.1 channel with a deadline per request and answered size limits."""

        _deadline: Any = None
        _refused = False
        _served = False
        _unsent: int | None = None
        _head_started = False
        _head_bytes = 0
        _head_lines = 0

        def connectionMade(self) -> None:
            if not self._fits():
                return
            super().connectionMade()
            self._arm()

        def _fits(self) -> bool:
            """False, with the connection refused, when it took one of the reserved descriptors."""
            fileno = getattr(self.transport, "fileno", None)
            if fileno is None or _open_file_limit is None:
                return True
            number, limit = fileno(), _open_file_limit
            if number < limit - RESERVED_FILES:
                return True
            self._refused = True
            if number >= limit - RESERVED_FILES // 2:
                self.transport.abortConnection()  # deep in the reserve: not even an answer
            else:
                # Answered and closed at once: a refusal must not hold its descriptor long.
                full = answer(503, "Service Unavailable", TOO_MANY_CONNECTIONS, headers={"Retry-After": "5"})
                refuse(self.transport, full, linger=FULL_LINGER)
            if _refusals.due():
                logger.warning("Refusing new connections with 503: descriptor %d of %d (the open-file limit; "
                               "%d kept for Redis and the database)%s", number, limit, RESERVED_FILES,
                               _refusals.more())  # fmt: skip
            return False

        def _arm(self) -> None:
            from twisted.internet import reactor

            self._disarm()
            self._deadline = reactor.callLater(settings.BROADCAST_REQUEST_TIMEOUT, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None and self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

        def _too_slow(self) -> None:
            """The deadline passed: a request still coming is answered 408; a connection idle
            after its last answer is closed, once that answer has gone out (re-armed while the
            client still takes it; aborted if it took nothing for a whole period)."""
            self._deadline = None
            if any(getattr(request, "refused", False) for request in self.requests):
                return  # answered already (body_limit), which closes it in its own time
            if self._head_started:
                self._refuse_now(408, "Request Timeout", TOO_SLOW)
                return
            unsent = twisted.unsent(self.transport) if self.transport is not None else 0
            if unsent:
                if self._unsent is None or unsent < self._unsent:
                    self._unsent = unsent  # a slow download, still moving
                    self._arm()
                else:
                    self.transport.abortConnection()  # it stopped reading the answer
                return
            self._refused = True
            refuse(self.transport, b"", linger=FULL_LINGER)  # idle: nothing to answer

        def _refuse_now(self, status: int, reason: str, message: str) -> None:
            self._refused = True
            self._disarm()
            refuse(self.transport, answer(status, reason, message))

        def dataReceived(self, data: bytes) -> None:
            if self._refused:
                return  # answered: read and dropped until the connection closes
            if not self._head_started:
                self._head_started = True
                if self._served:
                    # A keep-alive request: its whole deadline from its first byte, whatever
                    # the idle time before it.
                    self._arm()
            super().dataReceived(data)

        def lineReceived(self, line: bytes) -> None:
            if self._refused:
                return  # the rest of a buffer that held the line refused
            self._head_bytes += len(line) + 2
            self._head_lines += 1
            # The request line, the headers and the blank line that ends them.
            if self._head_bytes > self.totalHeadersSize or self._head_lines > self.maxHeaders + 2:
                if self._head_lines == 1:  # the request line alone passes the limit
                    self._refuse_now(414, "URI Too Long", LINE_TOO_LONG)
                else:
                    self._refuse_now(431, "Request Header Fields Too Large", HEADERS_TOO_LARGE)
                return
            super().lineReceived(line)

        def lineLengthExceeded(self, line: bytes) -> None:
            if self._refused:
                return
            # No line yet: it is the request line (the target is what makes one that long).
            if self._head_lines == 0:
                self._refuse_now(414, "URI Too Long", LINE_TOO_LONG)
            else:
                self._refuse_now(431, "Request Header Fields Too Large", HEADERS_TOO_LARGE)

        def allHeadersReceived(self) -> None:
            self._head_bytes = self._head_lines = 0
            route = body_limit.route_of(self)
            if route is None or body_limit.body_limit(route) is None:
                self._disarm()  # an unlimited body (a host's uploads): only the head had a deadline
            super().allHeadersReceived()

        def allContentReceived(self) -> None:
            self._disarm()
            super().allContentReceived()

        def requestDone(self, request: Any) -> None:
            if (
                twisted.has_pipelined(self)
                and self.transport is not None
                and twisted.unsent(self.transport) > settings.BROADCAST_MAX_UNSENT_BYTES
            ):
                # More requests pipelined behind answers the client has not read: answering
                # them would buffer without bound (800 pipelined GETs of a static file, 61 KB
                # sent, held 250 MB). No browser pipelines; the connection goes.
                twisted.drop_pipelined(self)
                self._refused = True
                super().requestDone(request)
                self.transport.abortConnection()
                return
            if self.transport is not None and not self._refused:
                # Armed before Twisted reads what the client already sent of the next request
                # (a pipelined one, which then disarms it); for a connection that closes after
                # this answer, it bounds how long the answer may take to go out.
                self._head_started = False
                self._served = True
                self._unsent = None
                self._arm()
            super().requestDone(request)

        def connectionLost(self, reason: Any) -> None:
            self._disarm()
            super().connectionLost(reason)

    return GuardedChannel


def install(open_file_limit: int) -> str | None:
    """Make daphne's HTTP factory build GuardedChannels; return why it cannot, or None."""
    global _open_file_limit
    _open_file_limit = open_file_limit
    try:
        from twisted.web import http
    except ImportError:
        return "daphne is not installed"
    factory = daphne.http_factory()
    needs = ("lineReceived", "lineLengthExceeded", "allHeadersReceived", "allContentReceived", "requestDone",
             "totalHeadersSize", "maxHeaders", "persistent")  # fmt: skip
    missing = [name for name in needs if not hasattr(http.HTTPChannel, name)]
    if factory is None or missing:
        return (
            f"Twisted's HTTPChannel lacks {', '.join(missing) or 'nothing'}; daphne's HTTPFactory: {factory}"
        )
    if getattr(factory, "_broadcaster_guarded", False):
        return None
    channel = _channel_class()
    # Twisted's own factory wraps each channel in its generic channel (it switches to HTTP/2
    # when TLS negotiates h2); the same, with the guarded channel inside.
    generic = twisted.generic_channel()

    def build(_factory: Any) -> Any:
        return generic(channel()) if generic is not None else channel()

    factory.protocol = build
    factory._broadcaster_guarded = True
    return None
