"""System checks: a channel layer without the fast path, the embedded Redis in production."""

from __future__ import annotations

from django.core.checks import Warning
from django.test import override_settings

from broadcaster import checks


def test_stock_channel_layer_is_a_warning_and_the_project_layer_is_not(redis_url):
    """W001 names a layer without the fan-out fast path; the project's layer passes."""
    assert checks.check_channel_layer() == []
    stock = {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=stock):
        [warning] = checks.check_channel_layer()
    assert isinstance(warning, Warning)
    assert (warning.id, warning.msg) == (
        "broadcaster.W001",
        "The default channel layer is channels_redis.pubsub.RedisPubSubChannelLayer, "
        "not broadcaster.layer.FanoutChannelLayer.",
    )


def test_embedded_redis_is_a_deploy_warning():
    """W002 only when no REDIS_URL was given (the embedded Redis)."""
    with override_settings(EMBEDDED_REDIS=True):
        [warning] = checks.check_embedded_redis()
    assert (warning.id, warning.msg) == (
        "broadcaster.W002",
        "REDIS_URL is not set: the embedded development Redis is in use.",
    )
    with override_settings(EMBEDDED_REDIS=False):
        assert checks.check_embedded_redis() == []
