"""HTTP views: the receiver page, the health check and the readiness check."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from redis.exceptions import RedisError

from broadcaster import redis_client
from broadcaster.drain import drain
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


async def ready(request: HttpRequest) -> JsonResponse:
    """For load balancers: 200 while this process takes new clients; 503 once it is draining
    (SIGTERM) or cannot reach Redis."""
    if drain.draining:
        return JsonResponse({"status": "draining"}, status=503)
    try:
        await redis_client.shared_client().ping()
    except (RedisError, OSError):
        return JsonResponse({"status": "unavailable", "redis": "unreachable"}, status=503)
    return JsonResponse({"status": "ready"})
