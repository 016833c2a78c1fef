"""The headers the app's own answers carry: a strict Content-Security-Policy on its pages (the
receiver page and the operator page load only their own scripts and styles, none inline), and
`Cache-Control: no-store` on every operator and API answer (recent broadcasts, counts and
tokens' results are not for a shared cache or the Back button). Applied in broadcaster/urls.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpResponseBase

__all__ = ["PAGE_POLICY", "no_store", "page_policy", "strict_page"]

# Scripts, styles, fonts and images from this origin only; the WebSocket to this origin
# ('self' covers ws: and wss: to it); no plugins, no framing, forms post back here only.
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
               "form-action 'self'; frame-ancestors 'none'")  # fmt: skip

View = Callable[..., Any]


def _with_headers(view: View, headers: dict[str, str]) -> View:
    def add(response: HttpResponseBase) -> HttpResponseBase:
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        return response

    return _after(view, add)


def _after(view: View, add: Callable[[HttpResponseBase], HttpResponseBase]) -> View:
    """`view`, its answer passed through `add`, sync or async as `view` is."""
    if iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_view(*args: Any, **kwargs: Any) -> HttpResponseBase:
            return add(await view(*args, **kwargs))

        return markcoroutinefunction(async_view)

    @functools.wraps(view)
    def sync_view(*args: Any, **kwargs: Any) -> HttpResponseBase:
        return add(view(*args, **kwargs))

    return sync_view


def no_store(view: View) -> View:
    """`view`'s answers, kept by no cache."""
    return _with_headers(view, {"Cache-Control": "no-store"})


def page_policy() -> str:
    """PAGE_POLICY, with the origin of STATIC_URL added where the static files are served from
    another origin (a CDN)."""
    static = urlsplit(str(getattr(settings, "STATIC_URL", "") or ""))
    if not static.scheme or not static.netloc:
        return PAGE_POLICY
    origin = f"{static.scheme}://{static.netloc}"
    return ";".join(part + f" {origin}" if part.split()[0] in _STATIC_DIRECTIVES else part
                    for part in PAGE_POLICY.split(";"))  # fmt: skip


_STATIC_DIRECTIVES = frozenset({"script-src", "style-src", "img-src", "font-src"})


def strict_page(view: View, *, private: bool = False) -> View:
    """`view`'s pages under `page_policy()` (and, `private`, kept by no cache)."""

    def add(response: HttpResponseBase) -> HttpResponseBase:
        response.headers.setdefault("Content-Security-Policy", page_policy())
        if private:
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return _after(view, add)
