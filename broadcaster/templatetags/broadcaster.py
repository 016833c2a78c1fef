"""`{% load broadcaster %}{% broadcast_banner %}`: the announcement banner for any page."""

from __future__ import annotations

from typing import Any

from django import template

from broadcaster import protocol

__all__ = ["broadcast_banner", "register"]

register = template.Library()


@register.inclusion_tag("broadcaster/banner.html")
def broadcast_banner() -> dict[str, Any]:
    """Renders the banner's placeholder and its two scripts (no inline script or style, so a
    strict Content-Security-Policy holds); it shows the current announcement and each new one."""
    return {"receiver_path": protocol.RECEIVER_PATH, "sse_path": protocol.SSE_PATH}
