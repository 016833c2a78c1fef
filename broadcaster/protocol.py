"""The wire contract: group names, layer events, client frames and close codes.

Nothing else in the project builds these shapes; `docs/PROTOCOL.md` documents them.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict

# Where receivers connect: the WebSocket, and the Server-Sent Events fallback with the path
# its `seen` acks are posted to.
RECEIVER_PATH = "/ws/broadcast/"
SSE_PATH = "/sse/broadcast/"
SSE_SEEN_PATH = "/sse/broadcast/seen/"

# The channel-layer group every receiver joins.
BROADCAST_GROUP = "broadcast"

# Channel-layer event type; Channels dispatches it to `broadcast_message`.
BROADCAST_EVENT = "broadcast.message"

# Frame types a client sees.
FRAME_MESSAGE = "message"
FRAME_BATCH = "batch"
FRAME_RESET = "reset"
FRAME_COUNT = "count"
FRAME_PONG = "pong"
FRAME_STATUS = "status"
FRAME_ERROR = "error"
# A numbered frame that takes back an earlier message (its `id`).
FRAME_RETRACT = "retract"
# Where the numbering stands once a connection's catch-up is out: a client that has seen no
# message (or whose messages were all for others) resumes from here, so nothing published
# during its first disconnect is lost.
FRAME_POSITION = "position"
# SSE only: the stream's first frame (its token for `seen` acks), and its last (the close
# code and reason a WebSocket close frame would carry).
FRAME_STREAM = "stream"
FRAME_CLOSE = "close"

# Frame types a client may send.
FRAME_PING = "ping"
# "This message was shown to a person": counted in the broadcast's reach report.
FRAME_SEEN = "seen"

# A broadcast's level, in rising urgency; receivers style each distinctly.
LEVEL_INFO = "info"
LEVEL_WARNING = "warning"
LEVEL_CRITICAL = "critical"
LEVELS = (LEVEL_INFO, LEVEL_WARNING, LEVEL_CRITICAL)

# The largest frame a client may send, in bytes (a ping is 15, a seen 55); a
# message in several frames is held to daphne's 1 MiB.
MAX_CLIENT_FRAME = 4096


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server sends, by name.

    An application under daphne (autobahn) may send only 1000 or 3000-4999, so the
    project's codes are 4xxx, numbered after the HTTP status with the same meaning. Pass
    `int(code)` to daphne: autobahn rejects anything whose type is not exactly int.
    """

    NORMAL = 1000
    # Sent by daphne (autobahn) itself, for a client frame it cannot take.
    INVALID_UTF8 = 1007  # A text frame that is not valid UTF-8.
    MESSAGE_TOO_BIG = 1009  # A client frame over MAX_CLIENT_FRAME bytes (or message over 1 MiB).
    # Sent past the application's back (Link.refuse), as daphne's close message cannot carry them.
    SERVICE_RESTART = 1012  # The process is draining (SIGTERM): reconnect now, with jitter.
    OVER_CAPACITY = 1013  # RFC 6455's "Try Again Later": the process is at its connection ceiling.
    UNSUPPORTED_FRAME = 4400  # The client sent a frame the protocol does not define.
    # BROADCAST_RECEIVERS = "authenticated": no session or receiver token gives a user (on the
    # handshake), or it no longer does (a logout, a revoked token, a deactivated user).
    UNAUTHENTICATED = 4401
    SLOW_CONSUMER = 4408  # The client read too slowly; too much output was queued for it.
    ACK_FLOOD = 4429  # The client sent `seen` frames that count for nothing faster than allowed.
    TRY_AGAIN_LATER = 4503  # Redis is unreachable; reconnect with backoff.


class BroadcastEvent(TypedDict):
    """A broadcast as it travels through the channel layer: the client frame, encoded once,
    and its number, so server processes can spot a gap without decoding the frame."""

    type: str
    frame: str
    seq: int
    epoch: str
    published: float


