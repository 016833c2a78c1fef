"""The Server-Sent Events fallback, /sse/broadcast/: a receiver for clients whose proxy strips
the WebSocket upgrade, with the same session and delivery rules (broadcaster/fanout/receiver.py).

The stream's first event (`stream`) carries a token; its `seen` acks are posted with it to
/sse/broadcast/seen/ (`SeenEndpoint`). The post may reach another process than the stream's
(another worker, another host behind the load balancer): the token names the stream's
process, and the ack is relayed to it over Redis pub/sub, where `Streams` listens while this
process has SSE receivers. docs/PROTOCOL.md, "Server-Sent Events", is the wire contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from broadcaster import identity, protocol
from broadcaster.backend import redis_client
from broadcaster.fanout.origin import OriginCheck
from broadcaster.fanout.receiver import Receiver, refused_for_redis
from broadcaster.fanout.sse_link import SseLink, retry_ms, sse_link_for
from broadcaster.history.resume import ResumePoint, resume_point
from broadcaster.protocol import CloseCode
from broadcaster.server.admission import admission

logger = logging.getLogger(__name__)

# A comment goes to every SSE receiver this often, so proxies keep idle streams open.
KEEPALIVE_SECONDS = 15.0
# The largest body of an ack post, and the most ids in one.
MAX_SEEN_BODY = protocol.MAX_CLIENT_FRAME
MAX_SEEN_IDS = 50
# How long a process's first stream waits for the relay's subscription before it opens anyway.
SUBSCRIBE_WAIT = 2.0
RELAY_CHANNEL = "broadcaster:sse-seen:"

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-store, no-transform"),
    # nginx (and proxies that honour it) would otherwise buffer the stream.
    (b"x-accel-buffering", b"no"),
]


class SseReceiver(Receiver):
    """One SSE receiver: an ASGI application for one GET of /sse/broadcast/."""

    token = ""

    def __init__(self, link: SseLink) -> None:
        self.link = link

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        self.channel_layer = get_channel_layer()
        streams = get_streams()
        refusal = self.admit()
        if refusal is not None:
            await self._refuse(receive, *refusal)
            return
        reader: asyncio.Task[None] | None = None
        new_local_channel = getattr(self.channel_layer, "new_local_channel", None)
        try:
            try:
                if new_local_channel is not None:
                    self.channel_name = await new_local_channel()
                else:
                    self.channel_name = await self.channel_layer.new_channel()
                    reader = asyncio.get_running_loop().create_task(self._read_channel())
            except (RedisError, OSError) as exc:
                await self._refuse(receive, *refused_for_redis(self._peer(), exc))
                return
            self.token = streams.add(self)
            await streams.ready()
            found = identity.credential(scope.get("headers", []))
            resume = _resume(scope)
            scope["headers"] = []
            self.link.start(_HEADERS, protocol.sse_event(protocol.stream_frame(token=self.token),
                                                         retry_ms=retry_ms()))  # fmt: skip
            if await self.join(found, resume):
                logger.info("SSE receiver connected: %s", self._peer())
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            if reader is not None:
                reader.cancel()
            streams.discard(self.token)
            if await self.leave():
                logger.info("SSE receiver disconnected: %s", self._peer())
            if new_local_channel is not None and getattr(self, "channel_name", None):
                self.channel_layer.forget_local_channel(self.channel_name)
            admission.leave()

    async def _refuse(self, receive: Any, code: int, reason: str) -> None:
        """Answer with a stream of one `close` event (1012, 1013, 4503), then wait for the end."""
        self.link.start(_HEADERS, b"")
        self.link.refuse(code, reason)
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _read_channel(self) -> None:
        """Under a layer without the hub's fast path: broadcasts come on this receiver's channel."""
        while True:
            message = await self.channel_layer.receive(self.channel_name)
            if message.get("type") == protocol.BROADCAST_EVENT:
                await self.broadcast_message(message)

    def _close_for_protocol_error(self, code: CloseCode, reason: str) -> None:
        """On SSE the `close` event carries the reason (no `error` frame before it)."""
        self._close_now(code, reason)

    def _close_link(self, code: CloseCode, reason: str | None) -> None:
        self.link.refuse(int(code), reason)


def _resume(scope: dict[str, Any]) -> ResumePoint | None:
    """Where the client stopped: its EventSource's Last-Event-ID (sent on its own reconnects),
    else `?since=&epoch=` as on the WebSocket."""
    for name, value in scope.get("headers", []):
        if name == b"last-event-id":
            place = protocol.last_event_id(value.decode("latin-1"))
            if place is not None:
                return ResumePoint(since=place[0], epoch=place[1])
    return resume_point(scope.get("query_string", b""))


class Streams:
    """This process's SSE receivers by token: their keep-alive comments, and the relay of acks
    posted to other processes."""

    def __init__(self) -> None:
        # Names this process in its streams' tokens and its relay channel.
        self.key = secrets.token_hex(8)
        self.by_token: dict[str, SseReceiver] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()

    @property
    def channel(self) -> str:
        return RELAY_CHANNEL + self.key

    def add(self, receiver: SseReceiver) -> str:
        """A token for `receiver`'s stream: `<process key>.<secret>.<signature>`, so a post
        for another process is relayed only if this site signed it (`signed`)."""
        body = f"{self.key}.{secrets.token_urlsafe(16)}"
        token = f"{body}.{_signature(body)}"
        self.by_token[token] = receiver
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._subscribed.clear()
            self._tasks = [loop.create_task(self._relay()), loop.create_task(self._keep_alive())]
        return token

    async def ready(self) -> None:
        """Wait (at most SUBSCRIBE_WAIT) for the relay's subscription, so acks posted to other
        processes reach the streams opened from now on (when Redis is down, the receiver is
        refused with 4503 on joining anyway)."""
        if not self._subscribed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SUBSCRIBE_WAIT):
                    await self._subscribed.wait()

    def discard(self, token: str) -> None:
        self.by_token.pop(token, None)
        if not self.by_token and self._tasks:
            for task in self._tasks:
                task.cancel()
            self._tasks = []

    async def seen(self, token: str, ids: list[str]) -> int:
        """Count the acks of stream `token`: 204 (its stream is here), 202 (relayed to its
        process), 404 (no such stream), 503 (Redis could not relay them)."""
        receiver = self.by_token.get(token)
        if receiver is not None:
            for id in ids:
                receiver.seen(id)
            return 204
        key = token.partition(".")[0]
        if key == self.key or not signed(token):
            return 404  # not a stream of this site's: nothing sent to Redis
        try:
            heard = await redis_client.shared_client().publish(
                RELAY_CHANNEL + key, json.dumps({"stream": token, "seen": ids})
            )
        except (RedisError, OSError) as exc:
            logger.warning("Could not relay SSE acks: %s", exc)
            return 503
        return 202 if heard else 404

    async def _relay(self) -> None:
        """Acks posted to other processes for this one's streams, over Redis pub/sub."""
        delay = 0.5
        while True:
            pubsub = redis_client.shared_client().pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                delay = 0.5
                async for message in pubsub.listen():
                    self._relayed(message.get("data"))
            except (RedisError, OSError) as exc:
                logger.warning("SSE ack relay lost Redis (retrying in %.1f s): %s", delay, exc)
            except Exception:
                logger.exception("SSE ack relay failed (retrying in %.1f s)", delay)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _relayed(self, data: Any) -> None:
        try:
            found = json.loads(data)
            receiver = self.by_token.get(found["stream"])
            ids = [i for i in found["seen"] if protocol.is_message_id(i)][:MAX_SEEN_IDS]
        except (ValueError, TypeError, KeyError):
            return
        if receiver is not None:
            for id in ids:
                receiver.seen(id)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            for receiver in list(self.by_token.values()):
                try:
                    receiver.link.keep_alive()
                except Exception:  # one broken connection must not stop the others' comments
                    logger.exception("Could not write a keep-alive to SSE receiver %s", receiver._peer())


