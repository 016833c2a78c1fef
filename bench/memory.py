"""Where a receiver connection's memory goes: the project's daphne under tracemalloc, a
snapshot with a few receivers and another after N more, the difference per allocation site.

Usage: python -m bench.memory [--n 400] [--users 0]

With --users K the receivers sign in with receiver tokens of K users (bench.targeted's world,
every user a tab in turn): what identity and membership add to a connection.

Prints the Python heap per connection and the sites that hold most of it (RSS, which
`make bench` reports, adds the allocator's own overhead). tracemalloc slows the server
several times over: numbers of time from such a run mean nothing.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import (
    DAPHNE_OPTIONS,
    PY,
    ROOT,
    Load,
    Project,
    free_port,
    raise_open_files,
    start_redis,
    wait_port,
)
from bench.targeted import plan, seed


def short(filename: str) -> str:
    """A source file's path from its package on (site-packages, the standard library, this repo)."""
    for marker in ("site-packages/", f"python{sys.version_info[0]}.{sys.version_info[1]}/", f"{ROOT}/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def serve(report: Path) -> None:
    """In the server process: daphne, with a snapshot at each SIGUSR1; the second writes the report."""
    import gc
    import tracemalloc

    tracemalloc.start(6)
    snapshots: list[tracemalloc.Snapshot] = []

    def snapshot(*_: object) -> None:
        gc.collect()
        snapshots.append(tracemalloc.take_snapshot())
        if len(snapshots) == 2:
            stats = snapshots[1].compare_to(snapshots[0], "traceback")
            lines = [f"{sum(s.size_diff for s in stats)}"]
            for stat in stats[:25]:
                frames = [f"{short(f.filename)}:{f.lineno}" for f in reversed(stat.traceback[-3:])]
                lines.append(f"{stat.size_diff}\t{stat.count_diff}\t{' <- '.join(frames)}")
            report.write_text("\n".join(lines) + "\n")

    signal.signal(signal.SIGUSR1, snapshot)
    from daphne.cli import CommandLineInterface

    sys.argv = ["daphne", *sys.argv[3:]]
    CommandLineInterface.entrypoint()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400, help="receivers between the two snapshots")
    parser.add_argument("--users", type=int, default=0, help="receivers sign in as these many users")
    args = parser.parse_args()
    raise_open_files()
    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    redis_proc, redis_url = start_redis(workdir)
    system = Project(redis_url, workdir)
    env = system.env()
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    secrets = seed(env, plan(args.users, 20)) if args.users else {}
    users = list(secrets)
    port, report = free_port(), workdir / "report.txt"
    cmd = [PY, "-m", "bench.memory", "serve", str(report), *DAPHNE_OPTIONS,
           "-b", "127.0.0.1", "-p", str(port), "broadcast_site.asgi:application"]  # fmt: skip
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load = Load(1)
    target = [["127.0.0.1", port, system.path]]
    try:
        wait_port(port, server)
        for n in (20, args.n):
            tokens = [secrets[users[i % len(users)]] for i in range(n)] if users else None
            command = {"cmd": "connect", "n": n, "targets": target, "json": True, "tokens": tokens}
            reply = load.ask_all([command])[0]
            if reply["connected"] != n:
                sys.exit(f"only {reply['connected']} of {n} receivers connected")
            server.send_signal(signal.SIGUSR1)
            time.sleep(1)  # (the first snapshot must be taken before the next receivers come)
        deadline = time.monotonic() + 600
        while not report.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        total, *rows = report.read_text().splitlines()
        print(f"Python heap per receiver connection: {int(total) / args.n / 1024:.1f} KB (tracemalloc, "
              f"{args.n} receivers); the largest allocation sites, per connection:")  # fmt: skip
        for row in rows:
            size, count, where = row.split("\t")
            print(f"  {int(size) / args.n:7.0f} B  {int(count) / args.n:4.1f} objects  {where}")
    finally:
        load.quit()
        server.kill()
        server.wait()
        redis_proc.kill()
        redis_proc.wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(Path(sys.argv[2]))
    else:
        main()
