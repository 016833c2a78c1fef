"""Real processes and clients for the tests: redis-server, daphne, manage.py, WebSockets.

Every wait here is on an event or a condition, with a deadline; none is a bare sleep.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import queue
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import websockets
from channels.layers import get_channel_layer

from broadcaster.listener import sse_url
from broadcaster.protocol import BROADCAST_GROUP

ROOT = Path(__file__).resolve().parent.parent


def default_sigint() -> None:
    """In a child about to exec: SIGINT back to its default. A suite started in the background
    (`make test &`) has SIGINT ignored, children inherit that, and Python then leaves it ignored,
    so a test's Ctrl-C would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# Ports the tests listen on come from a block of their own per pytest-xdist worker, below the
# kernel's ephemeral range (32768 and up here): a port the kernel hands out for bind(0) or
# for an outgoing connection (thousands of test clients) can never be one a test is about to
# listen on, and two workers never pick the same one.
PORT_BASE = 20_000
PORT_BLOCK = 1_500
_next_port = 0


def _worker_index() -> int:
    """This pytest-xdist worker's number (gw0 -> 0), 0 outside xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0


def free_port() -> int:
    """A loopback port nothing listens on, never handed out twice in one run: the next of this
    worker's block that can be bound now (with 8 workers, 20000-31999)."""
    global _next_port
    first = PORT_BASE + _worker_index() * PORT_BLOCK
    for _ in range(PORT_BLOCK):
        port = first + _next_port % PORT_BLOCK
        _next_port += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # held by something else (a server of an earlier test, still closing)
            return port
    raise AssertionError(f"no free port left in {first}-{first + PORT_BLOCK - 1}")


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str, poll: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # the condition may not be checkable yet
            last_error = exc
        else:
            if value:
                return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


