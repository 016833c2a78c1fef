"""A light input queue for each connection daphne serves (its `receive`).

daphne gives every connection an `asyncio.Queue` for what the client sends: three deques and an
Event (with a fourth), about 3.3 KB per connection, kept for the connection's life, where a
receiver takes a handful of messages in all. This one keeps what daphne and an ASGI
application use of it (`put_nowait`, `get`, any number of getters, cancellation) in two lists:
about 0.2 KB. Installed by broadcaster/compat/daphne.py (`replace_input_queue`) where
daphne's code that makes the queue is the one that was checked.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["InputQueue"]


class InputQueue:
    """First in, first out; unbounded, as daphne's is; for one event loop."""

    __slots__ = ("_head", "_items", "_waiters")

    def __init__(self) -> None:
        # Items from `_head` on are waiting (taking one moves the head: a large request body,
        # queued at once in thousands of chunks, is taken in linear time).
        self._items: list[Any] = []
        self._head = 0
        self._waiters: list[asyncio.Future[None]] = []

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._wake()

    async def get(self) -> Any:
        while self._head == len(self._items):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                # Woken, then cancelled before taking the item: the next getter has it.
                if self._head < len(self._items) and not waiter.cancelled():
                    self._wake()
                raise
            finally:
                self._waiters.remove(waiter)
        return self._take()

    def get_nowait(self) -> Any:
        if self._head == len(self._items):
            raise asyncio.QueueEmpty
        return self._take()

    def qsize(self) -> int:
        return len(self._items) - self._head

    def empty(self) -> bool:
        return self._head == len(self._items)

    def _take(self) -> Any:
        item = self._items[self._head]
        self._items[self._head] = None
        self._head += 1
        if self._head == len(self._items):
            self._items.clear()
            self._head = 0
        return item

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                return
