"""autobahn's internals: a WebSocket connection's state and write queue, its per-connection
options, its closing handshake, the opening handshake it keeps, and its per-connection debug
text (see the package docstring)."""

from __future__ import annotations

import pprint
import sys
from typing import Any

from broadcaster.compat.probe import code_names, version

__all__ = [
    "USES", "close_failure", "is_open_and_idle", "lazy_debug_text", "limit_client_frames", "optional_problem",
    "problem",
    "send_close_frame", "set_close_grace", "share_options", "shed_handshake",
]  # fmt: skip

# Each handshake leftover, with the type whose empty value replaces it.
_HANDSHAKE: tuple[tuple[str, type], ...] = (
    ("http_request_data", bytes),
    ("http_response_data", bytes),
    ("http_headers", dict),
    ("http_status_line", str),
    ("http_request_params", dict),
)

USES: dict[str, tuple[str, ...]] = {
    # Set per connection by _connectionMade.
    "WebSocketProtocol (per connection)": (
        "state",
        "send_queue",
        "failedByMe",
        "localCloseCode",
        "localCloseReason",
    ),
    "WebSocketProtocol": ("STATE_OPEN", "sendCloseFrame", "_connectionMade"),
    # Options copied from the factory to each connection.
    "WebSocketProtocol.CONFIG_ATTRS": ("closeHandshakeTimeout", "failByDrop", "maxFramePayloadSize"),
    # What the opening handshake leaves on the connection (_HANDSHAKE above).
    "WebSocketProtocol (handshake)": tuple(name for name, _ in _HANDSHAKE),
    # Called by name for the per-connection debug line; txaio's disabled-level logger.
    "autobahn.websocket.protocol": ("pformat",),
    "txaio.tx": ("_no_op",),
}


def is_open_and_idle(protocol: Any) -> bool:
    """Whether the connection is open with nothing of autobahn's queued: a frame written to its
    transport now goes out in order."""
    return bool(protocol.state == protocol.STATE_OPEN and not protocol.send_queue)


def set_close_grace(protocol: Any, seconds: float) -> None:
    """How long a connection the server closes has to read what is queued ahead of the close."""
    protocol.closeHandshakeTimeout = seconds


def limit_client_frames(protocol: Any, max_bytes: int) -> None:
    """Refuse client frames over `max_bytes` with a close frame (1009), not a dropped TCP
    connection (daphne's setting), so the client can tell what it did."""
    protocol.maxFramePayloadSize = max_bytes
    protocol.failByDrop = False


def close_failure(protocol: Any) -> tuple[int, str] | None:
    """(close code, reason) when autobahn closed the connection for the client's frame."""
    code = getattr(protocol, "localCloseCode", None)
    if not getattr(protocol, "failedByMe", False) or code is None:
        return None
    reason = getattr(protocol, "localCloseReason", None) or b""
    return code, reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)


def send_close_frame(protocol: Any, code: int, reason: str) -> None:
    """Start autobahn's closing handshake with any code (its sendClose checks them)."""
    protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:123], isReply=False)


def shed_handshake(protocol: Any) -> None:
    """Drop the raw request and response and the parsed headers autobahn keeps for the
    connection's whole life (about 2 KB per connection; nothing reads them once it is open)."""
    for name, kind in _HANDSHAKE:
        if hasattr(protocol, name):
            setattr(protocol, name, kind())


# Per protocol class and factory: the subclass holding that factory's options (share_options).
_sharing: dict[tuple[type, int], type] = {}


def share_options(protocol: Any) -> None:
    """Keep the options autobahn copies from its factory onto every connection (`CONFIG_ATTRS`,
    about 30) once per process, on a subclass of the connection's class, instead of in each
    connection's dict, and rebuild that dict at its new size: its table halves once it holds
    fewer than 86 names (99 -> 71 here: 3.3 -> 1.6 KB per connection). Only a value that is
    the subclass's own object moves; one set for this connection (limit_client_frames) stays, and
    so does a function (perMessageCompressionAccept), which a class would bind."""
    cls, factory = type(protocol), getattr(protocol, "factory", None)
    names = getattr(cls, "CONFIG_ATTRS", None)
    own = getattr(protocol, "__dict__", None)
    if factory is None or not names or own is None:
        return
    key = (cls, id(factory))
    shared = _sharing.get(key)
    if shared is None:
        if getattr(cls, "_broadcaster_shared", False):
            return  # moved already
        # Not a function (or any descriptor): on a class it would bind to each connection.
        values = {name: own[name] for name in names if own.get(name, _NONE) is getattr(factory, name, None)
                  and not hasattr(type(own[name]), "__get__")}  # fmt: skip
        values.update(__module__=cls.__module__, __qualname__=cls.__qualname__, _broadcaster_shared=True)
        shared = _sharing[key] = type(cls.__name__, (cls,), values)
    held = shared.__dict__
    moved = {name for name in names if name in own and name in held and own[name] is held[name]}
    if moved:
        protocol.__class__ = shared
        protocol.__dict__ = {name: value for name, value in own.items() if name not in moved}


