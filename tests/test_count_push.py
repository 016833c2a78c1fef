"""Count updates go out in slices (broadcaster/fanout/hub.py, COUNT_SLICE): a broadcast that
arrives during a push to thousands of receivers waits for one slice, not the whole push.
In process: a real Hub with recording receivers (no sockets, no Redis is touched)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from broadcaster.fanout.hub import COUNT_SLICE, Hub


class Recorder:
    def __init__(self, i: int, log: list[tuple[str, int]]) -> None:
        self.channel_name = f"r{i}"
        self.i = i
        self.log = log

    def write(self, message: dict[str, Any], frame: bytes | None, entries: list[Any]) -> bool:
        self.log.append((json.loads(message["text"])["type"], self.i))
        return True


def test_a_count_push_yields_to_the_loop_between_slices_and_a_newer_count_replaces_it():
    async def run() -> None:
        hub = Hub()
        log: list[tuple[str, int]] = []
        receivers = [Recorder(i, log) for i in range(COUNT_SLICE * 3 + 7)]
        hub.receivers.update(receivers)  # (not add(): that would start the presence heartbeat)
        hub.push_count(100)
        assert len(log) == COUNT_SLICE  # one slice now, the rest on later turns of the loop
        # A broadcast written now goes out before the rest of the push.
        hub.write_all(json.dumps({"type": "message"}), receivers[:1])
        assert log[-1] == ("message", 0)
        for _ in range(5):
            await asyncio.sleep(0)
        counts = [i for kind, i in log if kind == "count"]
        assert sorted(counts) == sorted(r.i for r in receivers)  # each exactly once

        # A newer total stops an older push that is still going out.
        log.clear()
        hub.push_count(200)
        hub.push_count(300)
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(log) == COUNT_SLICE + len(receivers)
        assert hub.total == 300

    asyncio.run(run())
