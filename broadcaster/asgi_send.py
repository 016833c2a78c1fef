"""Writing to a connection without waiting for it: the fan-out's per-connection cost.

An ASGI `send` is a coroutine. Daphne's completes without ever suspending (it hands the
bytes to Twisted, which buffers them), so awaiting it per connection in a task would cost
a task switch per delivery for nothing. `send_now` steps the coroutine directly; if a server's
`send` does suspend (backpressure), the rest runs in a task, so no connection stalls the others.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]

# Bytes the server holds unsent for one connection, when the server lets us see it.
UnsentProbe = Callable[[], int]

SCOPE_UNSENT_KEY = "broadcaster.unsent"


def send_now(send: Send, message: dict[str, Any]) -> asyncio.Task[None] | None:
    """Run `send(message)` up to its first suspension; return the task finishing it, if any."""
    coro = send(message)
    assert isinstance(coro, Coroutine)
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_finish(coro, yielded))


async def _finish(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    while True:
        if yielded is None:
            await asyncio.sleep(0)
        else:
            # The coroutine reads the future's result (or exception) itself when resumed.
            await asyncio.wait([yielded])
        try:
            yielded = coro.send(None)
        except StopIteration:
            return


def daphne_unsent_probe(send: Any) -> UnsentProbe | None:
    """For daphne's `send` (a partial of Server.handle_reply bound to the Twisted protocol),
    a function returning the bytes buffered in that connection's transport; else None."""
    if not isinstance(send, functools.partial) or not send.args:
        return None
    transport = getattr(send.args[0], "transport", None)
    if transport is None or not hasattr(transport, "dataBuffer"):
        return None

    def unsent() -> int:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen

    return unsent


class UnsentProbeMiddleware:
    """Outermost WebSocket middleware: puts the unsent-bytes probe in the scope, if there is one."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        probe = daphne_unsent_probe(send)
        if probe is not None:
            scope = {**scope, SCOPE_UNSENT_KEY: probe}
        await self.app(scope, receive, send)