_NONE = object()


_CONNECTION_MADE_CODE: Any = None
_TXAIO_NO_OP: Any = None


def _dropped_debug_line() -> bool:
    """True when the caller's caller is autobahn's `_connectionMade` and its debug line,
    the only use of the text, will be dropped (txaio binds disabled levels to a no-op)."""
    caller = sys._getframe(2)
    if caller.f_code is not _CONNECTION_MADE_CODE:
        return False
    log = getattr(caller.f_locals.get("self"), "log", None)
    return getattr(log, "debug", None) is _TXAIO_NO_OP


def _pformat(obj: object, *args: Any, **kwargs: Any) -> str:
    """autobahn's `pformat`: the same text for every caller (Timings.__str__ and the rest),
    except an empty string for the per-connection debug line that nobody will see."""
    if _dropped_debug_line():
        return ""
    return pprint.pformat(obj, *args, **kwargs)


def lazy_debug_text() -> bool:
    """Skip autobahn's per-connection debug text when it would be dropped; True if changed.

    On every new connection autobahn pretty-prints its whole configuration for a debug log
    line (`WebSocketProtocol._connectionMade`), eagerly, though the line is dropped unless
    debug logging is on: py-spy put it at 19% of daphne's CPU during a connect storm. Its
    module calls `pformat` by that global name; the stand-in returns a real string to every
    caller, and the same text unless the caller is that dropped line. A release without these
    names is left alone (an optimisation only).
    """
    global _CONNECTION_MADE_CODE, _TXAIO_NO_OP
    try:
        from autobahn.websocket import protocol as autobahn_protocol
        from txaio import tx as txaio_tx
    except ImportError:
        return False
    connection_made = getattr(autobahn_protocol.WebSocketProtocol, "_connectionMade", None)
    no_op = getattr(txaio_tx, "_no_op", None)
    if getattr(autobahn_protocol, "pformat", None) is not pprint.pformat or connection_made is None:
        return False
    if no_op is None:
        return False
    _CONNECTION_MADE_CODE, _TXAIO_NO_OP = connection_made.__code__, no_op
    autobahn_protocol.pformat = _pformat  # type: ignore[attr-defined]
    return True


def _version() -> str:
    return version("autobahn", "autobahn")


# Needed for a correct write path and the slow-consumer close; the rest (the close reason a
# client is told, the handshake memory) only costs something when missing.
_REQUIRED_PER_CONNECTION = ("state", "send_queue")


def problem() -> str | None:
    """What the installed autobahn lacks that the write path and the closes need, in words
    naming its version, or None. The names set per connection are looked for in what sets
    them (`_connectionMade`)."""
    try:
        from autobahn.websocket import protocol as autobahn_protocol
    except ImportError as exc:
        return f"{_version()}: cannot import {exc.name}"
    cls = autobahn_protocol.WebSocketProtocol
    missing = [f"WebSocketProtocol.{name}" for name in USES["WebSocketProtocol"] if not hasattr(cls, name)]
    made = code_names(getattr(cls, "_connectionMade", None))
    missing += [f"{name} (set per connection)" for name in _REQUIRED_PER_CONNECTION if name not in made]
    server = autobahn_protocol.WebSocketServerProtocol
    options = set(getattr(server, "CONFIG_ATTRS", ()))
    missing += [f"option {name}" for name in USES["WebSocketProtocol.CONFIG_ATTRS"] if name not in options]
    return f"{_version()} lacks {', '.join(missing)}" if missing else None


def optional_problem() -> str | None:
    """What the installed autobahn lacks that only costs something (the reason a client whose
    frame was refused is told, the handshake's memory per connection), or None."""
    try:
        from autobahn.websocket import protocol as autobahn_protocol
    except ImportError as exc:
        return f"{_version()}: cannot import {exc.name}"
    made = code_names(getattr(autobahn_protocol.WebSocketProtocol, "_connectionMade", None))
    optional = [
        name for name in USES["WebSocketProtocol (per connection)"] if name not in _REQUIRED_PER_CONNECTION
    ]
    missing = [f"{name} (set per connection)" for name in optional if name not in made]
    server = autobahn_protocol.WebSocketServerProtocol
    # Set by the server's handshake (the response, where it is sent).
    handshake = {*code_names(server.processHandshake), *code_names(getattr(server, "sendServerStatus", None)),
                 *(name for member in vars(server).values() for name in code_names(member))}  # fmt: skip
    missing += [f"handshake {name}" for name, _ in _HANDSHAKE if name not in handshake]
    return f"{_version()} lacks {', '.join(missing)}" if missing else None
