"""The terminal receiver behind `manage.py listen` (the original client.py, done properly).

Prints each broadcast with its time (and its level, unless info) and each count change, says
when one is retracted, reports each printed message seen, and reconnects with exponential
backoff and jitter whenever the connection is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from broadcaster import protocol, sse_client

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
# After a 1012 (the server is draining): reconnect within this many seconds, at random.
RESTART_JITTER = 1.0
SERVICE_RESTART = int(protocol.CloseCode.SERVICE_RESTART)
# SSE: a stream silent this long (three keep-alive intervals) is reconnected; acks go in posts
# of at most this many ids (the seen endpoint's limit).
SSE_IDLE = 45.0
SEEN_PER_POST = 50


def backoff_delay(attempt: int, *, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based): exponential, jittered."""
    ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempt)
    return ceiling / 2 + rng() * ceiling / 2


class FrameReader:
    """Turns frames into lines, remembering the last seq seen so a reconnect resumes there."""

    def __init__(self) -> None:
        self.seq: int | None = None
        self.epoch: str | None = None
        # Ids of the messages printed by the last render (to report them seen).
        self.printed: list[str] = []
        # The newest messages' texts by id, to say what a retraction takes back.
        self._texts: dict[str, str] = {}

    def url(self, base: str) -> str:
        """`base` with the resume point, once something has been seen."""
        if self.seq is None:
            return base
        query = urlencode({"since": self.seq, **({"epoch": self.epoch} if self.epoch else {})})
        return f"{base}{'&' if '?' in base else '?'}{query}"

    def render(self, frame: str) -> list[str]:
        """The lines to print for one frame from the server (a batch holds several), with
        control characters shown, not obeyed (`visible`)."""
        self.printed = []
        try:
            obj = json.loads(frame)
        except (ValueError, RecursionError):
            return [f"(unreadable frame: {frame[:80]!r})"]
        # A message's later lines indented: none can pass for a line of its own ("[12:00:00] ...").
        return [visible(line).replace("\n", "\n  ") for line in self._render(obj)]

    def _render(self, obj: Any) -> list[str]:
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind in (protocol.FRAME_MESSAGE, protocol.FRAME_RETRACT, protocol.FRAME_POSITION):
            seq, epoch = obj.get("seq"), obj.get("epoch")
            if isinstance(seq, int):
                if epoch == self.epoch and self.seq is not None and seq <= self.seq:
                    return []  # seen already
                self.seq, self.epoch = seq, epoch
        if kind == protocol.FRAME_MESSAGE:
            return [self._message(obj)]
        if kind == protocol.FRAME_RETRACT:
            text = self._texts.pop(str(obj.get("id")), None)
            taken_back = f": {text!r}" if text is not None else f" (id {obj.get('id')})"
            return [f"[{_local_time(obj.get('time'))}] (Retracted{taken_back})"]
        if kind == protocol.FRAME_BATCH:
            return [line for item in obj.get("messages", []) for line in self._render(item)]
        if kind == protocol.FRAME_COUNT:
            return [f"Total clients: {obj.get('clients')}"]
        if kind == protocol.FRAME_STATUS:
            if obj.get("broadcasts") == protocol.BROADCASTS_DELAYED:
                return ["(Broadcasts are delayed: the server lost its message broker. Still connected.)"]
            if obj.get("broadcasts") == protocol.BROADCASTS_LIVE:
                return ["(Broadcasts flow again.)"]
            return []
        if kind == protocol.FRAME_RESET:
            self.seq, self.epoch = None, obj.get("epoch")
            return ["(Some messages were missed: they are no longer kept.)"]
        return []

    def _message(self, obj: dict[str, Any]) -> str:
        """One message's line: its time, its level unless info, `(expired)` if it has."""
        id, text = str(obj.get("id", "")), str(obj.get("text", ""))
        prefix = ""
        level = obj.get("level", protocol.LEVEL_INFO)
        if level != protocol.LEVEL_INFO:
            prefix += f"{str(level).upper()}: "
        expires = protocol.parse_time(obj.get("expires"))
        if expires is not None and expires <= time.time():
            prefix = "(expired) " + prefix
        elif id:
            self.printed.append(id)
        self._texts[id] = text
        while len(self._texts) > REMEMBER_TEXTS:
            del self._texts[next(iter(self._texts))]
        return f"[{_local_time(obj.get('time'))}] {prefix}{text}"


