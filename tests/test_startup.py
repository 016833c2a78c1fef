"""autobahn's per-connection debug text, skipped when it would be dropped
(broadcaster/compat/autobahn.py; the open-file limit is tested in test_site.py)."""

from __future__ import annotations

import pprint

import pytest
import txaio
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.protocol import Timings
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from broadcaster.compat import autobahn

txaio.use_twisted()


@pytest.fixture
def pformat_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Patch autobahn (idempotent: the ASGI module may have done it) and count real pformats."""
    autobahn.lazy_debug_text()
    calls: list[object] = []
    real = pprint.pformat
    monkeypatch.setattr(pprint, "pformat", lambda obj, *a, **k: calls.append(obj) or real(obj, *a, **k))
    return calls


def _connection(debug: bool) -> WebSocketServerProtocol:
    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    proto = factory.buildProtocol(None)
    if debug:
        proto.log = txaio.make_logger()
        proto.log._set_log_level("debug")
    return proto


def test_dropped_per_connection_debug_text_is_never_computed(pformat_calls):
    """A connection with debug logging off costs no pformat of autobahn's configuration."""
    _connection(debug=False).makeConnection(StringTransport())
    assert pformat_calls == []
    assert autobahn.lazy_debug_text() is False  # already done: left as it is


def test_debug_text_is_the_same_when_debug_logging_is_on(pformat_calls):
    """With debug on, autobahn logs exactly the text pprint.pformat gives."""
    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        _connection(debug=True).makeConnection(StringTransport())
    finally:
        globalLogPublisher.removeObserver(events.append)
    [config] = pformat_calls
    [attrs] = [event["attrs"] for event in events if "attrs" in event]
    assert attrs == pprint.pformat(config) and isinstance(attrs, str) and "openHandshakeTimeout" in attrs


def test_autobahn_timings_still_render_as_text(pformat_calls):
    """autobahn's Timings.__str__ (used when timings are tracked) returns the pformat string."""
    timings = Timings()
    timings.track("onOpen")
    assert autobahn_protocol.pformat is autobahn._pformat
    assert str(timings) == pprint.pformat(timings._timings)
