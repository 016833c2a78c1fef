"""System checks (`manage.py check`, run by runserver and migrate): what a project embedding the
app forgot, and settings that work but would surprise in production."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Warning, register
from django.utils.module_loading import import_string

DOCS = "docs/EMBEDDING.md"


@register("broadcaster")
def check_installed_apps(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """`manage.py runserver` must be daphne's (or this app's): Django's own serves no WebSockets.
    Warnings, not errors: a project served by another ASGI server may leave daphne out."""
    names = [config.name for config in apps.get_app_configs()]
    if "daphne" not in names:
        return [
            Warning(
                "'daphne' is not in INSTALLED_APPS: `manage.py runserver` serves no WebSockets.",
                hint=f'Add "daphne" first in INSTALLED_APPS, unless another ASGI server runs the '
                f"site ({DOCS}).",
                id="broadcaster.W004",
            )
        ]
    staticfiles = "django.contrib.staticfiles"
    if staticfiles in names and names.index("daphne") > names.index(staticfiles):
        return [
            Warning(
                f"'daphne' comes after '{staticfiles}' in INSTALLED_APPS: `manage.py runserver` "
                "would be Django's own, which serves no WebSockets.",
                hint='Move "daphne" to the top of INSTALLED_APPS.',
                id="broadcaster.W005",
            )
        ]
    return []


@register("broadcaster")
def check_asgi_application(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    """ASGI_APPLICATION names an application built with `broadcaster.asgi.with_broadcasts`.

    The module is not imported here (building the application prepares a server): when it is
    already loaded, whether this process built one is checked (the application may be wrapped
    again, e.g. by an error tracker), else its source is read.
    """
    from broadcaster import asgi

    target: str = getattr(settings, "ASGI_APPLICATION", "") or ""
    if not target:
        return [
            Error(
                "ASGI_APPLICATION is not set.",
                hint=f'Set ASGI_APPLICATION = "<project>.asgi.application" ({DOCS}).',
                id="broadcaster.E003",
            )
        ]
    module_name, _, attribute = target.rpartition(".")
    module = sys.modules.get(module_name)
    if module is not None:
        wrapped = asgi.wrapped and getattr(module, attribute, None) is not None
    else:
        try:
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
        if origin is None or not origin.endswith(".py"):
            return []  # Django and daphne report an application they cannot import
        with open(origin, encoding="utf-8") as source:
            wrapped = "with_broadcasts" in source.read()
    if wrapped:
        return []
    return [
        Warning(
            f"{target} does not serve receivers: it is not built with broadcaster.asgi.with_broadcasts.",
            hint="In asgi.py: application = with_broadcasts(get_asgi_application()) "
            f"(from broadcaster.asgi import with_broadcasts; {DOCS}).",
            id="broadcaster.W003",
        )
    ]


@register("broadcaster")
def check_channel_layer(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    """The fan-out fast path needs the project's channel layer (or a subclass of it)."""
    from broadcaster.layer import FanoutChannelLayer

    fanout = f"{FanoutChannelLayer.__module__}.{FanoutChannelLayer.__qualname__}"
    backend = getattr(settings, "CHANNEL_LAYERS", {}).get("default", {}).get("BACKEND", "")
    if not backend:
        return [
            Error(
                "CHANNEL_LAYERS has no default layer: broadcasts cannot reach receivers.",
                hint=f'Set CHANNEL_LAYERS["default"]["BACKEND"] = "{fanout}" with your Redis ({DOCS}).',
                id="broadcaster.E004",
            )
        ]
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


@register("broadcaster")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Every app setting a project set holds to the bounds the standalone site's environment
    parsing holds it to (one table: broadcaster/conf.py)."""
    from broadcaster.conf import APP_SETTINGS

    errors = []
    for setting in APP_SETTINGS:
        problem = setting.problem(getattr(settings, setting.name, setting.default))
        if problem is not None:
            errors.append(
                Error(
                    f"{setting.name}: {problem}.",
                    hint=f"{setting.name} is {setting.doc} (default {setting.default_text!r}; README, "
                    '"Configuration").',
                    id="broadcaster.E005",
                )
            )
    return errors
