"""The one boundary for other packages' internals (broadcaster/compat/): the private names are
used nowhere else, each check passes with the pinned releases, and a release that renamed one
makes the server refuse to start with a message naming the package and its version (real
daphne processes; each renamed release is a settings module that changes the installed one)."""

from __future__ import annotations

import re
import subprocess
import sys

import autobahn as autobahn_package
import daphne as daphne_package
import pytest
import twisted as twisted_package

from broadcaster.compat import asgiref, autobahn, daphne, twisted
from tests.support import ROOT, base_env, free_port

# Words too common to search for (the checks still cover them).
_GENERIC = {"state", "socket", "offset", "transport", "request", "pformat", "handle_reply", "HTTPFactory",
            "STATE_OPEN", "WebRequest",
            # the guard, a subclass of twisted.web's HTTPChannel, reads its own list of them
            "requests",
            # public names runserver.py overrides in its subclasses
            "server_cls", "listen_error"}  # fmt: skip


def test_the_pinned_releases_pass_every_check():
    assert (twisted.problem(), autobahn.problem(), daphne.problem()) == (None, None, None)


def test_the_router_is_taken_as_a_single_callable():
    from asgiref.compatibility import guarantee_single_callable

    from broadcaster.fanout.routing import Router

    router = Router.__new__(Router)
    assert guarantee_single_callable(router) is router


def test_their_internals_are_named_only_in_the_compat_modules():
    names = {
        name
        for module in (twisted, autobahn, daphne, asgiref)
        for used in module.USES.values()
        for name in used
    }
    names -= _GENERIC
    pattern = re.compile(r"(?:\.|[\"'])(" + "|".join(sorted(names)) + r")\b")
    found = {}
    for path in (ROOT / "broadcaster").rglob("*.py"):
        if path.parent.name == "compat":
            continue
        code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        hits = sorted(set(pattern.findall(code)))
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    assert found == {}


@pytest.mark.integration  # starts daphne
@pytest.mark.parametrize(
    ("settings", "expected"),
    [("tests.settings_renamed_twisted", f"Twisted {twisted_package.__version__} lacks TCP Connection."
                                        "_tempDataLen"),
     ("tests.settings_renamed_autobahn", f"autobahn {autobahn_package.__version__} lacks WebSocketProtocol."
                                         "STATE_OPEN"),
     ("tests.settings_renamed_daphne", f"daphne {daphne_package.__version__} lacks http_protocol."
                                       "WebRequest")],
)  # fmt: skip
def test_a_renamed_internal_refuses_to_start_naming_the_package(redis_url, tmp_path, settings, expected):
    env = base_env(redis_url, tmp_path / "var", DJANGO_SETTINGS_MODULE=settings)
    endpoint = f"tcp:port={free_port()}:interface=127.0.0.1"
    done = subprocess.run([sys.executable, "-m", "daphne", "-e", endpoint, "broadcast_site.asgi:application"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"This server cannot run with the installed packages: {expected}" in done.stderr, done.stderr
    assert "Install the versions pinned in requirements.txt." in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.integration  # runs manage.py runserver
def test_runserver_with_a_renamed_internal_exits_instead_of_serving_nothing(redis_url, tmp_path):
    """runserver loads the application in its autoreloader's thread: the refusal must still end
    the process (status 1), not only that thread."""
    env = base_env(redis_url, tmp_path / "var", DJANGO_SETTINGS_MODULE="tests.settings_renamed_twisted")
    done = subprocess.run([sys.executable, "manage.py", "runserver", f"127.0.0.1:{free_port()}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=90)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "This server cannot run with the installed packages: Twisted" in done.stderr, done.stderr
