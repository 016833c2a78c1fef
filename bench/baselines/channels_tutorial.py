"""Baseline: the Channels tutorial pattern. A consumer per connection joins a group;
`group_send` reaches each consumer's handler, which calls `self.send`.

Serve: DJANGO_SETTINGS_MODULE=bench.baselines.tutorial_settings \
       daphne bench.baselines.channels_tutorial:application
Publish: python -m bench.baselines.channels_tutorial (one group_send per stdin line)
"""

from __future__ import annotations

import asyncio
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.baselines.tutorial_settings")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

GROUP = "chat"


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def chat_message(self, event: dict[str, str]) -> None:
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter(
    {"http": django_asgi_app, "websocket": URLRouter([path("ws/chat/", ChatConsumer.as_asgi())])}
)


async def publish_stdin() -> None:
    layer = get_channel_layer()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        await layer.group_send(GROUP, {"type": "chat.message", "text": line.decode().rstrip("\n")})


if __name__ == "__main__":
    asyncio.run(publish_stdin())
