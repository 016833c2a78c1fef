from __future__ import annotations

from django.apps import AppConfig


class BroadcasterConfig(AppConfig):
    name = "broadcaster"
    verbose_name = "Broadcaster"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Called once Django's apps are loaded: fills in the app's default settings and
        registers its system checks."""
        from broadcaster import checks, conf  # noqa: F401

        conf.apply_defaults()
