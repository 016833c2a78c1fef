"""The hostile-client soak: healthy receivers beside clients that never read, slowloris
connections and token guessers, against `WORKERS=2` (deploy/serve.sh, as `make serve` runs it).

For `--seconds` (default 300), in this process, on loopback:

- `--healthy` (1,000) receivers that read everything; a console publisher (`manage.py
  broadcast`) sends one broadcast a second of `--size` characters (default 4,000);
- `--never-read` (500) receivers with a 4 KB receive window that read nothing after their
  handshake; when the server drops one, another takes its place;
- `--slowloris` (200) connections sending a request head a byte a second, reopened when closed;
- `--guessers` (200) loops posting wrong API tokens back to back;
- `/health/` asked once a second.

It reports what every healthy receiver got (lost, doubled, time from publish to arrival p50 /
p99 / max), what the hostile ones were answered, how `/health/` answered, and the workers' RSS
over the run. Exit status 1 if a healthy receiver lost, doubled or was dropped, or `/health/`
failed once. BROADCAST_MAX_UNSENT_BYTES is 64 KB here (`--max-unsent`), so a never-reading
client reaches the bound (4408) before autobahn's ping timeout (about 50 s) drops it.

    .venv/bin/python -m bench.hostile [--seconds 300] [--json bench/results/hostile.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.drain import client_frame, request, split_head, take_frames
from bench.serving import scrape, serving, until, worker_rss

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Seen:
    """What the healthy receivers saw: per broadcast number, arrival delays (s), one per copy."""

    delays: dict[int, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    per_client: list[collections.Counter[int]] = field(default_factory=list)
    dropped: collections.Counter[int | None] = field(default_factory=collections.Counter)


class Healthy(asyncio.Protocol):
    """A receiver that reads everything: answers pings, notes each broadcast's arrival."""

    def __init__(self, seen: Seen, opened: asyncio.Future[bool], port: int) -> None:
        self.seen, self.opened, self.port = seen, opened, port
        self.got: collections.Counter[int] = collections.Counter()
        seen.per_client.append(self.got)
        self.buffer = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None
        self.code: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(request(self.port))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            head = split_head(self.buffer)
            if head is None:
                return
            self.upgraded, self.buffer = head
            if not self.opened.done():
                self.opened.set_result(self.upgraded)
        frames, self.buffer = take_frames(self.buffer)
        for opcode, payload in frames:
            if opcode == 0x1:
                self._frame(json.loads(payload))
            elif opcode == 0x9:
                assert self.transport is not None
                self.transport.write(client_frame(0xA, payload))
            elif opcode == 0x8:
                self.code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None

    def _frame(self, frame: dict) -> None:
        now = time.time()
        for message in frame["messages"] if frame["type"] == "batch" else [frame]:
            if message.get("type") == "message" and message["text"].startswith("soak "):
                _, number, sent, _ = message["text"].split(" ", 3)
                self.got[int(number)] += 1
                self.seen.delays[int(number)].append(now - float(sent))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(False)
        self.seen.dropped[self.code] += 1


def _tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


_ESTABLISHED = 1


