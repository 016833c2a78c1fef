"""The app's settings and their defaults: a project that embeds the app need set none of them.

The standalone site (broadcast_site/settings.py) reads each from the environment with these
defaults; in any other project, `BroadcasterConfig.ready()` fills in what settings.py left out.
The app reads settings at call time (`settings.BROADCAST_...`), so tests can override them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from django.conf import settings

from broadcaster.backend.redis_client import sentinel_url
from broadcaster.protocol import MAX_MESSAGE_LENGTH


@dataclass(frozen=True)
class Setting:
    """One setting: what the site parses from the environment, what an embedding project gets
    when it leaves the setting out, what the system check holds its value to, and its line in
    the README's configuration table and in `.env.example` (both generated from this table:
    `make settings-docs`)."""

    name: str
    default: Any
    doc: str
    # str, int, float, bool, list, or dict (a Python setting, not read from the environment)
    kind: type = str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    shown: str = ""  # the default as the README says it, when the value alone does not say it
    example: str | None = None  # its value in .env.example (None: the default's text)
    in_env: bool = True  # has a line in .env.example

    @property
    def default_text(self) -> str:
        """The default as the environment spells it."""
        value = self.default
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        if isinstance(value, (list, tuple)):
            return ",".join(value)
        return str(value)

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` as this setting's value, in words; None when nothing is."""
        if value is None and self.kind is str and self.default == "":
            return None  # unset, as the app reads it (a password from os.environ.get())
        if self.kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)  # 1e6
        numeric = {int: (int,), float: (int, float)}.get(self.kind)
        wanted = numeric or (self.kind,)
        if (isinstance(value, bool) and self.kind is not bool) or not isinstance(value, wanted):
            return f"it must be {_KIND_WORDS.get(self.kind, self.kind.__name__)}, not {value!r}"
        if self.choices and value not in self.choices:
            return f"it must be one of: {', '.join(self.choices)} (not {value!r})"
        if self.minimum is not None and value < self.minimum:
            return f"it must be at least {_number(self.minimum)} (not {value!r})"
        if self.maximum is not None and value > self.maximum:
            return f"it must be at most {_number(self.maximum)} (not {value!r})"
        return None


_KIND_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "True or False",
               list: "a list", dict: "a dict"}  # fmt: skip


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# Every setting the app reads, in the README's order. The site reads each from the environment
# (broadcast_site/settings.py); a project embedding the app gets the default for any it leaves out.
# fmt: off
APP_SETTINGS: tuple[Setting, ...] = (
    Setting("REDIS_SENTINEL_PASSWORD", "", "the Sentinels' own password, if they have one", shown="unset"),
    Setting("REDIS_PASSWORD", "", "the data password, when `REDIS_URL` carries none or with Sentinel",
            shown="unset"),
    # Redis WAIT: an acknowledged broadcast then survives a failover.
    Setting("BROADCAST_MIN_REPLICAS", 0, "acknowledge a broadcast only once this many Redis replicas have it "
            "(or all connected ones, if fewer); else the sender is told to retry (API 503)", int, minimum=0),
    # At most protocol.MAX_MESSAGE_LENGTH, so one message always fits in one WebSocket message.
    Setting("BROADCAST_MAX_LENGTH", 4096, "longest message in characters, on every sending path (at most "
            f"{MAX_MESSAGE_LENGTH}: one message must fit one WebSocket message)", int, minimum=1,
            maximum=MAX_MESSAGE_LENGTH),
    Setting("BROADCAST_PRESENCE_TTL", 30.0, "seconds after which a silent (crashed) server process stops "
            "counting; at least 3", float, minimum=3.0),
    Setting("BROADCAST_COUNT_INTERVAL", 1.0, "seconds between count updates to each listener, at most", float,
            minimum=0.05),
    # Broadcasts kept for clients that reconnect: the newest COUNT, none older than AGE s; a new
    # client gets the newest if it is younger than LATEST_AGE s (the current announcement).
    Setting("BROADCAST_HISTORY_COUNT", 1000, "messages kept for clients that reconnect with `?since=`", int,
            minimum=1),
    Setting("BROADCAST_HISTORY_AGE", 86400.0, "seconds a message is kept for them", float, minimum=1.0),
    Setting("BROADCAST_LATEST_AGE", 3600.0, "a new client is sent the newest message if it is younger than "
            "this (0: never)", float, minimum=0.0),
    Setting("BROADCAST_MAX_UNSENT_BYTES", 1_048_576, "a client with more unsent output than this (it stopped "
            "reading) is closed with 4408", int, minimum=1024),
    # A 2 MB replay after a lost subscription is such a burst (tests/test_fanout.py).
    Setting("BROADCAST_SOCKET_SEND_BUFFER", 524_288, "what the kernel may hold unsent for one receiver (its "
            "`SO_SNDBUF`; Linux keeps twice this): a client that stops reading costs at most "
            "`BROADCAST_MAX_UNSENT_BYTES` plus twice this before its 4408 (about 2 MiB); lower makes such "
            "clients cheaper, but the largest burst a reading client takes at once is about that sum", int,
            minimum=4096),
    Setting("BROADCAST_REQUEST_TIMEOUT", 10.0, "seconds a connection has to send a request's head (and, "
            "where bodies are limited, its body): else 408 and closed; slow and idle connections cannot hold "
            "sockets", float, minimum=0.5),
    Setting("BROADCAST_MAX_CONNECTIONS", 0, "receivers per server process; past it new ones are refused with "
            "1013", int, minimum=0, shown="`0`: the open-file limit less 128"),
    Setting("BROADCAST_DRAIN_SECONDS", 10.0, "on SIGTERM a server process closes its receivers with 1012 "
            "spread over this many seconds, then exits (`docs/OPERATIONS.md`)", float, minimum=0.0),
    Setting("BROADCAST_METRICS_TOKEN", "", "`GET /metrics` from a public address or through a proxy needs "
            "`Authorization: Bearer <this>`; loopback and private addresses not behind a proxy need nothing",
            shown="empty: none"),
    Setting("BROADCAST_API_RATE_LIMIT", 30, "sends allowed per API token per window (`docs/API.md`)", int,
            minimum=1),
    Setting("BROADCAST_API_RATE_WINDOW", 60, "the rate limit's window, in seconds", int, minimum=1),
    Setting("BROADCAST_API_FAILED_AUTH_LIMIT", 10, "failed API token checks per client address per window "
            "before 429", int, minimum=1),
    Setting("BROADCAST_RECEIVERS", "anyone", "`anyone`: anonymous receivers hear broadcasts to `everyone` "
            "only; `authenticated`: a receiver without a session or receiver token that gives an active user "
            "is refused with 4401 (and closed with it when that stops being so)",
            choices=("anyone", "authenticated")),
    Setting("BROADCAST_AUDIENCE_KINDS", {}, "a host's own audience kinds: `{\"tenant\": "
            "\"myapp.audiences.tenant\"}`, a callable given a user returning the values it belongs to "
            "(`docs/EMBEDDING.md`)", dict, shown="`{}` (a Python setting, for a project embedding the app)",
            in_env=False),
    Setting("BROADCAST_CONFIRM_ABOVE", 100, "the operator page asks for confirmation before a send that "
            "would reach more clients than this (0: whenever anyone is connected)", int, minimum=0),
)
# fmt: on

# Every app setting's default; EMBEDDED_REDIS is the standalone site's (it sets VAR_DIR and this).
DEFAULTS: dict[str, Any] = {setting.name: setting.default for setting in APP_SETTINGS}
DEFAULTS["EMBEDDED_REDIS"] = False

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
