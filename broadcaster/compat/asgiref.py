"""asgiref's marker for an application class whose instances are called with (scope, receive,
send) and return an awaitable without being coroutine functions (see the package docstring)."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["USES", "single_callable"]

USES: dict[str, tuple[str, ...]] = {
    "asgiref.compatibility.guarantee_single_callable": ("_asgi_single_callable",)
}

T = TypeVar("T", bound=type)


def single_callable(cls: T) -> T:
    """Mark `cls` so asgiref (Channels, daphne) takes its plain `__call__` as the ASGI 3 style,
    not the old double-callable one."""
    cls._asgi_single_callable = True  # type: ignore[attr-defined]
    return cls
