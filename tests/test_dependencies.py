"""`make audit` (deploy/audit.py) and the dependency floors: the pins and pyproject.toml's ranges
stay above the releases with published advisories, and a finding fails the audit."""

from __future__ import annotations

import importlib.util
import re
import stat
import sys

import pytest

from tests.support import ROOT

spec = importlib.util.spec_from_file_location("audit", ROOT / "deploy" / "audit.py")
assert spec is not None and spec.loader is not None
audit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(audit)


def test_the_pins_and_the_ranges_exclude_releases_with_published_advisories():
    assert audit.below_floors((ROOT / "requirements.txt").read_text()) == []
    pyproject = (ROOT / "pyproject.toml").read_text()
    for name, (floor, _) in audit.FLOORS.items():
        [lower] = re.findall(rf'"{name}>=([0-9.]+)', pyproject, re.IGNORECASE)
        assert audit._release(lower) >= audit._release(floor), (name, lower, floor)
    assert audit.below_floors("daphne==4.2.1\nTwisted==24.3.0  # old\nredis==8.1.0") == [
        "daphne 4.2.1: CVE-2026-44545 (unlimited WebSocket frames), CVE-2026-44546 (header injection) "
        "(fixed in 4.2.2)",
        "Twisted 24.3.0: CVE-2024-41671 (HTTP pipelining), CVE-2024-41810 (redirect HTML injection) "
        "(fixed in 24.7.0)",
    ]


def _fake_pip_audit(tmp_path, report: dict | None):
    """A stand-in for pip-audit, whose vulnerability service this machine cannot reach: it
    writes `report` where --output says (None: fails as with no network)."""
    script = tmp_path / "pip-audit"
    body = "import sys; sys.exit('ConnectionError: no network')" if report is None else (
        f"import sys, json; out = sys.argv[sys.argv.index('--output') + 1]; "
        f"open(out, 'w').write(json.dumps({report!r}))")  # fmt: skip
    script.write_text(f"#!{sys.executable}\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


@pytest.mark.integration  # runs the stand-in as a process
def test_a_finding_fails_the_audit_and_no_network_is_a_warning(tmp_path, capsys):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("Django==5.2.19\n")
    finding = {"dependencies": [{"name": "django", "version": "5.2.19",
                                 "vulns": [{"id": "PYSEC-0000-1", "fix_versions": ["5.2.20"]}]}]}  # fmt: skip
    assert audit.main(_fake_pip_audit(tmp_path, finding), str(requirements)) == 1
    assert "django 5.2.19: PYSEC-0000-1 (fixed in 5.2.20)" in capsys.readouterr().err
    clean = {"dependencies": [{"name": "django", "version": "5.2.19", "vulns": []}]}
    assert audit.main(_fake_pip_audit(tmp_path, clean), str(requirements)) == 0
    assert audit.main(_fake_pip_audit(tmp_path, None), str(requirements)) == 0
    assert "could not be reached" in capsys.readouterr().err
    crash = tmp_path / "crash"
    crash.write_text(f"#!{sys.executable}\nraise SystemExit('ValueError: unreadable requirements')\n")
    crash.chmod(0o755)
    assert audit.main(str(crash), str(requirements)) == 1  # not the network: a failure
    assert audit.main(str(tmp_path / "absent"), str(requirements)) == 0  # not installed: the floors only
    requirements.write_text("daphne==4.2.0\n")
    assert audit.main(_fake_pip_audit(tmp_path, clean), str(requirements)) == 1