async def eventually(
    predicate: Callable[[], Awaitable[Any]], *, timeout: float, what: str, poll: float = 0.05
) -> Any:
    """Await `predicate()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


# A migrated SQLite file for the project's subprocesses (set once per run by conftest.py).
SHARED_DATABASE_URL = ""


def base_env(redis_url: str, var_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "BROADCAST_", "DATABASE_URL", "PROMETHEUS_"))
    }
    if SHARED_DATABASE_URL:
        env["DATABASE_URL"] = SHARED_DATABASE_URL
    env.update(
        REDIS_URL=redis_url,
        BROADCAST_VAR_DIR=str(var_dir),
        BROADCAST_DOTENV="",  # a developer's .env must not change what the tests run
        # Servers the tests stop with SIGTERM drain for this long (tests of the drain set it).
        BROADCAST_DRAIN_SECONDS="2",
        DJANGO_SECRET_KEY="test-secret-key-" + "x" * 40,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def redis_answers(url: str) -> bool:
    """Whether the Redis at `url` answers a PING within half a second."""
    client = redis.Redis.from_url(url, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@dataclass
class RedisServer:
    """A real redis-server on a loopback port, started and stopped by the tests."""

    binary: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, extra: list[str] | None = None) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), *(extra or [])]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(self.answers, timeout=10, what=f"redis-server on port {self.port}")

    def answers(self) -> bool:
        return redis_answers(self.url)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


class Daphne:
    """A real daphne process serving the project on a loopback port."""

    def __init__(self, *, env: dict[str, str], log: Path, port: int | None = None,
                 tls: tuple[Path, Path] | None = None, prefix: list[str] | None = None) -> None:  # fmt: skip
        self.env = env
        # Run daphne through this command (a namespace of its own, say): it must exec daphne.
        self.prefix = prefix or []
        self.port = port or free_port()
        self.log_path = log
        # (certificate, private key): daphne terminates TLS itself.
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/broadcast/"

    def start(self) -> Daphne:
        endpoint = f"tcp:port={self.port}:interface=127.0.0.1:backlog=1024"
        if self.tls is not None:
            cert, key = self.tls
            endpoint = f"ssl:port={self.port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "daphne", "-e", endpoint, "broadcast_site.asgi:application"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        wait_until(self._listening, timeout=30, what=f"daphne on port {self.port}")
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daphne exited early:\n{self.log()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def rss(self) -> int:
        """The process's resident memory, in bytes."""
        import psutil

        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def steady_rss(self, *, timeout: float = 20) -> int:
        """The RSS once it has stopped growing (two samples 0.5 s apart within 1 MB)."""
        samples = [self.rss()]

        def settled() -> bool:
            samples.append(self.rss())
            return abs(samples[-1] - samples[-2]) < 1 << 20

        wait_until(settled, timeout=timeout, what="daphne's memory to settle", poll=0.5)
        return samples[-1]

    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(self.http + "/health/", timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def wait_for_clients(self, n: int, *, timeout: float = 20) -> None:
        wait_until(lambda: self.health() == (200, {"status": "ok", "redis": "ok", "clients": n}),
                   timeout=timeout, what=f"/health/ on port {self.port} to report {n} clients")  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


def manage(args: list[str], *, env: dict[str, str], stdin: str = "", timeout: float = 30
           ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run `python manage.py ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, input=stdin,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


class LineReader:
    """Collects a subprocess stream's lines in a thread, so tests can wait on them."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in iter(stream.readline, ""):
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[str], bool], *, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; saw {self.seen[-20:]}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(line)
            if predicate(line):
                return line


@dataclass
class Client:
    """A real WebSocket receiver that records every frame."""

    url: str
    frames: list[dict[str, Any]] = field(default_factory=list)
    ws: Any = None
    task: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self, **kwargs: Any) -> Client:
        self.ws = await websockets.connect(self.url, open_timeout=30, **kwargs)
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                self.frames.append(json.loads(raw))
                self.changed.set()

    def messages(self) -> list[str]:
        """Message texts in arrival order; a batch frame's messages count one by one."""
        texts: list[str] = []
        for f in self.frames:
            if f["type"] == "message":
                texts.append(f["text"])
            elif f["type"] == "batch":
                texts.extend(m["text"] for m in f["messages"])
        return texts

    def last_count(self) -> int | None:
        counts = [f["clients"] for f in self.frames if f["type"] == "count"]
        return counts[-1] if counts else None

    async def wait_for(self, predicate: Callable[[Client], bool], *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; frames: {self.frames[-5:]}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            await self.task


@dataclass
class SseClient(Client):
    """A real SSE receiver that records every frame as `Client` does (the same JSON frames),
    given the WebSocket URL: it opens the SSE endpoint beside it. Its stream token is `token`;
    the `close` frame that ends a stream is `closed_with` (not in `frames`)."""

    token: str = ""
    closed_with: dict[str, Any] | None = None
    last_id: str = ""
    # The stream's last event id after each frame in `frames`.
    event_ids: list[str] = field(default_factory=list)
    stream: Any = None

    async def connect(self, **kwargs: Any) -> SseClient:
        from broadcaster import sse_client

        headers = kwargs.get("additional_headers") or {}
        self.stream = await sse_client.open_stream(sse_url(self.url), headers=headers, last_id=self.last_id)
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            async for event in self.stream.events():
                frame = json.loads(event.data)
                assert frame["type"] == event.type, (frame, event)
                self.last_id = event.last_id
                if frame["type"] == "stream":
                    self.token = frame["token"]
                elif frame["type"] == "close":
                    self.closed_with = frame
                else:
                    self.frames.append(frame)
                    self.event_ids.append(event.last_id)
                self.changed.set()
        self.changed.set()

    @property
    def ended(self) -> bool:
        return self.task is not None and self.task.done()

    async def ack(self, base_url: str, ids: list[str]) -> int:
        """Post `seen` acks for this stream to `base_url` (any process); the answer's status."""
        from broadcaster import sse_client

        body = {"stream": self.token, "seen": ids}
        return await sse_client.post_json(f"{base_url}/sse/broadcast/seen/", body)

    async def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        if self.task is not None:
            await self.task


class ResumingClient:
    """A receiver that reconnects by itself (at once, with jitter, after 1012) and resumes with
    `since`: every message it gets, and when each connection closed and with what code."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seqs: list[int] = []
        self.epoch: str | None = None
        self.closes: list[tuple[float, int | None]] = []
        self.connects: list[float] = []
        self.ports: list[int] = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            query = f"?since={self.seqs[-1]}&epoch={self.epoch}" if self.seqs else ""
            code: int | None = None
            try:
                async with websockets.connect(self.url + query, open_timeout=30) as ws:
                    self.ports.append(ws.transport.get_extra_info("sockname")[1])
                    self.connects.append(time.monotonic())
                    async for raw in ws:
                        self._take(json.loads(raw))
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
            except (OSError, websockets.InvalidHandshake):
                # Refused, or reset while waiting in the accept queue of a worker that then
                # stopped listening (SO_REUSEPORT): a browser or `listen` retries too.
                pass
            self.closes.append((time.monotonic(), code))
            await asyncio.sleep(random.uniform(0, 1.0) if code == 1012 else 0.5)

    def _take(self, frame: dict[str, Any]) -> None:
        for message in frame["messages"] if frame["type"] == "batch" else [frame]:
            if message["type"] == "message":
                self.seqs.append(message["seq"])
                self.epoch = message["epoch"]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class Subscriber:
    """Reads what reaches the broadcast group's Redis channel, decoded by the real layer."""

    def __init__(self, url: str) -> None:
        layer = get_channel_layer()
        self.layer = layer
        self.pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(f"asgi__group__{BROADCAST_GROUP}")

    def texts(self, n: int, timeout: float = 10) -> list[str]:
        return [frame["text"] for frame in self.frames(n, timeout)]

    def frames(self, n: int, timeout: float = 10) -> list[dict[str, Any]]:
        """The next `n` published frames (messages and retractions), decoded."""
        import json

        got: list[dict[str, Any]] = []

        def more() -> bool:
            msg = self.pubsub.get_message(timeout=0.1)
            if msg is not None:
                got.append(json.loads(self.layer.deserialize(msg["data"])["frame"]))
            return len(got) >= n

        wait_until(more, timeout=timeout, what=f"{n} published frames", poll=0)
        return got


def raw_receiver(port: int, query: str = "", *, tls: bool = False) -> socket.socket:
    """A raw WebSocket client with a tiny receive buffer, past the handshake (read byte by byte,
    so no frame after it is consumed); it reads nothing more until the test does."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    if tls:
        import ssl

        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        sock = context.wrap_socket(sock)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/broadcast/{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_frames(sock: socket.socket, *, until: str, timeout: float) -> list[tuple[int, bytes]]:
    """Read unmasked server frames (opcode, payload) from a raw socket until a text frame
    containing `until`, a close frame, or the end of the stream."""
    sock.settimeout(timeout)
    data = b""
    frames: list[tuple[int, bytes]] = []
    while True:
        more, used = parse_frames(data)
        data = data[used:]
        for i, (opcode, payload) in enumerate(more):
            if opcode == 8 or (opcode == 1 and until.encode() in payload):
                return frames + more[: i + 1]
        frames += more
        chunk = sock.recv(1 << 20)
        if not chunk:
            return frames
        data += chunk


def parse_frames(data: bytes, i: int = 0) -> tuple[list[tuple[int, bytes]], int]:
    """The whole unmasked frames (opcode, payload) in `data` from offset `i`, and the offset
    after the last of them (a read can end anywhere, the extended length included)."""
    frames = []
    while i + 2 <= len(data):
        opcode, size = data[i] & 0x0F, data[i + 1] & 0x7F
        start = i + {126: 4, 127: 10}.get(size, 2)
        if start > len(data):
            break
        if size == 126:
            size = struct.unpack("!H", data[i + 2 : i + 4])[0]
        elif size == 127:
            size = struct.unpack("!Q", data[i + 2 : i + 10])[0]
        if start + size > len(data):
            break
        frames.append((opcode, bytes(data[start : start + size])))
        i = start + size
    return frames, i


def client_frame(payload: bytes, *, opcode: int = 1) -> bytes:
    """One final, masked client frame (RFC 6455 section 5.2), payload bytes as given."""
    mask, size = os.urandom(4), len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def http_request(port: int, method: str, path: str, *, headers: dict[str, str] | None = None,
                       body: bytes = b"", timeout: float = 30) -> HttpAnswer:  # fmt: skip
    """One HTTP/1.1 request on its own connection, for many at once without a thread each."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
                f"Content-Length: {len(body)}"]  # fmt: skip
        head += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    header_block, _, payload = rest.partition(b"\r\n\r\n")
    fields = dict(line.decode().split(": ", 1) for line in header_block.split(b"\r\n") if b": " in line)
    return HttpAnswer(status=int(status_line.split()[1]), headers={k.lower(): v for k, v in fields.items()},
                      body=payload)  # fmt: skip


def create_token(name: str, *, env: dict[str, str]) -> str:
    """Create a publish token with the real command; return its secret."""
    done = manage(["create_publish_token", name], env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[1].strip()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    loopback = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(loopback, critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


def scrape(base_url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, float], str]:
    """GET /metrics: (status, {'name{label="v",...}': value}, body). Samples are keyed the way
    the text format writes them, labels sorted."""
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(base_url + "/metrics", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            status, body = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, {}, exc.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return status, samples, body


# Debian's chromium, driven by Playwright (the browser tests, and the outage test's page).
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# The closed network here refuses Chromium's background connections; keep it quiet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def log_in(page: Any, base: str, username: str) -> None:
    """Open the operator page; being anonymous, fill in the admin login it redirects to (the
    users are conftest's `operators`; each one's password is pw-<name>)."""
    from playwright.async_api import expect

    await page.goto(base + "/operator/")
    await expect(page).to_have_url(base + "/admin/login/?next=/operator/")
    await page.fill("#id_username", username)
    await page.fill("#id_password", "pw-" + username)
    await page.click("input[type=submit]")


async def open_tab(browser: Any, url: str, dialogs: list[str]) -> Any:
    """A new tab on `url`, once its receiver says it is connected."""
    from playwright.async_api import expect

    page = await browser.new_page()
    page.on("dialog", lambda d: dialogs.append(d.message))
    await page.goto(url)
    await expect(page.locator("#state")).to_have_attribute("data-state", "open", timeout=15_000)
    return page


@dataclass
class SentinelGroup:
    """A real master, a real replica and three real Sentinels (the same redis-server binary in
    sentinel mode) on loopback, with timeouts short enough for a test: a dead master is noticed
    after 1 s and replaced within a few seconds."""

    binary: str
    workdir: Path
    master_name: str = "broadcast"
    servers: dict[str, RedisServer] = field(default_factory=dict)
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)

    def start(self) -> SentinelGroup:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> SentinelGroup:
        (self.workdir / "master").mkdir()
        (self.workdir / "replica").mkdir()
        master = RedisServer(self.binary, free_port(), self.workdir / "master")
        self.servers["master"] = master
        master.start()
        replica = RedisServer(self.binary, free_port(), self.workdir / "replica")
        self.servers["replica"] = replica
        replica.start(extra=["--replicaof", "127.0.0.1", str(master.port)])
        wait_until(lambda: self._role(replica.port) == b"slave" and self._link_up(replica.port), timeout=20,
                   what="the replica in sync")  # fmt: skip
        for i in range(3):
            port = free_port()
            conf = self.workdir / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"sentinel monitor {self.master_name} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {self.master_name} 1000\n"
                f"sentinel failover-timeout {self.master_name} 5000\n"
                f"sentinel parallel-syncs {self.master_name} 1\n"
            )
            sentinel = subprocess.Popen([self.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)  # fmt: skip
            self.sentinels.append(sentinel)
            self.sentinel_ports.append(port)
        wait_until(lambda: all(self._sentinel_knows(p) for p in self.sentinel_ports), timeout=30,
                   what="three sentinels watching the master and its replica")  # fmt: skip
        return self

    @property
    def env(self) -> dict[str, str]:
        """What the site needs to use this group (REDIS_URL unset)."""
        return {"REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports),
                "REDIS_SENTINEL_MASTER": self.master_name}  # fmt: skip

    def master_port(self) -> int:
        client = redis.Redis(port=self.sentinel_ports[0], socket_timeout=1)
        try:
            return int(client.sentinel_get_master_addr_by_name(self.master_name)[1])
        finally:
            client.close()

    def _role(self, port: int) -> bytes | None:
        client = redis.Redis(port=port, socket_timeout=0.5)
        try:
            return client.execute_command("ROLE")[0]
        except redis.RedisError:
            return None
        finally:
            client.close()

    def _link_up(self, port: int) -> bool:
        client = redis.Redis(port=port, socket_timeout=0.5)
        try:
            return client.info("replication").get("master_link_status") == "up"
        finally:
            client.close()

    def _sentinel_knows(self, port: int) -> bool:
        client = redis.Redis(port=port, socket_timeout=0.5)
        try:
            master = client.sentinel_master(self.master_name)
            return int(master.get("num-slaves", 0)) >= 1 and int(master.get("num-other-sentinels", 0)) >= 2
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        for proc in self.sentinels:
            proc.kill()
            proc.wait(timeout=10)
        for server in self.servers.values():
            server.stop()


class AdminSession:
    """A user logged in through the admin's own login form, over plain HTTP (real cookies,
    real CSRF): what a browser tab of that user sends on its WebSocket handshake."""

    def __init__(self, base: str) -> None:
        import http.cookiejar

        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def _cookie(self, name: str) -> str:
        return next(c.value for c in self.jar if c.name == name and c.value is not None)

    def _form_token(self, path: str) -> str:
        import re

        with self.opener.open(self.base + path, timeout=10) as resp:
            page = resp.read().decode()
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        return found.group(1) if found else self._cookie("csrftoken")

    def log_in(self, username: str, password: str) -> AdminSession:
        from urllib.parse import urlencode

        form = {"csrfmiddlewaretoken": self._form_token("/admin/login/"), "username": username,
                "password": password, "next": "/admin/"}  # fmt: skip
        with self.opener.open(self.base + "/admin/login/", data=urlencode(form).encode(), timeout=10) as resp:
            assert resp.url.endswith("/admin/"), f"the admin login of {username} failed (at {resp.url})"
        return self

    @property
    def session_key(self) -> str:
        return self._cookie("sessionid")

    def headers(self) -> dict[str, str]:
        """The handshake headers a browser tab of this session sends (its cookie, its origin)."""
        return {"Cookie": f"sessionid={self.session_key}", "Origin": self.base}

    def log_out(self) -> None:
        from urllib.parse import urlencode

        form = {"csrfmiddlewaretoken": self._form_token("/admin/")}
        with self.opener.open(
            self.base + "/admin/logout/", data=urlencode(form).encode(), timeout=10
        ) as resp:
            assert resp.status == 200
