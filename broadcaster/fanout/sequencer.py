"""The numbering rules of a server process's fan-out: plain code over numbers, no I/O.

Every broadcast carries (epoch, seq): seq counts up from 1 within an epoch, and a new epoch
means history lost its data and numbering restarted. A process must deliver each message
once, in order, with no gap. `Sequencer` decides what to do with each message that arrives
live and with each look at history; the hub (broadcaster/fanout/hub.py) carries out its decisions
(writes, reads of history, timers). Tests drive it with lists of entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from broadcaster.history.entry import Entry, Since


@dataclass(frozen=True)
class Deliver:
    """Send `entry` to every receiver of this process (it is the next in order)."""

    entry: Entry


@dataclass(frozen=True)
class Fill:
    """Read history after `after` in `epoch`, then hand the answer to `Sequencer.filled`.
    Until then, live messages are held."""

    epoch: str
    after: int
    # The epoch this process delivered in before a numbering restart (for the log), if any.
    restarted_from: str | None = None


@dataclass(frozen=True)
class Reset:
    """Messages `missing` (first, last) are gone from history: tell receivers to reset."""

    epoch: str
    seq: int
    missing: tuple[int, int]


@dataclass(frozen=True)
class Known:
    """History's newest entries when this process first looks: not to be delivered (they went
    out before it subscribed), but to answer connecting clients from memory."""

    entries: list[Entry]


@dataclass(frozen=True)
class RaiseFloor:
    """History ends before what this process delivered (a failover lost unacknowledged
    broadcasts): history's counter must move past `floor` so no number means two messages."""

    epoch: str
    floor: int


Step = Deliver | Fill | Reset | Known | RaiseFloor


@dataclass
class Sequencer:
    """What this process has delivered, (epoch, last_seq), and what it holds during a fill."""

    epoch: str | None = None
    last_seq: int = 0
    # Whether (epoch, last_seq) were read from history, rather than taken from the first live
    # message (which may itself come after a gap).
    baseline_known: bool = False
    filling: bool = False
    held: list[Entry] = field(default_factory=list)

    def accept(self, entry: Entry) -> list[Step]:
        """Called with each message that arrives live: deliver it, drop it (a duplicate), or
        fill the gap before it from history."""
        if self.filling:
            self.held.append(entry)
            return []
        if entry.epoch != self.epoch:
            if self.epoch is not None or self.baseline_known:
                # A numbering this process has not seen from its start (the first message
                # ever, or Redis lost its data): all of it is new here.
                return self._fill(entry, epoch=entry.epoch, after=0, restarted_from=self.epoch)
            self.epoch, self.last_seq = entry.epoch, entry.seq - 1
        if entry.seq <= self.last_seq:
            return []
        if entry.seq > self.last_seq + 1:
            return self._fill(entry, epoch=entry.epoch, after=self.last_seq)
        self.last_seq = entry.seq
        return [Deliver(entry)]

    def _fill(self, entry: Entry | None, *, epoch: str, after: int, restarted_from: str | None = None
              ) -> list[Step]:  # fmt: skip
        if entry is not None:
            self.held.append(entry)
        self.filling = True
        return [Fill(epoch=epoch, after=after, restarted_from=restarted_from)]

    def filled(self, kept: Since | None, *, epoch: str, after: int) -> list[Step]:
        """Called with history's answer to a `Fill` (None: history could not be read)."""
        self.filling = False
        steps: list[Step] = []
        if kept is not None and kept.epoch == epoch:
            self.epoch, self.last_seq = epoch, after
            first = kept.entries[0].seq if kept.entries else kept.last + 1
            if first > after + 1:
                steps.append(Reset(epoch=epoch, seq=kept.last, missing=(after + 1, first - 1)))
                self.last_seq = first - 1
            # All of it goes out, in order, holes included: a hole inside history (numbers a
            # failover skipped, see RaiseFloor) was never a message.
            for entry in kept.entries:
                self.last_seq = entry.seq
                steps.append(Deliver(entry))
        held, self.held = self.held, []
        if kept is None and held:
            # History is unreachable: send what did arrive rather than wait (and retry) for
            # what did not; resuming clients still get the rest from history later.
            self.epoch, self.last_seq = held[0].epoch, held[0].seq - 1
        for entry in held:
            steps += self.accept(entry)
        return steps

    def compare(self, head: Since) -> list[Step]:
        """Called about once a second with history's entries after `last_seq`: catches up with
        anything published that never arrived live (the Redis subscription was down)."""
        if self.filling:
            return []
        if not self.baseline_known and self.epoch is None:
            self.epoch, self.last_seq, self.baseline_known = head.epoch, head.last, True
            return [Known(head.entries)]
        if head.epoch is None and self.epoch is not None:
            return []  # history lost its data and nothing was published since: not in step
        if head.epoch != self.epoch:
            assert head.epoch is not None
            return self._fill(None, epoch=head.epoch, after=0)
        if head.last < self.last_seq:
            return [RaiseFloor(epoch=self.epoch, floor=self.last_seq)] if self.epoch is not None else []
        steps: list[Step] = []
        if head.last > self.last_seq:
            for entry in head.entries:
                steps += self.accept(entry)
        return steps

    def in_step(self, head: Since) -> bool:
        """Whether this process has delivered everything `head` (history, just read) holds."""
        return not self.filling and head.epoch == self.epoch and self.last_seq >= head.last

    def forget(self) -> None:
        """Called when the process has no receivers (and leaves the group): what it knew of
        the numbering goes stale, and is read again when receivers return."""
        self.epoch, self.last_seq, self.baseline_known = None, 0, False
