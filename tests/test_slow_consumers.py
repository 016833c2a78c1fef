"""Slow consumers on every write path: the documented close reaches a client that still reads,
and memory stays bounded whether frames go straight to the socket or through daphne's send
(daphne terminating TLS). Real daphne, real Redis, raw and TLS clients."""

from __future__ import annotations

import asyncio
import json
import ssl
import struct
import time

import pytest

from tests.support import Client, manage, parse_frames, raw_receiver, self_signed_certificate


def _close_code(frames: list[tuple[int, bytes]]) -> int | None:
    opcode, payload = frames[-1]
    return struct.unpack("!H", payload[:2])[0] if opcode == 8 else None


def _read_slowly(sock, *, timeout: float) -> list[tuple[int, bytes]]:
    """A client that reads 8 KB every 10 ms: slower than autobahn's 1 s close timeout allows
    for what is queued ahead of the close frame, far faster than a stalled one."""
    sock.settimeout(0.01)
    data = bytearray()
    frames: list[tuple[int, bytes]] = []
    parsed = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(8192)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break  # the server gave up on the close handshake and dropped the connection
        if not chunk:
            break
        data += chunk
        more, parsed = parse_frames(bytes(data), parsed)
        frames += more
        if frames and frames[-1][0] == 8:
            break  # the close frame: the server would wait CLOSE_GRACE for an answer
    return frames


async def test_slow_reader_gets_the_4408_close_after_what_was_queued(daphne, env_for, redis_url):
    """A client that reads too slowly is closed with 4408, and reading on, it gets that close frame."""
    # 9 MB, more than kernel buffers hold, in 300 messages of 30 KB (words, not one: these
    # records land in the shared log the admin tests show).
    longer = {"BROADCAST_MAX_LENGTH": "40000"}
    server = daphne(BROADCAST_MAX_UNSENT_BYTES="65536", **longer)
    slow = raw_receiver(server.port)
    healthy = await Client(server.ws).connect(max_size=None)
    await asyncio.to_thread(server.wait_for_clients, 2)
    lines = [f"{i:04d} " + " ".join(["yyyy"] * 6000) for i in range(300)]
    done = await asyncio.to_thread(
        manage, ["broadcast"], env=env_for(redis_url, **longer), stdin="\n".join(lines), timeout=120
    )  # on a busy machine
    assert done.returncode == 0, done.stderr
    await healthy.wait_for(lambda c: len(c.messages()) == 300, timeout=60, what="all 300")
    await asyncio.to_thread(server.wait_for_clients, 1)
    assert "slow consumer, over 65536 bytes unsent" in server.log()
    frames = await asyncio.to_thread(_read_slowly, slow, timeout=60)
    slow.close()
    await healthy.close()
    assert frames[-1][0] == 8, f"no close frame; last frames: {[(o, p[:40]) for o, p in frames[-3:]]}"
    assert _close_code(frames) == 4408
    texts = []
    for _opcode, payload in frames[:-1]:
        frame = json.loads(payload)
        texts += [m["text"] for m in frame["messages"]] if frame["type"] == "batch" else (
            [frame["text"]] if frame["type"] == "message" else [])  # fmt: skip
    assert texts == lines[: len(texts)] and texts  # a prefix, in order, nothing corrupted


@pytest.mark.serial  # measures time or memory: runs alone
async def test_slow_consumers_behind_tls_are_bounded_and_closed(daphne, env_for, redis_url, tmp_path):
    """daphne terminating TLS (no direct writes): 20 stalled clients cost bounded memory and are
    closed as slow consumers; a healthy client gets everything; the slower path is logged once."""
    server = daphne(tls=self_signed_certificate(tmp_path), BROADCAST_MAX_UNSENT_BYTES="131072")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    url = f"wss://127.0.0.1:{server.port}/ws/broadcast/"
    healthy = await Client(url).connect(max_size=None, ssl=context)
    stalled = [await asyncio.to_thread(raw_receiver, server.port, tls=True) for _ in range(20)]
    before = await asyncio.to_thread(server.steady_rss)
    lines = [f"{i:04d} " + "z" * 4000 for i in range(1500)]  # 6 MB for each client
    done = await asyncio.to_thread(
        manage, ["broadcast"], env=env_for(redis_url), stdin="\n".join(lines), timeout=120
    )  # thousands of messages, on a busy machine
    assert done.returncode == 0, done.stderr
    await healthy.wait_for(lambda c: len(c.messages()) == 1500, timeout=90, what="all 1500")
    assert healthy.messages() == lines
    after = await asyncio.to_thread(server.steady_rss)
    log = server.log()
    print(f"TLS: RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MB with 20 stalled clients")
    assert log.count("slow consumer, over 131072 bytes unsent") == 20
    assert log.count("written through daphne's send (no raw socket") == 1
    # Unbounded, each stalled client would hold its 6 MB (120 MB); bounded, about 0.13 MB.
    assert after - before < 40 * 2**20, (before, after)
    for sock in stalled:
        sock.close()
    await healthy.close()
