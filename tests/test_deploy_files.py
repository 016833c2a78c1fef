"""docker-compose.yml and .env.example. No Docker engine runs here, so the structure is checked."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import yaml

from tests.support import ROOT


def test_compose_runs_redis_and_daphne_on_real_entry_points(env_for, redis_url):
    """Redis plus the site under daphne, pointing at the project's real ASGI application."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "web"}
    assert services["redis"]["image"].startswith("redis:")
    web = services["web"]
    assert web["build"] == "."
    assert (ROOT / "Dockerfile").exists()
    assert web["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert web["environment"]["REDIS_URL"] == "redis://redis:6379/0"

    command = shlex.split(web["command"])
    assert command[:2] == ["sh", "-c"]
    inner = command[2]
    assert "python manage.py migrate --noinput" in inner
    app = re.search(r"daphne .* (\S+:\S+)$", inner).group(1)
    module, attr = app.split(":")
    # In a child process: importing the ASGI module prepares a server process (GC, limits).
    probe = f"import importlib; assert getattr(importlib.import_module({module!r}), {attr!r})"
    # The test Redis and a private var dir: not this checkout's embedded Redis (left running).
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=env_for(redis_url))  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_compose_and_env_example_name_only_real_settings():
    """Every variable compose sets is documented in .env.example, and every one there is read."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    documented = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert set(compose["services"]["web"]["environment"]) <= documented
    sources = "".join(p.read_text() for p in [ROOT / "broadcast_site/settings.py", ROOT / "Makefile"])
    sources += "".join(p.read_text() for p in (ROOT / "broadcaster").rglob("*.py"))
    unread = {name for name in documented if name not in sources}
    assert unread == set()
