"""`broadcaster.send()` and friends, in this process, against the real test Redis: sent once,
after commit only, kept pending when Redis is away, idempotent by key, signals once each.

(The host-project, outbox-across-processes, idempotency-across-servers and database-failure
tests are in test_send_from_code.py.)"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import redis
from django.core.exceptions import SynchronousOnlyOperation
from django.db import transaction
from django.utils import timezone

import broadcaster
from broadcaster.models import BroadcastRecord
from broadcaster.protocol import BROADCAST_GROUP
from broadcaster.sending import outbox
from broadcaster.signals import broadcast_retracted, broadcast_sent
from tests.conftest import point_django_at
from tests.support import Subscriber

pytestmark = pytest.mark.django_db(transaction=True)


def kept_texts(url: str) -> list[str]:
    """The texts of every broadcast Redis keeps (each is there once if it was sent once)."""
    import json

    client = redis.Redis.from_url(url)
    try:
        frames = client.zrange(f"broadcaster:history:{BROADCAST_GROUP}:log", 0, -1)
    finally:
        client.close()
    return [json.loads(f)["text"] for f in frames if json.loads(f)["type"] == "message"]


@pytest.fixture
def heard():
    """Every broadcast_sent and broadcast_retracted in this test, in order."""
    got: list[tuple[str, object]] = []

    def on_sent(sender, broadcast, **kwargs):
        got.append(("sent", broadcast.text))

    def on_retracted(sender, id, by, seq, **kwargs):
        got.append(("retracted", id))

    broadcast_sent.connect(on_sent)
    broadcast_retracted.connect(on_retracted)
    yield got
    broadcast_sent.disconnect(on_sent)
    broadcast_retracted.disconnect(on_retracted)


def test_send_outside_a_transaction_goes_out_at_once(redis_url, heard):
    """The result has its id, seq and the count; one live publish, one row, one signal."""
    sub = Subscriber(redis_url)
    sent = broadcaster.send("From code", audience="everyone", level="warning", sender="deploys")
    assert (sent.pending, sent.seq, sent.clients, sent.level, sent.audience) == (False, 1, 0, "warning",
                                                                                 ("everyone",))  # fmt: skip
    assert sub.texts(1) == ["From code"]
    row = BroadcastRecord.objects.get(message_id=sent.id)
    assert (row.status, row.seq, row.sender) == ("sent", 1, "deploys")
    assert heard == [("sent", "From code")]


def test_inside_atomic_it_goes_out_after_commit_and_never_after_rollback(redis_url, heard):
    """A rollback leaves no row and sends nothing; a commit sends once, then."""
    sub = Subscriber(redis_url)
    with pytest.raises(RuntimeError), transaction.atomic():
        doomed = broadcaster.send("Rolled back")
        assert doomed.pending and BroadcastRecord.objects.filter(message_id=doomed.id).exists()
        raise RuntimeError("the view failed after send()")
    assert not BroadcastRecord.objects.filter(message_id=doomed.id).exists()
    with transaction.atomic():
        kept = broadcaster.send("Committed")
        assert kept.pending and kept.seq is None
        assert BroadcastRecord.objects.get(message_id=kept.id).status == "pending"
    assert sub.texts(1) == ["Committed"]  # (the first frame: nothing of the rolled-back one before it)
    row = BroadcastRecord.objects.get(message_id=kept.id)
    assert (row.status, row.seq) == ("sent", 1)
    assert kept_texts(redis_url) == ["Committed"] and heard == [("sent", "Committed")]


def test_committed_while_redis_is_away_goes_out_once_in_order_when_it_is_back(
    redis_url, dead_redis_url, heard
):
    """Two committed sends with Redis unreachable stay pending (no error for the caller);
    back, the outbox sends them once, oldest first; flushing again sends nothing."""
    point_django_at(dead_redis_url)
    for text in ("first", "second"):
        with transaction.atomic():
            assert broadcaster.send(text).pending
    assert list(BroadcastRecord.objects.order_by("pk").values_list("text", "status")) == [
        ("first", "pending"), ("second", "pending")]  # fmt: skip
    point_django_at(redis_url)
    sub = Subscriber(redis_url)
    BroadcastRecord.objects.update(created=timezone.now() - outbox.GRACE)  # (past their senders' time)
    assert asyncio.run(outbox.flush()) is True
    assert sub.texts(2) == ["first", "second"]
    assert asyncio.run(outbox.flush()) is True
    assert kept_texts(redis_url) == ["first", "second"]
    assert set(BroadcastRecord.objects.values_list("status", flat=True)) == {"sent"}
    assert heard == [("sent", "first"), ("sent", "second")]


def test_outside_a_transaction_a_dead_redis_is_an_error_and_a_failed_row(redis_url, dead_redis_url):
    point_django_at(dead_redis_url)
    with pytest.raises(broadcaster.BroadcastUnavailable) as raised:
        broadcaster.send("Lost?")
    assert isinstance(raised.value, broadcaster.BrokerUnavailable)
    row = BroadcastRecord.objects.get()
    assert (row.status, row.error) == (
        "failed",
        "Cannot reach Redis: nothing was sent. Try again in a moment.",
    )
    point_django_at(redis_url)  # back: a failed row is never sent later
    BroadcastRecord.objects.update(created=timezone.now() - outbox.GRACE)
    assert asyncio.run(outbox.flush()) is True
    assert kept_texts(redis_url) == []


def test_a_row_sent_but_not_marked_goes_out_again_as_the_same_broadcast(redis_url, heard, monkeypatch):
    """The publish went out and the database refused its outcome (the row stays pending):
    the sender is told it was sent; the outbox marks it sent with the same seq, sends nothing
    twice, and broadcast_sent is sent once, when the row is marked."""
    from django.db import DatabaseError

    real_update = type(BroadcastRecord.objects.all()).aupdate

    async def refused(self, **fields):
        if fields.get("status") == "sent":
            raise DatabaseError("database is locked")
        return await real_update(self, **fields)

    monkeypatch.setattr(type(BroadcastRecord.objects.all()), "aupdate", refused)
    sent = broadcaster.send("Once")
    monkeypatch.undo()
    assert sent.seq == 1 and heard == []
    a_minute_ago = timezone.now() - timedelta(minutes=1)  # (past the outbox's grace)
    BroadcastRecord.objects.filter(message_id=sent.id).update(created=a_minute_ago)
    assert BroadcastRecord.objects.get(message_id=sent.id).status == "pending"
    sub = Subscriber(redis_url)
    assert asyncio.run(outbox.flush()) is True
    row = BroadcastRecord.objects.get(message_id=sent.id)
    assert (row.status, row.seq) == ("sent", sent.seq)
    broadcaster.send("marker")
    assert sub.texts(1) == ["marker"]  # no second live copy of "Once" before it
    assert kept_texts(redis_url) == ["Once", "marker"] and heard == [("sent", "Once"), ("sent", "marker")]


def test_the_same_idempotency_key_is_one_broadcast_for_24_hours(redis_url, heard):
    first = broadcaster.send("Export ready", idempotency_key="export-42")
    again = broadcaster.send("Export ready", idempotency_key="export-42")
    assert (again.id, again.seq, again.pending) == (first.id, first.seq, False)
    with transaction.atomic():
        assert broadcaster.send("Export ready", idempotency_key="export-42").id == first.id
    with pytest.raises(broadcaster.IdempotencyConflict, match="used for a different broadcast"):
        broadcaster.send("Export failed", idempotency_key="export-42")
    with pytest.raises(broadcaster.InvalidBroadcast, match="1 to 255 printable ASCII"):
        broadcaster.send("x", idempotency_key="bad\nkey")
    assert kept_texts(redis_url) == ["Export ready"] and heard == [("sent", "Export ready")]
    BroadcastRecord.objects.filter(pk=BroadcastRecord.objects.get().pk).update(
        created=timezone.now() - timedelta(hours=25))  # fmt: skip
    later = broadcaster.send("Export ready", idempotency_key="export-42")
    assert later.id != first.id and kept_texts(redis_url) == ["Export ready", "Export ready"]


def test_errors_are_one_family_and_nothing_is_written_for_them(redis_url):
    cases = [("", {}, broadcaster.EmptyMessage), ("\u200b\u2060\ufeff \u200f", {}, broadcaster.EmptyMessage),
             ("x" * 5000, {}, broadcaster.MessageTooLong),
             ("x", {"audience": "group:nobody"}, broadcaster.InvalidAudience),
             ("x", {"level": "loud"}, broadcaster.InvalidOptions)]  # fmt: skip
    for text, options, error in cases:
        with pytest.raises(error) as raised:
            broadcaster.send(text, **options)
        assert isinstance(raised.value, broadcaster.InvalidBroadcast)
        assert isinstance(raised.value, broadcaster.BroadcastError)
    assert not BroadcastRecord.objects.exists()
    with pytest.raises(broadcaster.UnknownBroadcast):
        broadcaster.retract("0" * 32)


def test_retract_from_code_signals_once(redis_url, heard):
    sent = broadcaster.send("Oops")
    first, second = broadcaster.retract(sent.id), broadcaster.retract(sent.id)
    assert first.seq > 0 and second.seq == 0
    assert heard == [("sent", "Oops"), ("retracted", sent.id)]


async def test_async_code_uses_asend_and_is_told_so_if_it_calls_send(redis_url, heard):
    sent = await broadcaster.asend("From an async view", audience=["staff", "everyone"])
    assert sent.seq == 1 and sent.audience == ("everyone",)
    with pytest.raises(SynchronousOnlyOperation, match=r"use `await broadcaster.asend\(...\)`"):
        broadcaster.send("wrong")
    assert (await broadcaster.aretract(sent.id)).seq == 2
    assert heard == [("sent", "From an async view"), ("retracted", sent.id)]


def test_code_keys_are_per_sender_and_bad_senders_and_texts_are_refused(redis_url):
    a = broadcaster.send("Same", idempotency_key="k", sender="billing")
    b = broadcaster.send("Same", idempotency_key="k", sender="deploys")
    assert a.id != b.id and kept_texts(redis_url) == ["Same", "Same"]
    for bad in ("", "x" * 151, 42):
        with pytest.raises(broadcaster.InvalidOptions, match="The sender must be a name"):
            broadcaster.send("x", sender=bad)  # type: ignore[arg-type]
    with pytest.raises(broadcaster.InvalidText, match="must be a string"):
        broadcaster.send(None)  # type: ignore[arg-type]


def test_a_sync_caller_inside_a_thread_sensitive_context_does_not_wait_for_itself(redis_url):
    """As a sync view under ASGI runs (in its request's one-thread executor): send(), in and
    out of a transaction, returns at once; the committed one goes out on commit, not later."""
    import time

    from asgiref.sync import ThreadSensitiveContext, sync_to_async

    sub = Subscriber(redis_url)

    def view() -> float:
        started = time.monotonic()
        broadcaster.send("From a sync view")
        with transaction.atomic():
            broadcaster.send("From a sync view, committed")
        return time.monotonic() - started

    async def request() -> float:
        async with ThreadSensitiveContext():
            return await sync_to_async(view)()

    took = asyncio.run(request())
    assert sub.texts(2) == ["From a sync view", "From a sync view, committed"]
    assert took < 5, took  # (a wait for its own executor would have timed out at 10 s)
    assert set(BroadcastRecord.objects.values_list("status", flat=True)) == {"sent"}


def test_a_pending_broadcast_retracted_before_it_went_out_never_goes_out(redis_url, dead_redis_url, heard):
    """Committed while Redis was away: retracted with Redis back, before the outbox got to it
    (the retraction is kept first), or retracted while Redis is still away (the log alone):
    neither is ever sent, and both rows say why."""
    point_django_at(dead_redis_url)
    with transaction.atomic():
        first = broadcaster.send("Retracted once back")
    with transaction.atomic():
        second = broadcaster.send("Retracted while away")
    assert broadcaster.retract(second.id).seq == 0  # Redis away: in the log only
    point_django_at(redis_url)
    assert broadcaster.retract(first.id).seq == 1
    BroadcastRecord.objects.update(created=timezone.now() - outbox.GRACE)
    assert asyncio.run(outbox.flush()) is True
    assert kept_texts(redis_url) == []
    rows = dict(BroadcastRecord.objects.values_list("text", "error"))
    assert rows == {"Retracted once back": "Retracted before it went out: not sent.",
                    "Retracted while away": "Retracted before it went out: not sent."}  # fmt: skip
    assert set(BroadcastRecord.objects.values_list("status", flat=True)) == {"failed"}
    assert [kind for kind, _ in heard] == ["retracted", "retracted"]
