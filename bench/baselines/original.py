"""Baseline: the project's seed program, a `websockets` server fed from its own console.

`--mode gather` is the original: each line is sent to every client with asyncio.gather.
`--mode broadcast` uses websockets.broadcast(), the library's own fan-out.
"""

from __future__ import annotations

import argparse
import asyncio
import resource

import websockets
from aioconsole import ainput

clients: set[websockets.ServerConnection] = set()


async def handler(ws: websockets.ServerConnection) -> None:
    clients.add(ws)
    try:
        await ws.wait_closed()
    finally:
        clients.discard(ws)


async def main(port: int, mode: str) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Pings off, as for every server in the bench: the load clients do not answer them.
    async with websockets.serve(handler, "127.0.0.1", port, ping_interval=None, backlog=1024):
        print(f"listening on {port}", flush=True)
        while True:
            try:
                line = await ainput()
            except EOFError:
                return
            if mode == "gather":
                await asyncio.gather(*(ws.send(line) for ws in list(clients)), return_exceptions=True)
            else:
                websockets.broadcast(clients, line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["gather", "broadcast"], default="gather")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.mode))
