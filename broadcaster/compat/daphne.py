"""daphne's internals: the connection behind a receiver's `send`, its own copy of the handshake
headers, the request class its HTTP factory builds (the body limit replaces it), and the
request line Twisted keeps while a body arrives (see the package docstring)."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable
from typing import Any

from broadcaster.compat.probe import code_names, version

__all__ = ["USES", "http_factory", "mark_unusable", "optional_problem", "problem", "protocol_of",
           "replace_input_queue", "replace_request_class", "request_line", "serving",
           "shed_handshake"]  # fmt: skip

USES: dict[str, tuple[str, ...]] = {
    # A receiver's `send` is functools.partial(Server.handle_reply, protocol).
    "daphne.server.Server.create_application": ("handle_reply",),
    # Its copy of the handshake headers, on the WebSocket protocol and its request.
    "daphne.ws_protocol.WebSocketProtocol": ("clean_headers", "request"),
    # The request class HTTPFactory.buildProtocol gives each channel, by its module global name.
    "daphne.http_protocol": ("WebRequest", "HTTPFactory"),
    # The request line twisted.web's HTTPChannel keeps while the body arrives.
    "twisted.web.http.HTTPChannel (per request)": ("_path", "_command"),
    # What `manage.py runserver` (broadcaster/management/commands/runserver.py) overrides.
    "daphne.management.commands.runserver.Command": ("server_cls",),
    "daphne.server.Server": ("listen_error",),
    # Replaced by an equal one with a lighter input queue, when its code is the one checked.
    "daphne.server.Server (replaced)": ("create_application",),
}


# False once start-up found this daphne without what its fast paths need, in a process that
# is not known to be a daphne server (one is refused instead): receivers then go through the
# plain ASGI send path.
_usable = True


def mark_unusable() -> None:
    global _usable
    _usable = False


def protocol_of(send: Any) -> Any:
    """The daphne connection a `send` is bound to (autobahn's protocol, or a twisted.web
    request for an HTTP response), or None when `send` is not daphne's."""
    if _usable and isinstance(send, functools.partial) and send.args and _is_handle_reply(send.func):
        return send.args[0]
    return None


def _is_handle_reply(func: Any) -> bool:
    try:
        from daphne.server import Server
    except ImportError:
        return False
    return getattr(func, "__func__", None) is Server.handle_reply


def serving() -> bool:
    """Whether this process is a daphne server (its command line, or `manage.py runserver`,
    which is daphne's), not another ASGI server that imported the application."""
    ways = ("daphne.cli", "daphne.management.commands.runserver", "daphne.testing")
    return any(way in sys.modules for way in ways)


def shed_handshake(protocol: Any) -> None:
    """Drop daphne's own copy of the handshake headers (the scope's list, and the request's)
    once the connection is open: daphne's logs read only request.path."""
    if hasattr(protocol, "clean_headers"):
        protocol.clean_headers = []
    request = getattr(protocol, "request", None)
    if request is not None and hasattr(request, "headers"):
        request.headers = {}


def request_line(channel: Any) -> tuple[bytes, bytes] | None:
    """(path, method) of the request whose head an HTTP channel is reading, or None if
    Twisted does not keep them."""
    path, method = getattr(channel, "_path", None), getattr(channel, "_command", None)
    if not isinstance(path, bytes) or not isinstance(method, bytes):
        return None
    return path, method


def http_factory() -> Any:
    """daphne's HTTP factory class."""
    from daphne import http_protocol

    return http_protocol.HTTPFactory


def replace_request_class(make: Callable[[type], type]) -> None:
    """Make daphne build its requests from `make(its own request class)` (once per process;
    nothing without daphne)."""
    try:
        from daphne import http_protocol
    except ImportError:
        return

    if not getattr(http_protocol.WebRequest, "_broadcaster_replaced", False):
        replacement = make(http_protocol.WebRequest)
        replacement._broadcaster_replaced = True  # type: ignore[attr-defined]
        http_protocol.WebRequest = replacement


def _version() -> str:
    return version("daphne", "daphne")


