"""HTTP views: the receiver page and the health check."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from redis.exceptions import RedisError

from broadcaster import redis_client
from broadcaster.presence import group_presence


def receiver_page(request: HttpRequest) -> HttpResponse:
    """The web client: shows each broadcast, the connection state and the live count."""
    return render(request, "broadcaster/receiver.html")


async def health(request: HttpRequest) -> JsonResponse:
    """200 with the global client count when Redis answers; 503 with the reason otherwise."""
    redis = redis_client.shared_client()
    try:
        await redis.ping()
        clients = await group_presence(redis).total()
    except (RedisError, OSError) as exc:
        return JsonResponse(
            {"status": "unavailable", "redis": f"unreachable: {exc}", "clients": None}, status=503
        )
    return JsonResponse({"status": "ok", "redis": "ok", "clients": clients})
