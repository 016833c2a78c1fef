"""The audience scenario: what targeting costs a server process's fan-out, in-process.

5,000 receivers of 500 users (10 tabs each, 4,500 signed in, 500 anonymous), in 20 groups
(each user in 1-3): the hub's fan-out of one broadcast to everyone, to one group and to one
user, through the real `Hub` with receivers whose write is a real bytes copy (no sockets:
this isolates what choosing an audience's receivers costs; docs/PERFORMANCE.md has the
end-to-end numbers for everyone). Also the memory the memberships and the per-audience index
cost per receiver (tracemalloc).

    python -m bench.audiences [--receivers 5000] [--users 500] [--groups 20] [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import tracemalloc


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "broadcast_site.settings")
    os.environ.setdefault("BROADCAST_DOTENV", "")
    import django

    django.setup()


class Receiver:
    """What the hub writes to: keeps the last frame (a real copy, as a socket write would)."""

    def __init__(self, n: int, member_of: frozenset[str]) -> None:
        self.channel_name = f"bench.{n}"
        self.member_of = member_of
        self.credential = None
        self.identity = None
        self.got = 0

    def write(self, message: object, frame: bytes | None, entries: object) -> bool:
        self.got += 1
        return True

    def signed_out(self) -> None:
        pass


def world(receivers: int, users: int, groups: int, seed: int = 7) -> list[frozenset[str]]:
    rng = random.Random(seed)
    names = [f"g{i}" for i in range(groups)]
    per_user = []
    for u in range(users):
        mine = {
            "everyone",
            "authenticated",
            f"user:u{u}",
            *(f"group:{g}" for g in rng.sample(names, rng.randint(1, 3))),
        }
        per_user.append(frozenset(mine))
    from broadcaster import protocol

    signed_in = receivers - receivers // 10
    return [per_user[i % users] for i in range(signed_in)] + [protocol.ANONYMOUS] * (receivers - signed_in)


def joined(hub_class: type, memberships: list[frozenset[str]]) -> tuple[int, object]:
    """A hub with a receiver per memberships, and the bytes the hub allocated for them."""
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    hub = hub_class()
    hub.fast_path = True  # no channel layer here: the hub alone
    # Nor a heartbeat: it would report to Redis (and start the embedded one); not measured here.
    hub.heartbeat.poke = lambda: None
    receivers = [Receiver(i, m) for i, m in enumerate(memberships)]
    for r in receivers:
        hub.add(r)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(
        d.size_diff for d in after.compare_to(before, "filename") if "fanout/hub.py" in str(d.traceback)
    )
    hub.bench_receivers = receivers  # kept alive with the hub
    return grown, hub


async def measure(args: argparse.Namespace) -> None:
    from broadcaster import protocol
    from broadcaster.fanout.hub import Hub
    from broadcaster.history.entry import Entry

    memberships = world(args.receivers, args.users, args.groups)
    anonymous_bytes, _ = joined(Hub, [protocol.ANONYMOUS] * args.receivers)
    index_bytes, hub = joined(Hub, memberships)
    cases = {"everyone": protocol.AUDIENCE_EVERYONE, "group:g3": ("group:g3",), "user:u42": ("user:u42",)}
    rows = []
    for name, audience in cases.items():
        frame = protocol.message_frame(
            seq=1, epoch="e", id="a" * 32, text="x" * 100, time="t", audience=audience
        )
        entry = Entry(seq=1, epoch="e", frame=frame)
        reached = len(hub.audience_receivers(audience))
        times = []
        for _ in range(args.rounds):
            hub._pending, hub._pending_at = [entry], [time.perf_counter()]
            start = time.perf_counter()
            hub._flush()
            times.append(time.perf_counter() - start)
        rows.append((name, reached, statistics.median(times) * 1e3, max(times) * 1e3))
    await hub.stop()
    print(f"{args.receivers} receivers, {args.users} users, {args.groups} groups; {args.rounds} rounds each")
    print(f"{'audience':<10} {'reached':>8} {'fan-out p50 ms':>15} {'max ms':>8} {'vs everyone':>12}")
    base = rows[0][2]
    for name, reached, p50, worst in rows:
        print(f"{name:<10} {reached:>8} {p50:>15.3f} {worst:>8.3f} {p50 / base:>11.3f}x")
    extra = (index_bytes - anonymous_bytes) / args.receivers
    print(f"hub memory per receiver: {anonymous_bytes / args.receivers:.0f} bytes when all are anonymous, "
          f"{index_bytes / args.receivers:.0f} with these memberships: {extra:.0f} bytes for the "
          "per-audience index (memberships themselves are shared by a user's tabs)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receivers", type=int, default=5000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    setup_django()
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