def problem() -> str | None:
    """What the installed daphne (and twisted.web under it) lacks of `USES`, in words naming
    its version, or None: each name is looked for where daphne or Twisted sets or reads it."""
    try:
        from daphne import http_protocol, server
        from twisted.web import http
    except ImportError as exc:
        return f"{_version()}: cannot import {exc.name}"
    missing = []
    if "handle_reply" not in code_names(server.Server.create_application):
        missing.append("Server.create_application's send=partial(handle_reply, protocol)")
    request = getattr(http_protocol, "WebRequest", None)
    needs = ("gotLength", "handleContentChunk", "requestReceived")
    if request is None or not all(hasattr(request, name) for name in needs):
        missing.append(f"http_protocol.WebRequest with {', '.join(needs)}")
    factory = getattr(http_protocol, "HTTPFactory", None)
    if factory is None or "WebRequest" not in code_names(getattr(factory, "buildProtocol", None)):
        missing.append("HTTPFactory.buildProtocol building the module's WebRequest")
    if not {"_path", "_command"} <= set(code_names(http.HTTPChannel.lineReceived)):
        missing.append("twisted.web HTTPChannel._path and _command")
    return f"{_version()} lacks {', '.join(missing)}" if missing else None


def optional_problem() -> str | None:
    """What the installed daphne lacks that only costs something (memory per connection, the
    development server's exit when it cannot listen), or None."""
    missing = []
    try:
        from daphne import server, ws_protocol
        from daphne.management.commands import runserver
    except ImportError as exc:
        return f"{_version()}: cannot import {exc.name}"
    if "clean_headers" not in code_names(ws_protocol.WebSocketProtocol.onConnect):
        missing.append("WebSocketProtocol.clean_headers (kept per connection)")
    if "server_cls" not in code_names(runserver.Command.inner_run) or not hasattr(
        server.Server, "listen_error"
    ):
        missing.append("runserver Command.server_cls and Server.listen_error (runserver's exit status)")
    if not _create_application_is_known():
        missing.append("Server.create_application as checked (each connection keeps an asyncio.Queue, 3 KB)")
    return f"{_version()} lacks {', '.join(missing)}" if missing else None


# daphne's Server.create_application as checked: the names and constants of its code (its
# docstring aside), for daphne 4.2. `replace_input_queue` replaces it only when it is this one.
_CREATE_APPLICATION = (
    ("connections", "asyncio", "Queue", "setdefault", "application", "get", "partial", "handle_reply",
     "ensure_future", "get_event_loop"),
    ("application_instance", "asgi", "version", "3.0", ("scope", "receive", "send"), None, ("loop",)),
)  # fmt: skip


def _create_application_is_known() -> bool:
    from daphne.server import Server

    method = getattr(Server, "create_application", None)
    if getattr(method, "_broadcaster_replaced", False):
        return True  # replaced already, after it was checked
    code = getattr(method, "__code__", None)
    if code is None:
        return False
    consts = tuple(c for c in code.co_consts if not (isinstance(c, str) and c.lstrip().startswith("Creates")))
    return (code.co_names, consts) == _CREATE_APPLICATION


def replace_input_queue(make: Callable[[], Any]) -> bool:
    """Make daphne give each connection `make()` as its input queue instead of an
    asyncio.Queue (the rest of Server.create_application as daphne 4.2 has it), if daphne's is
    the one checked; False (nothing replaced) if not, or without daphne."""
    try:
        from daphne import server
    except ImportError:
        return False
    if getattr(server.Server.create_application, "_broadcaster_replaced", False):
        return True
    if not _create_application_is_known():
        return False

    def create_application(self: Any, protocol: Any, scope: dict[str, Any]) -> Any:
        # daphne 4.2's Server.create_application, with only the queue changed.
        assert "application_instance" not in self.connections[protocol]
        input_queue = make()
        scope.setdefault("asgi", {"version": "3.0"})
        application_instance = self.application(
            scope=scope, receive=input_queue.get, send=functools.partial(self.handle_reply, protocol)
        )
        if protocol not in self.connections:
            return None
        self.connections[protocol]["application_instance"] = asyncio.ensure_future(
            application_instance, loop=asyncio.get_event_loop()
        )
        return input_queue

    create_application._broadcaster_replaced = True  # type: ignore[attr-defined]
    server.Server.create_application = create_application  # type: ignore[method-assign]
    return True