def _signature(body: str) -> str:
    key = hashlib.sha256(b"broadcaster.sse-stream:" + settings.SECRET_KEY.encode()).digest()
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()[:24]


def signed(token: str) -> bool:
    """Whether `token` is a stream token this site made (on any of its processes)."""
    body, dot, signature = token.rpartition(".")
    return bool(dot) and body.count(".") == 1 and hmac.compare_digest(signature, _signature(body))


_streams: dict[asyncio.AbstractEventLoop, Streams] = {}


def get_streams() -> Streams:
    """The SSE streams of the running event loop."""
    loop = asyncio.get_running_loop()
    found = _streams.get(loop)
    if found is None:
        for old in [k for k in _streams if k.is_closed()]:
            del _streams[old]
        found = _streams[loop] = Streams()
    return found


def sse_receiver(scope: dict[str, Any], receive: Any, send: Any, origins: OriginCheck) -> Any:
    """The ASGI application for a request to SSE_PATH: a stream (GET), else an error."""
    if scope["method"] != "GET":
        return _answer(send, 405, "Only GET opens a stream", allow=b"GET")
    if not origins.allows(scope):
        return _answer(send, 403, "Origin not allowed")
    link = sse_link_for(send, max_unsent=settings.BROADCAST_MAX_UNSENT_BYTES)
    link.cap_kernel_buffer(settings.BROADCAST_SOCKET_SEND_BUFFER)
    link.no_delay()
    return SseReceiver(link)(scope, receive, send)


async def seen_endpoint(scope: dict[str, Any], receive: Any, send: Any, origins: OriginCheck) -> None:
    """POST SSE_SEEN_PATH, `{"stream": <token>, "seen": [<message id>, ...]}`: count the ids
    as seen on that stream (docs/PROTOCOL.md)."""
    if scope["method"] != "POST":
        await _answer(send, 405, "Only POST takes acks", allow=b"POST")
        return
    if not origins.allows(scope):
        await _answer(send, 403, "Origin not allowed")
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if len(body) > MAX_SEEN_BODY:
            await _answer(send, 413, f"An ack post is at most {MAX_SEEN_BODY} bytes")
            return
        if not message.get("more_body"):
            break
    parsed = _parse_seen(body)
    if isinstance(parsed, str):
        await _answer(send, 400, parsed)
        return
    status = await get_streams().seen(*parsed)
    if status == 404:
        await _answer(send, 404, "No such stream (closed, or never opened)")
    elif status == 503:
        await _answer(send, 503, "Redis unreachable; the acks were not counted")
    else:
        headers = [(b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _parse_seen(body: bytes) -> tuple[str, list[str]] | str:
    """(token, ids) of an ack post, or what is wrong with it."""
    try:
        found = json.loads(body)
    except (ValueError, RecursionError):
        return "The body is not JSON"
    if not isinstance(found, dict) or not isinstance(found.get("stream"), str):
        return 'Expected {"stream": "<token>", "seen": ["<message id>", ...]}'
    ids = found.get("seen")
    if not isinstance(ids, list) or not ids or len(ids) > MAX_SEEN_IDS:
        return f'"seen" must list 1 to {MAX_SEEN_IDS} message ids'
    if not all(protocol.is_message_id(i) for i in ids):
        return '"seen" holds something that is not a message id'
    return found["stream"], ids


async def _answer(send: Any, status: int, error: str, *, allow: bytes | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    if allow is not None:
        headers.append((b"allow", allow))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps({"error": error}).encode()})
