"""HTTP routes of the app, for `path("<prefix>/", include("broadcaster.urls"))`.

Names are namespaced: `reverse("broadcaster:operator")`. The receiver WebSocket is not here:
`broadcaster.asgi.with_broadcasts` serves it at /ws/broadcast/.
"""

from __future__ import annotations

from django.urls import path, re_path

from broadcaster import views
from broadcaster.headers import no_store, strict_page
from broadcaster.sending import api, operator_page

__all__ = ["app_name", "urlpatterns"]

app_name = "broadcaster"

urlpatterns = [
    path("", strict_page(views.receiver_page), name="receiver"),
    path("health/", views.health, name="health"),
    path("health/ready/", views.ready, name="ready"),
    path("metrics", views.metrics_view, name="metrics"),
    # The API answers with and without the trailing slash: Django's APPEND_SLASH cannot redirect
    # a POST or DELETE (under DEBUG it raises, a 500), and API clients do not follow redirects.
    re_path(r"^api/broadcasts/?$", no_store(api.broadcasts), name="api-broadcasts"),
    re_path(r"^api/broadcasts/(?P<id>[^/]+)/?$", no_store(api.broadcast), name="api-broadcast"),
    path("operator/", strict_page(operator_page.operator_page, private=True), name="operator"),
    path("operator/status/", no_store(operator_page.operator_status), name="operator-status"),
    path("operator/retract/", no_store(operator_page.operator_retract), name="operator-retract"),
]
