"""One load-generator process: many raw WebSocket clients that count what they receive.

Driven by `bench.run` over stdin/stdout, one JSON object per line. Clients are raw asyncio
protocols: after the handshake they do no framing work at all, they only search the byte
stream for message markers `L<k>|` (in C, via a compiled regex), so a load process costs far
less per delivery than the servers it measures. Server pings are disabled by the bench.
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
from typing import Any

MARKER = re.compile(rb"L(\d+)\|")
TAIL = 16


class Stats:
    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.last: dict[int, float] = {}
        self.closed = 0

    def saw(self, k: int, now: float) -> None:
        self.counts[k] = self.counts.get(k, 0) + 1
        self.last[k] = now


class LoadClient(asyncio.Protocol):
    def __init__(self, stats: Stats, request: bytes, opened: asyncio.Future[bool]) -> None:
        self.stats = stats
        self.request = request
        self.opened = opened
        self.buffer = b""
        self.upgraded = False
        self.tail = b""
        self.transport: asyncio.Transport | None = None
        # How many times this client got each message k (saturating at 255): the audit counts
        # losses and duplicates per client, which the totals in Stats could hide (a duplicate
        # at one client and a loss at another add up to "all delivered").
        self.seen = bytearray(64)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            ok = self.buffer.startswith(b"HTTP/1.1 101")
            data = self.buffer[end + 4 :]
            self.buffer = b""
            self.upgraded = True
            if not self.opened.done():
                self.opened.set_result(ok)
            if not ok:
                return
        now = time.time()
        chunk = self.tail + data
        skip = len(self.tail)
        for match in MARKER.finditer(chunk):
            if match.end() > skip:  # not already counted in the previous chunk
                k = int(match.group(1))
                self.stats.saw(k, now)
                if k >= len(self.seen):
                    self.seen.extend(bytes(k + 64 - len(self.seen)))
                if self.seen[k] < 255:
                    self.seen[k] += 1
        self.tail = chunk[-TAIL:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.closed += 1
        if not self.opened.done():
            self.opened.set_result(False)


async def connect_all(
    stats: Stats, targets: list[tuple[str, int, str]], n: int, receivers: list[LoadClient]
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(500)
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        host, port, path = targets[i % len(targets)]
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        async with gate:
            opened: asyncio.Future[bool] = loop.create_future()
            try:
                _, proto = await loop.create_connection(
                    lambda: LoadClient(stats, request, opened), host, port
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


def audit(receivers: list[LoadClient], keys: list[int]) -> dict[str, int]:
    """Per client and message: how many (client, message) pairs were never received, or more
    than once, and how many clients had either."""
    lost = duplicated = clients_short = clients_doubled = 0
    for client in receivers:
        seen = client.seen
        counts = [seen[k] if k < len(seen) else 0 for k in keys]
        missing, extra = counts.count(0), sum(1 for c in counts if c > 1)
        lost, duplicated = lost + missing, duplicated + extra
        clients_short += missing > 0
        clients_doubled += extra > 0
    return {"lost": lost, "duplicated": duplicated, "clients_short": clients_short,
            "clients_doubled": clients_doubled}  # fmt: skip


async def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
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
            reply(await connect_all(stats, targets, cmd["n"], receivers))  # type: ignore[arg-type]
        elif cmd["cmd"] == "stats":
            reply(
                {
                    "counts": stats.counts,
                    "last": stats.last,
                    "closed": stats.closed,
                    "cpu": time.process_time(),
                }
            )
        elif cmd["cmd"] == "audit":
            reply(audit(receivers, cmd["keys"]))
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
    asyncio.run(main())
