"""One settings table (broadcaster/conf.py, broadcast_site/variables.py) drives the site's parsing,
the embedding project's system check, `.env.example` and the README's configuration table."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from django.test import override_settings

from broadcast_site import env, variables
from broadcaster import checks
from broadcaster.conf import APP_SETTINGS, DEFAULTS, Setting
from tests.support import ROOT

ENV_APP_SETTINGS = [setting for setting in APP_SETTINGS if setting.in_env]


def test_readme_and_env_example_are_the_tables_text():
    """Both files say what the table says (after editing it: `make settings-docs`)."""
    readme = (ROOT / "README.md").read_text()
    assert variables.readme_with_table(readme) == readme, "README.md's table is stale: run make settings-docs"
    assert (ROOT / ".env.example").read_text() == variables.env_example(), (
        ".env.example is stale: run make settings-docs"
    )


def test_every_variable_is_documented_once_and_every_app_default_is_in_the_table():
    names = [setting.name for setting in variables.VARIABLES]
    assert len(names) == len(set(names))
    assert set(DEFAULTS) - {"EMBEDDED_REDIS"} == {setting.name for setting in APP_SETTINGS}
    readme = (ROOT / "README.md").read_text()
    assert re.findall(r"^\| `([A-Z_]+)` \|", readme, re.M) == names


def test_every_default_passes_its_own_check():
    for setting in variables.VARIABLES:
        assert setting.problem(setting.default) is None, setting.name


def _valid_other_value(setting: Setting) -> object:
    """A value the setting accepts that is not its default."""
    if setting.choices:
        return next(choice for choice in setting.choices if choice != setting.default)
    if setting.kind is int:
        return setting.default + 1 if setting.maximum is None or setting.default < setting.maximum else 1
    if setting.kind is float:
        return setting.default + 0.5
    return f"x-{setting.name.lower()}"


@pytest.mark.parametrize("setting", ENV_APP_SETTINGS, ids=lambda setting: setting.name)
def test_the_environment_is_held_to_each_bound(setting):
    """Below its minimum, above its maximum, not a number, not a choice: an error naming it; at
    each bound and at another valid value, that value."""
    read = lambda raw: env.read(setting, environ={setting.name: raw})  # noqa: E731
    assert read(" ") == setting.default
    other = _valid_other_value(setting)
    assert read(str(other)) == other
    if setting.kind in (int, float):
        with pytest.raises(env.ConfigError, match=f"^Config '{setting.name}' has value 'many'. Not a valid"):
            read("many")
    if setting.minimum is not None:
        assert read(str(setting.minimum)) == setting.minimum
        below = setting.minimum - (1 if setting.kind is int else 0.01)
        with pytest.raises(env.ConfigError, match="It must be at least"):
            read(str(below))
        assert setting.problem(setting.kind(below)) is not None
    if setting.maximum is not None:
        assert read(str(setting.maximum)) == setting.maximum
        with pytest.raises(env.ConfigError, match="It must be at most"):
            read(str(setting.maximum + 1))
        assert setting.problem(setting.kind(setting.maximum + 1)) is not None
    if setting.choices:
        with pytest.raises(env.ConfigError, match="It must be one of"):
            read("nobody")


@pytest.mark.integration  # runs manage.py
def test_the_site_reads_every_app_setting_from_the_environment(tmp_path):
    """Each app setting set in the environment (to a valid value other than its default) is the
    site's setting: none is left out of settings.py's reading."""
    wanted = {setting.name: _valid_other_value(setting) for setting in ENV_APP_SETTINGS}
    code = "import json; from django.conf import settings as s; "
    code += f"print(json.dumps({{n: getattr(s, n) for n in {list(wanted)!r}}}))"
    environ = {"PATH": "/usr/bin:/bin", "BROADCAST_DOTENV": "", "BROADCAST_VAR_DIR": str(tmp_path)}
    environ |= {name: str(value) for name, value in wanted.items()}
    done = subprocess.run([sys.executable, "manage.py", "shell", "--no-imports", "-c", code], cwd=ROOT,
                          text=True, capture_output=True, timeout=60, env=environ)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == wanted


def test_an_embedding_projects_value_out_of_bounds_is_a_system_check_error():
    """A project that sets an app setting in settings.py gets the site's bounds as E005."""
    assert checks.check_settings() == []
    wrong = {"BROADCAST_MAX_LENGTH": 0, "BROADCAST_RECEIVERS": "everybody", "BROADCAST_COUNT_INTERVAL": "1",
             "BROADCAST_HISTORY_COUNT": True}  # fmt: skip
    with override_settings(**wrong):
        errors = checks.check_settings()
    assert [(error.id, error.msg) for error in errors] == [
        ("broadcaster.E005", "BROADCAST_MAX_LENGTH: it must be at least 1 (not 0)."),
        ("broadcaster.E005", "BROADCAST_COUNT_INTERVAL: it must be a number, not '1'."),
        ("broadcaster.E005", "BROADCAST_HISTORY_COUNT: it must be an integer, not True."),
        (
            "broadcaster.E005",
            "BROADCAST_RECEIVERS: it must be one of: anyone, authenticated (not 'everybody').",
        ),
    ]
    with override_settings(
        BROADCAST_PRESENCE_TTL=5, BROADCAST_MAX_LENGTH=variables.BY_NAME["BROADCAST_MAX_LENGTH"].maximum
    ):
        assert checks.check_settings() == []  # an int where a number is wanted; the maximum itself
    # Unset secrets read with os.environ.get(), and a whole number written as a float.
    with override_settings(REDIS_PASSWORD=None, BROADCAST_METRICS_TOKEN=None, BROADCAST_MAX_UNSENT_BYTES=1e6):
        assert checks.check_settings() == []


def test_the_makefiles_defaults_are_the_tables():
    """`make run` and `make serve` fall back to the table's HOST, PORT, WORKERS, PROXY_HEADERS."""
    makefile = (ROOT / "Makefile").read_text()
    for name in ("HOST", "PORT", "WORKERS", "PROXY_HEADERS"):
        found = re.search(rf"^{name} \?= \$\(or \$\(call dotenv,{name}\),([^)]*)\)$", makefile, re.M)
        assert found, name
        assert found.group(1) == variables.BY_NAME[name].default_text, name
