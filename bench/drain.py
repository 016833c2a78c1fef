"""Drain against kill -9: how hard a restart of one worker hits the rest.

`WORKERS=2` (deploy/serve.sh, as `make serve` runs it) with N receivers (default 5,000), then:

1. SIGTERM to one worker: it closes its receivers with 1012 spread over
   BROADCAST_DRAIN_SECONDS (10 s), and they reconnect within 1 s at random (as the page and
   `listen` do);
2. once every receiver is back, SIGKILL to one worker: its receivers see the connection drop
   (1006) and reconnect after the first backoff step, 0.25-0.5 s (as the page and `listen` do).

For each it prints the reconnects per 100 ms (peak and a histogram), failed attempts, and the
time until every receiver is connected again. Receivers are raw asyncio protocols in this
process (they answer pings, read close codes, and do nothing else), so the load generator is
cheap, but it shares the two cores with the workers.

    .venv/bin/python -m bench.drain [--n 5000] [--drain-seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import math
import os
import random
import signal
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.serving import scrape, serving, until, worker_rss

ROOT = Path(__file__).resolve().parent.parent
RESTART = 1012
RESTART_JITTER = 1.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


@dataclass
class Record:
    """What every receiver saw: successful (re)connects and failed attempts, in loop time."""

    connects: list[float] = field(default_factory=list)
    failures: list[float] = field(default_factory=list)
    closes: collections.Counter[int | None] = field(default_factory=collections.Counter)


class DrainClient(asyncio.Protocol):
    """One WebSocket receiver on a raw socket: handshake, pongs, the close code; no more."""

    def __init__(
        self, done: asyncio.Future[int | None], opened: asyncio.Future[bool], request: bytes
    ) -> None:
        self.done, self.opened, self.request = done, opened, request
        self.buffer = b""
        self.upgraded = False
        self.code: int | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            head = split_head(self.buffer)
            if head is None:
                return
            if not head[0]:
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded, self.buffer = head
            if not self.opened.done():
                self.opened.set_result(True)
        self._frames()

    def _frames(self) -> None:
        frames, self.buffer = take_frames(self.buffer)
        for opcode, payload in frames:
            if opcode == 0x9:  # ping: pong with the same payload (masked, as a client must)
                self._send(0xA, payload)
            elif opcode == 0x8:
                self.code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self._send(0x8, payload[:2])
                assert self.transport is not None
                self.transport.close()

    def _send(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(opcode, payload))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(False)
        if not self.done.done():
            self.done.set_result(self.code)


def split_head(buffer: bytes) -> tuple[bool, bytes] | None:
    """Once the handshake's answer is in: (whether it upgraded, the bytes after it)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    return buffer.startswith(b"HTTP/1.1 101"), buffer[end + 4 :]


