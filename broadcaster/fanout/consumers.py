"""The receiver endpoint, /ws/broadcast/: a thin adapter between a socket and the hub."""

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
from redis.exceptions import RedisError

from broadcaster import metrics, protocol
from broadcaster.fanout.hub import get_hub
from broadcaster.fanout.transport import SCOPE_LINK_KEY, AsgiLink, Link, text_frame
from broadcaster.history.kept import Entry
from broadcaster.history.resume import Backlog, catch_up, next_page, resume_point
from broadcaster.log_throttle import Throttle
from broadcaster.protocol import CloseCode
from broadcaster.server.admission import admission
from broadcaster.server.drain import drain

logger = logging.getLogger(__name__)

RESTARTING = "server restarting; reconnect now"

# A client that takes nothing of its catch-up for this long is a slow consumer.
CATCH_UP_STALL = 30.0
# Checks of a catching-up client's unsent output start this often and back off to the max.
_DRAIN_POLL = (0.005, 0.2)


class ReceiverConsumer(AsyncWebsocketConsumer):
    """One receiver: joins the broadcast group and gets every message and count update."""

    joined = False
    closing = False
    link: Link
    # Live messages that arrived while the catch-up was being sent; None once live.
    held: list[Entry] | None = None
    # (epoch, seq) of the last message sent to this client.
    sent: tuple[str | None, int] = (None, 0)
    max_unsent = 0
    catching_up: asyncio.Task[None] | None = None
    # The newest count update that came while catching up: (message, frame).
    deferred: tuple[dict[str, Any], bytes | None] | None = None
    # Bytes in `held`; whether held messages were dropped (over the bound) to be read from history.
    held_bytes = 0
    held_dropped = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Runs the connection; refuses it with a named code when Redis is unreachable.

        As Channels' AsyncConsumer.__call__, but lighter with the project's layer: the
        receiver is reached only through its group's fast path (the hub), so its channel
        needs no Redis subscription and no task reading a queue; only the socket is read.
        """
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.base_send = send
        self.link = scope.get(SCOPE_LINK_KEY) or AsgiLink(
            send, max_unsent=settings.BROADCAST_MAX_UNSENT_BYTES
        )
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
            _refused_for_redis(self._peer(), exc)
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            await send(protocol.close_event(CloseCode.TRY_AGAIN_LATER))
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
        self.closing = True
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
        await self.accept()
        self.max_unsent = self.link.max_unsent
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
            backlog = await get_hub().backlog(resume) or await catch_up(resume)
        except (RedisError, OSError) as exc:
            self.joined = False
            get_hub().discard(self)
            _refused_for_redis(self._peer(), exc)  # (after leaving the hub: no `delayed` for it)
            await self.close(code=int(CloseCode.TRY_AGAIN_LATER))
            return
        metrics.ACCEPTED.inc()
        if resume is not None:
            metrics.RESUMES.labels(result="reset" if backlog.reset else "replayed").inc()
        if not self._release(backlog):
            # Too much to send at once: the rest goes as the client reads (its socket is
            # still read meanwhile, so pings and a disconnect are handled).
            self.catching_up = asyncio.get_running_loop().create_task(self._stream(backlog))
        logger.info("Receiver connected: %s", self._peer())

    def _release(self, backlog: Backlog) -> bool:
        """Send the reset notice and the backlog, then what was held, and go live, if all of
        it fits in half the slow-consumer bound now; else send the reset only, return False."""
        if backlog.reset:
            self._write_reset(epoch=backlog.epoch, last=backlog.last)
        self.sent = (backlog.epoch, backlog.after)
        held = self.held or []
        if backlog.more or self.held_dropped or _size([*backlog.entries, *held]) > self.max_unsent // 2:
            return False
        self._send_entries([*backlog.entries, *held])
        self._go_live()
        return True

    def _write_reset(self, *, epoch: str | None, last: int) -> None:
        self._send(protocol.send_event(protocol.reset_frame(epoch=epoch, seq=last)), None)

    def _go_live(self) -> None:
        """Called when the catch-up is out: from now on frames are written as they come."""
        self.held = None
        if self.deferred is not None:
            self._send(*self.deferred)
            self.deferred = None

    async def _stream(self, backlog: Backlog) -> None:
        """Send a large catch-up as the client takes it: never more than the slow-consumer
        bound unsent, the rest read from Redis page by page, then what was held, then live.

        Live messages that arrive meanwhile are held, up to the bound; past it they are
        dropped and read from history instead (every live message is kept there first).
        """
        queue, more = list(backlog.entries), backlog.more
        try:
            while True:
                if not queue and (more or self.held_dropped):
                    self.held, self.held_bytes, self.held_dropped = [], 0, False
                    page = await next_page(after=self.sent[1], epoch=self.sent[0])
                    if page is None:  # numbering restarted: the held live messages say so
                        queue, more = [], False
                    else:
                        if page.reset:
                            self._write_reset(epoch=page.epoch, last=page.last)
                        queue, more = list(page.entries), page.more
                    continue
                if not queue:
                    held, self.held, self.held_bytes = self.held or [], [], 0
                    if not held:
                        # Out, and drained below half the bound: live from here.
                        if not await self._drained():
                            return
                        if self.held or self.held_dropped:
                            continue
                        self._go_live()
                        return
                    queue = held
                while queue and self.link.unsent() <= self.max_unsent // 2:
                    chunk, queue = _take(queue, self.max_unsent // 2 - self.link.unsent())
                    self._send_entries(chunk)
                if (queue or more) and not await self._drained():
                    return
        except (RedisError, OSError) as exc:
            logger.warning("Closing receiver %s: its catch-up could not be read: %s", self._peer(), exc)
            self._close_now(CloseCode.TRY_AGAIN_LATER)

    async def _drained(self) -> bool:
        """Wait until the client has taken enough to send more; False if it was closed, or
        took nothing for CATCH_UP_STALL seconds (then it is closed as a slow consumer)."""
        loop = asyncio.get_running_loop()
        unsent = self.link.unsent()
        progress_at = loop.time()
        delay = _DRAIN_POLL[0]
        while unsent > self.max_unsent // 2:
            if self.closing or self.link.gone():
                return False
            if loop.time() - progress_at > CATCH_UP_STALL:
                self._slow_consumer()
                return False
            await asyncio.sleep(delay)
            now = self.link.unsent()
            if now < unsent:
                progress_at, delay = loop.time(), _DRAIN_POLL[0]
            else:
                delay = min(delay * 2, _DRAIN_POLL[1])
            unsent = now
        return not self.closing

    def _stop_catching_up(self) -> None:
        if self.catching_up is not None:
            self.catching_up.cancel()
            self.catching_up = None

    def _send_entries(self, entries: list[Entry]) -> None:
        """Send the entries this client has not had yet, batched: one that comes twice (in the
        backlog and held, say) goes once."""
        epoch, last = self.sent
        fresh = []
        for e in entries:
            if e.epoch != epoch or e.seq > last:
                fresh.append(e)
                epoch, last = e.epoch, e.seq
        start = 0
        for frame, count in protocol.batch_frames([e.frame for e in fresh]):
            if self._send(protocol.send_event(frame), text_frame(frame.encode())):
                metrics.tally.deliveries += count
            start += count
            self.sent = (fresh[start - 1].epoch, fresh[start - 1].seq)

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
        """Called with each frame the client sends; only `ping` is defined."""
        if protocol.parse_client_frame(text_data) == protocol.FRAME_PING:
            self.write(protocol.send_event(protocol.pong_frame()), None, [])
            return
        shown = (text_data or repr(bytes_data))[:80]
        logger.warning("Closing receiver %s: unsupported frame %r", self._peer(), shown)
        code = CloseCode.UNSUPPORTED_FRAME
        self._send(protocol.send_event(protocol.error_frame(code=code, reason="unsupported frame")), None)
        self._close_now(code)

    async def broadcast_message(self, event: dict[str, Any]) -> None:
        """Called for each broadcast (layer event `broadcast.message`) when the configured
        layer has no fast path for the hub."""
        entry = Entry(seq=event["seq"], epoch=event["epoch"], frame=event["frame"])
        self.write(protocol.send_event(entry.frame), None, [entry])

    def write(self, message: dict[str, Any], frame: bytes | None, entries: list[Entry]) -> None:
        """Called by the hub for each frame; never waits for the client.

        A client that stops reading is closed with SLOW_CONSUMER once the server holds more
        than BROADCAST_MAX_UNSENT_BYTES unsent for it, so it cannot grow memory without bound.
        """
        if self.closing:
            return
        if self.held is not None:
            self._hold(message, frame, entries)
            return
        if entries:
            epoch, last = self.sent
            if entries[0].seq <= last and entries[0].epoch == epoch:
                self._send_entries(entries)  # some were sent already (from history): not twice
                return
            self.sent = (entries[-1].epoch, entries[-1].seq)
        if self._send(message, frame) and entries:
            metrics.tally.deliveries += len(entries)

    def _send(self, message: dict[str, Any], frame: bytes | None) -> bool:
        """Every frame to this client goes through here: the link refuses it when the client
        is over the slow-consumer bound (transport.Link), and the client is closed with 4408."""
        if self.closing:
            return False
        if self.link.write(message, frame):
            return True
        self._slow_consumer()
        return False

    def _hold(self, message: dict[str, Any], frame: bytes | None, entries: list[Entry]) -> None:
        """While catching up: keep live messages for after it (up to the bound; past it, the
        catch-up reads them from history), the newest count update, and a reset by the hub
        (messages it could not get are no longer kept) as a reason to read history again."""
        assert self.held is not None
        if entries:
            self.held.extend(entries)
            self.held_bytes += _size(entries)
            if self.held_bytes > self.max_unsent:
                self.held, self.held_bytes, self.held_dropped = [], 0, True
            return
        kind = protocol.frame_type(message["text"])
        if kind == protocol.FRAME_COUNT:
            self.deferred = (message, frame)
        elif kind == protocol.FRAME_RESET:
            self.held, self.held_bytes, self.held_dropped = [], 0, True
        else:
            self._send(message, frame)  # a pong

    def _slow_consumer(self) -> None:
        dropped = get_hub().slow_consumer_dropped()
        logger.warning(
            "Closing receiver %s: slow consumer, over %d bytes unsent (%d dropped by this process)",
            self._peer(),
            self.max_unsent,
            dropped,
        )
        self._close_now(CloseCode.SLOW_CONSUMER)

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


def _refused_for_redis(peer: str, exc: BaseException) -> None:
    """Log a receiver refused (4503, try again later) because Redis is unreachable, at most
    every 10 s: during an outage every reconnecting client is refused."""
    get_hub().redis.failed(exc, what="receiver handshake")
    if _redis_refusals.due():
        logger.warning("Refusing receiver %s with 4503: Redis unreachable: %s%s", peer, exc,
                       _redis_refusals.more("more refused"))  # fmt: skip


def _size(entries: list[Entry]) -> int:
    """Bytes of the entries' frames, as they are sent (UTF-8)."""
    return sum(e.size for e in entries)


def _take(entries: list[Entry], budget: int) -> tuple[list[Entry], list[Entry]]:
    """Split off the first entries that fit in `budget` bytes (at least one)."""
    total = 0
    for i, entry in enumerate(entries):
        total += entry.size
        if i and total > budget:
            return entries[:i], entries[i:]
    return entries, []
