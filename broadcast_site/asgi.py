"""ASGI entry point: `daphne broadcast_site.asgi:application` (and `manage.py runserver`)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "broadcast_site.settings")
# The Django app is built first: it sets Django up before anything imports models.
django_asgi_app = get_asgi_application()

from broadcaster.asgi import with_broadcasts  # noqa: E402

# Every app's static files (the admin's CSS and JS too), with or without DJANGO_DEBUG: the
# operator page is never unstyled. A proxy or CDN in front may serve STATIC_ROOT
# (`collectstatic`) instead. Every request body is held to DATA_UPLOAD_MAX_MEMORY_SIZE.
application = with_broadcasts(django_asgi_app, serve_all_static=True, limit_all_bodies=True)
