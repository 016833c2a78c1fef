"""What a server process does once at start-up (the open-file limit is tested in test_site.py)."""

from __future__ import annotations

import pprint

from autobahn.websocket import protocol as autobahn_protocol

from broadcaster import startup


def test_autobahn_debug_text_is_lazy_and_unchanged_when_shown():
    """autobahn's per-connection pformat is deferred until formatted, and then gives the same text."""
    startup._lazy_autobahn_debug_text()  # idempotent: the ASGI module may have done it already
    assert autobahn_protocol.pformat is startup._Pretty
    config = [("autoPingInterval", 3600, "WebSocketServerFactory"), ("openHandshakeTimeout", 5, "x")]
    assert str(autobahn_protocol.pformat(config)) == pprint.pformat(config)
    # As txaio renders the log line.
    line = "\n{attrs}".format(attrs=autobahn_protocol.pformat(config))  # noqa: UP032
    assert line == "\n" + pprint.pformat(config)
    assert startup._lazy_autobahn_debug_text() is False  # already done: left as it is
