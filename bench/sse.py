"""`make bench`'s SSE scenario: the fallback next to the WebSocket, end to end over real sockets.

One daphne process and one redis-server; 5,000 raw receivers from the load processes
(`bench/load.py`), all WebSocket on a fresh server, then all SSE on another fresh server. The
console publisher (`manage.py broadcast`) sends single messages one at a time, and for each
transport it measures:

- time to all: from writing the line to the publisher until the last receiver has it
  (p50/p99 over the samples);
- server CPU per broadcast (ms, median);
- memory: the server's RSS growth per connection once all are connected and one message
  went to each (KB/conn), and connects/s;
- lost / duplicated: (receiver, message) pairs never received, or received twice. Any
  of them fails the run.

The ratios SSE / WebSocket are printed; the goal is 1.5x or less on time to all and memory.

    python -m bench.sse [--receivers 5000] [--samples 30] [--loaders 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.run import PY, Load, Project, line, raise_open_files, start_redis
from broadcaster import protocol

GOAL = 1.5


@dataclass
class Row:
    transport: str
    connected: int = 0
    connects_per_s: float = 0.0
    kb_per_conn: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_ms: float = 0.0
    lost: int = 0
    duplicated: int = 0
    times_ms: list[float] = field(default_factory=list)


def measure(transport: str, args: argparse.Namespace, redis_url: str, workdir: Path) -> Row:
    row = Row(transport=transport)
    system = Project(redis_url, workdir / transport)
    sse = transport == "sse"
    system.path = protocol.SSE_PATH if sse else protocol.RECEIVER_PATH
    load = Load(args.loaders)
    try:
        system.workdir.mkdir()
        system.start()
        before = system.rss()
        targets = [["127.0.0.1", port, system.path] for port in system.ports]
        per = [
            args.receivers // args.loaders + (i < args.receivers % args.loaders) for i in range(args.loaders)
        ]
        replies = load.ask_all([{"cmd": "connect", "n": n, "targets": targets, "json": True, "sse": sse}
                                for n in per])  # fmt: skip
        row.connected = sum(r["connected"] for r in replies)
        row.connects_per_s = row.connected / max(r["elapsed"] for r in replies)
        if row.connected < args.receivers:
            raise RuntimeError(f"{transport}: only {row.connected} of {args.receivers} receivers connected")
        cpu: list[float] = []
        for k in range(args.samples + 1):  # the first is the warm-up
            cpu_before, sent = system.cpu(), time.time()
            system.publish([line(k)])
            counts, last = load.wait([k], row.connected, timeout=60)
            if counts.get(k, 0) < row.connected:
                raise RuntimeError(f"{transport}: {counts.get(k, 0)} of {row.connected} got message {k}")
            if k == 0:
                row.kb_per_conn = (system.rss() - before) / 1024 / row.connected
                continue
            row.times_ms.append(round((last[k] - sent) * 1000, 1))
            cpu.append((system.cpu() - cpu_before) * 1000)
        audits = load.ask({"cmd": "audit", "keys": list(range(args.samples + 1))})
        row.lost = sum(a["lost"] for a in audits)
        row.duplicated = sum(a["duplicated"] for a in audits)
        row.p50_ms = statistics.median(row.times_ms)
        row.p99_ms = statistics.quantiles(row.times_ms, n=100, method="inclusive")[98]
        row.cpu_ms = statistics.median(cpu)
        load.ask({"cmd": "close"})
    finally:
        load.quit()
        system.stop()
    subprocess.run([PY, "-c", "import redis,sys; redis.Redis.from_url(sys.argv[1]).flushall()", redis_url],
                   check=True)  # fmt: skip
    return row


def report(rows: list[Row]) -> bool:
    ws, sse = rows
    print(f"{ws.connected} receivers, one daphne; single 100-byte messages, {len(ws.times_ms)} samples each")
    print(f"{'transport':<10} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms':>8} {'KB/conn':>8} {'connects/s':>11}")
    for r in rows:
        print(f"{r.transport:<10} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {r.cpu_ms:>8.1f} {r.kb_per_conn:>8.1f} "
              f"{r.connects_per_s:>11,.0f}")  # fmt: skip
    ratios = {
        "p50": sse.p50_ms / ws.p50_ms,
        "p99": sse.p99_ms / ws.p99_ms,
        "memory": sse.kb_per_conn / ws.kb_per_conn,
    }
    print(
        "SSE / WebSocket: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
        + f" (goal {GOAL}x or less)"
    )
    print(f"lost {ws.lost + sse.lost}, duplicated {ws.duplicated + sse.duplicated}")
    return all(v <= GOAL for v in ratios.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receivers", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--loaders", type=int, default=2, help="load-generator processes")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    raise_open_files()
    workdir = Path(tempfile.mkdtemp(prefix="bench-sse-"))
    redis_proc, redis_url = start_redis(workdir)
    try:
        rows = [measure(t, args, redis_url, workdir) for t in ("websocket", "sse")]
    finally:
        redis_proc.kill()
        redis_proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    within = report(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "within_goal": within}, indent=2))
    if any(r.lost or r.duplicated for r in rows):
        print("FAILED: a receiver missed or doubled a message")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
