from __future__ import annotations

from django.apps import AppConfig


class BroadcasterConfig(AppConfig):
    name = "broadcaster"
    verbose_name = "Broadcaster"
