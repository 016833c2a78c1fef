"""ASGI entry point: `daphne broadcast_site.asgi:application` (and `manage.py runserver`)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "broadcast_site.settings")
# The Django app is built first: it sets Django up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from broadcaster import startup  # noqa: E402
from broadcaster.asgi_send import UnsentProbeMiddleware  # noqa: E402
from broadcaster.origin import allowed_hosts_origin_validator  # noqa: E402
from broadcaster.routing import websocket_urlpatterns  # noqa: E402

startup.prepare_server()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Outermost: sees the server's own `send`, to measure a connection's unsent output.
        "websocket": UnsentProbeMiddleware(
            allowed_hosts_origin_validator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
        ),
    }
)
