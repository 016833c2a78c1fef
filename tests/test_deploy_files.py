"""docker-compose.yml, .env.example and the Makefile. No Docker engine runs here, so the compose
file's structure is checked."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.support import ROOT


def test_compose_is_the_production_shape(env_for, redis_url):
    """Redis, a one-off migrate, two web hosts running deploy/serve.sh, HAProxy in front with
    the shipped config and the only published port; healthchecks on the readiness URL; a stop
    grace period longer than the drain."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "migrate", "web1", "web2", "haproxy"}
    assert services["redis"]["image"].startswith("redis:")
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert services["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    for name in ("web1", "web2"):
        web = services[name]
        assert web["build"] == "." and (ROOT / "Dockerfile").exists()
        assert web["command"] == ["deploy/serve.sh"]
        assert "ports" not in web, "web hosts are reached through HAProxy only"
        env = web["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["PROXY_HEADERS"] == "1"
        assert "/health/ready/" in " ".join(web["healthcheck"]["test"])
        grace = int(web["stop_grace_period"].rstrip("s"))
        drain = float(re.search(r":-(\d+)", env["BROADCAST_DRAIN_SECONDS"]).group(1))
        assert grace >= drain + 15, "Docker would SIGKILL a draining worker"
        assert web["depends_on"] == {"redis": {"condition": "service_healthy"},
                                     "migrate": {"condition": "service_completed_successfully"}}  # fmt: skip
    lb = services["haproxy"]
    assert lb["image"].startswith("haproxy:")
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in lb["volumes"]
    assert {lb["environment"]["BROADCAST_HOST_1"], lb["environment"]["BROADCAST_HOST_2"]} == {
        "web1:8000", "web2:8000"}  # fmt: skip
    assert lb["ports"] == ["8000:8000"] and lb["environment"]["BROADCAST_LB_BIND"] == ":8000"
    assert set(lb["depends_on"]) == {"web1", "web2"}

    # The command exists and runs supervisord with the shipped config; the image's default
    # command (a container alone) migrates first.
    serve = ROOT / "deploy" / "serve.sh"
    assert serve.stat().st_mode & 0o111
    assert 'exec "$BIN/supervisord" -c deploy/supervisord.conf' in serve.read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["sh", "-c", "python manage.py migrate --noinput && exec deploy/serve.sh"]' in dockerfile
    assert "collectstatic" in dockerfile
    # The ASGI application the workers serve imports (in a child: importing it prepares a
    # server process) with the test Redis and a private var dir.
    conf = (ROOT / "deploy" / "supervisord.conf").read_text()
    module, attr = re.search(r"daphne %\(ENV_DAPHNE_ARGS\)s (\S+):(\S+)", conf).groups()
    probe = f"import importlib; assert getattr(importlib.import_module({module!r}), {attr!r})"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=env_for(redis_url))  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_compose_and_env_example_name_only_real_settings():
    """Every variable compose sets is documented in .env.example, and every one there is read."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    documented = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert set(compose["services"]["web1"]["environment"]) <= documented
    sources = "".join(p.read_text() for p in [ROOT / "broadcast_site/settings.py", ROOT / "Makefile"])
    sources += "".join(p.read_text() for p in (ROOT / "broadcaster").rglob("*.py"))
    unread = {name for name in documented if name not in sources}
    assert unread == set()


@pytest.mark.integration  # runs `make -n`
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
