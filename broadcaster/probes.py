"""Health, readiness and metrics answered before the rest of the middleware.

Load balancers and scrapers reach a host by its address: HAProxy's checks, Kubernetes probes
and Prometheus send a Host header (or none) that is rarely in ALLOWED_HOSTS, and over plain
HTTP, which DJANGO_SSL_REDIRECT would redirect. These three answers use neither the host nor
the scheme, so they are served first, whatever either says; every other path goes through the
whole stack as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.urls import NoReverseMatch, reverse

from broadcaster import views

__all__ = ["ProbeMiddleware"]

logger = logging.getLogger(__name__)

# URL names (urls.py) of the probes, and their views.
PROBES: dict[str, Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]] = {
    "health": views.health,
    "ready": views.ready,
    "metrics": views.metrics_view,
}


class ProbeMiddleware:
    """First in MIDDLEWARE: GET (or HEAD) on a probe path goes straight to its view."""

    async_capable = True
    sync_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> None:
        self.get_response = get_response
        # Their paths, as urls.py has them.
        self.probes = {}
        for name, view in PROBES.items():
            try:
                self.probes[reverse(f"broadcaster:{name}")] = view
            except NoReverseMatch:
                # The project did not include broadcaster.urls: nothing to answer early.
                logger.warning("ProbeMiddleware: no URL named broadcaster:%s; include broadcaster.urls", name)
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        view = self.probes.get(request.path_info)
        if view is None:
            return await self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        if iscoroutinefunction(view):
            return await view(request)  # type: ignore[misc]
        return await sync_to_async(view, thread_sensitive=False)(request)  # type: ignore[arg-type]
