"""The receiver consumer, in-process with WebsocketCommunicator, against the real test Redis."""

from __future__ import annotations

import json

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from broadcaster.fanout.consumers import ReceiverConsumer
from broadcaster.fanout.hub import get_hub
from broadcaster.sending.publish import publish
from tests.conftest import point_django_at

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast_counts():
    with override_settings(BROADCAST_COUNT_INTERVAL=0.05):
        yield


async def connected() -> WebsocketCommunicator:
    """A new receiver, past its first frame: where the numbering stands (nothing published)."""
    comm = WebsocketCommunicator(ReceiverConsumer.as_asgi(), "/ws/broadcast/")
    ok, _ = await comm.connect()
    assert ok
    assert json.loads(await comm.receive_from(timeout=5)) == {"type": "position", "seq": 0, "epoch": None}
    return comm


async def test_connect_gets_position_count_then_broadcast_frame():
    """A new receiver is told where the numbering stands, the count, then gets each broadcast
    as one exact frame."""
    comm = await connected()
    assert json.loads(await comm.receive_from(timeout=5)) == {"type": "count", "clients": 1}
    sent = await publish(text="hello", sender="test")
    frame = json.loads(await comm.receive_from(timeout=5))
    assert frame == {"type": "message", "seq": 1, "epoch": sent.epoch, "id": sent.id, "level": "info",
                     "text": "hello", "time": sent.time}  # fmt: skip
    await comm.disconnect()
    await get_hub().stop()


async def test_ping_gets_pong():
    """The one client frame the protocol defines is answered."""
    comm = await connected()
    await comm.receive_from(timeout=5)  # count
    await comm.send_to(text_data='{"type": "ping"}')
    assert json.loads(await comm.receive_from(timeout=5)) == {"type": "pong"}
    await comm.disconnect()
    await get_hub().stop()


@pytest.mark.parametrize(
    ("frame", "shown"),
    [({"text_data": "not json"}, "'not json'"),
     ({"text_data": '{"type": "shout"}'}, """'{"type": "shout"}'"""),
     ({"text_data": "[1]"}, "'[1]'"),
     ({"bytes_data": b"\x00\x01"}, repr(repr(b"\x00\x01"))),
     ({"text_data": "[" * 100_000}, repr("[" * 80))],  # too deep for json: RecursionError
)  # fmt: skip
async def test_unsupported_frame_closes_with_named_code(frame, shown, caplog):
    """Anything but ping gets an error frame and close code 4400, and one log line."""
    comm = await connected()
    await comm.receive_from(timeout=5)  # count
    await comm.send_to(**frame)
    assert json.loads(await comm.receive_from(timeout=5)) == {
        "type": "error",
        "code": 4400,
        "reason": "unsupported frame",
    }
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4400}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    # The communicator has no peer address, hence "?:0".
    assert warnings == [f"Closing receiver ?:0: unsupported frame {shown}"]
    await comm.disconnect()
    await get_hub().stop()


async def test_redis_down_refuses_with_try_again_later(dead_redis_url):
    """With Redis unreachable the handshake completes and the socket closes with 4503."""
    point_django_at(dead_redis_url)
    comm = WebsocketCommunicator(ReceiverConsumer.as_asgi(), "/ws/broadcast/")
    ok, _ = await comm.connect(timeout=10)
    assert ok
    output = await comm.receive_output(timeout=10)
    # (Its server may find Redis lost, and say so, while this handshake is still retrying.)
    if output.get("text") == '{"type":"status","broadcasts":"delayed"}':
        output = await comm.receive_output(timeout=10)
    assert output == {"type": "websocket.close", "code": 4503, "reason": "Redis unreachable; try again later"}
