"""The ASGI router (broadcaster/fanout/routing.py): which application gets each connection."""

from __future__ import annotations

from typing import Any

from broadcaster.fanout.origin import OriginCheck
from broadcaster.fanout.routing import Router, StaticFiles


def app(name: str, seen: list[str]) -> Any:
    async def handle(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(f"{name} {scope['type']} {scope['path']}")

    return handle


async def test_other_websockets_and_own_static_files_go_where_they_belong() -> None:
    """A host's own WebSocket paths reach its application (not a 403); only the app's own
    static files, by plain name, are served here; a hashed name goes to the host."""
    seen: list[str] = []
    router = Router(http=app("host", seen), origins=OriginCheck(["localhost"]),
                    static=StaticFiles(app=app("static", seen), prefix="/static/",
                                       files=frozenset({"/static/broadcaster/banner.js"})),
                    other_websockets=app("host", seen))  # fmt: skip
    for kind, path in [("websocket", "/ws/chat/"), ("http", "/static/broadcaster/banner.js"),
                       ("http", "/static/broadcaster/banner.3f2a.js"), ("http", "/static/admin/base.css"),
                       ("http", "/page/")]:  # fmt: skip
        await router({"type": kind, "path": path, "headers": []}, None, None)
    assert seen == ["host websocket /ws/chat/", "static http /static/broadcaster/banner.js",
                    "host http /static/broadcaster/banner.3f2a.js", "host http /static/admin/base.css",
                    "host http /page/"]  # fmt: skip


async def test_other_websockets_are_refused_without_a_host_application() -> None:
    """The standalone site (Django's own handler, which serves no WebSockets) refuses other paths."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    router = Router(http=app("host", []), origins=OriginCheck(["localhost"]))
    await router({"type": "websocket", "path": "/ws/chat/", "headers": []}, receive, send)
    assert sent == [{"type": "websocket.close"}]
