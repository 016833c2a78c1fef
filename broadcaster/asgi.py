"""`with_broadcasts`: the one line a Django project's `asgi.py` needs to serve receivers.

    application = broadcaster.asgi.with_broadcasts(get_asgi_application())

The wrapped application serves the receiver WebSocket at /ws/broadcast/ and this app's static
files (the banner's script and style), whatever DJANGO_DEBUG says; everything else, other
WebSockets included, goes to the project's own application.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.handlers.asgi import ASGIHandler

from broadcaster.fanout.origin import allowed_hosts_origin_check
from broadcaster.fanout.routing import ASGIApp, Router, StaticFiles
from broadcaster.server import startup

__all__ = ["with_broadcasts"]

# Whether `with_broadcasts` has built an application in this process (system check W003).
wrapped = False

_OWN_STATIC = Path(__file__).resolve().parent / "static"


def with_broadcasts(application: ASGIApp, *, serve_all_static: bool = False, limit_all_bodies: bool = False
                    ) -> Router:  # fmt: skip
    """Called once, in the project's `asgi.py`, with the project's ASGI application.

    Prepares this process to serve receivers (broadcaster/server/startup.py) and returns the
    application to serve: the receiver WebSocket at /ws/broadcast/, this app's own static files
    (exactly those, by their plain names: hashed names from a manifest storage go to the
    project, which serves its collected files), and everything else to `application`,
    WebSockets at other paths included (a ProtocolTypeRouter's own consumers).

    The standalone site also serves every app's static files (`serve_all_static`) and holds
    every request body, not only the publish API's, to DATA_UPLOAD_MAX_MEMORY_SIZE before it is
    read (`limit_all_bodies`): a host's own uploads may be larger.
    """
    global wrapped
    startup.prepare_server(limit_all_bodies=limit_all_bodies)
    wrapped = True
    # Receivers need no user, so the WebSocket side has no auth middleware (and no thread hop
    # on connect). See broadcaster/fanout/routing.py for why this is not Channels' router stack.
    return Router(
        http=application,
        origins=allowed_hosts_origin_check(),
        static=_static_files(application, serve_all=serve_all_static),
        other_websockets=None if isinstance(application, ASGIHandler) else application,
    )


def _static_files(application: ASGIApp, *, serve_all: bool) -> StaticFiles | None:
    url: str = settings.STATIC_URL
    if "://" in url or url.startswith("//"):
        return None  # served from elsewhere (a CDN)
    prefix = "/" + url.strip("/") + "/"
    app = ASGIStaticFilesHandler(application)
    if serve_all:
        return StaticFiles(app=app, prefix=prefix)
    own = frozenset(prefix + path.relative_to(_OWN_STATIC).as_posix()
                    for path in _OWN_STATIC.rglob("*") if path.is_file())  # fmt: skip
    return StaticFiles(app=app, prefix=prefix, files=own)
