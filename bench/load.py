"""One load-generator process: many raw WebSocket clients that count what they receive.

Driven by `bench.run` over stdin/stdout, one JSON object per line. Clients are raw asyncio
protocols that parse WebSocket frames (RFC 6455 headers, in plain Python but with little
work per frame) and count a message only from a well-formed text frame that holds its whole
line `L<k>|xxx...`: for raw systems the payload must be exactly that line; for JSON systems one
client in SAMPLE_EVERY also decodes every payload as JSON and needs the line as a string value.
A frame that fails any check counts as corrupt (and the run fails), never as delivered.
Server pings are disabled by the bench.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

MARKER = re.compile(rb"L(\d+)\|")
MESSAGE_BYTES = 100  # bench.run's line(k)
SAMPLE_EVERY = 50  # one client in SAMPLE_EVERY decodes the JSON of every frame it gets
_lines: dict[int, bytes] = {}


def line_bytes(k: int) -> bytes:
    """The line bench.run publishes as message k (the same padding as its line())."""
    found = _lines.get(k)
    if found is None:
        head = f"L{k}|".encode()
        found = _lines[k] = head + b"x" * (MESSAGE_BYTES - len(head))
    return found


def strings_in(value: Any) -> Iterator[str]:
    """Every string value in decoded JSON, at any depth."""
    if isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, str):
        yield value


class Stats:
    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.last: dict[int, float] = {}
        self.closed = 0
        self.corrupt = 0

    def saw(self, k: int, now: float) -> None:
        self.counts[k] = self.counts.get(k, 0) + 1
        self.last[k] = now


class LoadClient(asyncio.Protocol):
    def __init__(
        self,
        stats: Stats,
        request: bytes,
        opened: asyncio.Future[bool],
        *,
        json_frames: bool,
        sample: bool,
        label: str = "",
    ) -> None:
        self.stats = stats
        self.label = label  # who it is for an audience audit (a user name, or "" when anonymous)
        self.request = request
        self.opened = opened
        self.buffer = b""
        self.upgraded = False
        self.json_frames = json_frames
        self.sample = sample
        self.transport: asyncio.Transport | None = None
        # How many times this client got each message k (saturating at 255): the audit counts
        # losses and duplicates per client, which the totals in Stats could hide (a duplicate
        # at one client and a loss at another add up to "all delivered").
        self.seen = bytearray(64)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is no asyncio.Transport)
        transport.write(self.request)

    def took_head(self, data: bytes) -> bytes | None:
        """Before the answer's head is in: buffer `data`; once it is, resolve `opened` and return
        what follows it (None: not yet, or refused)."""
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        ok = self.accepted(self.buffer[:end])
        rest = self.buffer[end + 4 :]
        self.buffer = b""
        self.upgraded = True
        if not self.opened.done():
            self.opened.set_result(ok)
        return rest if ok else None

    def accepted(self, head: bytes) -> bool:
        return head.startswith(b"HTTP/1.1 101")

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            taken = self.took_head(data)
            if taken is None:
                return
            data = taken
        self.body(data)

    def body(self, data: bytes) -> None:
        """What follows the answer's head: WebSocket frames."""
        buf = self.buffer + data if self.buffer else data
        now = time.time()
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            # Server frames are never masked, no extension is negotiated (RSV bits 0), and none
            # of these servers fragments a 100-byte message.
            if b1 & 0x80 or b0 & 0x70 or not b0 & 0x80:
                self.corrupt("bad frame header", fatal=True)
                return
            length, head = b1 & 0x7F, 2
            if length == 126:
                if end - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if end - pos < head + length:
                break
            start = pos + head
            pos = start + length
            if b0 & 0x0F == 1:  # text
                self.text(buf, start, pos, now)
        self.buffer = buf[pos:]

    def text(self, buf: bytes, start: int, stop: int, now: float) -> None:
        """Counts the messages of one text frame: one line alone (raw systems), or any number
        of lines as JSON strings (the project's `message` and `batch` frames)."""
        found = []
        for match in MARKER.finditer(buf, start, stop):
            k = int(match.group(1))
            expected = line_bytes(k)
            at = match.start()
            if buf[at : at + len(expected)] != expected:
                self.corrupt(f"message {k} is not its whole line")
                return
            if not self.json_frames and (at != start or stop - start != len(expected)):
                self.corrupt(f"message {k}: payload of {stop - start} bytes, not the line alone")
                return
            found.append(k)
        if found and self.json_frames and self.sample:
            try:
                decoded = json.loads(buf[start:stop])
            except ValueError:
                self.corrupt(f"messages {found}: payload is not JSON")
                return
            strings = set(strings_in(decoded))
            if any(line_bytes(k).decode() not in strings for k in found):
                self.corrupt(f"messages {found}: not every line is a JSON string of the frame")
                return
        for k in found:
            self.stats.saw(k, now)
            if k >= len(self.seen):
                self.seen.extend(bytes(k + 64 - len(self.seen)))
            if self.seen[k] < 255:
                self.seen[k] += 1

    def corrupt(self, why: str, *, fatal: bool = False) -> None:
        self.stats.corrupt += 1
        if self.stats.corrupt <= 3:
            print(f"load: corrupt frame: {why}", file=sys.stderr, flush=True)
        if fatal and self.transport is not None:
            self.transport.close()  # the stream cannot be parsed further

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.closed += 1
        if not self.opened.done():
            self.opened.set_result(False)


