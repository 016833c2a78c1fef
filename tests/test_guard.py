"""broadcaster/server/guard.py and answers.py without a server: the answers it writes and how it tells a
process out of descriptors from a service that is down (the live behaviour: test_hostile.py)."""

from __future__ import annotations

import errno
import json

from redis.exceptions import ConnectionError as RedisConnectionError

from broadcaster.server.answers import answer
from broadcaster.server.guard import out_of_files


def test_out_of_files_is_told_from_a_service_that_is_down():
    emfile = OSError(errno.EMFILE, "Too many open files")
    try:
        try:
            raise emfile
        except OSError as exc:
            raise RedisConnectionError("Error 24 connecting to 127.0.0.1:6379.") from exc
    except RedisConnectionError as wrapped:
        assert out_of_files(wrapped)
    assert out_of_files(RedisConnectionError("Error 24 connecting to x. Too many open files."))
    assert out_of_files(OSError(errno.ENFILE, "Too many open files in system"))
    assert not out_of_files(
        RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    )
    assert not out_of_files(OSError(errno.ECONNREFUSED, "Connection refused"))


def test_answers_are_whole_json_responses_that_close():
    raw = answer(503, "Service Unavailable", "Too many open connections.", headers={"Retry-After": "5"})
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    assert {"Connection: close", "Cache-Control: no-store", "Retry-After: 5", f"Content-Length: {len(body)}",
            "Content-Type: application/json"} <= set(lines)  # fmt: skip
    assert json.loads(body) == {"error": "Too many open connections."}
