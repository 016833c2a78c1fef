"""The benchmark's quick mode runs in the suite, so it never rots (numbers are for people)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.bench


def test_quick_bench_runs_every_system_and_loses_nothing(tmp_path):
    """All four systems connect 200 clients, deliver every message, and the table and ratios print."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert [(r["system"], r["n"], r["connected"], r["lost"], r["duplicated"]) for r in results] == [
        ("project", 200, 200, 0, 0),
        ("original (gather)", 200, 200, 0, 0),
        ("websockets.broadcast()", 200, 200, 0, 0),
        ("channels tutorial", 200, 200, 0, 0),
    ]
    for r in results:
        assert r["deliveries_per_s"] > 0 and r["connects_per_s"] > 0 and r["p50_ms"] > 0, r
        assert abs(r["single_per_s"] - 200 / (r["p50_ms"] / 1000)) < 1e-6, r
    assert "project / original (gather): deliveries/s " in done.stdout
    assert "project / channels tutorial: deliveries/s " in done.stdout


def test_load_audit_counts_losses_and_duplicates_per_client():
    """A duplicate at one client and a loss at another are both reported, where the totals per
    message (here 3, 4 and 1 deliveries to 3 clients) would hide them."""
    from types import SimpleNamespace

    from bench.load import audit

    clients = [SimpleNamespace(seen=bytearray([1, 1, 0])), SimpleNamespace(seen=bytearray([1, 2, 1])),
               SimpleNamespace(seen=bytearray([1, 1]))]  # fmt: skip
    assert audit(clients, [0, 1, 2]) == {"lost": 2, "duplicated": 1, "clients_short": 2, "clients_doubled": 1}


def test_drain_bench_moves_every_receiver_in_both_scenarios(tmp_path):
    """bench.drain with 200 receivers and a 1 s drain: every receiver of the worker sent
    SIGTERM comes back after a 1012, every one of the worker killed comes back after a drop."""
    out = tmp_path / "drain.json"
    command = [sys.executable, "-m", "bench.drain", "--n", "200", "--drain-seconds", "1", "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    for scenario in ("drain", "kill"):
        r = results[scenario]
        assert r["reconnects"] == r["held"] > 0 and r["peak_per_100ms"] > 0, r
    assert "close codes: {1012: " in done.stdout and "peak reconnects per 100 ms: drain" in done.stdout