# Characters a terminal would obey rather than show: C0 controls but newline and tab (ESC starts
# the sequences that move the cursor, set the title or write the clipboard with OSC 52; CR
# rewrites the line; BEL rings), DEL, C1 controls (U+009B is a one-character CSI), the line and
# paragraph separators, and the bidi overrides and isolates that reorder what follows them.
_OBEYED = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every character a terminal would act on written as its escape (`\\x1b`,
    `\\u202e`); newlines and tabs are kept."""
    return _OBEYED.sub(_shown, text)


# How many of the newest messages' texts `listen` keeps, to print what a retraction took back.
REMEMBER_TEXTS = 256


def render(frame: str) -> list[str]:
    """The lines to print for one frame, for a receiver that has seen nothing before."""
    return FrameReader().render(frame)


def _local_time(iso: object) -> str:
    if not isinstance(iso, str):
        return "--:--:--"
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return iso


class Refused(Exception):
    """The server will not take this receiver as it is (4401: no user): retrying cannot help."""


def _raise_if_refused(code: int, token: str | None) -> None:
    if code == int(protocol.CloseCode.UNAUTHENTICATED):
        hint = "the token is unknown or revoked" if token else "pass a receiver token (--token)"
        raise Refused(
            f"The server refused this receiver (close code 4401: it takes only signed-in receivers): {hint}."
        ) from None


async def listen(url: str, *, out: Callable[[str], None], status: Callable[[str], None],
                 token: str | None = None) -> None:  # fmt: skip
    """Receive from `url` forever, reconnecting (and resuming) after every loss; cancel to stop.

    `token`: a receiver token's secret (`manage.py create_receiver_token`), sent as
    `Authorization: Bearer`: this receiver then hears what that token's user would."""
    attempt = 0
    receiver = FrameReader()
    connected_once = False
    headers = {"Authorization": f"Bearer {token}"} if token else None
    while True:
        try:
            async with websockets.connect(
                receiver.url(url), open_timeout=10, additional_headers=headers
            ) as ws:
                taken = False
                async for frame in ws:
                    if not taken:
                        # The server's first frame, not the handshake, says it took the client (a
                        # full server accepts, then closes with 1013): only now the backoff resets.
                        taken, connected_once, attempt = True, True, 0
                        status(f"Connected to {url}")
                    for line in receiver.render(frame if isinstance(frame, str) else frame.decode()):
                        out(line)
                    # Printed is shown: the server counts it in the message's reach.
                    for id in receiver.printed:
                        await ws.send(protocol.dumps({"type": protocol.FRAME_SEEN, "id": id}))
                reason = f"closed by the server (code {ws.close_code})"
        except InvalidURI as exc:
            raise ValueError(f"Not a WebSocket URL: {exc}") from exc
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                reason = "the connection dropped"
            else:
                said = f": {exc.rcvd.reason}" if exc.rcvd.reason else ""
                reason = f"closed by the server (code {exc.rcvd.code}{said})"
                _raise_if_refused(exc.rcvd.code, token)
                if exc.rcvd.code == SERVICE_RESTART:
                    # The server is draining: another one takes this client at once. The
                    # server spreads these closes out; the jitter spreads them a little more.
                    attempt = 0
                    delay = random.uniform(0, RESTART_JITTER)
                    status(f"Server restarting ({reason}); reconnecting in {delay:.1f} s")
                    await asyncio.sleep(delay)
                    continue
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        attempt = await _back_off(attempt, reason, url if not connected_once else None, status)


async def _back_off(
    attempt: int, reason: str, never_reached: str | None, status: Callable[[str], None]
) -> int:
    """Say why the connection is down and wait before attempt `attempt` + 1 (`never_reached`:
    the URL, if it never connected); return the next attempt's number."""
    delay = backoff_delay(attempt)
    if never_reached is None:
        status(f"Connection lost ({reason}); reconnecting in {delay:.1f} s")
    else:
        status(f"Cannot connect to {never_reached} ({reason}); retrying in {delay:.1f} s")
    await asyncio.sleep(delay)
    return attempt + 1


