"""The site with an autobahn that renamed the open state's constant (as a future release might):
the server must refuse to start, naming autobahn. For tests (a stand-in for a release that
cannot be installed here)."""

from autobahn.websocket.protocol import WebSocketProtocol

from broadcast_site.settings import *  # noqa: F403

WebSocketProtocol.STATE_IS_OPEN = WebSocketProtocol.STATE_OPEN  # type: ignore[attr-defined]
del WebSocketProtocol.STATE_OPEN
