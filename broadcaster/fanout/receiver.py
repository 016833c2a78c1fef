"""One receiver's session, whatever its transport: identity, joining the hub and the group,
its catch-up, `seen` acks, and leaving.

Two transports share it: the WebSocket (broadcaster/fanout/consumers.py) and Server-Sent
Events (broadcaster/fanout/sse.py). Each opens and reads its connection its own way and writes
through its `Link` (broadcaster/fanout/transport.py, broadcaster/fanout/sse_link.py); every
delivery rule (what a client is sent, in which order, within which bound) lives here and in
broadcaster/fanout/delivery.py, once for both.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.db import DatabaseError
from redis.exceptions import RedisError

from broadcaster import metrics, protocol
from broadcaster.fanout.delivery import Delivery
from broadcaster.fanout.hub import get_hub
from broadcaster.fanout.membership import authenticated_only
from broadcaster.history.entry import Entry
from broadcaster.history.resume import ResumePoint, catch_up
from broadcaster.identity import NOBODY, Credential, Identity
from broadcaster.log_throttle import Throttle
from broadcaster.protocol import CloseCode
from broadcaster.reach import REMEMBER
from broadcaster.server.admission import admission
from broadcaster.server.drain import drain
from broadcaster.server.guard import out_of_files

logger = logging.getLogger(__name__)

RESTARTING = protocol.CLOSE_REASONS[CloseCode.SERVICE_RESTART]
UNAUTHENTICATED = "sign in to receive broadcasts"
OVER_CAPACITY = protocol.CLOSE_REASONS[CloseCode.OVER_CAPACITY]

# `seen` acks that count for nothing (an unknown id, a repeat, one never sent here): a
# connection may send this many at once, and this many more per second after that.
IGNORED_ACKS_BURST = 20
IGNORED_ACKS_PER_S = 1.0


class Receiver(Delivery):
    """The transport-free part of one receiver. A subclass sets `scope`, `link`,
    `channel_layer` and `channel_name` before `join()`, and calls `leave()` when the
    connection has closed."""

    scope: dict[str, Any]
    channel_layer: Any
    channel_name: str
    joined = False
    # Closed by a drain (1012): its last `seen` acks still count, unlike after a protocol error.
    restarting = False
    # Seqs of the messages this connection reported seen (None until its first; the newest
    # REMEMBER of them, any at or below `acked_floor` count as repeats), and its allowance of
    # acks that count for nothing (class defaults: no memory per connection until used).
    acked: set[int] | None = None
    acked_floor = 0
    acked_epoch = ""
    ack_budget: float = IGNORED_ACKS_BURST
    ack_budget_at: float = 0.0
    # What it showed on connecting (None: anonymous) and who that is (broadcaster/identity.py).
    credential: Credential | None = None
    identity: Identity = NOBODY

    @staticmethod
    def admit() -> tuple[int, str] | None:
        """Count a new connection in (admission), or the code and reason to refuse it with:
        1012 while this process drains, 1013 at BROADCAST_MAX_CONNECTIONS. One admitted must
        call `admission.leave()` when it ends."""
        if drain.draining:
            return int(CloseCode.SERVICE_RESTART), RESTARTING
        if not admission.enter():
            return int(CloseCode.OVER_CAPACITY), OVER_CAPACITY
        return None

    async def join(self, found: Credential | None, resume: ResumePoint | None) -> bool:
        """Take on the identity `found` gives, join the hub and the group, and send the
        backlog owed at `resume`; False if the connection was refused (and is being closed)."""
        if not await self._identify(found):
            return False
        # Live messages are held while history is read, so none falls between the two.
        self.held = []
        # Into the hub before the group: with the fast path, every broadcast that reaches
        # this process from now on is written to this receiver by the hub.
        self.joined = True
        get_hub().add(self)
        try:
            await self.channel_layer.group_add(protocol.BROADCAST_GROUP, self.channel_name)
            # From this process's memory when it can tell, else from Redis.
            member_of = self.member_of
            backlog = await get_hub().backlog(resume, member_of=member_of) or await catch_up(
                resume, member_of=member_of
            )
        except (RedisError, OSError) as exc:
            self.joined = False
            get_hub().discard(self)
            # (After leaving the hub: no `delayed` for it.) Through the link: daphne's close
            # takes only 1000 and 3000-4999, and 1013 is neither.
            self.link.refuse(*refused_for_redis(self._peer(), exc))
            return False
        metrics.ACCEPTED.inc()
        if resume is not None:
            metrics.RESUMES.labels(result="reset" if backlog.reset else "replayed").inc()
        if not self._release(backlog):
            # Too much to send at once: the rest goes as the client reads (its connection is
            # still read meanwhile, so pings and a disconnect are handled).
            self.catching_up = asyncio.get_running_loop().create_task(self._stream(backlog))
        return True

    async def _identify(self, found: Credential | None) -> bool:
        """Take on the identity the credential gives; False if the connection is refused
        (4401 under BROADCAST_RECEIVERS = "authenticated", 4503 without a database)."""
        try:
            who = await get_hub().membership.identify(found)
        except DatabaseError as exc:
            logger.warning("Refusing receiver %s with 4503: its credential could not be checked: %s",
                           self._peer(), exc)  # fmt: skip
            self._close_now(CloseCode.TRY_AGAIN_LATER)
            return False
        if who.anonymous and authenticated_only():
            why = "no session or receiver token" if found is None else "signed out or unknown token"
            logger.info("Refusing receiver %s with 4401: %s", self._peer(), why)
            self._close_for_protocol_error(CloseCode.UNAUTHENTICATED, UNAUTHENTICATED)
            return False
        if not who.anonymous:
            # (An anonymous receiver keeps the class defaults: no memory per connection for it.)
            self.credential, self.identity, self.member_of = found, who, who.member_of
        return True

    async def leave(self) -> bool:
        """Called when the connection has closed, by either side, for any reason; False if it
        had not joined."""
        self._stop_catching_up()
        if not self.joined:
            return False
        self.joined = False
        get_hub().discard(self)
        try:
            await self.channel_layer.group_discard(protocol.BROADCAST_GROUP, self.channel_name)
        except (RedisError, OSError) as exc:
            logger.warning("Could not leave the group cleanly: %s", exc)
        return True

    def close_for_restart(self) -> None:
        """Drain (broadcaster/server/drain.py): close with 1012 after what is queued; the client
        reconnects to another worker and resumes from the last message it got."""
        if self.closing:
            return
        self.closing = self.restarting = True
        self._stop_catching_up()
        get_hub().discard(self)
        self.link.refuse(int(CloseCode.SERVICE_RESTART), RESTARTING)

    def signed_out(self) -> None:
        """Called when its credential no longer gives a user (a logout, a revoked token, a
        deactivated user) and only the authenticated may listen: close it with 4401."""
        logger.info("Closing receiver %s with 4401: signed out", self._peer())
        self._close_for_protocol_error(CloseCode.UNAUTHENTICATED, UNAUTHENTICATED)

    def seen(self, id: str) -> None:
        """Count message `id` as seen on this connection, once, if it was sent on it; an ack
        that counts for nothing (unknown, repeated, never sent here) is ignored, and more of
        those than the allowance closes the connection with ACK_FLOOD."""
        if self.closing and not self.restarting:
            return  # closed for a protocol error or as a slow consumer: nothing more counts
        hub = get_hub()
        where = hub.reach.known.get(id)
        if where is not None and self.was_sent(*where) and self._first_ack(*where[:2]):
            hub.reach.seen(id)
            return
        metrics.tally.seen_ignored += 1
        now = asyncio.get_running_loop().time()
        budget = min(IGNORED_ACKS_BURST, self.ack_budget + (now - self.ack_budget_at) * IGNORED_ACKS_PER_S)
        self.ack_budget, self.ack_budget_at = budget - 1, now
        if budget < 1:
            logger.warning("Closing receiver %s: too many seen acks that count for nothing", self._peer())
            reason = "too many seen frames for unknown or repeated ids"
            self._close_for_protocol_error(CloseCode.ACK_FLOOD, reason)

    def _first_ack(self, epoch: str, seq: int) -> bool:
        """Record an ack of message (epoch, seq), one sent on this connection; False if it was
        acked already. (A new epoch, after Redis lost its data, starts the record again.)"""
        acked = self.acked
        if acked is None or epoch != self.acked_epoch:
            acked, self.acked_floor, self.acked_epoch = set(), 0, epoch
            self.acked = acked
        if seq <= self.acked_floor or seq in acked:
            return False
        acked.add(seq)
        if len(acked) > REMEMBER:
            # A sliding window: the oldest half is forgotten, and anything at or below it is a repeat.
            self.acked_floor = sorted(acked)[len(acked) // 2]
            acked.difference_update([s for s in acked if s <= self.acked_floor])
        return True

    def _close_for_protocol_error(self, code: CloseCode, reason: str) -> None:
        """Tell the client why (an `error` frame), then close with `code`."""
        self._send(protocol.send_event(protocol.error_frame(code=code, reason=reason)), None)
        self._close_now(code, reason)

    async def broadcast_message(self, event: dict[str, Any]) -> None:
        """Called for each broadcast (layer event `broadcast.message`) when the configured
        layer has no fast path for the hub."""
        entry = Entry(seq=event["seq"], epoch=event["epoch"], frame=event["frame"])
        if not protocol.for_member(entry.audience, self.member_of):
            return  # not for it: a hole in its numbering
        if self.write(protocol.send_event(entry.wire), None, [entry]):
            get_hub().reach.delivered([entry], 1)

    def _close_now(self, code: CloseCode, reason: str | None = None) -> None:
        """Close with `code`; the client gets it after what is already queued for it. From
        now on it gets nothing else and no longer counts as connected."""
        if self.closing:
            return
        self.closing = True
        self._stop_catching_up()
        get_hub().discard(self)  # the group is left when the connection is gone (leave())
        self._close_link(code, reason)

    def _close_link(self, code: CloseCode, reason: str | None) -> None:
        """The transport's close (on a WebSocket the close frame carries no reason: an `error`
        frame said it first)."""
        self.link.close(protocol.close_event(code))

    def _peer(self) -> str:
        client = self.scope.get("client") or ("?", 0)
        return f"{client[0]}:{client[1]}"


_redis_refusals = Throttle()


def refused_for_redis(peer: str, exc: BaseException) -> tuple[int, str]:
    """The code and reason to refuse a receiver with, its Redis command having failed: 1013
    (over capacity) when the process is out of file descriptors, else 4503 (Redis
    unreachable). Logged at most every 10 s: during an outage every reconnecting client is
    refused."""
    if out_of_files(exc):
        if _redis_refusals.due():
            logger.warning("Refusing receiver %s with 1013: too many open files%s", peer,
                           _redis_refusals.more("more refused"))  # fmt: skip
        return int(CloseCode.OVER_CAPACITY), "too many open files; try again later"
    get_hub().redis.failed(exc, what="receiver handshake")
    if _redis_refusals.due():
        logger.warning("Refusing receiver %s with 4503: Redis unreachable: %s%s", peer, exc,
                       _redis_refusals.more("more refused"))  # fmt: skip
    return int(CloseCode.TRY_AGAIN_LATER), protocol.CLOSE_REASONS[CloseCode.TRY_AGAIN_LATER]
