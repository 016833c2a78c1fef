"""HTTP URL routes; WebSocket routes live in broadcaster/routing.py."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from broadcaster import api, operator_page, views

urlpatterns = [
    path("", views.receiver_page, name="receiver"),
    path("health/", views.health, name="health"),
    path("health/ready/", views.ready, name="ready"),
    path("metrics", views.metrics_view, name="metrics"),
    path("api/broadcasts/", api.broadcasts, name="api-broadcasts"),
    path("operator/", operator_page.operator_page, name="operator"),
    path("operator/status/", operator_page.operator_status, name="operator-status"),
    path("admin/", admin.site.urls),
]
