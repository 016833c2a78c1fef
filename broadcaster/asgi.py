"""`with_broadcasts`: the one line a Django project's `asgi.py` needs to serve receivers.

    application = broadcaster.asgi.with_broadcasts(get_asgi_application())

The wrapped application serves the receiver WebSocket at /ws/broadcast/ and this app's static
files (the banner's script and style), whatever DJANGO_DEBUG says; everything else goes to the
project's own application, untouched.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

from broadcaster.fanout.origin import allowed_hosts_origin_check
from broadcaster.fanout.routing import ASGIApp, Router
from broadcaster.server import startup

# Whether `with_broadcasts` has built an application in this process (system check W005).
wrapped = False


def with_broadcasts(application: ASGIApp, *, static_prefix: str | None = None) -> Router:
    """Called once, in the project's `asgi.py`, with Django's ASGI application.

    Prepares this process to serve receivers (broadcaster/server/startup.py) and returns the
    application to serve. Static files under `static_prefix` (default: STATIC_URL +
    "broadcaster/", this app's own) are served from Django's static file finders; pass
    STATIC_URL to serve every app's, as the standalone site does.
    """
    global wrapped
    startup.prepare_server()
    prefix = static_prefix or "/" + settings.STATIC_URL.strip("/") + "/broadcaster/"
    wrapped = True
    # Receivers need no user, so the WebSocket side has no auth middleware (and no thread hop
    # on connect). See broadcaster/fanout/routing.py for why this is not Channels' router stack.
    return Router(
        http=application,
        origins=allowed_hosts_origin_check(),
        static=(prefix, ASGIStaticFilesHandler(application)),
    )
