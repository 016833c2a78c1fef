"""Prometheus metrics, and the text `GET /metrics` serves.

With several workers on one host (`make serve`), `PROMETHEUS_MULTIPROC_DIR` names a folder
the workers share (prometheus_client's multiprocess mode): any worker's scrape gives host
totals, and `broadcaster_worker_connections` one series per worker `pid`. `make serve` sets
and empties it at start. Without it (one process: `make run`, one daphne), metrics live in
the process.

Hot paths never touch a metric per connection: writes to receivers are tallied in plain
integers (`tally`) and added to the counters once per fan-out and once per count interval
(`flush()`), so 10,000 receivers cost one counter update per broadcast, not 10,000.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from prometheus_client import REGISTRY as PROCESS_REGISTRY
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# (A blank value was removed from the environment by broadcaster/__init__.py.)
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
if MULTIPROCESS_DIR is not None and not os.path.isdir(MULTIPROCESS_DIR):
    raise ImproperlyConfigured(
        f"PROMETHEUS_MULTIPROC_DIR={MULTIPROCESS_DIR} is not a folder: create it, empty, before the "
        "workers start (make serve and deploy/serve.sh do), or unset it for one process's metrics."
    )

# Seconds: from a millisecond (a few hundred local receivers) to several seconds (a stall).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONNECTIONS = Gauge("broadcaster_connections", "Open receiver connections on this host",
                    multiprocess_mode="livesum")  # fmt: skip
if MULTIPROCESS_DIR:
    # The multiprocess collector adds the `pid` label itself.
    _WORKER_CONNECTIONS = Gauge("broadcaster_worker_connections", "Open receiver connections per worker",
                                multiprocess_mode="liveall")  # fmt: skip
else:
    _WORKER_CONNECTIONS = Gauge(
        "broadcaster_worker_connections", "Open receiver connections per worker", ["pid"]
    ).labels(pid=str(os.getpid()))
ACCEPTED = Counter("broadcaster_connections_accepted", "Receiver handshakes accepted")
BROADCASTS = Counter("broadcaster_broadcasts", "Broadcasts this host's workers received for fan-out")
DELIVERIES = Counter("broadcaster_deliveries", "Messages written to receivers (a batch of k counts k)")
FANOUT = Histogram("broadcaster_fanout_seconds", "From a broadcast's arrival in a worker to its last write",
                   buckets=_LATENCY_BUCKETS)  # fmt: skip
PUBLISH_LAG = Histogram("broadcaster_publish_lag_seconds", "From publish time to arrival in the worker",
                        buckets=_LATENCY_BUCKETS)  # fmt: skip
SLOW_CONSUMERS = Counter("broadcaster_slow_consumer_disconnects", "Receivers closed for not reading")
RESUMES = Counter("broadcaster_resumes", "Reconnects with `since`", ["result"])
REDIS_ERRORS = Counter("broadcaster_redis_errors", "Failed Redis operations")
SEEN = Counter("broadcaster_seen_frames", "`seen` frames from receivers: counted, or ignored (not countable)",
               ["result"])  # fmt: skip
LOG_WRITE_FAILURES = Counter("broadcaster_log_write_failures", "Broadcast log writes the database refused")
OUTBOX_SENT = Counter(
    "broadcaster_outbox_sent", "Committed broadcasts sent late by the outbox (Redis was away)"
)
REACH_COMMANDS = Counter("broadcaster_reach_redis_commands", "Redis commands the reach flushes sent")
for _result in ("replayed", "reset"):
    RESUMES.labels(result=_result)
for _result in ("counted", "ignored"):
    SEEN.labels(result=_result)


class Tally:
    """Counts kept in plain integers on hot paths, added to the counters by `flush()`."""

    deliveries = 0
    seen_counted = 0
    seen_ignored = 0


tally = Tally()


def set_connections(count: int) -> None:
    """This worker's open receiver connections."""
    CONNECTIONS.set(count)
    _WORKER_CONNECTIONS.set(count)


def flush() -> None:
    """Add what the hot paths tallied since the last flush to the counters."""
    if tally.deliveries:
        DELIVERIES.inc(tally.deliveries)
        tally.deliveries = 0
    if tally.seen_counted:
        SEEN.labels(result="counted").inc(tally.seen_counted)
        tally.seen_counted = 0
    if tally.seen_ignored:
        SEEN.labels(result="ignored").inc(tally.seen_ignored)
        tally.seen_ignored = 0


def exposition() -> bytes:
    """The Prometheus text of this host (multiprocess) or process. (Runs in a thread: what
    the event loop has tallied and not flushed yet, at most one count interval's worth of
    catch-up deliveries, shows in the next scrape.)"""
    if MULTIPROCESS_DIR is None:
        return generate_latest(PROCESS_REGISTRY)
    forget_dead_workers(Path(MULTIPROCESS_DIR))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)
    return generate_latest(registry)


_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")


def forget_dead_workers(path: Path) -> None:
    """Drop the connection gauges of workers that are gone (SIGKILL runs no exit hook):
    their counters stay, so host totals never go backwards."""
    for file in path.glob("gauge_live*.db"):
        match = _LIVE_GAUGE_FILE.fullmatch(file.name)
        if match and not _alive(int(match.group(1))):
            # (Not mark_process_dead(): two workers answering scrapes at once may both get here.)
            file.unlink(missing_ok=True)


def worker_exiting() -> None:
    """Called at a worker's clean exit: its connections no longer count."""
    flush()
    if MULTIPROCESS_DIR is not None:
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(os.getpid(), MULTIPROCESS_DIR)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


atexit.register(worker_exiting)
