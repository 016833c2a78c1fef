"""HTTP URL routes: the app's at the root; WebSockets: broadcaster/asgi.py."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("broadcaster.urls")),
    path("admin/", admin.site.urls),
]
