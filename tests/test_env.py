"""Strict parsing of configuration from the environment."""

from __future__ import annotations

import subprocess
import sys

import pytest

from broadcast_site import env
from tests.support import ROOT


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("TRUE", True), ("off", False), ("0", False)])
def test_bool_spellings(raw, value):
    """Known spellings parse; case and spaces do not matter."""
    assert env.get_bool("X", False, environ={"X": f" {raw} "}) is value


def test_blank_means_the_default():
    """`NAME=` (as in .env.example) is the default, for every kind of value."""
    blank = {"X": " "}
    assert env.get_bool("X", True, environ=blank) is True
    assert (env.get_str("X", "d", environ=blank), env.get_int("X", 7, environ=blank)) == ("d", 7)
    assert (env.get_float("X", 0.5, environ=blank), env.get_list("X", ["a"], environ=blank)) == (0.5, ["a"])


@pytest.mark.integration  # runs manage.py
def test_the_example_file_as_dotenv_changes_nothing(tmp_path):
    """Copying .env.example to .env unedited gives the same settings as no .env at all."""
    # Every setting whose text is stable between two processes (no object addresses).
    code = ("import json; from django.conf import settings as s; print(json.dumps({k: repr(getattr(s, k)) "
            "for k in dir(s) if k.isupper() and k not in {'DOTENV', 'SETTINGS_MODULE'} "
            "and ' at 0x' not in repr(getattr(s, k))}))")  # fmt: skip
    runs = {}
    for name, dotenv in [("none", ""), ("example", str(ROOT / ".env.example"))]:
        variables = {"PATH": "/usr/bin:/bin", "BROADCAST_DOTENV": dotenv, "BROADCAST_VAR_DIR": str(tmp_path)}
        done = subprocess.run([sys.executable, "manage.py", "shell", "--no-imports", "-c", code], cwd=ROOT,
                              text=True, capture_output=True, timeout=60, env=variables)  # fmt: skip
        assert done.returncode == 0, done.stderr
        runs[name] = done.stdout
    assert runs["none"] == runs["example"]


def test_bool_rejects_anything_else():
    """A typo is an error that names the variable and the value."""
    with pytest.raises(env.ConfigError) as excinfo:
        env.get_bool("DJANGO_DEBUG", False, environ={"DJANGO_DEBUG": "ture"})
    assert str(excinfo.value) == (
        "Config 'DJANGO_DEBUG' has value 'ture'. Not a valid bool (use 1/0, true/false)."
    )


def test_int_minimum_and_maximum():
    """Integers parse; below the minimum, above the maximum or not a number is an error."""
    assert env.get_int("N", 5, environ={}) == 5
    assert env.get_int("N", 5, minimum=1, environ={"N": "7"}) == 7
    with pytest.raises(env.ConfigError, match="It must be at least 1"):
        env.get_int("N", 5, minimum=1, environ={"N": "0"})
    with pytest.raises(env.ConfigError, match="Not a valid integer"):
        env.get_int("N", 5, environ={"N": "many"})
    assert env.get_int("N", 5, maximum=9, environ={"N": "9"}) == 9
    with pytest.raises(env.ConfigError, match=r"^Config 'N' has value '10'. It must be at most 9.$"):
        env.get_int("N", 5, maximum=9, environ={"N": "10"})


def test_list():
    """Comma-separated lists drop blanks."""
    assert env.get_list("H", ["a"], environ={"H": "x.example, ,y.example"}) == ["x.example", "y.example"]


