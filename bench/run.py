"""`make bench`: the project's fan-out against the baselines, on this machine, in one run.

For each N it starts each system fresh (server processes + one redis-server), opens N raw
WebSocket clients from several load processes (`bench/load.py`), publishes through each
system's own publish path (for the project: `manage.py broadcast`, the console command),
and measures:

- connects/s: N over the time for all N handshakes to complete;
- KB per connection: growth of the server processes' summed RSS, over N;
- time to all: from writing one line to the publisher until the last of N clients has it
  (p50/p99 over several single messages);
- deliveries/s: a burst of messages of 100 bytes, N x burst deliveries over the time from the
  write to the last arrival;
- server CPU per delivery: the server processes' user+system CPU during the burst, per delivery;
- lost / duplicated: (client, message) pairs that never arrived (the wait gives up after a
  generous deadline) or arrived more than once, per client, over every message of the run;
- corrupt: frames that failed the load client's checks (bench/load.py), never counted as delivered.

Any lost, duplicated or corrupt delivery fails the run (exit 1).

Usage: python -m bench.run [--n 1000,5000,10000,20000] [--quick] [--json PATH] [--plot PATH] [--profile DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from broadcaster import protocol

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MESSAGE_BYTES = 100
NODE_WS = ROOT / "bench" / "baselines" / "node_ws"
# Every daphne of the bench: pings off (the load clients do not answer them), access log off.
DAPHNE_OPTIONS = ["-v", "0", "--ping-interval", "3600", "--ping-timeout", "3600"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def wait_accepting(port: int, procs: list[subprocess.Popen[Any]], timeout: float = 60) -> None:
    """Until every worker sharing `port` (SO_REUSEPORT) answers: 20 requests in a row, each on a
    new connection that the kernel gives to any worker, answered within a second each."""
    deadline, streak = time.monotonic() + timeout, 0
    while streak < 20:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers on {port} do not all answer after {timeout} s")
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError("a worker exited")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready/", timeout=1) as resp:
                streak = streak + 1 if resp.status == 200 else 0
        except OSError:
            streak = 0
            time.sleep(0.05)


def task_cpu(pid: int) -> float:
    """CPU seconds of every thread of `pid`, from /proc/<pid>/task/*/schedstat (ns resolution)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def line(k: int) -> str:
    head = f"L{k}|"
    return head + "x" * (MESSAGE_BYTES - len(head))


@dataclass
class Result:
    system: str
    n: int
    connected: int = 0
    connects_per_s: float = 0.0
    kb_per_conn: float = 0.0
    deliveries_per_s: float = 0.0
    cpu_us_per_delivery: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    # One message at a time: N over its p50 time to all (beside the burst's deliveries/s,
    # which batching inflates).
    single_per_s: float = 0.0
    # Per client and message, over every message of the run (warm-up, samples, burst).
    lost: int = 0
    duplicated: int = 0
    corrupt: int = 0
    load_cpu_share: float = 0.0  # busiest load process's CPU use during the burst, of one core
    # The server processes' CPU time per single message (all threads), in ms.
    single_cpu_ms: float = 0.0
    times_ms: list[float] = field(default_factory=list)  # each single message's time to all, in order
    notes: list[str] = field(default_factory=list)


class System:
    """One server design under test: how to start it, where clients go, how to publish."""

    label = ""  # its name in the table
    json_frames = False  # its message frames are JSON holding the line (else the line alone)
    max_n = 10**9  # larger N are skipped (with a note)
    workers = 1  # server processes sharing the clients
    profiled = False  # --profile records its server processes

    def __init__(self, redis_url: str, workdir: Path) -> None:
        self.name = self.label
        self.redis_url = redis_url
        self.workdir = workdir
        self.servers: list[subprocess.Popen[Any]] = []
        self.ports: list[int] = []
        self.publisher: subprocess.Popen[Any] | None = None
        self.path = protocol.RECEIVER_PATH
        self.logs: list[Path] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "BROADCAST_"))}
        env.update(
            REDIS_URL=self.redis_url,
            DJANGO_DEBUG="0",
            DJANGO_SECRET_KEY="bench-" + "k" * 50,
            BROADCAST_VAR_DIR=str(self.workdir),
            BROADCAST_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def daphne(self, app: str, env: dict[str, str]) -> None:
        port = free_port()
        endpoint = f"tcp:port={port}:interface=127.0.0.1:backlog=4096"
        cmd = [PY, "-m", "daphne", *DAPHNE_OPTIONS, "-e", endpoint, app]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.log())
        self.servers.append(proc)
        wait_port(port, proc)
        self.ports.append(port)

    def start(self) -> None:
        raise NotImplementedError

    def log(self) -> Any:
        """A new file for one server process's log (warnings only, as set in env())."""
        path = self.workdir / f"server-{len(self.logs)}.log"
        self.logs.append(path)
        return path.open("wb")

    def log_notes(self) -> list[str]:
        """What the servers' logs say about pauses (full garbage collections)."""
        pauses = [
            float(m.group(1))
            for path in self.logs
            for m in re.finditer(r"garbage collection paused the server for (\d+) ms", path.read_text())
        ]
        if not pauses:
            return []
        return [f"{len(pauses)} full garbage collections over 50 ms (longest {max(pauses):.0f} ms)"]

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this system cannot run on this machine, or None."""
        return None

    def publish(self, lines: list[str]) -> None:
        assert self.publisher is not None and self.publisher.stdin is not None
        self.publisher.stdin.write(("\n".join(lines) + "\n").encode())
        self.publisher.stdin.flush()

    def stop(self) -> None:
        procs = [*self.servers, *([self.publisher] if self.publisher else [])]
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            proc.wait(timeout=30)

    def cpu(self) -> float:
        """CPU seconds used by the server processes, all threads, at nanosecond resolution."""
        return sum(task_cpu(proc.pid) for proc in self.servers)

    def rss(self) -> int:
        return sum(psutil.Process(p.pid).memory_info().rss for p in self.servers)


class Project(System):
    label = "project"
    json_frames = True
    profiled = True

    def start(self) -> None:
        # The console records each broadcast in the log: it needs a migrated database.
        subprocess.run(
            [PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=self.env(), check=True
        )
        self.serve()
        self.publisher = subprocess.Popen(
            [PY, "manage.py", "broadcast"],
            cwd=ROOT,
            env=self.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )

    def serve(self) -> None:
        self.daphne("broadcast_site.asgi:application", self.env())


class ProjectWorkers(Project):
    """`make serve` with WORKERS=2: per worker, the command deploy/supervisord.conf runs (bind
    the port with SO_REUSEPORT, exec daphne on it), here without supervisord around them."""

    label = "project (WORKERS=2)"
    workers = 2

    def serve(self) -> None:
        port = free_port()
        metrics = self.workdir / "metrics"
        shutil.rmtree(metrics, ignore_errors=True)
        metrics.mkdir()
        env = self.env(PROMETHEUS_MULTIPROC_DIR=str(metrics))
        daphne = str(Path(PY).parent / "daphne")
        for _ in range(self.workers):
            cmd = [PY, "-m", "broadcaster.server.reuseport", "127.0.0.1", str(port), daphne, *DAPHNE_OPTIONS,
                   "--websocket_timeout", "-1", "broadcast_site.asgi:application"]  # fmt: skip
            self.servers.append(
                subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.log())
            )
        wait_port(port, self.servers[0])
        wait_accepting(port, self.servers)
        self.ports.append(port)


class Tutorial(System):
    label = "channels tutorial (RedisPubSubChannelLayer)"
    max_n = 10_000  # about 10 s per message at 20,000: 50 samples would take most of the run

    def start(self) -> None:
        env = self.env(DJANGO_SETTINGS_MODULE="bench.baselines.tutorial_settings")
        self.path = "/ws/chat/"
        self.daphne("bench.baselines.channels_tutorial:application", env)
        self.publisher = subprocess.Popen(
            [PY, "-m", "bench.baselines.channels_tutorial"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )


class Original(System):
    label = "original (gather)"
    mode = "gather"

    def start(self) -> None:
        self.console_server(lambda port: [PY, "-m", "bench.baselines.original", "--port", str(port),
                                          "--mode", self.mode], cwd=ROOT)  # fmt: skip

    def console_server(self, command: Any, *, cwd: Path) -> None:
        """Start the server `command(port)` that reads its own console (the publisher)."""
        port = free_port()
        self.path = "/"
        proc = subprocess.Popen(command(port), cwd=cwd, env=self.env(), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL)  # fmt: skip
        self.servers.append(proc)
        wait_port(port, proc)
        self.ports.append(port)

    def publish(self, lines: list[str]) -> None:
        # The original reads its own console: the server process is the publisher.
        stdin = self.servers[0].stdin
        assert stdin is not None
        stdin.write(("\n".join(lines) + "\n").encode())
        stdin.flush()


class Broadcast(Original):
    label = "websockets.broadcast()"
    profiled = True
    mode = "broadcast"


class NodeWs(Original):
    """Node.js with the `ws` package (bench/baselines/node_ws), installed there by npm on first use."""

    label = "node ws"

    def start(self) -> None:
        self.console_server(lambda port: ["node", str(NODE_WS / "server.js"), str(port)], cwd=NODE_WS)

    @classmethod
    def unavailable(cls) -> str | None:
        """Why it cannot run here (after installing `ws` if needed), or None."""
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            return "node and npm are not on PATH"
        wanted = json.loads((NODE_WS / "package.json").read_text())["dependencies"]["ws"]
        installed = NODE_WS / "node_modules" / "ws" / "package.json"
        if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
            cmd = [npm, "install", "--no-package-lock", "--no-audit", "--no-fund", "--omit=optional"]
            done = subprocess.run(cmd, cwd=NODE_WS, capture_output=True, text=True)
            if done.returncode:
                return f"npm install failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
        return None


SYSTEMS: dict[str, type[System]] = {
    "project": Project,
    "workers": ProjectWorkers,
    "gather": Original,
    "broadcast": Broadcast,
    "node": NodeWs,
    "tutorial": Tutorial,
}


class Load:
    """The load-generator processes."""

    def __init__(self, count: int) -> None:
        self.procs = [
            subprocess.Popen(
                [PY, "-m", "bench.load"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            for _ in range(count)
        ]

    def ask_all(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for proc, cmd in zip(self.procs, commands, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(cmd) + "\n")
            proc.stdin.flush()
        replies = []
        for proc in self.procs:
            assert proc.stdout is not None
            replies.append(json.loads(proc.stdout.readline()))
        return replies

    def ask(self, cmd: dict[str, Any]) -> list[dict[str, Any]]:
        return self.ask_all([cmd] * len(self.procs))

    def delivered(self, keys: list[int]) -> tuple[dict[int, int], dict[int, float], float]:
        counts: dict[int, int] = {}
        last: dict[int, float] = {}
        cpu = 0.0
        for reply in self.ask({"cmd": "stats"}):
            cpu = max(cpu, reply["cpu"])
            for k in keys:
                counts[k] = counts.get(k, 0) + reply["counts"].get(str(k), 0)
                if str(k) in reply["last"]:
                    last[k] = max(last.get(k, 0.0), reply["last"][str(k)])
        return counts, last, cpu

    def cpu_each(self) -> list[float]:
        return [r["cpu"] for r in self.ask({"cmd": "stats"})]

    def wait(self, keys: list[int], expected: int, timeout: float) -> tuple[dict[int, int], dict[int, float]]:
        deadline = time.monotonic() + timeout
        while True:
            counts, last, _ = self.delivered(keys)
            if all(counts.get(k, 0) >= expected for k in keys) or time.monotonic() > deadline:
                return counts, last
            time.sleep(0.02)

    def quit(self) -> None:
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                proc.stdin.flush()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def measure(
    system: System, n: int, *, loaders: int, burst: int, samples: int, profile: Path | None = None
) -> Result:
    result = Result(system=system.name, n=n)
    load = Load(loaders)

    def phase(name: str) -> contextlib.AbstractContextManager[Any]:
        """Records the servers with py-spy during the phase `name`, with --profile."""
        if profile is None or not system.profiled:
            return contextlib.nullcontext()
        slug = re.sub(r"[^a-z0-9]+", "-", system.name.lower()).strip("-")
        return profiled(system, profile / f"{slug}-{n}-{name}")

    try:
        # Inside the try: servers already started are stopped if a later one fails to start.
        system.start()
        rss_before = system.rss()
        share = [n // loaders + (1 if i < n % loaders else 0) for i in range(loaders)]
        targets = [["127.0.0.1", port, system.path] for port in system.ports]
        with phase("connect"):
            replies = load.ask_all(
                [{"cmd": "connect", "n": k, "targets": targets, "json": system.json_frames} for k in share]
            )
        result.connected = sum(r["connected"] for r in replies)
        result.connects_per_s = result.connected / max(r["elapsed"] for r in replies)
        if result.connected < n:
            result.notes.append(f"only {result.connected} of {n} connected")
        k = 0
        # Warm-up: every system has every client in its group before anything is measured.
        system.publish([line(k)])
        load.wait([k], result.connected, timeout=60)
        result.kb_per_conn = (system.rss() - rss_before) / 1024 / max(result.connected, 1)

        times = []
        single_cpu_before = system.cpu()
        with phase("single"):
            for _ in range(samples):
                k += 1
                sent = time.time()
                system.publish([line(k)])
                counts, last = load.wait([k], result.connected, timeout=60)
                if result.connected and counts.get(k, 0) >= result.connected:
                    times.append((last[k] - sent) * 1000)
        result.single_cpu_ms = (system.cpu() - single_cpu_before) * 1000 / max(samples, 1)
        result.times_ms = [round(t, 1) for t in times]
        if times:
            slowest = sorted(range(len(times)), key=times.__getitem__)[-3:]
            result.notes.append("slowest single messages (#: ms): " + ", ".join(
                f"#{i + 1}: {times[i]:.0f}" for i in reversed(slowest)))  # fmt: skip
            result.p50_ms = statistics.median(times)
            result.p99_ms = (
                statistics.quantiles(times, n=100, method="inclusive")[98] if len(times) > 1 else times[0]
            )
            result.single_per_s = result.connected / (result.p50_ms / 1000) if result.p50_ms > 0 else 0.0

        keys = list(range(k + 1, k + 1 + burst))
        cpu_before, load_cpu_before = system.cpu(), load.cpu_each()
        sent = time.time()
        system.publish([line(i) for i in keys])
        # Generous: a slow system is slow, not lossy (2x its own single-message time per message).
        deadline = 30 + n * burst / 2000 + 2 * burst * result.p50_ms / 1000
        counts, last = load.wait(keys, result.connected, timeout=deadline)
        cpu_after, load_cpu_after = system.cpu(), load.cpu_each()
        delivered = sum(min(counts.get(i, 0), result.connected) for i in keys)
        elapsed = max(last.values(), default=sent) - sent
        audits = load.ask({"cmd": "audit", "keys": list(range(keys[-1] + 1 if keys else k + 1))})
        result.lost = sum(a["lost"] for a in audits)
        result.duplicated = sum(a["duplicated"] for a in audits)
        result.corrupt = sum(r["corrupt"] for r in load.ask({"cmd": "stats"}))
        if result.lost or result.duplicated:
            result.notes.append(
                f"{sum(a['clients_short'] for a in audits)} clients missed messages, "
                f"{sum(a['clients_doubled'] for a in audits)} got some twice"
            )
        result.deliveries_per_s = delivered / elapsed if elapsed > 0 else 0.0
        result.cpu_us_per_delivery = (cpu_after - cpu_before) * 1e6 / max(delivered, 1)
        result.load_cpu_share = (
            max((a - b) / elapsed for a, b in zip(load_cpu_after, load_cpu_before, strict=True))
            if elapsed > 0
            else 0.0
        )
        load.ask({"cmd": "close"})
        result.notes += system.log_notes()
    finally:
        load.quit()
        system.stop()
    return result


@contextlib.contextmanager
def profiled(system: System, stem: Path) -> Any:
    from bench.profiles import recording, summarize

    with recording([proc.pid for proc in system.servers], stem) as paths:
        yield
    stem.with_name(stem.name + ".summary.txt").write_text(summarize(paths))


def print_table(results: list[Result]) -> None:
    cols = [
        "system",
        "N",
        "connects/s",
        "KB/conn",
        "deliveries/s",
        "single/s",
        "CPU us/deliv",
        "p50 ms",
        "p99 ms",
        "CPU ms/msg",
        "lost",
        "dup",
        "load CPU",
    ]
    rows = [
        [
            r.system,
            str(r.n),
            f"{r.connects_per_s:,.0f}",
            f"{r.kb_per_conn:.1f}",
            f"{r.deliveries_per_s:,.0f}",
            f"{r.single_per_s:,.0f}",
            f"{r.cpu_us_per_delivery:.1f}",
            f"{r.p50_ms:.1f}",
            f"{r.p99_ms:.1f}",
            f"{r.single_cpu_ms:.1f}",
            str(r.lost),
            str(r.duplicated),
            f"{r.load_cpu_share:.0%}",
        ]
        for r in results
    ]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    print(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths, strict=True)))
    )
    for row in rows:
        print(
            "  ".join(
                v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    for r in results:
        if r.notes:
            print(f"  note ({r.system}, N={r.n}): {'; '.join(r.notes)}")


def print_ratios(results: list[Result]) -> None:
    """Each project row against each baseline of the same N."""
    ours = [r for r in results if r.system.startswith("project")]
    for project in ours:
        for base in results:
            if base in ours:
                continue
            parts = [
                f"deliveries/s {project.deliveries_per_s / base.deliveries_per_s:.2f}x"
                if base.deliveries_per_s
                else "",
                f"CPU/delivery {project.cpu_us_per_delivery / base.cpu_us_per_delivery:.2f}x"
                if base.cpu_us_per_delivery
                else "",
                f"time to all (p50) {project.p50_ms / base.p50_ms:.2f}x" if base.p50_ms else "",
                f"KB/conn {project.kb_per_conn / base.kb_per_conn:.2f}x" if base.kb_per_conn > 0 else "",
                f"connects/s {project.connects_per_s / base.connects_per_s:.2f}x"
                if base.connects_per_s
                else "",
            ]
            print(f"  {project.system} / {base.system}: " + ", ".join(p for p in parts if p))


@dataclass(frozen=True)
class Check:
    """One target (docs/PERFORMANCE.md, fan-out round 3) against one run's value."""

    what: str
    value: float
    op: str  # "<=" or ">="
    bound: float

    @property
    def met(self) -> bool:
        return self.value <= self.bound if self.op == "<=" else self.value >= self.bound


def targets(results: list[Result]) -> list[Check]:
    """The fan-out targets a run's results can be held to (those whose systems and N it ran)."""
    rows = {(r.system, r.n): r for r in results}
    one, peer, node = Project.label, Broadcast.label, NodeWs.label
    checks: list[Check] = []
    for n in sorted({r.n for r in results}):
        a, w, js = rows.get((one, n)), rows.get((peer, n)), rows.get((node, n))
        if a and n >= 5_000:
            for base, bound in ((w, 0.9), (js, 1.0)):
                if base and base.p50_ms:
                    checks.append(Check(f"N={n}: time to all p50, 1 worker / {base.system}",
                                        a.p50_ms / base.p50_ms, "<=", bound))  # fmt: skip
        if a and a.p50_ms:
            checks.append(Check(f"N={n}: p99 / p50, {one}", a.p99_ms / a.p50_ms, "<=", 1.3))
        if a and n == 10_000:
            checks.append(Check(f"N={n}: KB per connection, 1 worker", a.kb_per_conn, "<=", 16.0))
        if a and w and w.deliveries_per_s:
            ratio = a.deliveries_per_s / w.deliveries_per_s
            checks.append(Check(f"N={n}: burst deliveries/s, {one} / {peer}", ratio, ">=", 3.0))
    return checks


def print_targets(checks: list[Check], *, heading: str = "targets") -> None:
    """Each target with its measured value and met / MISSED."""
    if not checks:
        return
    print(f"\n{heading}:")
    for c in checks:
        print(f"  {'met   ' if c.met else 'MISSED'}  {c.what}: {c.value:.2f} (target {c.op} {c.bound:g})")


def print_repeats(runs: list[list[Check]]) -> None:
    """Every target over the runs of --repeat: its value in each, met only if met in all."""
    print(f"\ntargets over {len(runs)} runs (each must meet it):")
    for i, first in enumerate(runs[0]):
        values = [run[i] for run in runs if i < len(run) and run[i].what == first.what]
        met = len(values) == len(runs) and all(c.met for c in values)
        shown = " / ".join(f"{c.value:.2f}" for c in values)
        print(f"  {'met   ' if met else 'MISSED'}  {first.what}: {shown} (target {first.op} {first.bound:g})")


def raise_open_files(want: int = 65_536) -> int:
    """Open-file limit up to `want` (root may raise the hard limit; others get their hard
    limit): a single-process server at N = 20,000 holds more sockets than a default 20,000."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, hard), max(want, hard)))
        return max(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def start_redis(workdir: Path) -> tuple[subprocess.Popen[Any], str]:
    from broadcaster.backend.embedded_redis import server_binary

    port = free_port()
    proc = subprocess.Popen(
        [
            server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="1000,5000,10000,20000", help="comma-separated client counts")
    parser.add_argument("--quick", action="store_true", help="small N and short runs (the test suite's mode)")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma-separated subset of: " + ", ".join(f"{k} ({cls.label})" for k, cls in SYSTEMS.items()),
    )
    parser.add_argument("--loaders", type=int, default=2, help="load-generator processes")
    parser.add_argument("--burst", type=int, default=20, help="messages in the burst")
    parser.add_argument(
        "--samples", type=int, default=50, help="single messages for the time-to-all percentiles"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="whole runs in a row; above 1, every target must be met in each"
    )
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument(
        "--plot", type=Path, help="write a PNG of time to all and deliveries/s against N (needs matplotlib)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="record the servers of the project and websockets.broadcast() with py-spy here (bench/profiles)",
    )
    args = parser.parse_args()
    unknown = set(args.systems.split(",")) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.quick:
        args.n, args.burst, args.samples = "200", 5, 3

    hard = raise_open_files()
    ns = [int(x) for x in args.n.split(",")]
    print(
        f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"open-file limit {hard}; {args.loaders} load processes; burst {args.burst} x {MESSAGE_BYTES} B; "
        f"{args.samples} single messages for time-to-all"
    )

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    redis_proc, redis_url = start_redis(workdir)
    results: list[Result] = []
    runs: list[list[Check]] = []
    last: list[Result] = []
    try:
        for run in range(args.repeat):
            if args.repeat > 1:
                print(f"\n=== run {run + 1} of {args.repeat} ===")
            batch = measure_all(args, ns, hard=hard, redis_url=redis_url, workdir=workdir)
            runs.append(targets(batch))
            print_targets(runs[-1], heading="targets" if args.repeat == 1 else f"targets, run {run + 1}")
            results.extend(batch)
            last = batch
    finally:
        redis_proc.kill()
        redis_proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.repeat > 1:
        print_repeats(runs)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    if args.plot:
        from bench.plot import plot

        plot(last, args.plot)  # the last run
    failed = [r for r in results if r.lost or r.duplicated or r.corrupt or r.connected < r.n]
    for r in failed:
        print(
            f"FAILED: {r.system} at N={r.n}: {r.connected} connected, {r.lost} lost, "
            f"{r.duplicated} duplicated deliveries, {r.corrupt} corrupt frames"
        )
    # With --repeat, the targets are held to every run (a single run only prints them).
    missed = args.repeat > 1 and any(not c.met for run in runs for c in run)
    if missed:
        print("FAILED: a target was missed in at least one run (above)")
    return 1 if failed or missed else 0


def measure_all(args: argparse.Namespace, ns: list[int], *, hard: int, redis_url: str, workdir: Path
                ) -> list[Result]:  # fmt: skip
    """One run: every N, every system, each on a flushed Redis; prints each N's table."""
    results: list[Result] = []
    for n in ns:
        batch = []
        for key in args.systems.split(","):
            cls = SYSTEMS[key]
            if n > cls.max_n:
                why: str | None = f"skipped above N={cls.max_n:,}"
            elif n // cls.workers + 200 > hard:
                why = f"{n // cls.workers:,} sockets in one process exceed the open-file limit {hard:,}"
            else:
                why = cls.unavailable()
            if why:
                print(f"note: {cls.label} at N={n}: {why}")
                continue
            flush = "import redis,sys; redis.Redis.from_url(sys.argv[1]).flushall()"
            subprocess.run([sys.executable, "-c", flush, redis_url], check=True)
            batch.append(measure(cls(redis_url, workdir), n, loaders=args.loaders, burst=args.burst,
                                 samples=args.samples, profile=args.profile))  # fmt: skip
        print()
        print_table(batch)
        print_ratios(batch)
        sys.stdout.flush()
        results.extend(batch)
    return results


if __name__ == "__main__":
    sys.exit(main())
