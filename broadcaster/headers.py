"""The headers the app's own answers carry: a strict Content-Security-Policy on its pages (the
receiver page and the operator page load only their own scripts and styles, none inline), and
`Cache-Control: no-store` on every operator and API answer (recent broadcasts, counts and
tokens' results are not for a shared cache or the Back button). Applied in broadcaster/urls.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpResponseBase

__all__ = ["PAGE_POLICY", "no_store", "strict_page"]

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


def strict_page(view: View, *, private: bool = False) -> View:
    """`view`'s pages under PAGE_POLICY (and, `private`, kept by no cache)."""
    headers = {"Content-Security-Policy": PAGE_POLICY}
    if private:
        headers["Cache-Control"] = "no-store"
    return _with_headers(view, headers)
