"""The receiver endpoint, /ws/broadcast/: a thin adapter between a socket and the hub.

The connection's life: admission, the handshake (refused with a named code while draining,
full, or without Redis), joining the hub and the group, the backlog, client frames, and
leaving. What the client is sent, and the slow-consumer bound: broadcaster/fanout/delivery.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from channels.utils import await_many_dispatch
from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

from broadcaster import identity, metrics, protocol
from broadcaster.fanout.delivery import Delivery
from broadcaster.fanout.hub import get_hub
from broadcaster.fanout.membership import authenticated_only
from broadcaster.fanout.transport import AsgiLink, Link
from broadcaster.history.entry import Entry
from broadcaster.history.resume import catch_up, resume_point
from broadcaster.identity import NOBODY, Credential, Identity
from broadcaster.log_throttle import Throttle
from broadcaster.protocol import CloseCode
from broadcaster.reach import REMEMBER
from broadcaster.server.admission import admission
from broadcaster.server.drain import drain
from broadcaster.server.guard import out_of_files

logger = logging.getLogger(__name__)

RESTARTING = "server restarting; reconnect now"
UNAUTHENTICATED = "sign in to receive broadcasts"

# `seen` frames that count for nothing (an unknown id, a repeat, one never sent here): a
# connection may send this many at once, and this many more per second after that.
IGNORED_ACKS_BURST = 20
IGNORED_ACKS_PER_S = 1.0


class ReceiverConsumer(Delivery, AsyncWebsocketConsumer):
    """One receiver: joins the broadcast group and gets every message and count update (what
    it is sent, and how: broadcaster/fanout/delivery.py)."""

    joined = False
    # Closed by a drain (1012): its last `seen` frames still count, unlike after a protocol error.
    restarting = False
    # Seqs of the messages this connection reported seen (None until its first; the newest
    # REMEMBER of them, any at or below `acked_floor` count as repeats), and its allowance of
    # `seen` frames that count for nothing (class defaults: no memory per connection until used).
    acked: set[int] | None = None
    acked_floor = 0
    acked_epoch = ""
    ack_budget: float = IGNORED_ACKS_BURST
    ack_budget_at: float = 0.0
    # What it showed on its handshake (None: anonymous) and who that is (broadcaster/identity.py).
    credential: Credential | None = None
    identity: Identity = NOBODY

    def __init__(self, link: Link | None = None) -> None:
        """`link`: how to write to this connection (the router picks it for the server);
        None: through the ASGI `send`."""
        super().__init__()
        if link is not None:
            self.link = link

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Runs the connection; refuses it with a named code when Redis is unreachable.

        As Channels' AsyncConsumer.__call__, but lighter with the project's layer: the
        receiver is reached only through its group's fast path (the hub), so its channel
        needs no Redis subscription and no task reading a queue; only the socket is read.
        """
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.base_send = send
        if not hasattr(self, "link"):
            self.link = AsgiLink(send, max_unsent=settings.BROADCAST_MAX_UNSENT_BYTES)
        if drain.draining:
            await self._refuse(receive, CloseCode.SERVICE_RESTART, RESTARTING)
            return
        if not admission.enter():
            await self._refuse(receive, CloseCode.OVER_CAPACITY, "server full; try again later")
            return
        new_local_channel = getattr(self.channel_layer, "new_local_channel", None)
        try:
            if new_local_channel is not None:
                self.channel_name = await new_local_channel()
                while True:
                    await self.dispatch(await receive())
            else:
                self.channel_name = await self.channel_layer.new_channel()
                channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
                await await_many_dispatch([receive, channel_receive], self.dispatch)
        except StopConsumer:
            pass
        except (RedisError, OSError) as exc:
            if getattr(self, "channel_name", None) is not None:
                raise
            # The channel layer could not even create this consumer's channel.
            await self._refuse(receive, *_refused_for_redis(self._peer(), exc))
        finally:
            # Also on cancel (server shutdown), when disconnect() does not run.
            self._stop_catching_up()
            if self.joined:
                self.joined = False
                get_hub().discard(self)
            if new_local_channel is not None and getattr(self, "channel_name", None):
                self.channel_layer.forget_local_channel(self.channel_name)
            admission.leave()

    async def _refuse(self, receive: Any, code: CloseCode, reason: str) -> None:
        """Accept and close with `code` at once (1012, 1013); read until the client is gone."""
        await receive()  # websocket.connect
        await self.base_send({"type": "websocket.accept"})
        self.link.refuse(int(code), reason)
        while (await receive())["type"] != "websocket.disconnect":
            pass

    def close_for_restart(self) -> None:
        """Drain (broadcaster/server/drain.py): close with 1012 after what is queued; the client
        reconnects to another worker and resumes from the last message it got."""
        if self.closing:
            return
        self.closing = self.restarting = True
        self._stop_catching_up()
        get_hub().discard(self)
        self.link.refuse(int(CloseCode.SERVICE_RESTART), RESTARTING)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Runs each handler directly. Channels' dispatch first closes stale database
        connections through a thread hop on every message; no receiver handler touches the
        database, and the hop was a sixth of the CPU of a connect storm."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        """Called when the WebSocket handshake arrives."""
        found = identity.credential(self.scope.get("headers", []))
        await self.accept()
        # The origin is checked, the credential taken, and nothing reads the headers again.
        self.scope["headers"] = []
        self.link.shed_handshake()
        if not await self._identify(found):
            return
        resume = resume_point(self.scope.get("query_string", b""))
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
            self.link.refuse(*_refused_for_redis(self._peer(), exc))
            return
        metrics.ACCEPTED.inc()
        if resume is not None:
            metrics.RESUMES.labels(result="reset" if backlog.reset else "replayed").inc()
        if not self._release(backlog):
            # Too much to send at once: the rest goes as the client reads (its socket is
            # still read meanwhile, so pings and a disconnect are handled).
            self.catching_up = asyncio.get_running_loop().create_task(self._stream(backlog))
        logger.info("Receiver connected: %s", self._peer())

    async def _identify(self, found: Credential | None) -> bool:
        """Take on the identity the handshake's credential gives; False if the connection is
        refused (4401 under BROADCAST_RECEIVERS = "authenticated", 4503 without a database)."""
        try:
            who = await get_hub().membership.identify(found)
        except DatabaseError as exc:
            logger.warning("Refusing receiver %s with 4503: its credential could not be checked: %s",
                           self._peer(), exc)  # fmt: skip
            await self.close(code=int(CloseCode.TRY_AGAIN_LATER))
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

    def signed_out(self) -> None:
        """Called when its credential no longer gives a user (a logout, a revoked token, a
        deactivated user) and only the authenticated may listen: close it with 4401."""
        logger.info("Closing receiver %s with 4401: signed out", self._peer())
        self._close_for_protocol_error(CloseCode.UNAUTHENTICATED, UNAUTHENTICATED)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Called when the socket closes. As Channels' own, without closing stale database
        connections through a thread hop: no receiver handler touches the database (see
        dispatch()), and the hop was 4% of daphne's CPU in a connect storm."""
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes, by either side, for any reason."""
        self._stop_catching_up()
        failure = self.link.failure()
        if failure is not None:
            logger.warning("Closed receiver %s with code %d: %s", self._peer(), *failure)
        if not self.joined:
            return
        self.joined = False
        get_hub().discard(self)
        try:
            await self.channel_layer.group_discard(protocol.BROADCAST_GROUP, self.channel_name)
        except (RedisError, OSError) as exc:
            logger.warning("Could not leave the group cleanly: %s", exc)
        logger.info("Receiver disconnected: %s (code %s)", self._peer(), code)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called with each frame the client sends: `ping` or `seen` (docs/PROTOCOL.md)."""
        if self.closing and not self.restarting:
            return  # closed for a protocol error or as a slow consumer: nothing more counts
        frame = protocol.parse_client_frame(text_data)
        if frame is not None and frame.type == protocol.FRAME_PING:
            self.write(protocol.send_event(protocol.pong_frame()), None, [])
            return
        if frame is not None and frame.type == protocol.FRAME_SEEN:
            self._seen(frame.id)
            return
        shown = (text_data or repr(bytes_data))[:80]
        logger.warning("Closing receiver %s: unsupported frame %r", self._peer(), shown)
        self._close_for_protocol_error(CloseCode.UNSUPPORTED_FRAME, "unsupported frame")

    def _seen(self, id: str) -> None:
        """Count message `id` as seen on this connection, once, if it was sent on it; an ack
        that counts for nothing (unknown, repeated, never sent here) is ignored, and more of
        those than the allowance closes the connection with ACK_FLOOD."""
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
            logger.warning("Closing receiver %s: too many seen frames that count for nothing", self._peer())
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
        self._send(protocol.send_event(protocol.error_frame(code=code, reason=reason)), None)
        self._close_now(code)

    async def broadcast_message(self, event: dict[str, Any]) -> None:
        """Called for each broadcast (layer event `broadcast.message`) when the configured
        layer has no fast path for the hub."""
        entry = Entry(seq=event["seq"], epoch=event["epoch"], frame=event["frame"])
        if not protocol.for_member(entry.audience, self.member_of):
            return  # not for it: a hole in its numbering
        if self.write(protocol.send_event(entry.wire), None, [entry]):
            get_hub().reach.delivered([entry], 1)

    def _close_now(self, code: CloseCode) -> None:
        """Close with `code`; the client gets it after what is already queued for it. From
        now on it gets nothing else and no longer counts as connected."""
        if self.closing:
            return
        self.closing = True
        self._stop_catching_up()
        get_hub().discard(self)  # the group is left when the socket is gone (disconnect())
        self.link.close(protocol.close_event(code))

    def _peer(self) -> str:
        client = self.scope.get("client") or ("?", 0)
        return f"{client[0]}:{client[1]}"


_redis_refusals = Throttle()


def _refused_for_redis(peer: str, exc: BaseException) -> tuple[CloseCode, str]:
    """The code and reason to refuse a receiver with, its Redis command having failed: 1013
    (over capacity) when the process is out of file descriptors, else 4503 (Redis
    unreachable). Logged at most every 10 s: during an outage every reconnecting client is
    refused."""
    if out_of_files(exc):
        if _redis_refusals.due():
            logger.warning("Refusing receiver %s with 1013: too many open files%s", peer,
                           _redis_refusals.more("more refused"))  # fmt: skip
        return CloseCode.OVER_CAPACITY, "too many open files; try again later"
    get_hub().redis.failed(exc, what="receiver handshake")
    if _redis_refusals.due():
        logger.warning("Refusing receiver %s with 4503: Redis unreachable: %s%s", peer, exc,
                       _redis_refusals.more("more refused"))  # fmt: skip
    return CloseCode.TRY_AGAIN_LATER, "Redis unreachable; try again later"
