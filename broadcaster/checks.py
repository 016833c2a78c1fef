"""System checks (`manage.py check`, run by runserver and migrate) for settings that work but
would surprise in production."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Warning, register
from django.utils.module_loading import import_string


@register("broadcaster")
def check_channel_layer(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """The fan-out fast path needs the project's channel layer (or a subclass of it)."""
    from broadcaster.layer import FanoutChannelLayer

    fanout = f"{FanoutChannelLayer.__module__}.{FanoutChannelLayer.__qualname__}"
    backend = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    try:
        layer_class = import_string(backend)
    except ImportError:
        return []  # Channels reports a backend it cannot import
    if isinstance(layer_class, type) and issubclass(layer_class, FanoutChannelLayer):
        return []
    return [
        Warning(
            f"The default channel layer is {backend}, not {fanout}.",
            hint="Receivers still work, through per-consumer dispatch, but each broadcast then "
            "costs a queue, a task and a thread hop per client (see docs/PERFORMANCE.md).",
            id="broadcaster.W001",
        )
    ]


@register("broadcaster", deploy=True)
def check_embedded_redis(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """The embedded Redis is for development: one host, no persistence."""
    if not settings.EMBEDDED_REDIS:
        return []
    return [
        Warning(
            "REDIS_URL is not set: the embedded development Redis is in use.",
            hint="It serves one host only and keeps nothing across restarts. Set REDIS_URL to "
            "your Redis (redis://host:6379/0) so that every server process shares one.",
            id="broadcaster.W002",
        )
    ]
