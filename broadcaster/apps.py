from __future__ import annotations

from django.apps import AppConfig


class BroadcasterConfig(AppConfig):
    name = "broadcaster"
    verbose_name = "Broadcaster"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Called once Django's apps are loaded: fills in the app's default settings,
        registers its system checks, watches membership changes (broadcaster/watch.py) and gives
        the outbox its deliverer (broadcaster/sending/publish.py)."""
        from broadcaster import checks, conf, watch  # noqa: F401
        from broadcaster.sending import publish  # noqa: F401 - registers the outbox's deliverer

        conf.apply_defaults()
        watch.connect()