class SseLoadClient(LoadClient):
    """An SSE receiver (GET /sse/broadcast/): the chunked body taken apart, each event's `data:`
    line (the same JSON frame as on the WebSocket) counted as `LoadClient.text` counts a frame."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chunks = b""  # the body, still in chunks
        self.events = b""  # the event stream, out of its chunks

    def accepted(self, head: bytes) -> bool:
        return head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()

    def body(self, data: bytes) -> None:
        buf = self.chunks + data if self.chunks else data
        pos, end, body = 0, len(buf), []
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(buf[pos:eol].split(b";")[0], 16)
            if end < eol + 2 + size + 2:
                break
            body.append(buf[eol + 2 : eol + 2 + size])
            pos = eol + 2 + size + 2
        self.chunks = buf[pos:]
        if not body:
            return
        stream = self.events + b"".join(body)
        now = time.time()
        at = 0
        while (stop := stream.find(b"\n\n", at)) >= 0:
            data_at = stream.find(b"data: ", at, stop)
            if data_at >= 0:
                self.text(stream, data_at + 6, stream.find(b"\n", data_at, stop + 1), now)
            at = stop + 2
        self.events = stream[at:]


async def connect_all(
    stats: Stats,
    targets: list[tuple[str, int, str]],
    n: int,
    receivers: list[LoadClient],
    *,
    json_frames: bool,
    tokens: list[str | None] | None = None,
    labels: list[str] | None = None,
    sse: bool = False,
) -> dict[str, Any]:
    """Opens n clients (SSE ones with `sse`); client i sends `tokens[i]` as its bearer receiver
    token (none when None) and is audited as `labels[i]`."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(500)
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        host, port, path = targets[i % len(targets)]
        key = base64.b64encode(os.urandom(16)).decode()
        token = tokens[i] if tokens else None
        bearer = f"Authorization: Bearer {token}\r\n" if token else ""
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{bearer}\r\n"
        ).encode()
        if sse:
            head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
            request = f"{head}{bearer}\r\n".encode()
        kind = SseLoadClient if sse else LoadClient
        label = labels[i] if labels else ""
        async with gate:
            opened: asyncio.Future[bool] = loop.create_future()
            try:
                _, proto = await loop.create_connection(
                    lambda: kind(
                        stats,
                        request,
                        opened,
                        json_frames=json_frames,
                        sample=i % SAMPLE_EVERY == 0,
                        label=label,
                    ),
                    host,
                    port,
                )
                ok = await asyncio.wait_for(opened, 60)
            except (OSError, TimeoutError):
                ok = False
            if ok:
                receivers.append(proto)
            else:
                failed += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return {"connected": n - failed, "failed": failed, "elapsed": time.perf_counter() - started}


def audit(
    receivers: list[LoadClient], keys: list[int], addressed: dict[int, set[str]] | None = None
) -> dict[str, int]:
    """Per client and message: how many (client, message) pairs were never received, or more
    than once, and how many clients had either. With `addressed` (message -> the labels it was
    for; a message not in it is for every client): also how many pairs arrived at a client the
    message was not for (`wrong`), which are then neither lost nor duplicated."""
    lost = duplicated = wrong = clients_short = clients_doubled = 0
    addressed = addressed or {}
    for client in receivers:
        seen = client.seen
        missing = extra = 0
        for k in keys:
            got = seen[k] if k < len(seen) else 0
            for_it = addressed.get(k)
            if for_it is not None and client.label not in for_it:
                wrong += got > 0
            elif got == 0:
                missing += 1
            elif got > 1:
                extra += 1
        lost, duplicated = lost + missing, duplicated + extra
        clients_short += missing > 0
        clients_doubled += extra > 0
    return {"lost": lost, "duplicated": duplicated, "wrong": wrong, "clients_short": clients_short,
            "clients_doubled": clients_doubled}  # fmt: skip


async def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)  # a connect command carries every client's token
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stats = Stats()
    receivers: list[LoadClient] = []

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["cmd"] == "connect":
            targets = [tuple(t) for t in cmd["targets"]]
            reply(await connect_all(stats, targets, cmd["n"], receivers, json_frames=cmd["json"],  # type: ignore[arg-type]
                                    tokens=cmd.get("tokens"), labels=cmd.get("labels"),
                                    sse=cmd.get("sse", False)))  # fmt: skip
        elif cmd["cmd"] == "stats":
            reply(
                {
                    "counts": stats.counts,
                    "last": stats.last,
                    "closed": stats.closed,
                    "corrupt": stats.corrupt,
                    "cpu": time.process_time(),
                }
            )
        elif cmd["cmd"] == "audit":
            addressed = {int(k): set(labels) for k, labels in cmd.get("addressed", {}).items()}
            reply(audit(receivers, cmd["keys"], addressed))
        elif cmd["cmd"] == "reset":
            stats.counts.clear()
            stats.last.clear()
            reply({"ok": True})
        elif cmd["cmd"] == "close":
            for r in receivers:
                if r.transport is not None:
                    r.transport.close()
            receivers.clear()
            reply({"ok": True})
        elif cmd["cmd"] == "quit":
            break


if __name__ == "__main__":
    try:
        # libuv's loop costs a load process far less per received frame than asyncio's own, which
        # leaves more of the shared cores to the servers under test (requirements-bench.txt).
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
