"""ASGI entry point: `daphne broadcast_site.asgi:application` (and `manage.py runserver`)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "broadcast_site.settings")
# The Django app is built first: it sets Django up before anything imports models.
django_asgi_app = get_asgi_application()

from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from broadcaster import startup  # noqa: E402
from broadcaster.origin import allowed_hosts_origin_check  # noqa: E402
from broadcaster.routing import Router  # noqa: E402

startup.prepare_server()

# Receivers need no user, so the WebSocket side has no auth middleware (and no thread hop
# on connect). See broadcaster/routing.py for why this is not Channels' router stack.
# Static files (the admin's CSS and JS) are served by Django's own ASGI static handler, for
# /static/ paths only, with or without DJANGO_DEBUG: the operator page is never unstyled. A
# proxy or CDN in front may serve STATIC_ROOT (`collectstatic`) instead.
application = Router(
    http=django_asgi_app,
    origins=allowed_hosts_origin_check(),
    static=("/" + settings.STATIC_URL.lstrip("/"), ASGIStaticFilesHandler(django_asgi_app)),
)
