"""`make audit`: fail on a pinned dependency (requirements.txt) with a published vulnerability.

First the advisories listed here (FLOORS), checked offline on every run; then pip-audit against
its vulnerability service. Offline-safe: when the service cannot be reached, or cannot look a
package up (a registry mirror without the JSON API), that is a warning and the exit status is
0; a finding is a failure (status 1), with the advisories named.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# The first release fixing the published advisories of the packages the server's safety rests
# on (pyproject.toml's ranges start there too; tests/test_dependencies.py holds both to this).
FLOORS: dict[str, tuple[str, str]] = {
    "daphne": ("4.2.2", "CVE-2026-44545 (unlimited WebSocket frames), CVE-2026-44546 (header injection)"),
    "twisted": ("24.7.0", "CVE-2024-41671 (HTTP pipelining), CVE-2024-41810 (redirect HTML injection)"),
    "autobahn": ("20.12.3", "CVE-2020-35678 (redirect injection)"),
}


# What pip-audit's error says when the network is what failed.
_OFFLINE = ("ConnectionError", "NameResolutionError", "Max retries exceeded", "Temporary failure in name "
            "resolution", "Network is unreachable", "timed out", "ProxyError", "SSLError")  # fmt: skip


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def below_floors(requirements: str) -> list[str]:
    """What in a requirements file's `name==version` pins is older than its FLOORS release."""
    found = []
    for line in requirements.splitlines():
        name, _, version = line.split("#", 1)[0].strip().partition("==")
        floor = FLOORS.get(name.strip().lower())
        if floor is not None and _release(version) < _release(floor[0]):
            found.append(f"{name.strip()} {version.strip()}: {floor[1]} (fixed in {floor[0]})")
    return found


def main(pip_audit: str, requirements: str) -> int:
    old = below_floors(Path(requirements).read_text())
    for each in old:
        print(f"audit: {each}", file=sys.stderr)
    if old:
        return 1
    if not Path(pip_audit).exists():
        print("audit: WARNING: pip-audit is not installed; only the advisories listed here were checked",
              file=sys.stderr)  # fmt: skip
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "audit.json"
        command = [pip_audit, "-r", requirements, "--no-deps", "--disable-pip", "--progress-spinner", "off",
                   "--format", "json", "--output", str(report)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if not report.exists() or not report.read_text().strip():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            if not any(word in done.stderr for word in _OFFLINE):
                print(f"audit: pip-audit failed ({last[:300]})", file=sys.stderr)
                return 1
            print(f"audit: WARNING: the vulnerability service could not be reached ({last[:200]}); "
                  "only the advisories listed here were checked", file=sys.stderr)  # fmt: skip
            return 0
        dependencies = json.loads(report.read_text()).get("dependencies", [])
    found = [(d["name"], d["version"], v) for d in dependencies for v in d.get("vulns", [])]
    skipped = [d["name"] for d in dependencies if d.get("skip_reason")]
    for name, version, vuln in found:
        fixed = ", ".join(vuln.get("fix_versions", [])) or "none yet"
        print(f"audit: {name} {version}: {vuln['id']} (fixed in {fixed})", file=sys.stderr)
    if skipped:
        print(f"audit: WARNING: {len(skipped)} of {len(dependencies)} pinned packages could not be looked up "
              f"(no vulnerability service here?): {', '.join(skipped)}", file=sys.stderr)  # fmt: skip
    if found:
        print(
            f"audit: {len(found)} known vulnerabilities in pinned dependencies: upgrade them", file=sys.stderr
        )
        return 1
    print(f"audit: {len(dependencies) - len(skipped)} pinned packages checked, no known vulnerability")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
