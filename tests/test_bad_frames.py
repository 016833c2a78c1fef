"""Client frames daphne itself refuses: each gets its close code, with a close frame the
client can read, and one WARNING line in the server log; other receivers carry on."""

from __future__ import annotations

import struct

import pytest

from broadcaster.protocol import MAX_CLIENT_FRAME, CloseCode
from tests.support import client_frame, manage, raw_receiver, read_frames, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [(b'{"type":"ping"}\xff', CloseCode.INVALID_UTF8, "invalid UTF-8"),
     (b"x" * (MAX_CLIENT_FRAME + 1), CloseCode.MESSAGE_TOO_BIG, f"payload limit of {MAX_CLIENT_FRAME}"),
     (b"x" * MAX_CLIENT_FRAME, CloseCode.UNSUPPORTED_FRAME, "unsupported frame")],
)  # fmt: skip
def test_bad_frame_gets_its_close_code_and_one_warning(daphne, env_for, redis_url, payload, code, reason):
    server = daphne()
    bystander = raw_receiver(server.port)
    read_frames(bystander, until='"count"', timeout=10)
    sock = raw_receiver(server.port)
    read_frames(sock, until='"count"', timeout=10)
    sock.sendall(client_frame(payload))
    frames = read_frames(sock, until="no text frame has this", timeout=10)
    assert frames, "the connection was dropped without a close frame"
    opcode, body = frames[-1]
    assert opcode == 8
    assert struct.unpack("!H", body[:2])[0] == code
    peer = f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    wait_until(lambda: reason in server.log(), timeout=10, what="the server's warning")
    warnings = [line for line in server.log().splitlines() if " WARNING " in line]
    assert len(warnings) == 1, warnings
    assert peer in warnings[0] and reason in warnings[0], warnings
    # The server carries on: the other receiver still gets broadcasts.
    assert manage(["broadcast", "-m", "still here"], env=env_for(redis_url)).returncode == 0
    assert b"still here" in read_frames(bystander, until="still here", timeout=10)[-1][1]
    bystander.close()


def test_client_frames_the_protocol_defines():
    """`ping`, and `seen` with an id of the server's shape; anything else is not a frame."""
    from broadcaster.protocol import ClientFrame, parse_client_frame

    id = "0123456789abcdef" * 2
    assert parse_client_frame('{"type": "ping"}') == ClientFrame("ping")
    assert parse_client_frame(f'{{"type": "seen", "id": "{id}"}}') == ClientFrame("seen", id)
    for text in ('{"type": "seen"}', '{"type": "seen", "id": 5}', '{"type": "seen", "id": "x"}',
                 f'{{"type": "seen", "id": "{id.upper()}"}}', f'{{"type": "seen", "id": "{id}0"}}',
                 '{"type": "pong"}', "[]", "seen", None):  # fmt: skip
        assert parse_client_frame(text) is None, text