def take_frames(buffer: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole server frames (opcode, payload) at the start of `buffer`, and what is left."""
    frames = []
    while len(buffer) >= 2:
        opcode, size, start = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
        if size == 126:
            if len(buffer) < 4:
                break
            size, start = struct.unpack("!H", buffer[2:4])[0], 4
        elif size == 127:
            if len(buffer) < 10:
                break
            size, start = struct.unpack("!Q", buffer[2:10])[0], 10
        if len(buffer) < start + size:
            break
        frames.append((opcode, bytes(buffer[start : start + size])))
        buffer = buffer[start + size :]
    return frames, buffer


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (a pong, a close) of under 126 bytes."""
    mask = os.urandom(4)
    return (
        bytes([0x80 | opcode, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


def request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    head = (f"GET /ws/broadcast/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip
    return head.encode()


def backoff(attempt: int) -> float:
    ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempt)
    return ceiling / 2 + random.random() * ceiling / 2


async def receiver(port: int, record: Record) -> None:
    """Connect, stay until closed, reconnect as the page does: 1012 within 1 s at random,
    anything else after the backoff (which starts over once a connection opens)."""
    loop = asyncio.get_running_loop()
    attempt = 0
    while True:
        done: asyncio.Future[int | None] = loop.create_future()
        opened: asyncio.Future[bool] = loop.create_future()
        try:
            protocol = DrainClient(done, opened, request(port))
            await loop.create_connection(lambda: protocol, "127.0.0.1", port)  # noqa: B023 - awaited here
            ok = await opened
        except OSError:
            ok = False
        if ok:
            record.connects.append(loop.time())
            attempt = 0
            try:
                code = await done
            except asyncio.CancelledError:  # the scenario is over: this receiver goes
                assert protocol.transport is not None
                protocol.transport.abort()
                raise
            record.closes[code] += 1
            delay = random.uniform(0, RESTART_JITTER) if code == RESTART else backoff(attempt)
        else:
            record.failures.append(loop.time())
            delay = backoff(attempt)
        if not (ok and code == RESTART):
            attempt += 1
        await asyncio.sleep(delay)


def per_worker(port: int) -> dict[int, int]:
    return {int(k.split(":")[1]): int(v) for k, v in scrape(port).items()
            if k.startswith("broadcaster_worker_connections:")}  # fmt: skip


async def scenario(name: str, sig: signal.Signals, *, port: int, n: int, record: Record) -> dict[str, float]:
    workers = per_worker(port)
    victim, held = max(workers.items(), key=lambda item: item[1])
    loop = asyncio.get_running_loop()
    record.connects.clear()
    record.failures.clear()
    record.closes.clear()
    started = loop.time()
    os.kill(victim, sig)
    await until(lambda: victim not in per_worker(port) and scrape(port)["broadcaster_connections"] == n,
                timeout=120, what=f"all {n} receivers back after {name}")  # fmt: skip
    back = (record.connects[-1] if record.connects else loop.time()) - started
    buckets = collections.Counter(math.floor((t - started) * 10) for t in record.connects)
    peak = max(buckets.values()) if buckets else 0
    print(f"\n{name}: worker {victim} held {held} of {n}")
    print(f"  reconnects: {len(record.connects)}; failed attempts: {len(record.failures)}; "
          f"close codes: {dict(record.closes)}")  # fmt: skip
    print(f"  peak reconnects per 100 ms: {peak}; all back after {back:.2f} s")
    print("  reconnects per 100 ms, by second: " + " | ".join(
        f"{s}s: {max((buckets.get(s * 10 + i, 0) for i in range(10)), default=0)}"
        for s in range(math.ceil(back) + 1)))  # fmt: skip
    return {"held": held, "reconnects": len(record.connects), "failures": len(record.failures),
            "peak_per_100ms": peak, "all_back_s": round(back, 2)}  # fmt: skip


async def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    tasks: list[asyncio.Task[None]] = []
    async with serving(name="drain", BROADCAST_DRAIN_SECONDS=str(args.drain_seconds)) as served:
        port, serve = served.port, served.proc
        try:
            return await _scenarios(args, port, serve, tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _scenarios(args: argparse.Namespace, port: int, serve: subprocess.Popen[bytes],
                     tasks: list[asyncio.Task[None]]) -> dict[str, dict[str, float]]:  # fmt: skip
    record = Record()
    results: dict[str, dict[str, float]] = {}
    memory: dict[str, float] = {}
    rss_before = worker_rss(serve.pid)
    for name, sig in ((f"SIGTERM (drain over {args.drain_seconds:g} s)", signal.SIGTERM),
                      ("SIGKILL", signal.SIGKILL)):  # fmt: skip
        # Fresh receivers for each, spread over both workers by the kernel.
        await until(lambda: len(per_worker(port)) == 2 or not tasks, timeout=60, what="two workers")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()
        await until(lambda: scrape(port)["broadcaster_connections"] == 0, timeout=60, what="none left")
        for i in range(args.n):
            tasks.append(asyncio.create_task(receiver(port, record)))
            if i % 250 == 249:
                await asyncio.sleep(0.1)
        await until(lambda: scrape(port)["broadcaster_connections"] == args.n
                    and len(per_worker(port)) == 2, timeout=120, what="all on both workers")  # fmt: skip
        held = sorted(per_worker(port).values())
        print(f"\n{args.n} receivers; per worker: {held}")
        if not results:
            # Sizing: what the receivers cost the workers (RSS growth, both workers).
            grown = worker_rss(serve.pid) - rss_before
            memory = {"kb_per_connection": round(grown / 1024 / args.n, 1),
                      "worker_rss_mb": round(worker_rss(serve.pid) / 2**20 / 2, 1)}  # fmt: skip
            print(f"memory: {memory['kb_per_connection']} KB per connection (RSS growth of both workers "
                  f"over {args.n} receivers); {memory['worker_rss_mb']} MB per worker")  # fmt: skip
        results["drain" if sig == signal.SIGTERM else "kill"] = await scenario(
            name, sig, port=port, n=args.n, record=record
        )
    return {**results, "memory": memory}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="receivers")
    parser.add_argument("--drain-seconds", type=float, default=10.0, help="BROADCAST_DRAIN_SECONDS")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    drain, kill = results["drain"], results["kill"]
    ratio = kill["peak_per_100ms"] / max(drain["peak_per_100ms"], 1)
    print(f"\npeak reconnects per 100 ms: drain {drain['peak_per_100ms']}, kill -9 {kill['peak_per_100ms']} "
          f"({ratio:.1f}x the drain's)")  # fmt: skip
    if args.json:
        summary = {"n": args.n, "drain_seconds": args.drain_seconds, **results}
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