def iso_time(moment: datetime) -> str:
    """A time as frames carry it (`time`, `expires`): ISO 8601 UTC with milliseconds and Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: object) -> float | None:
    """A frame's time (ISO 8601) as UNIX time, or None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def dumps(obj: dict[str, Any]) -> str:
    """Encode a frame compactly; non-ASCII text stays as UTF-8 rather than \\u escapes."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# The audience of a broadcast to everyone (broadcaster/audiences.py has the rest of the rules).
AUDIENCE_EVERYONE: tuple[str, ...] = ("everyone",)
# The memberships of an anonymous receiver: it hears broadcasts to everyone only.
ANONYMOUS: frozenset[str] = frozenset(AUDIENCE_EVERYONE)


def for_member(audience: tuple[str, ...], member_of: frozenset[str]) -> bool:
    """Whether a broadcast for `audience` reaches a receiver with memberships `member_of`
    (every receiver's memberships include `everyone`)."""
    return audience is AUDIENCE_EVERYONE or not member_of.isdisjoint(audience)


# How a kept frame names its audience (right after its id), when it is not everyone. Receivers
# never see this field (`wire_frame` takes it out): a member is not told who else was addressed.
_AUDIENCE_FIELD = ',"audience":'


def message_frame(*, seq: int, epoch: str, id: str, text: str, time: str, level: str = LEVEL_INFO,
                  expires: str | None = None,
                  audience: tuple[str, ...] = AUDIENCE_EVERYONE) -> str:  # fmt: skip
    """The frame kept for one broadcast; `expires` (ISO 8601 UTC) only if it does, `audience`
    only if it is not everyone (receivers get it without: `wire_frame`).

    `id` comes first after the numbering: `entry_id` finds it there without decoding."""
    frame: dict[str, Any] = {"type": FRAME_MESSAGE, "seq": seq, "epoch": epoch, "id": id}
    if audience != AUDIENCE_EVERYONE:
        frame["audience"] = list(audience)
    frame.update(level=level, text=text, time=time)
    if expires is not None:
        frame["expires"] = expires
    return dumps(frame)


def retract_frame(*, seq: int, epoch: str, id: str, time: str,
                  audience: tuple[str, ...] = AUDIENCE_EVERYONE) -> str:  # fmt: skip
    """The numbered frame that takes back message `id` (kept in history like a message), for
    the audience of the message it takes back."""
    frame: dict[str, Any] = {"type": FRAME_RETRACT, "seq": seq, "epoch": epoch, "id": id}
    if audience != AUDIENCE_EVERYONE:
        frame["audience"] = list(audience)
    frame["time"] = time
    return dumps(frame)


def frame_audience(frame: str) -> tuple[str, ...]:
    """The audience of a kept frame built here (AUDIENCE_EVERYONE when it names none). The
    field can only be ours: inside a JSON string every quote is escaped."""
    if _AUDIENCE_FIELD not in frame:
        return AUDIENCE_EVERYONE
    return tuple(json.loads(frame)["audience"])


def wire_frame(frame: str) -> str:
    """A kept frame as receivers get it: without its audience."""
    at = frame.find(_AUDIENCE_FIELD)
    if at < 0:
        return frame
    field = _AUDIENCE_FIELD + dumps_list(list(frame_audience(frame)))
    assert frame.startswith(field, at), "an audience field not written by message_frame"
    return frame[:at] + frame[at + len(field) :]


def dumps_list(items: list[str]) -> str:
    """A list of strings encoded as `dumps` encodes it inside a frame."""
    return json.dumps(items, ensure_ascii=False, separators=(",", ":"))


# In a frame from message_frame(seq=0, epoch=""): where history.py's script puts the real ones.
SEQ_PLACEHOLDER = '"seq":0,"epoch":""'

_ID_FIELD = '"id":"'


def entry_id(frame: str) -> str:
    """The `id` of a numbered frame built here (message: its own; retract: the message it takes
    back), without decoding it: it is the first `"id":"` (seq and epoch hold no quotes)."""
    start = frame.index(_ID_FIELD) + len(_ID_FIELD)
    return frame[start : frame.index('"', start)]


def reset_frame(*, epoch: str | None, seq: int) -> str:
    """Tells a resuming client that messages it has not seen are no longer kept (or that the
    numbering restarted): what follows is all that is kept, and `seq` is the newest now."""
    return dumps({"type": FRAME_RESET, "epoch": epoch, "seq": seq})


def position_frame(*, epoch: str | None, seq: int) -> str:
    """Sent once the catch-up is out: everything numbered up to `seq` in `epoch` has been
    sent to this connection or was not for it. `seq` before `epoch`, as in a message frame
    (`sse_event` reads its id from them)."""
    return dumps({"type": FRAME_POSITION, "seq": seq, "epoch": epoch})


def batch_frame(frames: list[str]) -> str:
    """Several message frames that arrived together, in order, as one frame.

    Built by joining the already-encoded frames: nothing is decoded or encoded again.
    """
    return f'{{"type":"{FRAME_BATCH}","messages":[{",".join(frames)}]}}'


# No batch the server sends is larger than this many bytes; more messages go in more batches.
# Daphne refuses to send, and websockets clients (manage.py listen) refuse to read, a message
# over 1 MiB by default; one message frame is well under it (see MAX_MESSAGE_LENGTH).
MAX_BATCH_BYTES = 512 * 1024
# The longest BROADCAST_MAX_LENGTH allowed: at worst 6 bytes a character in JSON (\u0001),
# a single message frame stays under the 1 MiB limit above.
MAX_MESSAGE_LENGTH = 150_000


def batch_frames(frames: list[str], *, limit: int = MAX_BATCH_BYTES) -> list[tuple[str, int]]:
    """Numbered frames packed in order into as few frames as fit in `limit` bytes each: pairs
    of (frame, how many numbered frames it carries). A lone frame is sent as it is, and a
    `retract` always alone: a batch holds only messages (clients written before retractions
    existed treat every item of a batch as a message)."""
    packed: list[tuple[str, int]] = []
    group: list[str] = []
    empty = len(batch_frame([]))
    size = empty

    def close() -> None:
        if group:
            packed.append((group[0] if len(group) == 1 else batch_frame(group), len(group)))

    for frame in frames:
        if frame_type(frame) == FRAME_RETRACT:
            close()
            packed.append((frame, 1))
            group, size = [], empty
            continue
        # Each frame adds its bytes, and a comma after the first.
        grown = size + len(frame.encode()) + (1 if group else 0)
        if group and grown > limit:
            close()
            group, grown = [], empty + len(frame.encode())
        group.append(frame)
        size = grown
    close()
    return packed


def count_frame(*, clients: int) -> str:
    """The frame that tells a receiver how many receivers are connected."""
    return dumps({"type": FRAME_COUNT, "clients": clients})


# `status` frames: whether broadcasts reach this receiver's server as they are sent.
BROADCASTS_LIVE = "live"
BROADCASTS_DELAYED = "delayed"


def status_frame(*, broadcasts: str) -> str:
    """The frame that tells a receiver broadcasts are delayed (its server lost Redis), or flow
    live again."""
    return dumps({"type": FRAME_STATUS, "broadcasts": broadcasts})


def frame_type(frame: str) -> str:
    """The type of a server frame built here (they all begin with their type), without decoding it."""
    start = len('{"type":"')
    return frame[start : frame.index('"', start)]


def pong_frame() -> str:
    """The answer to a client's ping."""
    return dumps({"type": FRAME_PONG})


def error_frame(*, code: int, reason: str) -> str:
    """Sent just before the server closes a connection for a protocol error."""
    return dumps({"type": FRAME_ERROR, "code": code, "reason": reason})


def stream_frame(*, token: str) -> str:
    """SSE: the stream's first frame; `token` ties `seen` acks posted to SSE_SEEN_PATH to it."""
    return dumps({"type": FRAME_STREAM, "token": token})


# Why the server closed, by code, where the close itself says no more (a close frame's reason).
CLOSE_REASONS: dict[int, str] = {
    CloseCode.NORMAL: "closed",
    CloseCode.SERVICE_RESTART: "server restarting; reconnect now",
    CloseCode.OVER_CAPACITY: "server full; try again later",
    CloseCode.SLOW_CONSUMER: "slow consumer: too much output queued",
    CloseCode.TRY_AGAIN_LATER: "Redis unreachable; try again later",
}


def close_frame(*, code: int, reason: str | None = None) -> str:
    """SSE: the stream's last frame, with the code (and reason) a WebSocket would close with."""
    if reason is None:
        reason = CLOSE_REASONS.get(code, "closed")
    return dumps({"type": FRAME_CLOSE, "code": code, "reason": reason})


# SSE: how long an EventSource waits before it reconnects on its own, by close code (ms; a
# random part is added): at once after a drain, later when only signing in can help.
SSE_RETRY_MS = {CloseCode.SERVICE_RESTART: 0, CloseCode.UNAUTHENTICATED: 60_000}
SSE_RETRY_DEFAULT_MS = 2_000
SSE_RETRY_JITTER_MS = 2_000

_NUMBERED = (FRAME_MESSAGE, FRAME_RETRACT, FRAME_BATCH, FRAME_POSITION)
_SEQ_FIELD = '"seq":'
_EPOCH_FIELD = ',"epoch":"'
# A position before anything was ever published has no epoch: its id is `:<seq>`.
_NO_EPOCH_FIELD = ',"epoch":null'


def sse_event(frame: str, *, retry_ms: int | None = None) -> bytes:
    """A server frame as one Server-Sent Event: `event:` its type, `data:` the frame as the
    WebSocket carries it (one line: JSON has no raw line breaks), and for numbered frames and
    `position` an `id:` `<epoch>:<seq>` (`:<seq>` with no epoch yet) of the newest message in
    it. Other frames, a reset included, leave the stream's last id as it was: an EventSource
    that reconnects after a reset sends the place before it, from which the server works out
    the same reset (or the replay) again; the `position` after the catch-up moves it on.

    The place is read without decoding: the last `"seq":` in the frame is the newest message's
    (inside a JSON string every quote is escaped), with its epoch right after it."""
    kind = frame_type(frame)
    head = f"event: {kind}\n"
    if kind in _NUMBERED:
        at = frame.rindex(_SEQ_FIELD) + len(_SEQ_FIELD)
        comma = frame.index(",", at)
        if frame.startswith(_NO_EPOCH_FIELD, comma):
            epoch = ""
        else:
            assert frame.startswith(_EPOCH_FIELD, comma), "a numbered frame not built here"
            start = comma + len(_EPOCH_FIELD)
            epoch = frame[start : frame.index(chr(34), start)]
        head = f"id: {epoch}:{frame[at:comma]}\n" + head
    if retry_ms is not None:
        head = f"retry: {retry_ms}\n" + head
    return f"{head}data: {frame}\n\n".encode()


# SSE: a comment line, sent every 15 s, so proxies keep the stream open.
SSE_KEEPALIVE = b":\n\n"


def last_event_id(value: str) -> tuple[int, str | None] | None:
    """(seq, epoch) of an SSE Last-Event-ID as `sse_event` writes it, or None; `:<seq>` is a
    place before any epoch (as `?since=` without `epoch`)."""
    epoch, sep, seq = value.strip().rpartition(":")
    if not sep or _SEQ.fullmatch(seq) is None:
        return None
    return int(seq), epoch or None


_SEQ = re.compile(r"[0-9]{1,18}")


def send_event(frame: str) -> dict[str, Any]:
    """The ASGI message that writes one text frame to a WebSocket."""
    return {"type": "websocket.send", "text": frame}


def close_event(code: CloseCode) -> dict[str, Any]:
    """The ASGI message that closes a WebSocket with a named code."""
    return {"type": "websocket.close", "code": int(code)}


def broadcast_event(*, frame: str, seq: int, epoch: str, published: float) -> BroadcastEvent:
    """The channel-layer event that carries an already-encoded message frame; `published`
    is the UNIX time it was published at (for the publish lag metric)."""
    return {"type": BROADCAST_EVENT, "frame": frame, "seq": seq, "epoch": epoch, "published": published}


# A message id as the server makes them: 32 lowercase hex digits (uuid4().hex).
_MESSAGE_ID = re.compile(r"[0-9a-f]{32}")


def is_message_id(value: object) -> bool:
    """Whether `value` has the shape of a broadcast's id."""
    return isinstance(value, str) and _MESSAGE_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class ClientFrame:
    """A frame a client may send: `ping`, or `seen` with the id of a message."""

    type: str
    id: str = ""


def parse_client_frame(text: str | None) -> ClientFrame | None:
    """The client frame the protocol defines, or None for anything else (a `seen` must name
    an id of the right shape; whether it is a known one is the server's business)."""
    if text is None:
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return None
    if not isinstance(obj, dict):
        return None
    kind = obj.get("type")
    if kind == FRAME_PING:
        return ClientFrame(FRAME_PING)
    if kind == FRAME_SEEN and is_message_id(obj.get("id")):
        return ClientFrame(FRAME_SEEN, obj["id"])
    return None
