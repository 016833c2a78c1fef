"""`WORKERS=2 make serve`: supervisord, two daphne workers on one port, graceful drain.

Real make, supervisord, daphne workers, Redis and WebSocket clients on loopback."""

from __future__ import annotations

import asyncio
import collections
import json
import math
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from broadcaster.sending.publish import publish
from tests.support import (
    ROOT,
    ResumingClient,
    SseClient,
    base_env,
    create_token,
    free_port,
    http_request,
    scrape,
    wait_until,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

DRAIN_SECONDS = 4.0


class Serve:
    """`make serve` in its own session, stopped with SIGTERM like a terminal's Ctrl-C would."""

    def __init__(self, env: dict[str, str], log: Path, port: int) -> None:
        self.port, self.log_path, self.env = port, log, env
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(["make", "-s", "serve"], cwd=ROOT, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def workers(self) -> list[psutil.Process]:
        return [p for p in psutil.Process(self.proc.pid).children(recursive=True)
                if any("daphne" in part for part in p.cmdline()[:2])]  # fmt: skip

    def status(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return 0, {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def serve(tmp_path, redis_url):
    port = free_port()
    env = base_env(redis_url, tmp_path / "var", PORT=str(port), HOST="127.0.0.1", WORKERS="2",
                   BROADCAST_DRAIN_SECONDS=str(DRAIN_SECONDS))  # fmt: skip
    server = Serve(env, tmp_path / "serve.log", port)
    try:
        wait_until(lambda: server.status("/health/ready/")[0] == 200 and len(server.workers()) == 2,
                   timeout=90, what="two ready workers")  # fmt: skip
        yield server
    finally:
        processes = [
            psutil.Process(server.proc.pid),
            *psutil.Process(server.proc.pid).children(recursive=True),
        ]
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=60)
        _, alive = psutil.wait_procs(processes, timeout=30)
        for p in alive:
            p.kill()
        assert not alive, f"left running after SIGTERM to make serve: {alive}\n{server.log()[-3000:]}"


def established(worker: psutil.Process, port: int) -> int:
    return sum(
        1 for c in worker.net_connections(kind="tcp") if c.laddr.port == port and c.status == "ESTABLISHED"
    )


async def test_two_workers_share_the_load_and_one_drains_without_loss(serve):
    """1,000 clients spread over both workers (35-65% each). SIGTERM to one while broadcasts
    flow: its clients get 1012 spread over the drain time, move to the other worker, and every
    client ends with every broadcast exactly once; supervisord starts a fresh worker."""
    n = 1000
    url = f"ws://127.0.0.1:{serve.port}/ws/broadcast/"
    clients = []
    for _ in range(n // 100):
        clients += [ResumingClient(url) for _ in range(100)]
        await asyncio.sleep(0.05)
    try:
        await asyncio.to_thread(wait_until, lambda: serve.status("/health/")[1].get("clients") == n,
                                timeout=60, what=f"{n} clients counted")  # fmt: skip
        workers = serve.workers()
        held = [established(w, serve.port) for w in workers]
        print(f"connections per worker: {held}")
        assert sum(held) == n and all(0.35 * n <= h <= 0.65 * n for h in held), held
        # /metrics, whichever worker answers: host totals and one series per worker.
        for _ in range(4):
            _, samples, _ = scrape(f"http://127.0.0.1:{serve.port}")
            assert samples["broadcaster_connections"] == n
            assert {k: v for k, v in samples.items() if k.startswith("broadcaster_worker_connections")} == {
                f'broadcaster_worker_connections{{pid="{w.pid}"}}': h
                for w, h in zip(workers, held, strict=True)
            }

        sent = [await publish(text="before 0", sender="test")]
        for client in clients:
            deadline = time.monotonic() + 30
            while client.seqs[-1:] != [sent[0].seq] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        samples = scrape(f"http://127.0.0.1:{serve.port}")[1]
        assert samples["broadcaster_deliveries_total"] == n
        assert samples["broadcaster_broadcasts_total"] == 2  # once per worker
        draining, other = workers
        drained_ports = {c.raddr.port for c in draining.net_connections(kind="tcp")
                         if c.laddr.port == serve.port and c.status == "ESTABLISHED"}  # fmt: skip
        started = time.monotonic()
        draining.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        assert serve.status("/health/ready/")[0] in (200, 503)  # either worker may answer
        # Broadcasts keep flowing through the drain.
        for i in range(int(DRAIN_SECONDS * 10) + 10):
            sent.append(await publish(text=f"during {i}", sender="test"))
            await asyncio.sleep(0.1)
        await asyncio.to_thread(
            wait_until, lambda: not draining.is_running() and len(serve.workers()) == 2,
            timeout=60, what="the drained worker replaced")  # fmt: skip
        sent.append(await publish(text="after", sender="test"))
        expected = [s.seq for s in sent]
        for client in clients:
            deadline = time.monotonic() + 30
            while client.seqs[-1:] != expected[-1:] and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        missing = [c for c in clients if c.seqs != expected]
        assert not missing, (
            f"{len(missing)} clients differ, e.g. {missing[0].seqs[:5]}...{missing[0].seqs[-5:]}"
        )

        moved = [c for c in clients if c.ports and c.ports[0] in drained_ports]
        # Each moved client's first close (a reconnect within READY_GRACE may land on the
        # draining worker again and be refused with 1012 once more).
        restart_closes = sorted(c.closes[0][0] - started for c in moved)
        assert len(moved) == held[0] and {c.closes[0][1] for c in moved} == {1012}
        span = restart_closes[-1] - restart_closes[0]
        buckets = collections.Counter(math.floor(t * 10) for t in restart_closes)
        fair = len(restart_closes) / (DRAIN_SECONDS * 10)
        reconnects = collections.Counter(
            math.floor((t - started) * 10) for c in moved for t in c.connects[1:]
        )
        print(
            f"1012 closes: {len(restart_closes)} over {span:.1f} s; peak per 100 ms {max(buckets.values())} "
            f"(even: {fair:.1f}); peak reconnects per 100 ms at the other worker {max(reconnects.values())}"
        )
        # Spread, not at once: closes span the drain time, and no 100 ms holds more than 3x the
        # even share, or 15% of them all (timestamps are taken by 1,000 clients in this one
        # process on a shared 2-core machine: one stall of a few hundred ms bunches a few
        # batches; all at once would be 100%).
        peak_allowed = max(3 * math.ceil(fair), 0.15 * len(restart_closes))
        assert span >= 0.8 * DRAIN_SECONDS and max(buckets.values()) <= peak_allowed, (span, buckets)
        assert other.is_running()
        assert "Drained" in serve.log()
        # The drained worker's connections left the gauges with it; every delivery counted.
        samples = scrape(f"http://127.0.0.1:{serve.port}")[1]
        assert samples["broadcaster_connections"] == n
        # One series per worker holding receivers (the replacement has one once any came to it:
        # under load they may all have gone to the other worker), none for the drained one.
        series = {k: v for k, v in samples.items() if k.startswith("broadcaster_worker_connections")}
        alive = {f'broadcaster_worker_connections{{pid="{w.pid}"}}' for w in serve.workers()}
        assert set(series) <= alive and sum(series.values()) == n, (series, alive)
        assert f'broadcaster_worker_connections{{pid="{draining.pid}"}}' not in series
        # (More only if a write reached a closing socket and was sent again after the resume.)
        await asyncio.to_thread(
            wait_until, lambda: scrape(f"http://127.0.0.1:{serve.port}")[1]["broadcaster_deliveries_total"]
            >= n * len(expected), timeout=10, what="every delivery counted")  # fmt: skip
    finally:
        for client in clients:
            await client.stop()


async def test_metrics_after_a_worker_is_killed(serve):
    """SIGKILL runs no exit hook: the next scrape drops the dead worker's connections, its
    counters stay (host totals never go backwards), and the clients it held are counted again
    where they reconnected."""
    n = 100
    base = f"http://127.0.0.1:{serve.port}"
    clients = [ResumingClient(f"ws://127.0.0.1:{serve.port}/ws/broadcast/") for _ in range(n)]
    try:
        await asyncio.to_thread(wait_until, lambda: scrape(base)[1].get("broadcaster_connections") == n,
                                timeout=60, what=f"{n} connections in /metrics")  # fmt: skip
        sent = await publish(text="before", sender="test")
        for client in clients:
            deadline = time.monotonic() + 30
            while client.seqs[-1:] != [sent.seq] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        await asyncio.to_thread(wait_until, lambda: scrape(base)[1]["broadcaster_deliveries_total"] == n,
                                timeout=10, what="deliveries counted")  # fmt: skip
        # A second serve.sh on the same RUN_DIR refuses (it would empty the running metrics).
        second = subprocess.run([str(ROOT / "deploy" / "serve.sh")], cwd=ROOT, capture_output=True, text=True,
                                env={**serve.env, "RUN_DIR": serve.env["BROADCAST_VAR_DIR"],
                                     "BIN": str(Path(sys.executable).parent)}, timeout=30)  # fmt: skip
        assert second.returncode == 1 and "already running" in second.stderr, second.stderr
        assert scrape(base)[1]["broadcaster_connections"] == n
        workers = serve.workers()
        victim = next(w for w in workers if established(w, serve.port) > 0)
        victim.kill()
        victim.wait(timeout=10)

        def recovered() -> dict[str, float]:
            samples = scrape(base)[1]
            pids = {k for k in samples if k.startswith("broadcaster_worker_connections")}
            dead = f'broadcaster_worker_connections{{pid="{victim.pid}"}}'
            return samples if samples["broadcaster_connections"] == n and dead not in pids else {}

        samples = await asyncio.to_thread(wait_until, recovered, timeout=60, what="the host total healed")
        assert samples["broadcaster_deliveries_total"] >= n
        # The killed worker's counters stay: every handshake is counted, its own included (a
        # handshake counts once its catch-up is out, a moment after the client sees it open).
        reconnected = sum(1 for c in clients if len(c.connects) > 1)
        await asyncio.to_thread(
            wait_until, lambda: scrape(base)[1]["broadcaster_connections_accepted_total"] >= n + reconnected,
            timeout=10, what="every handshake counted")  # fmt: skip
    finally:
        for client in clients:
            await client.stop()


async def test_sse_streams_on_two_workers_count_and_take_acks_from_either(serve):
    """SSE receivers through `make serve` with two workers on one port: each is counted and
    gets the broadcast, and its `seen` ack, posted on a new connection (so to either worker),
    counts once in the reach report, relayed when it lands on the other worker."""
    n = 30
    streams = [await SseClient(f"ws://127.0.0.1:{serve.port}/ws/broadcast/").connect() for _ in range(n)]
    try:
        await asyncio.to_thread(wait_until, lambda: serve.status("/health/")[1].get("clients") == n,
                                timeout=60, what=f"{n} streams counted")  # fmt: skip
        secret = await asyncio.to_thread(create_token, "serve-sse", env=serve.env)
        headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
        posted = await http_request(serve.port, "POST", "/api/broadcasts/", headers=headers,
                                    body=b'{"text": "to the streams"}')  # fmt: skip
        assert posted.status == 201, posted.body
        sent_id = posted.json()["id"]
        for stream in streams:
            await stream.wait_for(
                lambda c: "to the streams" in c.messages(), timeout=15, what="the broadcast"
            )
        answers = collections.Counter(
            [await s.ack(f"http://127.0.0.1:{serve.port}", [sent_id]) for s in streams]
        )
        print(f"ack answers: {dict(answers)}")
        assert set(answers) <= {202, 204} and answers[202] > 0 and answers[204] > 0, answers
        deadline = time.monotonic() + 15
        while (report := (await http_request(serve.port, "GET", f"/api/broadcasts/{sent_id}/",
                                             headers=headers)).json())["seen"] < n:  # fmt: skip
            assert time.monotonic() < deadline, report
        assert (report["delivered"], report["seen"]) == (n, n), report
    finally:
        for stream in streams:
            await stream.close()
