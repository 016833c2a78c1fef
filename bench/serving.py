"""`WORKERS=N` as `make serve` runs it (deploy/serve.sh under supervisord), on a Redis and a
database of its own, for the benchmarks that measure the production shape (bench.drain,
bench.hostile)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bench.run import free_port, start_redis, wait_port

ROOT = Path(__file__).resolve().parent.parent


def scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        body = resp.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            key = sample.name + (f":{sample.labels['pid']}" if "pid" in sample.labels else "")
            samples[key] = sample.value
    return samples


async def until(predicate, *, timeout: float, what: str, poll: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await asyncio.to_thread(predicate):
                return
        except OSError:
            pass
        await asyncio.sleep(poll)
    raise SystemExit(f"timed out after {timeout} s waiting for {what}")


def worker_rss(serve_pid: int) -> int:
    """Resident memory of the daphne workers under `serve_pid` (supervisord), in bytes."""
    import psutil

    workers = [
        p for p in psutil.Process(serve_pid).children(recursive=True) if "daphne" in " ".join(p.cmdline()[:2])
    ]
    return sum(p.memory_info().rss for p in workers)


@dataclass(frozen=True)
class Served:
    port: int
    # supervisord (its process group holds the workers).
    proc: subprocess.Popen[bytes]
    # The servers' environment, for a publisher of the same project (manage.py broadcast).
    env: dict[str, str]


@contextlib.asynccontextmanager
async def serving(*, workers: int = 2, name: str, **settings: str) -> AsyncIterator[Served]:
    """Start `workers` workers with these BROADCAST_* (or other) settings; stop all at the end."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of clients in this process
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    redis_proc, redis_url = start_redis(workdir)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "BROADCAST_", "PROMETHEUS_"))}
    env.update(REDIS_URL=redis_url, BROADCAST_VAR_DIR=str(workdir / "var"), BROADCAST_DOTENV="",
               DATABASE_URL=f"sqlite:///{workdir}/db.sqlite3", DJANGO_SECRET_KEY="bench-" + "x" * 50,
               BROADCAST_LOG_LEVEL="WARNING", WORKERS=str(workers), HOST="127.0.0.1", PORT=str(port),
               BIN=str(Path(sys.executable).parent), RUN_DIR=str(workdir / "run"), **settings)  # fmt: skip
    migrate = [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"]
    subprocess.run(migrate, cwd=ROOT, env=env, check=True)
    log = open(workdir / "serve.log", "wb")  # noqa: SIM115 - for the server's whole life
    serve = subprocess.Popen([str(ROOT / "deploy" / "serve.sh")], cwd=ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_port(port, serve, timeout=60)
        await until(lambda: "broadcaster_connections" in scrape(port), timeout=30, what="metrics")
        yield Served(port=port, proc=serve, env=env)
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
        log.close()
        redis_proc.kill()
        redis_proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
