"""HTTP URL routes; WebSocket routes live in broadcaster/routing.py."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from broadcaster import api, views

urlpatterns = [
    path("", views.receiver_page, name="receiver"),
    path("health/", views.health, name="health"),
    path("api/broadcasts/", api.broadcasts, name="api-broadcasts"),
    path("admin/", admin.site.urls),
]
