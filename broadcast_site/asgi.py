"""ASGI entry point: `daphne broadcast_site.asgi:application` (and `manage.py runserver`)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "broadcast_site.settings")
# The Django app is built first: it sets Django up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from broadcaster import startup  # noqa: E402
from broadcaster.origin import allowed_hosts_origin_validator  # noqa: E402
from broadcaster.routing import websocket_urlpatterns  # noqa: E402
from broadcaster.transport import LinkMiddleware  # noqa: E402

startup.prepare_server()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Outermost: sees the server's own `send` (see broadcaster/transport.py). Receivers
        # need no user, so there is no auth middleware (and no thread hop) on their connect.
        "websocket": LinkMiddleware(allowed_hosts_origin_validator(URLRouter(websocket_urlpatterns))),
    }
)
