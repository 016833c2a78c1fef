"""`make bench`'s audience scenario, end to end: targeted broadcasts over real sockets.

One daphne process, one redis-server, 5,000 raw WebSocket receivers from the load processes
(`bench/load.py`): 4,500 signed in with receiver tokens of 500 users (9 tabs each), in 20
groups (each user in 1-3), and 500 anonymous. Three console publishers (`manage.py broadcast`,
with `--audience group:g3` and `--audience user:u42`) send single messages in turn, and for
each audience it measures:

- time to all: from writing the line to the publisher until the last of the audience's
  receivers has it (p50/p99 over the samples), next to everyone's;
- server CPU per broadcast (ms), over the same samples;
- the first broadcast's time to all, right after the connect storm (handshakes are answered
  before a credential is worked out: a receiver is in the fan-out once it is);
- wrong / lost / duplicated: (receiver, message) pairs that reached a receiver the message was
  not for, never reached one it was for, or reached it twice. Any of them fails the run.

And the memory: KB per connection of the same 5,000 receivers all anonymous (a fresh server)
and with these memberships, the difference being what identity and membership cost a
receiver, with connects/s for both (a signed-in handshake reads its token once per user).

    python -m bench.targeted [--receivers 5000] [--users 500] [--groups 20] [--samples 20] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.run import PY, ROOT, Load, Project, line, raise_open_files, start_redis

EVERYONE = "everyone"


def plan(users: int, groups: int, seed: int = 7) -> dict[str, list[str]]:
    """Each user's groups: user u<i> in 1-3 of g0..g<groups-1> (bench.audiences' world)."""
    rng = random.Random(seed)
    names = [f"g{i}" for i in range(groups)]
    return {f"u{u}": rng.sample(names, rng.randint(1, 3)) for u in range(users)}


def seed_database(memberships: dict[str, list[str]]) -> dict[str, str]:
    """Creates the users, groups and one receiver token per user; returns user -> secret.
    Runs in a child process with the bench's environment (see `main`'s "seed" mode)."""
    from django.contrib.auth.models import Group, User

    from broadcaster.models import ReceiverToken

    groups = {g: Group.objects.create(name=g) for g in sorted({g for gs in memberships.values() for g in gs})}
    users = User.objects.bulk_create([User(username=name) for name in memberships])
    through = User.groups.through
    through.objects.bulk_create(
        [through(user_id=u.pk, group_id=groups[g].pk) for u in users for g in memberships[u.username]]
    )
    secrets, tokens = {}, []
    for u in users:
        token = ReceiverToken(user=u, name="bench")
        secrets[u.username] = token.issue_secret()
        tokens.append(token)
    ReceiverToken.objects.bulk_create(tokens)
    return secrets


def seed(env: dict[str, str], memberships: dict[str, list[str]]) -> dict[str, str]:
    """`seed_database` in a child process with the server's environment (its database)."""
    command = [PY, "-m", "bench.targeted", "seed"]
    done = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True,
                          input=json.dumps(memberships))  # fmt: skip
    return json.loads(done.stdout)


class Targeted(Project):
    """The project with a console publisher per audience."""

    label = "project"

    def __init__(
        self, redis_url: str, workdir: Path, memberships: dict[str, list[str]], audiences: list[str]
    ):
        super().__init__(redis_url, workdir)
        self.memberships = memberships
        self.audiences = audiences
        self.secrets: dict[str, str] = {}
        self.publishers: dict[str, subprocess.Popen[Any]] = {}

    def start(self) -> None:
        subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=self.env(),
                       check=True)  # fmt: skip
        if self.memberships:
            self.secrets = seed(self.env(), self.memberships)
        self.serve()
        for audience in self.audiences:
            flags = [] if audience == EVERYONE else ["--audience", audience]
            self.publishers[audience] = subprocess.Popen([PY, "manage.py", "broadcast", *flags], cwd=ROOT,
                                                         env=self.env(), stdin=subprocess.PIPE,
                                                         stdout=subprocess.DEVNULL)  # fmt: skip

    def send(self, audience: str, text: str) -> None:
        stdin = self.publishers[audience].stdin
        assert stdin is not None
        stdin.write((text + "\n").encode())
        stdin.flush()

    def stop(self) -> None:
        for proc in self.publishers.values():
            proc.kill()
            proc.wait(timeout=30)
        super().stop()


