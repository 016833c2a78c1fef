"""docker-compose.yml, .env.example and the Makefile. No Docker engine runs here, so the compose
file's structure is checked."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys

import pytest
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


@pytest.mark.parametrize(
    ("dotenv", "environment", "expected"),
    [("", {}, "127.0.0.1:8000"),
     ("PORT=8765\n", {}, "127.0.0.1:8765"),
     ("PORT=8765\n", {"PORT": "9000"}, "127.0.0.1:9000"),
     ("export HOST='0.0.0.0'  # everywhere\nPORT = 5\n", {}, "0.0.0.0:5"),
     ("PORT=8765\n", {"BROADCAST_DOTENV": ""}, "127.0.0.1:8000")],
)  # fmt: skip
def test_make_run_takes_host_and_port_as_the_settings_do(tmp_path, dotenv, environment, expected):
    """`make run` listens where .env says, unless the environment says otherwise."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "requirements.txt").touch()
    (tmp_path / ".env").write_text(dotenv)
    env = {"PATH": "/usr/bin:/bin", **environment}
    done = subprocess.run(["make", "-n", "run"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].endswith(f"manage.py runserver {expected}")
