"""What the compat modules' start-up checks share: a package's name and version for their
messages, and the names a function's code uses (where a name is set per connection, the check
looks for it in the code that sets it)."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["code_names", "version"]


def code_names(function: Any) -> tuple[str, ...]:
    """The global and attribute names a function's code uses (none for anything else)."""
    return tuple(getattr(getattr(function, "__code__", None), "co_names", ()))


def version(package: str, label: str) -> str:
    """`label` and the installed version of `package`, for a message: "Twisted 26.10.0"."""
    try:
        module = importlib.import_module(package)
    except ImportError:
        return f"{label} (not installed)"
    return f"{label} {getattr(module, '__version__', '(unknown version)')}"
