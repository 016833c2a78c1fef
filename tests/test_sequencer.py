"""The fan-out's numbering rules (broadcaster/fanout/sequencer.py), driven with lists: no socket, no Redis."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broadcaster.fanout.sequencer import Deliver, Fill, Known, RaiseFloor, Reset, Sequencer
from broadcaster.history.entry import Entry, Since


def entry(seq: int, epoch: str = "e1") -> Entry:
    return Entry(seq=seq, epoch=epoch, frame=f'{{"seq": {seq}}}')


def delivered(steps: list) -> list[int]:
    return [step.entry.seq for step in steps if isinstance(step, Deliver)]


def test_first_live_messages_go_out_in_order_and_duplicates_are_dropped() -> None:
    """With nothing known yet, the first live message starts the numbering; a repeat is dropped."""
    seq = Sequencer()
    assert seq.accept(entry(5)) == [Deliver(entry(5))]
    assert seq.accept(entry(6)) == [Deliver(entry(6))]
    assert seq.accept(entry(6)) == []
    assert seq.accept(entry(3)) == []
    assert (seq.epoch, seq.last_seq) == ("e1", 6)


def test_a_gap_is_filled_from_history_before_newer_messages_go_out() -> None:
    """A gap asks for history after the last delivered; live messages wait, then follow once each."""
    seq = Sequencer(epoch="e1", last_seq=2, baseline_known=True)
    assert seq.accept(entry(5)) == [Fill(epoch="e1", after=2)]
    assert seq.accept(entry(6)) == []
    assert (seq.filling, seq.held) == (True, [entry(5), entry(6)])
    steps = seq.filled(
        Since(last=6, epoch="e1", entries=[entry(3), entry(4), entry(5), entry(6)]), epoch="e1", after=2
    )
    assert delivered(steps) == [3, 4, 5, 6]
    assert (seq.filling, seq.held, seq.last_seq) == (False, [], 6)


def test_a_gap_older_than_history_resets_clients_then_goes_on() -> None:
    """Messages history no longer keeps are named in a Reset, before what it still has."""
    seq = Sequencer(epoch="e1", last_seq=2, baseline_known=True)
    seq.accept(entry(9))
    steps = seq.filled(Since(last=9, epoch="e1", entries=[entry(7), entry(8), entry(9)]), epoch="e1", after=2)
    assert steps == [
        Reset(epoch="e1", seq=9, missing=(3, 6)),
        Deliver(entry(7)),
        Deliver(entry(8)),
        Deliver(entry(9)),
    ]


def test_a_hole_inside_history_is_not_a_gap() -> None:
    """Numbers a failover skipped (history's counter raised past them) never were messages:
    what history holds goes out in order, with no second read and no reset."""
    seq = Sequencer(epoch="e1", last_seq=3, baseline_known=True)
    assert seq.accept(entry(12)) == [Fill(epoch="e1", after=3)]
    steps = seq.filled(Since(last=12, epoch="e1", entries=[entry(4), entry(5), entry(11), entry(12)]),
                       epoch="e1", after=3)  # fmt: skip
    assert (delivered(steps), len(steps), seq.last_seq, seq.filling) == ([4, 5, 11, 12], 4, 12, False)


def test_held_messages_go_out_when_history_cannot_be_read() -> None:
    """An unreachable history never holds live messages back: they go out, numbered from the first."""
    seq = Sequencer(epoch="e1", last_seq=2, baseline_known=True)
    seq.accept(entry(5))
    seq.accept(entry(6))
    assert delivered(seq.filled(None, epoch="e1", after=2)) == [5, 6]
    assert seq.last_seq == 6


def test_a_new_epoch_is_read_from_its_start() -> None:
    """Numbering restarted (Redis lost its data): everything of the new epoch is read and sent."""
    seq = Sequencer(epoch="e1", last_seq=40, baseline_known=True)
    assert seq.accept(entry(2, "e2")) == [Fill(epoch="e2", after=0, restarted_from="e1")]
    steps = seq.filled(
        Since(last=2, epoch="e2", entries=[entry(1, "e2"), entry(2, "e2")]), epoch="e2", after=0
    )
    assert delivered(steps) == [1, 2]
    assert (seq.epoch, seq.last_seq) == ("e2", 2)


def test_first_look_at_history_is_known_not_delivered() -> None:
    """History's newest entries at the first look went out before this process subscribed."""
    seq = Sequencer()
    head = Since(last=3, epoch="e1", entries=[entry(2), entry(3)])
    assert seq.compare(head) == [Known([entry(2), entry(3)])]
    assert (seq.epoch, seq.last_seq, seq.baseline_known, seq.in_step(head)) == ("e1", 3, True, True)


def test_history_ahead_is_delivered_and_history_behind_raises_its_floor() -> None:
    """What never arrived live is sent from history; history behind this process (a failover)
    moves its counter past what went out; history emptied with nothing since changes nothing."""
    seq = Sequencer(epoch="e1", last_seq=3, baseline_known=True)
    assert delivered(seq.compare(Since(last=5, epoch="e1", entries=[entry(4), entry(5)]))) == [4, 5]
    behind = Since(last=4, epoch="e1", entries=[])
    assert seq.compare(behind) == [RaiseFloor(epoch="e1", floor=5)]
    assert seq.in_step(behind)
    empty = Since(last=0, epoch=None, entries=[])
    assert (seq.compare(empty), seq.in_step(empty)) == ([], False)


def test_compare_waits_while_filling_and_forget_starts_over() -> None:
    """No second read of history while a fill is under way; with no receivers all is forgotten."""
    seq = Sequencer(epoch="e1", last_seq=1, baseline_known=True)
    seq.accept(entry(3))
    assert seq.compare(Since(last=3, epoch="e1", entries=[entry(2), entry(3)])) == []
    seq.forget()
    assert (seq.epoch, seq.last_seq, seq.baseline_known) == (None, 0, False)


@given(st.lists(st.integers(min_value=1, max_value=30), max_size=60))
def test_any_arrival_order_delivers_each_message_once_in_order(arrivals: list[int]) -> None:
    """Whatever arrives live (lost, repeated, reordered), with history whole, each message up
    to the newest that arrived is delivered once, in order."""
    seq = Sequencer(epoch="e1", last_seq=0, baseline_known=True)
    history = [entry(n) for n in range(1, 31)]
    out: list[int] = []
    pending = [seq.accept(entry(n)) for n in arrivals]
    queue = [step for steps in pending for step in steps]
    while queue:
        step = queue.pop(0)
        if isinstance(step, Deliver):
            out.append(step.entry.seq)
        elif isinstance(step, Fill):
            newest = max([step.after, *(e.seq for e in seq.held)])
            kept = Since(
                last=newest, epoch="e1", entries=[e for e in history if step.after < e.seq <= newest]
            )
            queue[:0] = seq.filled(kept, epoch=step.epoch, after=step.after)
    assert out == list(range(1, max(arrivals, default=0) + 1))
