"""The benchmark's quick mode runs in the suite, so it never rots (numbers are for people)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.bench


def test_quick_bench_runs_every_system_and_loses_nothing(tmp_path):
    """Every system connects 200 clients and delivers every message, whole, once per client, and
    the table, ratios and targets print. (Node's `ws` peer runs where node is on PATH.)"""
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
    systems = ["project", "project (WORKERS=2)", "original (gather)", "websockets.broadcast()"]
    systems += ["node ws"] if shutil.which("node") else []
    systems += ["channels tutorial (RedisPubSubChannelLayer)"]
    rows = [(r["system"], r["n"], r["connected"], r["lost"], r["duplicated"], r["corrupt"]) for r in results]
    assert rows == [(system, 200, 200, 0, 0, 0) for system in systems]
    for r in results:
        assert r["deliveries_per_s"] > 0 and r["connects_per_s"] > 0 and r["p50_ms"] > 0, r
        assert abs(r["single_per_s"] - 200 / (r["p50_ms"] / 1000)) < 1e-6, r
    assert "project / original (gather): deliveries/s " in done.stdout
    assert "project (WORKERS=2) / channels tutorial (RedisPubSubChannelLayer): deliveries/s " in done.stdout
    assert "N=200: p99 / p50, project: " in done.stdout
    assert "N=200: burst deliveries/s, project / websockets.broadcast(): " in done.stdout
    assert all(r["single_cpu_ms"] > 0 for r in results), results


def test_repeated_runs_meet_a_target_only_if_every_run_does(capsys):
    """--repeat: a target met in two runs and missed in the third is MISSED overall, with each
    run's value shown; the single-message ratios are held to both peers from N = 5,000."""
    from bench.run import Result, print_repeats, targets

    def run(p50: float) -> list:
        return targets([
            Result(system="project", n=5000, p50_ms=p50, p99_ms=p50 * 1.1, deliveries_per_s=300_000),
            Result(system="websockets.broadcast()", n=5000, p50_ms=100.0, deliveries_per_s=80_000),
            Result(system="node ws", n=5000, p50_ms=95.0, deliveries_per_s=60_000),
        ])  # fmt: skip

    runs = [run(85.0), run(88.0), run(93.0)]
    by_name = {c.what: c for c in runs[0]}
    assert by_name["N=5000: time to all p50, 1 worker / websockets.broadcast()"].bound == 0.9
    assert by_name["N=5000: time to all p50, 1 worker / node ws"].bound == 1.0
    print_repeats(runs)
    shown = capsys.readouterr().out
    assert "MISSED  N=5000: time to all p50, 1 worker / websockets.broadcast(): 0.85 / 0.88 / 0.93" in shown
    assert "met     N=5000: time to all p50, 1 worker / node ws: 0.89 / 0.93 / 0.98" in shown
    assert "met     N=5000: burst deliveries/s, project / websockets.broadcast(): 3.75 / 3.75 / 3.75" in shown


def test_load_audit_counts_losses_and_duplicates_per_client():
    """A duplicate at one client and a loss at another are both reported, where the totals per
    message (here 3, 4 and 1 deliveries to 3 clients) would hide them."""
    from types import SimpleNamespace

    from bench.load import audit

    clients = [SimpleNamespace(seen=bytearray([1, 1, 0])), SimpleNamespace(seen=bytearray([1, 2, 1])),
               SimpleNamespace(seen=bytearray([1, 1]))]  # fmt: skip
    assert audit(clients, [0, 1, 2]) == {"lost": 2, "duplicated": 1, "wrong": 0, "clients_short": 2,
                                         "clients_doubled": 1}  # fmt: skip


def test_load_audit_counts_a_message_at_a_receiver_it_was_not_for_as_wrong():
    """Message 1 was for ann only: bob's copy is wrong (not a duplicate), the anonymous
    receiver's absence is no loss, ann's absence is."""
    from types import SimpleNamespace

    from bench.load import audit

    ann, bob, anonymous = (SimpleNamespace(label=name, seen=bytearray(seen))
                           for name, seen in (("ann", [1, 0]), ("bob", [1, 1]), ("", [1, 0])))  # fmt: skip
    assert audit([ann, bob, anonymous], [0, 1], {1: {"ann"}}) == {
        "lost": 1, "duplicated": 0, "wrong": 1, "clients_short": 1, "clients_doubled": 0}  # fmt: skip


def frame(payload: bytes) -> bytes:
    """An unmasked server text frame."""
    if len(payload) < 126:
        return bytes([0x81, len(payload)]) + payload
    return bytes([0x81, 126]) + len(payload).to_bytes(2, "big") + payload


@pytest.mark.parametrize("json_frames", [False, True])
def test_load_client_counts_only_whole_messages(json_frames):
    """A frame split over two reads counts once; a frame whose line is cut or altered counts as
    corrupt, not delivered; a JSON `batch` frame counts each of its lines; a frame that is not
    JSON counts as corrupt at a sampled client; a frame with a bad header stops the client."""
    import asyncio
    import json

    from bench.load import LoadClient, Stats, line_bytes

    loop = asyncio.new_event_loop()
    try:
        stats = Stats()
        client = LoadClient(stats, b"", loop.create_future(), json_frames=json_frames, sample=True)
        client.upgraded = True
        if json_frames:
            whole = frame(json.dumps({"type": "message", "text": line_bytes(3).decode()}).encode())
            batch = frame(json.dumps({"type": "batch", "messages": [{"text": line_bytes(k).decode()}
                                                                     for k in (5, 6)]}).encode())  # fmt: skip
            client.data_received(batch)
            client.data_received(frame(b"not json " + line_bytes(7)))
        else:
            whole = frame(line_bytes(3))
        client.data_received(whole[:40])
        client.data_received(whole[40:] + frame(line_bytes(4)[:-1]) + frame(b"{" + line_bytes(8)[1:]))
        assert stats.counts == ({3: 1, 5: 1, 6: 1} if json_frames else {3: 1})
        assert stats.corrupt == (2 if json_frames else 1)
        client.data_received(bytes([0x81 | 0x40, 1, 0]))  # RSV1 set: no extension was negotiated
        assert stats.corrupt == (3 if json_frames else 2)
    finally:
        loop.close()


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


def test_targeted_bench_reaches_exactly_each_audience_over_sockets(tmp_path):
    """The end-to-end audience scenario with 300 receivers of 30 users: every audience's
    receivers get its messages, nobody else does (the run fails on any wrong delivery)."""
    out = tmp_path / "targeted.json"
    args = ["--receivers", "300", "--users", "30", "--groups", "4", "--samples", "3", "--json", str(out)]
    done = subprocess.run([sys.executable, "-m", "bench.targeted", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert (result["connected"], result["wrong"], result["lost"], result["duplicated"]) == (300, 0, 0, 0)
    reach = {row["audience"]: row["receivers"] for row in result["rows"]}
    # 270 signed in over 30 users: 9 tabs each; group g3 holds some of them.
    assert reach["everyone"] == 300 and 0 < reach["group:g3"] < 270 and reach["user:u12"] == 9, reach
    assert all(len(row["times_ms"]) == 3 and row["p50_ms"] > 0 for row in result["rows"]), result
    assert "KB/conn all anonymous" in done.stdout


def test_audience_bench_reaches_exactly_the_audiences(env_for, redis_url):
    """The audience scenario runs and reaches everyone, a group's and one user's receivers
    (with the test Redis and var dir: it must not need, nor start, any Redis)."""
    args = ["--receivers", "1000", "--users", "100", "--rounds", "5"]
    done = subprocess.run([sys.executable, "-m", "bench.audiences", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env_for("redis://127.0.0.1:1/0"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[0]: int(line.split()[1]) for line in done.stdout.splitlines()[2:5]}
    assert rows["everyone"] == 1000 and 0 < rows["group:g3"] < 1000, done.stdout
    assert rows["user:u42"] == 9, done.stdout  # 900 signed in over 100 users
    assert "bytes for the per-audience index" in done.stdout


def test_sse_bench_delivers_every_message_on_both_transports(tmp_path):
    """bench.sse with 200 receivers: every message reaches every WebSocket and every SSE
    receiver once, and the ratios print."""
    out = tmp_path / "sse.json"
    args = ["--receivers", "200", "--samples", "3", "--json", str(out)]
    done = subprocess.run([sys.executable, "-m", "bench.sse", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["transport"], r["connected"], r["lost"], r["duplicated"]) for r in rows] == [
        ("websocket", 200, 0, 0), ("sse", 200, 0, 0)]  # fmt: skip
    assert all(len(r["times_ms"]) == 3 and r["kb_per_conn"] > 0 for r in rows), rows
    assert "SSE / WebSocket: p50 " in done.stdout


def test_sse_load_client_counts_events_split_anywhere():
    """An SSE body in chunks, cut at any byte: each event's message counts once; a `batch`
    event counts each of its lines; comments and the stream's own events count nothing."""
    import asyncio

    from bench.load import SseLoadClient, Stats, line_bytes
    from broadcaster import protocol

    events = [b":\n\n", protocol.sse_event(protocol.stream_frame(token="t"), retry_ms=5)]
    events.append(protocol.sse_event(protocol.dumps({"type": "message", "seq": 1, "epoch": "e",
                                                 "text": line_bytes(3).decode()})))  # fmt: skip
    batch = [
        protocol.dumps({"type": "message", "seq": k, "epoch": "e", "text": line_bytes(k).decode()})
        for k in (5, 6)
    ]
    events.append(protocol.sse_event(protocol.batch_frame(batch)))
    body = b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in events)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for cut in range(1, len(head + body), 7):
        loop = asyncio.new_event_loop()
        try:
            stats = Stats()
            client = SseLoadClient(stats, b"", loop.create_future(), json_frames=True, sample=True)
            whole = head + body
            client.data_received(whole[:cut])
            client.data_received(whole[cut:])
            assert (stats.counts, stats.corrupt) == ({3: 1, 5: 1, 6: 1}, 0), cut
        finally:
            loop.close()