def test_database_urls():
    """DATABASE_URL through dj-database-url: relative SQLite paths are the project's, query
    options reach the driver, server connections are reused and checked, and an unusable
    URL is an error that does not repeat the URL (it may hold a password)."""
    sqlite = env.database_from_url("sqlite:///db.sqlite3", base_dir="/srv", conn_max_age=60)
    assert (sqlite["ENGINE"], sqlite["NAME"], sqlite["CONN_MAX_AGE"]) == (
        "django.db.backends.sqlite3", "/srv/db.sqlite3", 0)  # fmt: skip
    assert env.database_from_url("sqlite:////var/db.sqlite3", base_dir="/srv")["NAME"] == "/var/db.sqlite3"
    pg = env.database_from_url("postgres://u:p%40ss@db:5433/site?sslmode=require", base_dir="/srv",
                               conn_max_age=60)  # fmt: skip
    assert {k: pg[k] for k in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS",
                               "CONN_MAX_AGE", "CONN_HEALTH_CHECKS")} == {
        "ENGINE": "django.db.backends.postgresql", "NAME": "site", "USER": "u", "PASSWORD": "p@ss",
        "HOST": "db", "PORT": 5433, "OPTIONS": {"sslmode": "require"}, "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True}  # fmt: skip
    with pytest.raises(env.ConfigError) as refused:
        env.database_from_url("nosuchdb://u:hunter2@x/db", base_dir="/srv")
    assert "nosuchdb" in str(refused.value) and "hunter2" not in str(refused.value)


@pytest.mark.integration  # runs manage.py
def test_dotenv_fills_in_what_the_environment_does_not_set(tmp_path):
    """.env values are used, the environment's win over them, and BROADCAST_DOTENV names the file."""
    dotenv = tmp_path / "site.env"
    dotenv.write_text("# comment\nBROADCAST_MAX_LENGTH=77\nBROADCAST_HISTORY_COUNT=12\n")
    code = "from django.conf import settings as s; print(s.BROADCAST_MAX_LENGTH, s.BROADCAST_HISTORY_COUNT)"
    base = {"PATH": "/usr/bin:/bin", "BROADCAST_VAR_DIR": str(tmp_path), "BROADCAST_DOTENV": str(dotenv)}
    for extra, expected in [({}, "77 12"), ({"BROADCAST_HISTORY_COUNT": "5"}, "77 5"),
                            ({"BROADCAST_DOTENV": ""}, "4096 1000")]:  # fmt: skip
        done = subprocess.run([sys.executable, "manage.py", "shell", "--no-imports", "-c", code], cwd=ROOT,
                              text=True, capture_output=True, timeout=60, env={**base, **extra})  # fmt: skip
        assert (done.returncode, done.stdout.strip()) == (0, expected), done.stderr


def manage_check(tmp_path, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """`manage.py check ARGS` in a clean environment holding only `variables`."""
    env = {"PATH": "/usr/bin:/bin", "BROADCAST_VAR_DIR": str(tmp_path), **variables}
    return subprocess.run([sys.executable, "manage.py", "check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=env)  # fmt: skip


@pytest.mark.integration  # runs manage.py
def test_blank_debug_is_an_error(tmp_path):
    """DJANGO_DEBUG= (blank) would otherwise mean the default, debug on: it is refused."""
    done = manage_check(tmp_path, DJANGO_DEBUG=" ")
    assert done.returncode == 1
    assert "Config 'DJANGO_DEBUG' is blank: set 1 (development) or 0 (production)." in done.stderr


@pytest.mark.integration  # runs manage.py
def test_missing_secret_key_with_debug_off_fails_at_start_up(tmp_path):
    """With DJANGO_DEBUG=0 and no DJANGO_SECRET_KEY, the site refuses to start, saying why."""
    done = manage_check(tmp_path, DJANGO_DEBUG="0")
    assert (done.returncode, done.stderr) == (
        1,
        "Configuration error: DJANGO_SECRET_KEY is not set and DJANGO_DEBUG is off: "
        "set a long random secret.\n",
    )


@pytest.mark.integration  # runs manage.py
def test_bad_value_at_start_up_names_variable(tmp_path):
    """A malformed variable stops manage.py with one line naming it."""
    done = manage_check(tmp_path, BROADCAST_MAX_LENGTH="lots")
    assert (done.returncode, done.stderr) == (
        1,
        "Configuration error: Config 'BROADCAST_MAX_LENGTH' has value 'lots'. Not a valid integer.\n",
    )


@pytest.mark.integration  # runs manage.py
def test_check_deploy_passes_with_the_documented_production_variables(tmp_path):
    """`manage.py check --deploy` has nothing to say with the README's production settings."""
    done = manage_check(
        tmp_path, "--deploy", "--fail-level", "WARNING", DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="k3y-" + "Zq8xW2vR7pL0mN5bT9yU4sA1dF6gH3jK" * 2,
        DJANGO_ALLOWED_HOSTS="broadcast.example.com", DJANGO_BEHIND_HTTPS_PROXY="1",
        DJANGO_SSL_REDIRECT="1", DJANGO_HSTS_SECONDS="31536000",
        DJANGO_HSTS_INCLUDE_SUBDOMAINS="1", DJANGO_HSTS_PRELOAD="1",
        REDIS_URL="redis://redis.internal:6379/0",
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, ""), done.stdout + done.stderr


@pytest.mark.integration  # runs manage.py
def test_var_dir_and_sqlite_database_are_private_to_the_user(tmp_path):
    """A fresh BROADCAST_VAR_DIR is created 0700 and its SQLite database 0600 (it holds sessions
    and password hashes)."""
    var = tmp_path / "fresh" / "var"
    env = {"PATH": "/usr/bin:/bin", "BROADCAST_VAR_DIR": str(var), "REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    assert (var.stat().st_mode & 0o777, (var / "db.sqlite3").stat().st_mode & 0o777) == (0o700, 0o600)
    assert (var / "db.sqlite3").stat().st_size > 0  # migrated, not just created


@pytest.mark.integration  # runs manage.py
@pytest.mark.parametrize(
    ("variables", "message"),
    [({"REDIS_SENTINELS": "127.0.0.1:26379"},
      "REDIS_SENTINELS is set: set REDIS_SENTINEL_MASTER to the master's name too."),
     ({"REDIS_SENTINELS": "127.0.0.1:26379", "REDIS_SENTINEL_MASTER": "m", "REDIS_URL": "redis://x:1/0"},
      "Set REDIS_URL or REDIS_SENTINELS, not both."),
     ({"REDIS_SENTINELS": "127.0.0.1", "REDIS_SENTINEL_MASTER": "m"},
      "REDIS_SENTINELS must be host:port,host:port,... (got ['127.0.0.1'])")],
)  # fmt: skip
def test_sentinel_settings_are_checked_at_start_up(tmp_path, variables, message):
    done = manage_check(tmp_path, **variables)
    assert (done.returncode, done.stderr) == (1, f"Configuration error: {message}\n")
