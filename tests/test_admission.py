"""The per-process connection ceiling (BROADCAST_MAX_CONNECTIONS): real daphne, raw sockets."""

from __future__ import annotations

import re
import signal
import struct
import subprocess
import sys

import pytest

from broadcaster.protocol import CloseCode
from tests.support import ROOT, LineReader, default_sigint, raw_receiver, read_frames, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_receivers_past_the_ceiling_get_1013_and_are_counted(daphne):
    """With a ceiling of 3: the fourth and fifth receivers get a close frame with 1013 and a
    reason; the log says so once, with the count; the three keep working; once one leaves,
    a new one is taken."""
    server = daphne(BROADCAST_MAX_CONNECTIONS="3")
    assert "at most 3 receivers (BROADCAST_MAX_CONNECTIONS)" in server.log()
    kept = [raw_receiver(server.port) for _ in range(3)]
    for sock in kept:
        read_frames(sock, until='"count"', timeout=10)
    server.wait_for_clients(3)
    for _ in range(2):
        extra = raw_receiver(server.port)
        frames = read_frames(extra, until="never in a text frame", timeout=10)
        assert frames[-1][0] == 8, frames
        code, reason = struct.unpack("!H", frames[-1][1][:2])[0], frames[-1][1][2:]
        assert (code, reason) == (CloseCode.OVER_CAPACITY, b"server full; try again later")
        assert [op for op, _ in frames] == [8], "a refused receiver gets nothing else"
        extra.close()
    wait_until(lambda: "Refusing receivers with 1013" in server.log(), timeout=10, what="the warning")
    refusals = [line for line in server.log().splitlines() if "Refusing receivers" in line]
    assert len(refusals) == 1 and "1 refused by this process so far" in refusals[0], refusals
    assert server.health()[1]["clients"] == 3
    kept.pop().close()
    server.wait_for_clients(2)
    again = raw_receiver(server.port)
    assert b'"clients":3' in read_frames(again, until='"count"', timeout=10)[-1][1]
    for sock in [*kept, again]:
        sock.close()


def test_listen_backs_off_from_a_full_server(daphne, env_for, redis_url):
    """`manage.py listen` refused with 1013 does not take the handshake as success: its waits
    keep growing (0.25-0.5 s, then up to 1, 2, 4 s), and it never says "Connected"."""
    server = daphne(BROADCAST_MAX_CONNECTIONS="1")
    holder = raw_receiver(server.port)
    read_frames(holder, until='"count"', timeout=10)
    listener = subprocess.Popen([sys.executable, "manage.py", "listen", server.ws], cwd=ROOT,
                                env=env_for(redis_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=default_sigint)  # fmt: skip
    err = LineReader(listener.stderr)
    try:
        lines = [err.wait_for(lambda s: "retrying in" in s, timeout=30, what=f"retry {n}") for n in range(4)]
    finally:
        listener.send_signal(signal.SIGINT)
        listener.wait(timeout=20)
        holder.close()
    waits = [float(re.search(r"retrying in ([\d.]+) s", line)[1]) for line in lines]
    said = "(closed by the server (code 1013: server full; try again later))"
    assert all(said in line for line in lines), lines
    assert waits[0] <= 0.5 and waits[3] >= 2.0, waits
    assert not any(line.startswith("Connected") for line in err.seen), err.seen
