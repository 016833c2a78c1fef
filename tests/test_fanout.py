"""The fan-out fast path: one decode per process, batches in a burst, slow consumers dropped."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from broadcaster import protocol
from broadcaster.fanout.consumers import ReceiverConsumer
from broadcaster.fanout.hub import get_hub
from broadcaster.fanout.transport import send_now, text_frame
from broadcaster.sending.publish import publish
from tests.support import Client, manage, raw_receiver

pytestmark = pytest.mark.django_db(transaction=True)


def test_batch_frame_joins_encoded_frames_verbatim():
    """A batch is the encoded frames joined as they are, and decodes to them in order."""
    frames = [protocol.message_frame(seq=i, epoch="e", id=str(i), text=f"m{i} é", time="t") for i in range(3)]
    batch = protocol.batch_frame(frames)
    assert json.loads(batch) == {"type": "batch", "messages": [json.loads(f) for f in frames]}


async def test_send_now_finishes_a_suspending_send_in_a_task():
    """A send that does suspend (backpressure) still completes, in order, without blocking the caller."""
    sent: list[str] = []
    gate = asyncio.Event()

    async def slow_send(message):
        await gate.wait()
        sent.append(message["text"])

    async def instant_send(message):
        sent.append(message["text"])

    assert send_now(instant_send, {"text": "now"}) is None
    task = send_now(slow_send, {"text": "later"})
    assert task is not None and sent == ["now"]
    gate.set()
    await asyncio.wait_for(task, 5)
    assert sent == ["now", "later"]


async def test_consumers_in_one_process_take_the_fast_path():
    """With the project's layer, the hub owns the group's deliveries for its receivers."""
    with override_settings(BROADCAST_COUNT_INTERVAL=0.05):
        comms = [WebsocketCommunicator(ReceiverConsumer.as_asgi(), "/ws/broadcast/") for _ in range(3)]
        for comm in comms:
            assert (await comm.connect())[0]
        for comm in comms:  # the first count frame means the hub has the receiver
            assert json.loads(await comm.receive_from(timeout=5))["type"] == "position"
            assert json.loads(await comm.receive_from(timeout=5))["type"] == "count"
        hub = get_hub()
        assert hub.fast_path is True
        assert len(hub.channels) == 3
        layer = get_channel_layer()._get_layer()
        assert layer.fast_paths == {f"asgi__group__{protocol.BROADCAST_GROUP}": hub}
        sent = await publish(text="fast", sender="test")
        for comm in comms:
            frame = json.loads(await comm.receive_from(timeout=5))
            while frame["type"] == "count":
                frame = json.loads(await comm.receive_from(timeout=5))
            assert frame == {"type": "message", "seq": sent.seq, "epoch": sent.epoch, "id": sent.id,
                             "level": "info", "text": "fast", "time": sent.time}  # fmt: skip
        for comm in comms:
            await comm.disconnect()
        await hub.stop()


def test_batch_frames_split_at_the_limit_in_order():
    """Batches hold as many frames as fit in the byte limit, in order; a lone big one stays whole."""
    frames = [protocol.message_frame(seq=i, epoch="e", id=str(i), text="é" * 40, time="t") for i in range(10)]
    size = len(frames[0].encode())
    limit = len(protocol.batch_frame(frames[:3]).encode())  # exactly three fit
    packed = protocol.batch_frames(frames, limit=limit)
    assert [count for _, count in packed] == [3, 3, 3, 1]
    assert all(len(frame.encode()) <= limit for frame, _ in packed)
    assert packed[-1][0] == frames[9]
    unpacked = [m for frame, _ in packed[:3] for m in json.loads(frame)["messages"]]
    assert unpacked == [json.loads(f) for f in frames[:9]]
    assert protocol.batch_frames(frames[:1], limit=size // 2) == [(frames[0], 1)]
    assert protocol.batch_frames([]) == []


async def test_over_a_mebibyte_at_once_reaches_a_default_websockets_client(daphne, redis_url):
    """2 MB of messages that reach a server at once (here: kept in history but never sent live,
    as after a lost subscription) go out in batches under the 1 MiB limit of daphne and clients."""
    from broadcaster.backend import redis_client
    from broadcaster.history.kept import group_history

    server = daphne()
    client = await Client(server.ws).connect()  # websockets' default max_size: 1 MiB
    await asyncio.to_thread(server.wait_for_clients, 1)
    history = group_history(redis_client.shared_client())
    lines = [f"{i:03d} " + "y" * 4000 for i in range(500)]
    for i, line in enumerate(lines):
        await history.append(id=str(i), text=line, time="2026-11-25T00:00:00.000Z")
    await client.wait_for(lambda c: len(c.messages()) >= 500, timeout=30, what="500 messages")
    assert client.messages() == lines
    assert client.ws.close_code is None
    assert len([f for f in client.frames if f["type"] == "batch"]) >= 4
    await client.close()


async def test_burst_arrives_complete_in_order_possibly_batched(daphne, env_for, redis_url):
    """A burst of 300 messages reaches every client complete and in order, in fewer frames."""
    server = daphne()
    clients = await asyncio.gather(*(Client(server.ws).connect() for _ in range(20)))
    await asyncio.to_thread(server.wait_for_clients, 20)
    lines = [f"burst {i:03d}" for i in range(300)]
    done = await asyncio.to_thread(manage, ["broadcast"], env=env_for(redis_url), stdin="\n".join(lines))
    assert (done.returncode, done.stdout) == (0, "Sent 300 messages.\n"), done.stderr
    await asyncio.gather(
        *(c.wait_for(lambda c: len(c.messages()) >= 300, timeout=30, what="300 messages") for c in clients)
    )
    assert [c.messages() for c in clients] == [lines] * 20
    await asyncio.gather(*(c.close() for c in clients))


async def test_client_that_stops_reading_is_dropped_and_others_get_everything(daphne, env_for, redis_url):
    """A reader that stalls is closed with SLOW_CONSUMER once 64 KiB queue up; the rest is unaffected."""
    longer = {"BROADCAST_MAX_LENGTH": "40000"}  # ~9 MB in 300 messages of 30 KB (in words)
    server = daphne(BROADCAST_MAX_UNSENT_BYTES="65536", **longer)
    # A raw client with a tiny receive buffer that completes the handshake and never reads again.
    stalled = raw_receiver(server.port)
    healthy = await Client(server.ws).connect(max_size=None)
    await asyncio.to_thread(server.wait_for_clients, 2)

    lines = [f"{i:04d} " + " ".join(["xxxx"] * 6000) for i in range(300)]
    done = await asyncio.to_thread(
        manage, ["broadcast"], env=env_for(redis_url, **longer), stdin="\n".join(lines), timeout=120
    )  # on a busy machine
    assert done.returncode == 0, done.stderr
    await healthy.wait_for(lambda c: len(c.messages()) >= 300, timeout=60, what="all 300")
    assert healthy.messages() == lines
    await asyncio.to_thread(server.wait_for_clients, 1)
    assert "slow consumer, over 65536 bytes unsent" in server.log()
    await healthy.close()
    stalled.close()
    r = redis.Redis.from_url(redis_url)
    r.close()


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 100_000])
def test_text_frame_matches_websockets_serializer(size):
    """Prebuilt frames are byte-for-byte what the websockets library would send, at every length class."""
    from websockets.frames import Frame, Opcode

    payload = b"a" * size
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


def test_a_retraction_is_never_batched():
    """Messages around a retraction are batched; the retraction goes alone, in its place."""
    message = [protocol.message_frame(seq=i, epoch="e", id=str(i), text=f"m{i}", time="t") for i in range(4)]
    retract = protocol.retract_frame(seq=9, epoch="e", id="1", time="t")
    packed = protocol.batch_frames([message[0], message[1], retract, message[2], message[3]])
    assert [(json.loads(frame)["type"], count) for frame, count in packed] == [
        ("batch", 2), ("retract", 1), ("batch", 2)]  # fmt: skip
    assert protocol.batch_frames([retract, retract]) == [(retract, 1), (retract, 1)]