def sse_url(url: str) -> str:
    """The SSE endpoint for a receiver URL: a WebSocket one (ws://host/ws/broadcast/) becomes
    the SSE one beside it; an http(s) URL is taken as it is."""
    if url.startswith(("ws://", "wss://")):
        url = "http" + url[2:]
        scheme, _, rest = url.partition("://")
        host, slash, path = rest.partition("/")
        if slash + path == protocol.RECEIVER_PATH or (slash + path).startswith(protocol.RECEIVER_PATH + "?"):
            path = protocol.SSE_PATH[1:] + (slash + path)[len(protocol.RECEIVER_PATH) :]
        url = f"{scheme}://{host}/{path}"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"Not a receiver URL (ws://, wss://, http:// or https://): {url!r}")
    return url


async def listen_sse(url: str, *, out: Callable[[str], None], status: Callable[[str], None],
                     token: str | None = None) -> None:  # fmt: skip
    """As `listen`, over the SSE fallback (for terminals behind a proxy that strips the
    WebSocket upgrade): the same lines, resume, backoff and `seen` reports."""
    base = sse_url(url)
    seen_url = base.split("?", 1)[0].removesuffix(protocol.SSE_PATH) + protocol.SSE_SEEN_PATH
    attempt = 0
    receiver = FrameReader()
    connected_once = False
    headers = {"Authorization": f"Bearer {token}"} if token else None
    acks: set[asyncio.Task[None]] = set()
    while True:
        closed: dict[str, Any] | None = None
        try:
            async with asyncio.timeout(10):  # (not wait_for: sse_client._body says why)
                stream = await sse_client.open_stream(receiver.url(base), headers=headers)
            try:
                stream_token, taken = "", False
                # The server writes a comment every 15 s when nothing else: silence is a lost link.
                async for event in stream.events(idle=SSE_IDLE):
                    if event.type == protocol.FRAME_STREAM:
                        stream_token = str(json.loads(event.data).get("token", ""))
                        continue
                    if event.type == protocol.FRAME_CLOSE:
                        closed = json.loads(event.data)
                        break
                    if not taken:
                        # The first frame after the stream's own says it took the client (a
                        # full server answers with a `close` at once): only now the backoff resets.
                        taken, connected_once, attempt = True, True, 0
                        status(f"Connected to {base} (SSE)")
                    for line in receiver.render(event.data):
                        out(line)
                    for at in range(0, len(receiver.printed) if stream_token else 0, SEEN_PER_POST):
                        ids = receiver.printed[at : at + SEEN_PER_POST]
                        task = asyncio.create_task(_report_seen(seen_url, stream_token, ids))
                        acks.add(task)
                        task.add_done_callback(acks.discard)
            finally:
                stream.close()
            if closed is None:
                reason = "the stream ended"
            else:
                code = int(closed.get("code", 0))
                reason = f"closed by the server (code {code}: {closed.get('reason', '')})"
                _raise_if_refused(code, token)
                if code == SERVICE_RESTART:
                    attempt = 0
                    delay = random.uniform(0, RESTART_JITTER)
                    status(f"Server restarting ({reason}); reconnecting in {delay:.1f} s")
                    await asyncio.sleep(delay)
                    continue
        except sse_client.HttpError as exc:
            reason = str(exc)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            if isinstance(exc, ValueError) and "URL" in str(exc):
                raise
            reason = f"{type(exc).__name__}: {exc}"
        attempt = await _back_off(attempt, reason, base if not connected_once else None, status)


async def _report_seen(url: str, stream: str, ids: list[str]) -> None:
    """Report printed messages seen on an SSE stream (a lost report is not retried)."""
    with contextlib.suppress(OSError, ConnectionError, TimeoutError, ValueError):
        async with asyncio.timeout(10):
            await sse_client.post_json(url, {"stream": stream, "seen": list(ids)})