def never_reader(port: int) -> socket.socket | None:
    """A receiver with a 4 KB window, past its handshake, that will read nothing more."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.connect(("127.0.0.1", port))
        sock.sendall(request(port))
        head = b""
        sock.settimeout(30)
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
    except OSError:
        sock.close()
        return None
    if not head.startswith(b"HTTP/1.1 101"):
        sock.close()
        return None
    return sock


async def never_readers(port: int, n: int, counts: collections.Counter[str], stop: asyncio.Event) -> None:
    """Keep `n` never-reading receivers open; count those the server dropped (4408 after the
    bound, then closed when they never read the close frame)."""
    socks: list[socket.socket] = []
    while not stop.is_set():
        alive = []
        for sock in socks:
            if _tcp_state(sock) == _ESTABLISHED:
                alive.append(sock)
            else:
                counts["dropped by the server"] += 1
                sock.close()
        socks = alive
        while len(socks) < n and not stop.is_set():
            sock = await asyncio.to_thread(never_reader, port)
            if sock is None:
                counts["handshake refused"] += 1
                break
            socks.append(sock)
            counts["opened"] += 1
        with_timeout = asyncio.ensure_future(stop.wait())
        await asyncio.wait([with_timeout], timeout=5)
        with_timeout.cancel()
    for sock in socks:
        sock.close()


async def slowloris(port: int, counts: collections.Counter[str], stop: asyncio.Event) -> None:
    """A request head a byte a second, reopened whenever the server closes it."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            counts["connect failed"] += 1
            await asyncio.sleep(1)
            continue
        opened = time.monotonic()

        async def trickle(writer: asyncio.StreamWriter = writer) -> None:
            with _suppress():
                for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1)

        sending = asyncio.create_task(trickle())
        answer = b""
        with _suppress():
            answer = await asyncio.wait_for(reader.read(200), 600)
        sending.cancel()
        writer.close()
        status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "closed"
        counts[status] += 1
        counts.setdefault("held longest (s)", 0)
        counts["held longest (s)"] = max(counts["held longest (s)"], round(time.monotonic() - opened))


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, (OSError, TimeoutError, asyncio.IncompleteReadError))


