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


def test_daphne_missing_or_after_staticfiles_is_an_error():
    """E001 without daphne; E002 when it comes after staticfiles (runserver would be Django's)."""
    assert checks.check_installed_apps() == []
    with override_settings(INSTALLED_APPS=["django.contrib.staticfiles", "broadcaster"]):
        assert [(e.id, e.msg) for e in checks.check_installed_apps()] == [
            ("broadcaster.E001", "'daphne' is not in INSTALLED_APPS.")
        ]
    with override_settings(INSTALLED_APPS=["django.contrib.staticfiles", "daphne", "broadcaster"]):
        assert [e.id for e in checks.check_installed_apps()] == ["broadcaster.E002"]


def test_asgi_application_must_be_set_and_wrapped():
    """E003 without ASGI_APPLICATION; W003 for one not built with with_broadcasts; the site's passes."""
    assert checks.check_asgi_application() == []
    with override_settings(ASGI_APPLICATION=""):
        assert [e.id for e in checks.check_asgi_application()] == ["broadcaster.E003"]
    with override_settings(ASGI_APPLICATION="tests.silent_layer.application"):
        assert [e.id for e in checks.check_asgi_application()] == ["broadcaster.W003"]


def test_no_default_layer_is_an_error():
    """E004: without a default channel layer nothing reaches receivers."""
    with override_settings(CHANNEL_LAYERS={}):
        assert [e.id for e in checks.check_channel_layer()] == ["broadcaster.E004"]
