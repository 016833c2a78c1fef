"""Strict parsing of configuration from environment variables.

Every value that varies by deployment is read here, once, at start-up, so a
misconfiguration fails before the first request instead of at the first message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ImproperlyConfigured):
    """Raised when an environment variable is set to a value that cannot be used."""


def get_str(name: str, default: str, *, environ: Mapping[str, str] = os.environ) -> str:
    """Return the variable's value, or `default` when it is unset."""
    return environ.get(name, default)


def get_bool(name: str, default: bool, *, environ: Mapping[str, str] = os.environ) -> bool:
    """Return the variable as a bool; anything but a known spelling is an error."""
    raw = environ.get(name)
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
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
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


def get_float(
    name: str, default: float, *, minimum: float = 0.0, environ: Mapping[str, str] = os.environ
) -> float:
    """Return the variable as a float no smaller than `minimum`."""
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"Config '{name}' has value '{raw}'. Not a valid number.") from None
    if value < minimum:
        raise ConfigError(f"Config '{name}' has value '{raw}'. It must be at least {minimum}.")
    return value


def get_list(name: str, default: list[str], *, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Return a comma-separated variable as a list of non-empty, stripped items."""
    raw = environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def database_from_url(url: str, *, base_dir: str) -> dict[str, object]:
    """Translate DATABASE_URL (sqlite:///path or postgres://user:pass@host:port/name)."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = unquote(parsed.path)
        # sqlite:///relative.db -> path "/relative.db"; sqlite:////abs.db -> "//abs.db".
        name = path[1:] if path.startswith("//") else os.path.join(base_dir, path.lstrip("/"))
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": name}
    if parsed.scheme in {"postgres", "postgresql"}:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parsed.path.lstrip("/")),
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "",
            "PORT": str(parsed.port or ""),
        }
    raise ConfigError(
        f"Config 'DATABASE_URL' has value '{url}'. Use sqlite:///path or postgres://user:pass@host/db."
    )


def create_private_file(path: Path) -> None:
    """Create `path` empty and readable by this user only, unless it exists."""
    if str(path) == ":memory:" or path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
