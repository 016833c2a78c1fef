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


def test_daphne_missing_or_after_staticfiles_is_a_warning():
    """W004 without daphne; W005 when it comes after staticfiles (runserver would be Django's);
    apps named by their AppConfig count too."""
    assert checks.check_installed_apps() == []
    with override_settings(INSTALLED_APPS=["django.contrib.staticfiles", "broadcaster"]):
        assert [(e.id, e.msg) for e in checks.check_installed_apps()] == [
            (
                "broadcaster.W004",
                "'daphne' is not in INSTALLED_APPS: `manage.py runserver` serves no WebSockets.",
            )
        ]
    with override_settings(INSTALLED_APPS=["django.contrib.staticfiles", "daphne", "broadcaster"]):
        assert [e.id for e in checks.check_installed_apps()] == ["broadcaster.W005"]
    with override_settings(INSTALLED_APPS=["daphne.apps.DaphneConfig", "django.contrib.staticfiles"]):
        assert checks.check_installed_apps() == []


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


def test_redis_url_comes_from_any_form_of_the_layers_first_host():
    """A host names its Redis once, in CHANNEL_LAYERS, in any form channels_redis takes."""
    from broadcaster.conf import layer_redis_url

    def first(host):
        return layer_redis_url({"default": {"CONFIG": {"hosts": [host]}}})

    assert [first("rediss://r:1/2"), first(("redis", 6379)), first({"host": "h", "port": 7}),
            first({"address": "redis://b:2/0", "password": "p w"}), first({"address": "redis://:q@b:2/0"}),
            first({"sentinels": [("s1", 26379)], "master_name": "m"})] == [
        "rediss://r:1/2", "redis://redis:6379/0", "redis://h:7/0", "redis://:p%20w@b:2/0", "redis://:q@b:2/0",
        "sentinel://s1:26379/m"]  # fmt: skip
    assert layer_redis_url({}) is None
