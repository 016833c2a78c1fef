"""The receiver endpoint, /ws/broadcast/: a thin adapter between a WebSocket and the hub.

The connection's life: admission, the handshake (refused with a named code while draining,
full, or without Redis), client frames, and closing. The session itself (identity, joining,
the backlog, `seen` acks): broadcaster/fanout/receiver.py, shared with the SSE transport; what
the client is sent, and the slow-consumer bound: broadcaster/fanout/delivery.py.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from channels.utils import await_many_dispatch
from django.conf import settings
from redis.exceptions import RedisError

from broadcaster import identity, protocol
from broadcaster.fanout.hub import get_hub
from broadcaster.fanout.receiver import Receiver, refused_for_redis
from broadcaster.fanout.transport import AsgiLink, Link
from broadcaster.history.resume import resume_point
from broadcaster.protocol import CloseCode
from broadcaster.server.admission import admission

logger = logging.getLogger(__name__)


class ReceiverConsumer(Receiver, AsyncWebsocketConsumer):
    """One WebSocket receiver: joins the broadcast group and gets every message and count
    update for it (the session: broadcaster/fanout/receiver.py)."""

    def __init__(self, link: Link | None = None) -> None:
        """`link`: how to write to this connection (the router picks it for the server);
        None: through the ASGI `send`."""
        super().__init__()
        if link is not None:
            self.link = link

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Runs the connection; refuses it with a named code when Redis is unreachable.

        As Channels' AsyncConsumer.__call__, but lighter with the project's layer: the
        receiver is reached only through its group's fast path (the hub), so its channel
        needs no Redis subscription and no task reading a queue; only the socket is read.
        """
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.base_send = send
        if not hasattr(self, "link"):
            self.link = AsgiLink(send, max_unsent=settings.BROADCAST_MAX_UNSENT_BYTES)
        refusal = self.admit()
        if refusal is not None:
            await self._refuse(receive, *refusal)
            return
        new_local_channel = getattr(self.channel_layer, "new_local_channel", None)
        try:
            if new_local_channel is not None:
                self.channel_name = await new_local_channel()
                while True:
                    await self.dispatch(await receive())
            else:
                self.channel_name = await self.channel_layer.new_channel()
                channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
                await await_many_dispatch([receive, channel_receive], self.dispatch)
        except StopConsumer:
            pass
        except (RedisError, OSError) as exc:
            if getattr(self, "channel_name", None) is not None:
                raise
            # The channel layer could not even create this consumer's channel.
            await self._refuse(receive, *refused_for_redis(self._peer(), exc))
        finally:
            # Also on cancel (server shutdown), when disconnect() does not run.
            self._stop_catching_up()
            if self.joined:
                self.joined = False
                get_hub().discard(self)
            if new_local_channel is not None and getattr(self, "channel_name", None):
                self.channel_layer.forget_local_channel(self.channel_name)
            admission.leave()

    async def _refuse(self, receive: Any, code: int, reason: str) -> None:
        """Accept and close with `code` at once (1012, 1013); read until the client is gone."""
        await receive()  # websocket.connect
        await self.base_send({"type": "websocket.accept"})
        self.link.refuse(int(code), reason)
        while (await receive())["type"] != "websocket.disconnect":
            pass

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Runs each handler directly. Channels' dispatch first closes stale database
        connections through a thread hop on every message; no receiver handler touches the
        database, and the hop was a sixth of the CPU of a connect storm."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        """Called when the WebSocket handshake arrives."""
        found = identity.credential(self.scope.get("headers", []))
        await self.accept()
        # The origin is checked, the credential taken, and nothing reads the headers again.
        self.scope["headers"] = []
        self.link.shed_handshake()
        if await self.join(found, resume_point(self.scope.get("query_string", b""))):
            logger.info("Receiver connected: %s", self._peer())

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Called when the socket closes. As Channels' own, without closing stale database
        connections through a thread hop: no receiver handler touches the database (see
        dispatch()), and the hop was 4% of daphne's CPU in a connect storm."""
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes, by either side, for any reason."""
        failure = self.link.failure()
        if failure is not None:
            logger.warning("Closed receiver %s with code %d: %s", self._peer(), *failure)
        if await self.leave():
            logger.info("Receiver disconnected: %s (code %s)", self._peer(), code)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called with each frame the client sends: `ping` or `seen` (docs/PROTOCOL.md)."""
        if self.closing and not self.restarting:
            return  # closed for a protocol error or as a slow consumer: nothing more counts
        frame = protocol.parse_client_frame(text_data)
        if frame is not None and frame.type == protocol.FRAME_PING:
            self.write(protocol.send_event(protocol.pong_frame()), None, [])
            return
        if frame is not None and frame.type == protocol.FRAME_SEEN:
            self.seen(frame.id)
            return
        shown = (text_data or repr(bytes_data))[:80]
        logger.warning("Closing receiver %s: unsupported frame %r", self._peer(), shown)
        self._close_for_protocol_error(CloseCode.UNSUPPORTED_FRAME, "unsupported frame")
