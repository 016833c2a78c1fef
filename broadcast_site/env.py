"""Strict parsing of configuration from environment variables.

Every value that varies by deployment is read here, once, at start-up, so a
misconfiguration fails before the first request instead of at the first message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from broadcaster.conf import Setting

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_TABLE_DEFAULT: Any = object()


class ConfigError(ImproperlyConfigured):
    """Raised when an environment variable is set to a value that cannot be used."""


def _raw(name: str, environ: Mapping[str, str]) -> str | None:
    """The variable's value; None when unset or blank (`NAME=` in .env means the default)."""
    raw = environ.get(name)
    return None if raw is None or not raw.strip() else raw


def is_blank(name: str, *, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the variable is set, to nothing but spaces."""
    raw = environ.get(name)
    return raw is not None and not raw.strip()


def get_str(name: str, default: str, *, environ: Mapping[str, str] = os.environ) -> str:
    """Return the variable's value, or `default` when it is unset or blank."""
    raw = _raw(name, environ)
    return default if raw is None else raw


def get_choice(name: str, default: str, choices: tuple[str, ...], *,
               environ: Mapping[str, str] = os.environ) -> str:  # fmt: skip
    """Return the variable's value if it is one of `choices` (case as given), else an error."""
    raw = _raw(name, environ)
    if raw is None:
        return default
    value = raw.strip()
    if value not in choices:
        raise ConfigError(f"Config '{name}' has value '{raw}'. It must be one of: {', '.join(choices)}.")
    return value


def get_bool(name: str, default: bool, *, environ: Mapping[str, str] = os.environ) -> bool:
    """Return the variable as a bool; anything but a known spelling is an error."""
    raw = _raw(name, environ)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"Config '{name}' has value '{raw}'. Not a valid bool (use 1/0, true/false).")


def get_int(name: str, default: int, *, minimum: int = 0, maximum: int | None = None,
            environ: Mapping[str, str] = os.environ) -> int:  # fmt: skip
    """Return the variable as an int no smaller than `minimum` (nor larger than `maximum`)."""
    raw = _raw(name, environ)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"Config '{name}' has value '{raw}'. Not a valid integer.") from None
    if value < minimum:
        raise ConfigError(f"Config '{name}' has value '{raw}'. It must be at least {minimum}.")
    if maximum is not None and value > maximum:
        raise ConfigError(f"Config '{name}' has value '{raw}'. It must be at most {maximum}.")
    return value


def get_float(name: str, default: float, *, minimum: float = 0.0, maximum: float | None = None,
              environ: Mapping[str, str] = os.environ) -> float:  # fmt: skip
    """Return the variable as a float no smaller than `minimum` (nor larger than `maximum`)."""
    raw = _raw(name, environ)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"Config '{name}' has value '{raw}'. Not a valid number.") from None
    if value < minimum:
        raise ConfigError(f"Config '{name}' has value '{raw}'. It must be at least {minimum}.")
    if maximum is not None and value > maximum:
        raise ConfigError(f"Config '{name}' has value '{raw}'. It must be at most {maximum}.")
    return value


def get_list(name: str, default: list[str], *, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Return a comma-separated variable as a list of non-empty, stripped items."""
    raw = _raw(name, environ)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def read(setting: Setting, *, default: Any = _TABLE_DEFAULT, environ: Mapping[str, str] = os.environ) -> Any:
    """Return the variable `setting` describes, parsed and held to its bounds as its kind says;
    `default` (when given) in place of the table's, for a default that depends on another."""
    fallback = setting.default if default is _TABLE_DEFAULT else default
    name = setting.name
    if setting.kind is bool:
        return get_bool(name, fallback, environ=environ)
    low, high = setting.minimum or 0, setting.maximum
    if setting.kind is int:
        high = None if high is None else int(high)
        return get_int(name, fallback, minimum=int(low), maximum=high, environ=environ)
    if setting.kind is float:
        return get_float(name, fallback, minimum=low, maximum=high, environ=environ)
    if setting.kind is list:
        return get_list(name, fallback, environ=environ)
    if setting.kind is not str:
        raise TypeError(f"{name} is a Python setting ({setting.kind.__name__}), not an environment variable")
    if setting.choices:
        return get_choice(name, fallback, setting.choices, environ=environ)
    return get_str(name, fallback, environ=environ)


def load_dotenv(path: str) -> Path | None:
    """Read `KEY=value` lines from the file at `path` (if there is one) into the environment,
    never over a variable that is set already; return the file read, or None."""
    import dotenv

    if not path or not Path(path).is_file():
        return None
    dotenv.load_dotenv(path, override=False)
    return Path(path)


def database_from_url(url: str, *, base_dir: str, conn_max_age: int = 0) -> dict[str, object]:
    """Translate DATABASE_URL with dj-database-url (query options such as ?sslmode=require go to
    OPTIONS). A relative SQLite path is relative to `base_dir`. Server databases keep each
    connection for `conn_max_age` seconds, checked before reuse; SQLite opens one per request."""
    import dj_database_url

    scheme = url.partition(":")[0]
    try:
        config = dict(dj_database_url.parse(url, conn_max_age=conn_max_age,
                                            conn_health_checks=conn_max_age > 0))  # fmt: skip
    except ValueError as exc:
        # Not the URL itself in the message: it may hold a password.
        raise ConfigError(f"Config 'DATABASE_URL' (scheme '{scheme}') cannot be used: {exc}") from None
    if config["ENGINE"] == "django.db.backends.sqlite3":
        name = str(config["NAME"])
        if name != ":memory:" and not os.path.isabs(name):
            config["NAME"] = os.path.join(base_dir, name)
        config["CONN_MAX_AGE"], config["CONN_HEALTH_CHECKS"] = 0, False
    return config


def create_private_file(path: Path) -> None:
    """Create `path` empty and readable by this user only, unless it exists."""
    if str(path) == ":memory:" or path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