async def guesser(port: int, i: int, counts: collections.Counter[str], stop: asyncio.Event) -> None:
    """Wrong tokens posted back to back."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            body = b'{"text": "guess"}'
            writer.write(f"POST /api/broadcasts/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                         f"Authorization: Bearer wrong-{i}-{n}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                         + body)  # fmt: skip
            answer = await asyncio.wait_for(reader.read(), 30)
            writer.close()
            counts[answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "closed"] += 1
        except (OSError, TimeoutError):
            counts["failed"] += 1
        await asyncio.sleep(0.05)


def health(port: int) -> tuple[int | str, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/", timeout=5) as resp:
            status: int | str = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        status = type(exc).__name__
    return status, time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def soak(
    args: argparse.Namespace, port: int, serve: subprocess.Popen[bytes] | None, env: dict[str, str]
) -> dict:
    loop = asyncio.get_running_loop()
    seen = Seen()
    clients = []
    for i in range(args.healthy):
        opened: asyncio.Future[bool] = loop.create_future()
        transport, _ = await loop.create_connection(
            lambda opened=opened: Healthy(seen, opened, port), "127.0.0.1", port
        )
        clients.append(transport)
        if not await opened:
            raise SystemExit(f"healthy receiver {i} was refused")
    stop = asyncio.Event()
    never, loris, guesses = collections.Counter[str](), collections.Counter[str](), collections.Counter[str]()
    hostile = [asyncio.create_task(never_readers(port, args.never_read, never, stop))]
    hostile += [asyncio.create_task(slowloris(port, loris, stop)) for _ in range(args.slowloris)]
    hostile += [asyncio.create_task(guesser(port, i, guesses, stop)) for i in range(args.guessers)]
    await until(lambda: scrape(port)["broadcaster_connections"] >= args.healthy + args.never_read * 0.9,
                timeout=120, what="healthy and never-reading receivers connected")  # fmt: skip
    rss_start = worker_rss(serve.pid) if serve is not None else 0
    publisher = subprocess.Popen([sys.executable, "manage.py", "broadcast"], cwd=ROOT, env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)  # fmt: skip
    assert publisher.stdin is not None
    health_answers: list[tuple[int | str, float]] = []
    rss: list[int] = []
    sent = 0
    started = time.monotonic()
    pad = "p" * max(0, args.size - 40)
    while (elapsed := time.monotonic() - started) < args.seconds:
        publisher.stdin.write(f"soak {sent} {time.time():.6f} {pad}\n".encode())
        publisher.stdin.flush()
        sent += 1
        health_answers.append(await asyncio.to_thread(health, port))
        if sent % 5 == 0:
            rss.append(worker_rss(serve.pid) if serve is not None else 0)
        if sent % 30 == 0:
            print(f"  {elapsed:5.0f} s: {sent} sent; never-read {dict(never)}; slowloris {dict(loris)}; "
                  f"guesses {dict(guesses)}; RSS {rss[-1] / 2**20:.0f} MB", flush=True)  # fmt: skip
        await asyncio.sleep(max(0.0, started + sent - time.monotonic()))
    publisher.stdin.close()
    publisher.wait(timeout=60)
    # Every broadcast had a second to arrive; the last ones get a few more.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(sum(c.values()) < sent for c in seen.per_client):
        await asyncio.sleep(0.2)
    stop.set()
    closed_4408 = int(scrape(port).get("broadcaster_slow_consumer_disconnects_total", 0))
    for task in hostile:
        task.cancel()
    await asyncio.gather(*hostile, return_exceptions=True)
    lost = sum(1 for c in seen.per_client for n in range(sent) if c[n] == 0)
    doubled = sum(1 for c in seen.per_client for n in range(sent) if c[n] > 1)
    delays = [d for copies in seen.delays.values() for d in copies]
    dropped_healthy = sum(seen.dropped.values())
    for transport in clients:
        transport.close()
    failed_health = [a for a in health_answers if a[0] != 200]
    first = [d for n in range(min(6, sent)) for d in seen.delays[n]]
    return {
        "seconds": args.seconds, "broadcasts": sent, "healthy": args.healthy,
        "lost": lost, "doubled": doubled, "healthy_dropped": dropped_healthy,
        "p50_ms": round(statistics.median(delays) * 1000, 1),
        "p99_ms": round(percentile(delays, 0.99) * 1000, 1),
        "max_ms": round(max(delays) * 1000, 1), "first_6_p99_ms": round(percentile(first, 0.99) * 1000, 1),
        "never_read": {**never, "closed_4408": closed_4408},
        "slowloris": dict(loris), "guesses": dict(guesses),
        "health": {"asked": len(health_answers), "failed": len(failed_health),
                   "slowest_ms": round(max(t for _, t in health_answers) * 1000, 1)},
        "rss_mb": {"start": round(rss_start / 2**20, 1), "max": round(max(rss) / 2**20, 1),
                   "end": round(rss[-1] / 2**20, 1), "every_30s": [round(r / 2**20) for r in rss[5::6]]},
    }  # fmt: skip


async def run(args: argparse.Namespace) -> dict:
    if args.port:  # a server already running (`make run`, say), with its own settings
        env = {**os.environ, "BROADCAST_DOTENV": os.environ.get("BROADCAST_DOTENV", "")}
        return await soak(args, args.port, None, env)
    settings = {"BROADCAST_MAX_UNSENT_BYTES": str(args.max_unsent)}
    if args.send_buffer:
        settings["BROADCAST_SOCKET_SEND_BUFFER"] = str(args.send_buffer)
    async with serving(name="hostile", **settings) as served:
        return await soak(args, served.port, served.proc, served.env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--healthy", type=int, default=1000)
    parser.add_argument("--never-read", type=int, default=500)
    parser.add_argument("--slowloris", type=int, default=200)
    parser.add_argument("--guessers", type=int, default=200)
    parser.add_argument("--size", type=int, default=4000, help="characters per broadcast")
    parser.add_argument("--max-unsent", type=int, default=65_536, help="BROADCAST_MAX_UNSENT_BYTES")
    parser.add_argument(
        "--port",
        type=int,
        help="soak a server already listening on this loopback port "
        "(its publisher: manage.py broadcast with this environment; no RSS figures)",
    )
    parser.add_argument(
        "--send-buffer", type=int, help="BROADCAST_SOCKET_SEND_BUFFER (default: the project's own)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = (
        not result["lost"]
        and not result["doubled"]
        and not result["healthy_dropped"]
        and not result["health"]["failed"]
    )
    print("PASS" if ok else "FAIL: a healthy receiver lost, doubled or was dropped, or /health/ failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
