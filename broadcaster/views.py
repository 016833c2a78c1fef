"""HTTP views: the receiver page, the health and readiness checks, and the metrics."""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from broadcaster import metrics, protocol
from broadcaster.backend import redis_client
from broadcaster.bearer import bearer
from broadcaster.presence import group_presence
from broadcaster.sending import log_health
from broadcaster.server.drain import drain
from broadcaster.server.guard import TOO_MANY_CONNECTIONS, out_of_files


def receiver_page(request: HttpRequest) -> HttpResponse:
    """The web client: shows each broadcast, the connection state and the live count."""
    return render(
        request,
        "broadcaster/receiver.html",
        {"receiver_path": protocol.RECEIVER_PATH, "sse_path": protocol.SSE_PATH},
    )


async def health(request: HttpRequest) -> JsonResponse:
    """200 with the global client count when Redis answers; 503 with the reason otherwise."""
    redis = redis_client.shared_client()
    try:
        await redis.ping()
        clients = await group_presence(redis).total()
    except (RedisError, OSError) as exc:
        if out_of_files(exc):  # Redis is fine: this process cannot open a connection to it
            return JsonResponse({"status": "unavailable", "error": TOO_MANY_CONNECTIONS, "clients": None},
                                status=503)  # fmt: skip
        # Where Redis is and what it said stay in the server log, not in a public answer.
        return JsonResponse({"status": "unavailable", "redis": "unreachable", "clients": None}, status=503)
    return JsonResponse({"status": "ok", "redis": "ok", "clients": clients})


async def ready(request: HttpRequest) -> JsonResponse:
    """For load balancers: 200 while this process takes new clients; 503 once it is draining
    (SIGTERM), cannot reach Redis, or cannot write the broadcast log (no broadcast can be sent)."""
    if drain.draining:
        return JsonResponse({"status": "draining"}, status=503)
    try:
        await redis_client.shared_client().ping()
    except (RedisError, OSError):
        return JsonResponse({"status": "unavailable", "redis": "unreachable"}, status=503)
    why = await log_health.failing()
    if why is not None:
        return JsonResponse({"status": "unavailable", "database": why}, status=503)
    return JsonResponse({"status": "ready"})


# Set by a proxy in front (HAProxy's config sets X-Forwarded-For): the request came from
# somewhere else, whatever address it arrives from.
FORWARDED_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")
# Loopback and private networks (RFC 1918, IPv6 unique local): not `is_private`, which also
# holds documentation, benchmarking and reserved ranges.
INSIDE = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                            "::1/128", "fc00::/7")]  # fmt: skip
METRICS_REFUSED = ("/metrics is served to loopback and private addresses that are not behind a proxy, "
                   "or with 'Authorization: Bearer <BROADCAST_METRICS_TOKEN>'.\n")  # fmt: skip


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text: this host's totals (all workers), for a scraper inside the network or
    one holding BROADCAST_METRICS_TOKEN; 403 for anyone else."""
    if not _may_scrape(request):
        return HttpResponse(METRICS_REFUSED, status=403, content_type="text/plain; charset=utf-8")
    return HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)


def _may_scrape(request: HttpRequest) -> bool:
    token: str = settings.BROADCAST_METRICS_TOKEN
    secret = bearer(request)
    if token and secret is not None:
        return hmac.compare_digest(secret.encode(), token.encode())
    if any(name in request.headers for name in FORWARDED_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in INSIDE)
