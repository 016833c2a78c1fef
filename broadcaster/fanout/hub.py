"""The receivers connected to this server process: fan-out, and the count they see.

One `Hub` per event loop (one per daphne process).

Fan-out: the hub is the channel layer's fast path for the broadcast group (see
`broadcaster/layer.py`): each broadcast reaches this process once, already encoded, and is
written to every local connection without a task or a thread hop per connection. Broadcasts
that arrive together (a burst) go out to each connection as one `batch` frame.

Numbering: whether a message goes out now, is a duplicate, or waits for a gap to be filled
from history is decided by `Sequencer` (broadcaster/fanout/sequencer.py, plain code with no
I/O); the hub carries out its decisions (writes, reads of history, tasks).

Count: while it has receivers, the hub's heartbeat (broadcaster/fanout/heartbeat.py) reports
the local number to `Presence` (so it counts globally and heals after a crash), and the hub
pushes the global number to local receivers when it changes, at most once per
BROADCAST_COUNT_INTERVAL: 5,000 clients connecting at once cause a handful of count frames
per client, not 5,000.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
import weakref
from collections import Counter
from typing import Any, Protocol

from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from broadcaster import metrics, protocol
from broadcaster.backend import redis_client
from broadcaster.backend.outage import RedisLink
from broadcaster.fanout.heartbeat import Heartbeat
from broadcaster.fanout.membership import Members
from broadcaster.fanout.sequencer import Deliver, Fill, Known, RaiseFloor, Reset, Sequencer, Step
from broadcaster.fanout.transport import text_frame, writes_after
from broadcaster.history import resume
from broadcaster.history.entry import Entry
from broadcaster.history.kept import group_history
from broadcaster.history.recent import RecentBroadcasts
from broadcaster.history.resume import Backlog, ResumePoint
from broadcaster.identity import Credential, Identity
from broadcaster.presence import group_presence, signature
from broadcaster.reach import ReachTally
from broadcaster.server import gc_policy

logger = logging.getLogger(__name__)

# A count update goes out to this many receivers per turn of the event loop: a broadcast that
# arrives meanwhile waits for one slice (about 10 ms here), not for the whole push (about a
# third of a second at 20,000 receivers in one process here: docs/PERFORMANCE.md).
COUNT_SLICE = 500


class Recipient(Protocol):
    """A connection that receives frames (the WebSocket consumer)."""

    channel_name: str
    # The audiences it belongs to (always `everyone` among them): broadcaster/audiences.py.
    member_of: frozenset[str]
    # What it showed on its handshake (None: anonymous), and who that is.
    credential: Credential | None
    identity: Identity

    def signed_out(self) -> None:
        """Its credential no longer gives a user, and only the authenticated may listen."""

    def write(self, message: dict[str, Any], frame: bytes | None, entries: list[Entry]) -> bool:
        """Queue one ASGI send message for the client without waiting.

        `frame` is the same text already framed as WebSocket bytes, for a direct write;
        `entries` are the numbered messages it carries (none for a count update). True if
        it went out whole now (False: held for later, partly sent already, or refused; what
        goes out later is counted where it goes out).
        """


class Hub:
    """This process's receivers; owns the presence task while any are connected."""

    def __init__(self) -> None:
        self.server_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.receivers: set[Recipient] = set()
        # Receivers by audience, for each audience but `everyone` (that is `receivers`): a
        # broadcast to `user:alice` costs as many writes as Alice has connections here.
        self.members: dict[str, set[Recipient]] = {}
        self.channels: set[str] = set()
        self.total: int | None = None
        self.fast_path = False
        self.slow_disconnects = 0
        self._fresh: set[Recipient] = set()
        self._pending: list[Entry] = []
        # When each pending entry was taken for fan-out (perf_counter), for the fan-out time.
        self._pending_at: list[float] = []
        # The numbering this process has delivered up to, and the rules that keep it whole.
        self.sequencer = Sequencer()
        self._filling: asyncio.Task[None] | None = None
        # The newest entries sent out, and when this process was last found in step with
        # history (loop time): connecting clients are answered from memory while that is recent.
        self.recent = RecentBroadcasts()
        self._in_step_at = float("-inf")
        self.heartbeat = Heartbeat(self)
        # Draining (broadcaster/server/drain.py): receivers still get broadcasts, but count as 0 here.
        self.drained = False
        # Whether Redis answers, as this event loop sees it; receivers are told of each change
        # (`live` only those that were told `delayed`).
        self.redis = RedisLink(on_change=self._redis_changed)
        self._told_delayed: set[Recipient] = set()
        # Delivered and seen per broadcast, flushed to Redis by the heartbeat (broadcaster/reach.py).
        self.reach = ReachTally()
        # Who the receivers are, kept in step with users, groups and sessions.
        self.membership = Members(self)
        # Presence signatures (broadcaster/presence.py) by memberships, and when each one's
        # memberships were last stored in Redis (loop time).
        self._signatures: dict[frozenset[str], str] = {}
        self._stored: dict[str, float] = {}

    def add(self, receiver: Recipient) -> None:
        """Called when a receiver has joined the broadcast group."""
        if not self.receivers and not self.fast_path:
            self._claim_fast_path()
        self.receivers.add(receiver)
        self._index(receiver, receiver.member_of)
        if receiver.credential is not None:
            self.membership.join(receiver, receiver.credential, receiver.identity)
        self.channels.add(receiver.channel_name)
        self._fresh.add(receiver)
        if not self.redis.up:
            self._tell_delayed([receiver])
        self._changed()

    def discard(self, receiver: Recipient) -> None:
        """Called when a receiver connection closes, whatever the reason."""
        if receiver in self.receivers:
            gc_policy.churn.connection_closed(still_open=len(self.receivers) - 1)
        if receiver in self.receivers:
            self._unindex(receiver, receiver.member_of)
            if receiver.credential is not None:
                self.membership.leave(receiver, receiver.credential)
        self.receivers.discard(receiver)
        self.channels.discard(receiver.channel_name)
        self._fresh.discard(receiver)
        self._told_delayed.discard(receiver)
        self._changed()

    def regroup(self, receiver: Recipient, member_of: frozenset[str]) -> None:
        """Called when a receiver's memberships change (broadcaster/fanout/membership.py): from
        the next broadcast on, it gets what is for its new audiences, and nothing else."""
        if receiver in self.receivers:
            self._unindex(receiver, receiver.member_of)
            self._index(receiver, member_of)
            self._changed()
        receiver.member_of = member_of

    def report_failed(self) -> None:
        """Called when the presence report failed: Redis may have lost what was stored, and
        announced membership changes may have been missed."""
        self._stored.clear()
        self.membership.lost_redis()

    def signatures(self, *, ttl: float) -> list[tuple[str, int, frozenset[str] | None]]:
        """This process's counted receivers by signature, for the presence report: (signature,
        how many, its memberships if Redis may not hold them: not stored by this process
        within `ttl` s). Anonymous receivers are left out (they count for `everyone` only)."""
        if self.drained:
            return []
        counts = Counter(r.member_of for r in self.receivers if r.member_of is not protocol.ANONYMOUS)
        now = asyncio.get_running_loop().time()
        found = []
        for member_of, n in counts.items():
            sig = self._signatures.get(member_of)
            if sig is None:
                sig = self._signatures[member_of] = signature(member_of)
            stored = self._stored.get(sig)
            fresh = stored is not None and now - stored < ttl
            if not fresh:
                self._stored[sig] = now
            found.append((sig, n, None if fresh else member_of))
        return found

    def _index(self, receiver: Recipient, member_of: frozenset[str]) -> None:
        for audience in member_of:
            if audience != protocol.AUDIENCE_EVERYONE[0]:
                self.members.setdefault(audience, set()).add(receiver)

    def _unindex(self, receiver: Recipient, member_of: frozenset[str]) -> None:
        for audience in member_of:
            members = self.members.get(audience)
            if members is not None:
                members.discard(receiver)
                if not members:
                    del self.members[audience]

    def audience_receivers(self, audience: tuple[str, ...]) -> list[Recipient]:
        """This process's receivers that a broadcast for `audience` reaches, each once."""
        if audience is protocol.AUDIENCE_EVERYONE or protocol.AUDIENCE_EVERYONE[0] in audience:
            return list(self.receivers)
        if len(audience) == 1:
            return list(self.members.get(audience[0], ()))
        found: set[Recipient] = set()
        for name in audience:
            found.update(self.members.get(name, ()))
        return list(found)

    async def withdraw_for_drain(self) -> None:
        """Count this process's receivers as 0, at once and from now on: they are moving to
        other workers, which will count them."""
        self.drained = True
        try:
            await group_presence(redis_client.shared_client()).withdraw(server_id=self.server_id)
        except RedisError as exc:
            logger.warning("Could not withdraw from the count for the drain: %s", exc)
        self._changed()

    def _redis_changed(self, up: bool) -> None:
        """Tell every receiver that broadcasts are delayed (Redis lost), and the ones that were
        told so that they are live again."""
        if not up:
            self._tell_delayed(list(self.receivers))
            return
        told, self._told_delayed = list(self._told_delayed), set()
        self.write_all(protocol.status_frame(broadcasts=protocol.BROADCASTS_LIVE), told)

    def _tell_delayed(self, receivers: list[Recipient]) -> None:
        self.write_all(protocol.status_frame(broadcasts=protocol.BROADCASTS_DELAYED), receivers)
        self._told_delayed.update(receivers)

    def _claim_fast_path(self) -> None:
        layer: Any = get_channel_layer()
        try:
            layer.set_fast_path(protocol.BROADCAST_GROUP, self)
        except AttributeError:
            # Another layer is configured: consumers get broadcasts through ordinary dispatch.
            logger.warning("The channel layer has no fast path; using per-consumer dispatch")
            return
        self.fast_path = True

    def deliver(self, event: dict[str, Any]) -> None:
        """Called by the channel layer once per broadcast that reaches this process.

        Keeps the numbering whole (broadcaster/fanout/sequencer.py): a duplicate is dropped; a gap (a
        publisher that died between history and the live send, or a lost Redis subscription)
        is filled from history before anything newer goes out.
        """
        published = event.get("published")
        if published is not None:
            metrics.PUBLISH_LAG.observe(max(time.time() - published, 0.0))
        self._run_steps(
            self.sequencer.accept(Entry(seq=event["seq"], epoch=event["epoch"], frame=event["frame"]))
        )

    async def backlog(self, point: ResumePoint | None, *, member_of: frozenset[str]) -> Backlog | None:
        """What a connecting client is owed, from memory, when this process checked within
        the last few seconds that it is in step with history; else None (ask Redis)."""
        interval: float = settings.BROADCAST_COUNT_INTERVAL
        # (Without the fast path, check_history never runs, so this process is never in step.)
        if self.sequencer.filling or self.sequencer.held:
            return None
        if asyncio.get_running_loop().time() - self._in_step_at > max(3.0, 3 * interval):
            return None
        return await resume.backlog(
            point,
            self.recent.source(epoch=self.sequencer.epoch, last=self.sequencer.last_seq),
            member_of=member_of,
        )

    def _run_steps(self, steps: list[Step]) -> None:
        """Carry out the sequencer's decisions (all but RaiseFloor, which check_history awaits)."""
        for step in steps:
            if isinstance(step, Deliver):
                self._emit(step.entry)
            elif isinstance(step, Fill):
                if step.restarted_from is not None and step.restarted_from != step.epoch:
                    logger.warning(
                        "Broadcast numbering restarted (epoch %s -> %s)", step.restarted_from, step.epoch
                    )
                self._filling = asyncio.get_running_loop().create_task(self._fill(step))
            elif isinstance(step, Reset):
                logger.warning("Messages %d-%d are no longer kept; clients are told to reset", *step.missing)
                self.write_all(protocol.reset_frame(epoch=step.epoch, seq=step.seq), list(self.receivers))
            elif isinstance(step, Known):
                self.recent.clear()
                for entry in step.entries:
                    self.recent.remember(entry)

    def _emit(self, entry: Entry) -> None:
        self.recent.remember(entry)
        metrics.BROADCASTS.inc()
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(entry)
        self._pending_at.append(time.perf_counter())

    async def _fill(self, fill: Fill) -> None:
        try:
            kept = await group_history(redis_client.shared_client()).since(fill.after)
        except Exception as exc:
            # Whatever went wrong, held messages must not wait forever: they go out below.
            logger.warning("Could not fill a gap after seq %d from history: %r", fill.after, exc)
            kept = None
        self._filling = None
        self._run_steps(self.sequencer.filled(kept, epoch=fill.epoch, after=fill.after))

    async def check_history(self) -> None:
        """Called about once a second: catches up with anything published that never arrived
        live here (the Redis subscription was down), even when nothing follows it."""
        if self.sequencer.filling:
            return
        history = group_history(redis_client.shared_client())
        head = await history.since(self.sequencer.last_seq)
        for step in self.sequencer.compare(head):
            if not isinstance(step, RaiseFloor):
                self._run_steps([step])
            elif await history.raise_floor(epoch=step.epoch, floor=step.floor):
                logger.warning("History ends at seq %d but this process delivered up to %d (a failover lost "
                               "unacknowledged broadcasts); numbering continues after %d",
                               head.last, step.floor, step.floor)  # fmt: skip
        if self.sequencer.in_step(head):
            self._in_step_at = asyncio.get_running_loop().time()

    def _flush(self) -> None:
        entries, self._pending = self._pending, []
        taken_at, self._pending_at = self._pending_at, []
        # Runs of entries with one audience, in order: each run goes, batched, to that
        # audience's receivers only, so each receiver gets what is for it in order.
        run_start = 0
        for i in range(1, len(entries) + 1):
            if i < len(entries) and entries[i].audience == entries[run_start].audience:
                continue
            run = entries[run_start:i]
            receivers = self.audience_receivers(run[0].audience)
            start = 0
            for frame, count in protocol.batch_frames([e.wire for e in run]):
                self.write_all(frame, receivers, run[start : start + count])
                start += count
            run_start = i
        done = time.perf_counter()
        for at in taken_at:
            metrics.FANOUT.observe(done - at)
        metrics.flush()

    def write_all(self, frame: str, receivers: list[Recipient], entries: list[Entry] | None = None) -> None:
        """Write one text frame to each receiver, encoded and framed once for all of them;
        a failing receiver never stops the others."""
        message = protocol.send_event(frame)
        framed = text_frame(frame.encode())
        numbered = entries or []
        written = 0
        with writes_after():
            for receiver in receivers:
                try:
                    written += receiver.write(message, framed, numbered)
                except Exception:
                    logger.exception("Could not write to receiver %s", receiver.channel_name)
        if numbered:
            self.reach.delivered(numbered, written)

    async def flush_reach(self) -> bool:
        """The reach counts since the last flush, to Redis in one round trip; False if Redis
        failed (they are kept for the next flush)."""
        try:
            await self.reach.flush(redis_client.shared_client())
        except (RedisError, OSError) as exc:
            logger.debug("Reach counts kept for the next flush: %s", exc)
            return False
        return True

    def slow_consumer_dropped(self) -> int:
        """Called when a receiver is closed for reading too slowly; returns how many so far."""
        metrics.SLOW_CONSUMERS.inc()
        self.slow_disconnects += 1
        return self.slow_disconnects

    def _changed(self) -> None:
        self.heartbeat.poke()

    async def stop(self) -> None:
        """Cancel the heartbeat task (tests; daphne's exit withdraws from the count itself)."""
        await self.heartbeat.stop()

    def counted(self) -> int:
        """How many receivers this process counts in the global number (none while draining)."""
        return 0 if self.drained else len(self.receivers)

    def went_idle(self) -> None:
        """Called when the last receiver has gone and the heartbeat stops: the group is
        unsubscribed, so what is known of the numbering goes stale, and is read again when
        receivers return."""
        self.sequencer.forget()
        self.recent.clear()
        self._signatures.clear()
        self._stored.clear()
        self._in_step_at = float("-inf")

    def push_count(self, total: int) -> None:
        """Called with the global count once per interval: to every receiver when it changed,
        else only to those that joined since the last push."""
        if total == self.total:
            targets = list(self._fresh)
        else:
            self.total = total
            targets = list(self.receivers)
        self._fresh.clear()
        if targets:
            self._push_slice(total, protocol.count_frame(clients=total), targets, 0)

    def _push_slice(self, total: int, frame: str, targets: list[Recipient], start: int) -> None:
        if total != self.total:
            return  # a newer count went to every receiver meanwhile
        end = start + COUNT_SLICE
        self.write_all(frame, [r for r in targets[start:end] if r in self.receivers])
        if end < len(targets):
            asyncio.get_running_loop().call_soon(self._push_slice, total, frame, targets, end)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def get_hub() -> Hub:
    """The hub of the running event loop, created on first use."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub()
    return hub
