"""What one receiver is sent: its catch-up, then live frames, within the slow-consumer bound.

A mixin of the receiver consumer (broadcaster/fanout/consumers.py), kept apart because it is
a concern of its own: the numbering a client has been sent (nothing twice, nothing skipped),
a large catch-up streamed as the client reads it, live messages held meanwhile, and the one
funnel (`_send`) through which every frame reaches the client's `Link`, which refuses it when
the client is over BROADCAST_MAX_UNSENT_BYTES. A mixin rather than an object of its own:
the hub writes to every receiver on every broadcast, and one more call and object per
connection would cost the fan-out path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import RedisError

from broadcaster import metrics, protocol
from broadcaster.fanout.hub import get_hub
from broadcaster.fanout.transport import Link, text_frame
from broadcaster.history.entry import Entry
from broadcaster.history.resume import Backlog, next_page
from broadcaster.protocol import CloseCode

logger = logging.getLogger(__name__)

# A client that takes nothing of its catch-up for this long is a slow consumer.
CATCH_UP_STALL = 30.0
# Checks of a catching-up client's unsent output start this often and back off to the max.
_DRAIN_POLL = (0.005, 0.2)


class Delivery:
    """The sending side of one receiver."""

    closing = False
    link: Link
    # Live messages that arrived while the catch-up was being sent; None once live.
    held: list[Entry] | None = None
    # (epoch, seq) of the last message sent to this client, and of the point it started after.
    sent: tuple[str | None, int] = (None, 0)
    start: tuple[str | None, int] = (None, 0)
    catching_up: asyncio.Task[None] | None = None
    # The newest count update that came while catching up: (message, frame).
    deferred: tuple[dict[str, Any], bytes | None] | None = None
    # Bytes in `held`; whether held messages were dropped (over the bound) to be read from history.
    held_bytes = 0
    held_dropped = False
    # The audiences this receiver belongs to (broadcaster/audiences.py): it is sent only what
    # is for them. Shared by the connections of one user (broadcaster/fanout/membership.py).
    member_of: frozenset[str] = protocol.ANONYMOUS

    @property
    def max_unsent(self) -> int:
        """The slow-consumer bound, as the link keeps it."""
        return self.link.max_unsent

    def _close_now(self, code: CloseCode, reason: str | None = None) -> None:
        """Close the client with `code` after what is queued (the consumer's)."""
        raise NotImplementedError

    def _peer(self) -> str:
        """The client's address, for logs (the consumer's)."""
        raise NotImplementedError

    def _release(self, backlog: Backlog) -> bool:
        """Send the reset notice and the backlog, then what was held, and go live, if all of
        it fits in half the slow-consumer bound now; else send the reset only, return False."""
        if backlog.reset:
            self._write_reset(epoch=backlog.epoch, last=backlog.last)
        self.sent = self.start = (backlog.epoch, backlog.after)
        held = self.held or []
        if backlog.more or self.held_dropped or _size([*backlog.entries, *held]) > self.max_unsent // 2:
            return False
        self._send_entries([*backlog.entries, *held])
        self._go_live()
        return True

    def _write_reset(self, *, epoch: str | None, last: int) -> None:
        self._send(protocol.send_event(protocol.reset_frame(epoch=epoch, seq=last)), None)

    def _go_live(self) -> None:
        """Called when the catch-up is out: the client is told where the numbering stands
        (`position`: all up to there was sent or not for it), and from now on frames are
        written as they come."""
        self.held = None
        epoch, seq = self.sent
        self._send(protocol.send_event(protocol.position_frame(epoch=epoch, seq=seq)), None)
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
        """Send the entries this client has not had yet and that are for it, batched: one that
        comes twice (in the backlog and held, say) goes once; one not for its audiences is
        never sent, and its numbering moves past it (a hole, which the client takes as such)."""
        epoch, last = self.sent
        fresh = []
        for e in entries:
            if e.epoch != epoch or e.seq > last:
                fresh.append(e)
                epoch, last = e.epoch, e.seq
        if not fresh:
            return
        member_of = self.member_of
        shown = [e for e in fresh if protocol.for_member(e.audience, member_of)]
        start = 0
        reach = get_hub().reach
        for frame, count in protocol.batch_frames([e.wire for e in shown]):
            if self._send(protocol.send_event(frame), text_frame(frame.encode())):
                metrics.tally.deliveries += count
                reach.delivered(shown[start : start + count], 1)
            start += count
        self.sent = (fresh[-1].epoch, fresh[-1].seq)

    def write(self, message: dict[str, Any], frame: bytes | None, entries: list[Entry]) -> bool:
        """Called by the hub for each frame; never waits for the client. True if the frame
        went out whole now (the hub counts those for the reach report).

        A client that stops reading is closed with SLOW_CONSUMER once the server holds more
        than BROADCAST_MAX_UNSENT_BYTES unsent for it, so it cannot grow memory without bound.
        """
        if self.closing:
            return False
        if self.held is not None:
            self._hold(message, frame, entries)
            return False
        if entries:
            epoch, last = self.sent
            if entries[0].seq <= last and entries[0].epoch == epoch:
                self._send_entries(entries)  # some were sent already (from history): not twice
                return False
            self.sent = (entries[-1].epoch, entries[-1].seq)
        if not self._send(message, frame):
            return False
        if entries:
            metrics.tally.deliveries += len(entries)
        return True

    def was_sent(self, epoch: str, seq: int, audience: tuple[str, ...]) -> bool:
        """Whether message (epoch, seq), for `audience`, was sent on this connection (for its
        `seen` frames)."""
        if not protocol.for_member(audience, self.member_of):
            return False
        sent_epoch, last = self.sent
        if epoch != sent_epoch or seq > last:
            return False
        start_epoch, after = self.start
        return start_epoch != epoch or seq > after

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
