"""A small Server-Sent Events client over asyncio streams: `manage.py listen --transport sse`,
the tests and the benchmarks read the SSE fallback with it (no HTTP library needed).

HTTP/1.1 GET, chunked or plain body, `http` and `https`; the event stream parsed as the HTML
standard says (fields `event`, `data`, `id`, `retry`; comments; CR, LF or CRLF line ends).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

# The most an answer's head (status line and headers) may take.
MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Event:
    """One dispatched event: its type ("message" if the stream named none), data, and the
    stream's last event id after it."""

    type: str
    data: str
    last_id: str
    retry: int | None = None


class HttpError(Exception):
    """The server answered with another status than 200."""

    def __init__(self, status: int, body: bytes) -> None:
        try:
            said = json.loads(body).get("error", "")
        except (ValueError, AttributeError):
            said = body[:200].decode(errors="replace")
        super().__init__(f"HTTP {status}{': ' + said if said else ''}")
        self.status = status


def _target(url: str) -> tuple[str, int, str, ssl.SSLContext | None, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Not an http(s) URL: {url!r}")
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.netloc.rpartition("@")[2]
    return parts.hostname, port, path, ssl.create_default_context() if secure else None, host


async def _request(url: str, method: str, headers: dict[str, str], body: bytes = b""
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, dict[str, str]]:  # fmt: skip
    hostname, port, path, context, host = _target(url)
    reader, writer = await asyncio.open_connection(hostname, port, ssl=context, limit=MAX_HEAD)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        writer.close()
        raise ConnectionError("the server closed before answering") from exc
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(status_line.split(" ", 2)[1])
    except (IndexError, ValueError):
        writer.close()
        raise ConnectionError(f"not an HTTP answer: {status_line[:80]!r}") from None
    found = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            found[name.strip().lower()] = value.strip()
    return reader, writer, status, found


async def _body(reader: asyncio.StreamReader, headers: dict[str, str], *, idle: float | None = None
                ) -> AsyncIterator[bytes]:  # fmt: skip
    """The answer's body as it arrives (chunked, by length, or until the server closes);
    TimeoutError when nothing arrives for `idle` seconds."""
    # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that arrives
    # as its read completes, and `manage.py listen --transport sse` then ignored Ctrl-C.
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            async with asyncio.timeout(idle):
                line = await reader.readline()
            try:
                size = int(line.split(b";")[0].strip() or b"0", 16)
            except ValueError:
                raise ConnectionError(f"not a chunk size: {line[:40]!r}") from None
            if size == 0:
                return
            async with asyncio.timeout(idle):
                chunk = await reader.readexactly(size + 2)
            yield chunk[:-2]
    elif "content-length" in headers:
        async with asyncio.timeout(idle):
            body = await reader.readexactly(int(headers["content-length"]))
        yield body
    else:
        while True:
            async with asyncio.timeout(idle):
                chunk = await reader.read(65536)
            if not chunk:
                return
            yield chunk


class EventStream:
    """One open stream; iterate `events()`, then `close()`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str]):
        self.reader, self.writer, self.headers = reader, writer, headers
        self.last_id = ""

    async def events(self, *, idle: float | None = None) -> AsyncIterator[Event]:
        """Each event until the server ends the stream; TimeoutError when nothing (not even a
        keep-alive comment) arrives for `idle` seconds."""
        buffer = ""
        kind, data, retry = "", [], None
        # (A character may be split between chunks.)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        async for chunk in _body(self.reader, self.headers, idle=idle):
            buffer += decoder.decode(chunk)
            buffer = buffer.replace("\r\n", "\n").replace("\r", "\n")
            *lines, buffer = buffer.split("\n")
            for line in lines:
                if not line:
                    if data:
                        yield Event(kind or "message", "\n".join(data), self.last_id, retry)
                    kind, data, retry = "", [], None
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    kind = value
                elif name == "data":
                    data.append(value)
                elif name == "id" and "\0" not in value:
                    self.last_id = value
                elif name == "retry" and value.isdigit():
                    retry = int(value)

    def close(self) -> None:
        self.writer.close()


async def open_stream(url: str, *, headers: dict[str, str] | None = None, last_id: str = "") -> EventStream:
    """GET `url` as an event stream; HttpError for an answer other than 200."""
    sent = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **(headers or {})}
    if last_id:
        sent["Last-Event-ID"] = last_id
    reader, writer, status, found = await _request(url, "GET", sent)
    if status != 200:
        body = b"".join([part async for part in _body(reader, found)]) if "content-length" in found else b""
        writer.close()
        raise HttpError(status, body)
    stream = EventStream(reader, writer, found)
    stream.last_id = last_id  # as an EventSource keeps it across its reconnects
    return stream


async def post_json(url: str, payload: object, *, headers: dict[str, str] | None = None) -> int:
    """POST `payload` as JSON to `url`; the answer's status."""
    sent = {"Content-Type": "application/json", "Connection": "close", **(headers or {})}
    _, writer, status, _ = await _request(url, "POST", sent, json.dumps(payload).encode())
    writer.close()
    return status