@dataclass
class Row:
    audience: str
    receivers: int  # connected receivers the audience holds
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_ms: float = 0.0  # server CPU per broadcast, median
    times_ms: list[float] = field(default_factory=list)


@dataclass
class Outcome:
    receivers: int
    users: int
    groups: int
    anonymous_kb_per_conn: float = 0.0
    anonymous_connects_per_s: float = 0.0
    kb_per_conn: float = 0.0
    connects_per_s: float = 0.0
    # From the first broadcast's write until every receiver had it, right after the connect
    # storm: a signed-in receiver is in the fan-out once its credential is worked out.
    first_ms: float = 0.0
    rows: list[Row] = field(default_factory=list)
    wrong: int = 0
    lost: int = 0
    duplicated: int = 0
    connected: int = 0
    notes: list[str] = field(default_factory=list)


def population(n: int, memberships: dict[str, list[str]]) -> list[str]:
    """Each receiver's user (its label), "" for the anonymous tenth."""
    users = list(memberships)
    signed_in = n - n // 10 if users else 0
    return [users[i % len(users)] for i in range(signed_in)] + [""] * (n - signed_in)


def addressed_to(audience: str, labels: list[str], memberships: dict[str, list[str]]) -> set[str] | None:
    """The labels an audience holds (None: every receiver)."""
    if audience == EVERYONE:
        return None
    kind, _, value = audience.partition(":")
    if kind == "user":
        return {value}
    return {user for user in set(labels) if value in memberships.get(user, ())}


def connect(system: Targeted, load: Load, labels: list[str]) -> tuple[int, float]:
    """Opens a receiver per label, split over the load processes; (connected, connects/s)."""
    loaders = len(load.procs)
    targets = [["127.0.0.1", port, system.path] for port in system.ports]
    commands = []
    for i in range(loaders):
        mine = labels[i::loaders]
        commands.append({"cmd": "connect", "n": len(mine), "targets": targets, "json": True, "labels": mine,
                         "tokens": [system.secrets.get(label) for label in mine]})  # fmt: skip
    replies = load.ask_all(commands)
    connected = sum(r["connected"] for r in replies)
    return connected, connected / max(r["elapsed"] for r in replies)


