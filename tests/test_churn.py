"""Memory under churn: tabs opening and closing all day must not grow a server process.
Real daphne, real Redis, 10 rounds of 2,000 real WebSocket handshakes and closes."""

from __future__ import annotations

import asyncio
import base64
import os

import pytest

ROUNDS, PER_ROUND, AT_ONCE = 10, 2000, 200
MB = 2**20


async def _visit(port: int) -> None:
    """One receiver: handshake, wait for the first frame (it is connected and counted), close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws/broadcast/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert head.startswith(b"HTTP/1.1 101"), head
    await asyncio.wait_for(reader.readexactly(2), 30)
    writer.close()


async def _round(port: int) -> None:
    gate = asyncio.Semaphore(AT_ONCE)

    async def one() -> None:
        async with gate:
            await _visit(port)

    await asyncio.gather(*(one() for _ in range(PER_ROUND)))


@pytest.mark.serial  # measures time or memory: runs alone
async def test_ten_rounds_of_connect_close_end_within_20_percent_of_round_one(daphne):
    """RSS after 10 rounds of 2,000 connect/close cycles is within 20% of RSS after round one."""
    server = daphne()
    rss = []
    for _ in range(ROUNDS):
        await _round(server.port)
        await asyncio.to_thread(server.wait_for_clients, 0, timeout=60)
        rss.append(await asyncio.to_thread(server.steady_rss))
    print("RSS after each round (MB):", [round(r / MB) for r in rss])
    assert rss[-1] <= 1.2 * rss[0], [round(r / MB) for r in rss]
