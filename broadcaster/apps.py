from __future__ import annotations

from django.apps import AppConfig


class BroadcasterConfig(AppConfig):
    name = "broadcaster"
    verbose_name = "Broadcaster"

    def ready(self) -> None:
        """Called once Django's apps are loaded: registers the project's system checks."""
        from broadcaster import checks  # noqa: F401
