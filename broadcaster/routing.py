"""WebSocket URL routes."""

from __future__ import annotations

from django.urls import path

from broadcaster.consumers import ReceiverConsumer

websocket_urlpatterns = [
    path("ws/broadcast/", ReceiverConsumer.as_asgi()),
]
