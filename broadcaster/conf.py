"""The app's settings and their defaults: a project that embeds the app need set none of them.

The standalone site (broadcast_site/settings.py) reads each from the environment with these
defaults; in any other project, `BroadcasterConfig.ready()` fills in what settings.py left out.
The app reads settings at call time (`settings.BROADCAST_...`), so tests can override them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from django.conf import settings

from broadcaster.backend.redis_client import sentinel_url

DEFAULTS: dict[str, Any] = {
    # The longest message, in characters, that any sending path accepts (at most
    # protocol.MAX_MESSAGE_LENGTH, so one message always fits in one WebSocket message).
    "BROADCAST_MAX_LENGTH": 4096,
    # A server process that stops refreshing its presence entry for this long is presumed dead.
    "BROADCAST_PRESENCE_TTL": 30.0,
    # How often, at most, receivers are told that the client count changed.
    "BROADCAST_COUNT_INTERVAL": 1.0,
    # Broadcasts kept for clients that reconnect: the newest COUNT, none older than AGE s; a
    # new client gets the newest if it is younger than LATEST_AGE s (the current announcement).
    "BROADCAST_HISTORY_COUNT": 1000,
    "BROADCAST_HISTORY_AGE": 86400.0,
    "BROADCAST_LATEST_AGE": 3600.0,
    # A receiver the server holds more unsent output for is closed with SLOW_CONSUMER (4408).
    "BROADCAST_MAX_UNSENT_BYTES": 1_048_576,
    # What the kernel may hold unsent for one receiver (its socket's SO_SNDBUF; Linux keeps
    # twice this): a client that stops reading is then held to about MAX_UNSENT_BYTES + 2x this,
    # and a burst a reading client takes at once may be about that large (a 2 MB replay after
    # a lost subscription, tests/test_fanout.py).
    "BROADCAST_SOCKET_SEND_BUFFER": 524_288,
    # Seconds a connection has to send a request's head (and a limited body): else 408, closed.
    "BROADCAST_REQUEST_TIMEOUT": 10.0,
    # Receivers one server process takes (0: the open-file limit less 128).
    "BROADCAST_MAX_CONNECTIONS": 0,
    # On SIGTERM receivers are closed (1012) spread over this many seconds.
    "BROADCAST_DRAIN_SECONDS": 10.0,
    # Redis replicas that must have a broadcast before it is acknowledged (Redis WAIT).
    "BROADCAST_MIN_REPLICAS": 0,
    # Bearer token for GET metrics from outside loopback and private networks ("" : none).
    "BROADCAST_METRICS_TOKEN": "",
    # Publish API: broadcasts per token per window, and failed token checks per address.
    "BROADCAST_API_RATE_LIMIT": 30,
    "BROADCAST_API_RATE_WINDOW": 60,
    "BROADCAST_API_FAILED_AUTH_LIMIT": 10,
    # The operator page asks "Send to N clients?" above this many.
    "BROADCAST_CONFIRM_ABOVE": 100,
    # Who may receive: "anyone" (anonymous receivers hear broadcasts to everyone) or
    # "authenticated" (a receiver without a session or receiver token is refused with 4401).
    "BROADCAST_RECEIVERS": "anyone",
    # A host's own audience kinds: kind -> dotted path of a callable(user) -> its values.
    "BROADCAST_AUDIENCE_KINDS": {},
    # Redis passwords for URLs without one, and for Sentinels.
    "REDIS_PASSWORD": "",
    "REDIS_SENTINEL_PASSWORD": "",
    # The embedded development Redis is the standalone site's (it sets VAR_DIR and this).
    "EMBEDDED_REDIS": False,
}

# Where a project's Redis is when neither REDIS_URL nor the channel layer says.
FALLBACK_REDIS_URL = "redis://127.0.0.1:6379/0"


def layer_redis_url(layers: dict[str, Any]) -> str | None:
    """The Redis of the default channel layer's first host, as a URL, in any of the forms
    channels_redis takes: a URL, a (host, port) pair, a dict with an `address` or with
    `host`/`port` (its `password` kept), or Sentinels."""
    hosts = layers.get("default", {}).get("CONFIG", {}).get("hosts") or []
    if not hosts:
        return None
    first = hosts[0]
    if isinstance(first, str):
        return first
    if isinstance(first, (tuple, list)) and len(first) == 2:
        return f"redis://{first[0]}:{first[1]}/0"
    if not isinstance(first, dict):
        return None
    if "sentinels" in first and "master_name" in first:
        return sentinel_url([f"{host}:{port}" for host, port in first["sentinels"]], first["master_name"])
    address = first.get("address")
    if not isinstance(address, str):
        if "host" not in first:
            return None
        address = f"redis://{first['host']}:{first.get('port', 6379)}/{first.get('db', 0)}"
    password = first.get("password")
    if password and "@" not in address.partition("://")[2]:
        scheme, _, rest = address.partition("://")
        address = f"{scheme}://:{quote(str(password), safe='')}@{rest}"
    return address


def apply_defaults() -> None:
    """Called once Django's apps are loaded: fills in every setting the project left out.

    REDIS_URL (history, presence, rate limits, health) defaults to the channel layer's Redis,
    so a project names its Redis once.
    """
    for name, value in DEFAULTS.items():
        if not hasattr(settings, name):
            setattr(settings, name, value)
    if not getattr(settings, "REDIS_URL", ""):
        settings.REDIS_URL = layer_redis_url(getattr(settings, "CHANNEL_LAYERS", {})) or FALLBACK_REDIS_URL