def measure(args: argparse.Namespace, redis_url: str, workdir: Path) -> Outcome:
    memberships = plan(args.users, args.groups)
    audiences = [EVERYONE, f"group:g{3 % args.groups}", f"user:u{42 % args.users}"]
    labels = population(args.receivers, memberships)
    out = Outcome(receivers=args.receivers, users=args.users, groups=args.groups)

    # The same receivers, all anonymous, on a fresh server: the memory baseline.
    baseline = Targeted(redis_url, workdir / "anonymous", {}, [EVERYONE])
    load = Load(args.loaders)
    try:
        baseline.workdir.mkdir()
        baseline.start()
        before = baseline.rss()
        connected, out.anonymous_connects_per_s = connect(baseline, load, [""] * args.receivers)
        baseline.send(EVERYONE, line(0))
        load.wait([0], connected, timeout=60)
        out.anonymous_kb_per_conn = (baseline.rss() - before) / 1024 / max(connected, 1)
        load.ask({"cmd": "close"})
    finally:
        load.quit()
        baseline.stop()
    subprocess.run([PY, "-c", "import redis,sys; redis.Redis.from_url(sys.argv[1]).flushall()", redis_url],
                   check=True)  # fmt: skip

    system = Targeted(redis_url, workdir / "targeted", memberships, audiences)
    load = Load(args.loaders)
    try:
        system.workdir.mkdir()
        system.start()
        before = system.rss()
        out.connected, out.connects_per_s = connect(system, load, labels)
        if out.connected < args.receivers:
            raise RuntimeError(f"only {out.connected} of {args.receivers} receivers connected")
        for_audience = {a: addressed_to(a, labels, memberships) for a in audiences}
        reach = {a: sum(1 for x in labels if s is None or x in s) for a, s in for_audience.items()}
        rows = {a: Row(audience=a, receivers=reach[a]) for a in audiences}
        addressed: dict[int, list[str]] = {}
        k = 0
        cpu: dict[str, list[float]] = {a: [] for a in audiences}
        for sample in range(args.samples + 1):  # the first round is the warm-up
            for audience in audiences:
                members = for_audience[audience]
                if members is not None:
                    addressed[k] = sorted(members)
                cpu_before, sent = system.cpu(), time.time()
                system.send(audience, line(k))
                counts, last = load.wait([k], reach[audience], timeout=60)
                if counts.get(k, 0) < reach[audience]:
                    raise RuntimeError(f"{audience}: {counts.get(k, 0)} of {reach[audience]} got message {k}")
                if sample:
                    rows[audience].times_ms.append(round((last[k] - sent) * 1000, 1))
                    cpu[audience].append((system.cpu() - cpu_before) * 1000)
                if sample == 0 and audience == EVERYONE:
                    out.first_ms = (last[k] - sent) * 1000
                    out.kb_per_conn = (system.rss() - before) / 1024 / out.connected
                k += 1
        # A receiver's late extra copy, or a copy that was not for it, is still on its way:
        # one more everyone-message after everything, and the audit counts once it is in.
        system.send(EVERYONE, line(k))
        load.wait([k], out.connected, timeout=60)
        audits = load.ask({"cmd": "audit", "keys": list(range(k + 1)), "addressed": addressed})
        out.wrong = sum(a["wrong"] for a in audits)
        out.lost = sum(a["lost"] for a in audits)
        out.duplicated = sum(a["duplicated"] for a in audits)
        for audience, row in rows.items():
            times = row.times_ms
            row.p50_ms = statistics.median(times)
            row.p99_ms = (
                statistics.quantiles(times, n=100, method="inclusive")[98] if len(times) > 1 else times[0]
            )
            row.cpu_ms = statistics.median(cpu[audience])
            out.rows.append(row)
        load.ask({"cmd": "close"})
        out.notes = system.log_notes()
    finally:
        load.quit()
        system.stop()
    return out


def report(out: Outcome) -> None:
    anonymous = out.receivers // 10
    print(f"{out.receivers} receivers ({out.receivers - anonymous} signed in with receiver tokens of "
          f"{out.users} users, in {out.groups} groups; {anonymous} anonymous), one daphne")  # fmt: skip
    print(f"{'audience':<10} {'receivers':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs everyone':>12} {'CPU ms':>7}")
    base = out.rows[0]
    for r in out.rows:
        print(f"{r.audience:<10} {r.receivers:>9} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} "
              f"{r.p50_ms / base.p50_ms:>11.2f}x {r.cpu_ms:>7.1f}")  # fmt: skip
    extra = out.kb_per_conn - out.anonymous_kb_per_conn
    print(f"memory: {out.anonymous_kb_per_conn:.1f} KB/conn all anonymous, {out.kb_per_conn:.1f} with these "
          f"memberships ({extra:+.1f} KB per receiver); connects/s {out.anonymous_connects_per_s:,.0f} "
          f"anonymous, {out.connects_per_s:,.0f} signed in")  # fmt: skip
    print(f"first broadcast after the connect storm reached all {out.connected} in {out.first_ms:,.0f} ms "
          "(each user's credential worked out once; not in the percentiles above)")  # fmt: skip
    print(f"wrong {out.wrong}, lost {out.lost}, duplicated {out.duplicated}")
    for note in out.notes:
        print(f"note: {note}")


def main() -> int:
    if sys.argv[1:] == ["seed"]:  # the child process of Targeted.start
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "broadcast_site.settings")
        import django

        django.setup()
        print(json.dumps(seed_database(json.loads(sys.stdin.read()))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receivers", type=int, default=5000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--samples", type=int, default=20, help="single messages per audience")
    parser.add_argument("--loaders", type=int, default=2, help="load-generator processes")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    raise_open_files()
    workdir = Path(tempfile.mkdtemp(prefix="bench-targeted-"))
    redis_proc, redis_url = start_redis(workdir)
    try:
        out = measure(args, redis_url, workdir)
    finally:
        redis_proc.kill()
        redis_proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    report(out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(out), indent=2))
    if out.wrong or out.lost or out.duplicated:
        print("FAILED: a broadcast reached a receiver it was not for, or missed or doubled one")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
