"""The shipped deploy/haproxy.cfg, with the real `haproxy` (Debian's package) in front of two
daphne hosts on loopback: clients spread, a host drained through the runtime API keeps its
connections, a host sent SIGTERM hands its clients over, and nothing is lost or repeated."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess

import pytest

from broadcaster.sending.publish import publish
from tests.support import ROOT, Daphne, ResumingClient, free_port, scrape, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


@pytest.fixture
def haproxy_binary() -> str:
    if not os.path.exists(HAPROXY):
        if os.environ.get("BROADCAST_REQUIRE_HAPROXY"):
            pytest.fail("haproxy is required here (apt-get install haproxy)")
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    return HAPROXY


def admin(path: str, command: str) -> str:
    """One command to HAProxy's runtime API."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out.decode()


def receivers(server: Daphne) -> int:
    """Receivers the host holds, from its own /metrics (a snapshot of HAProxy's connections to
    it could include a health check's)."""
    return int(scrape(server.http)[1]["broadcaster_connections"])


def state(admin_path: str, server: str) -> str:
    for line in admin(admin_path, "show servers state broadcast").splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[3] == server:
            return {"0": "stopped", "1": "starting", "2": "up", "3": "stopping"}.get(fields[5], fields[5])
    return "?"


async def test_two_hosts_behind_haproxy_drain_and_handover(haproxy_binary, daphne, tmp_path):
    one, two = daphne(), daphne()
    lb_port, admin_path = free_port(), str(tmp_path / "lb.sock")
    env = {**os.environ, "BROADCAST_LB_BIND": f"127.0.0.1:{lb_port}", "BROADCAST_LB_ADMIN": admin_path,
           "BROADCAST_HOST_1": f"127.0.0.1:{one.port}",
           "BROADCAST_HOST_2": f"127.0.0.1:{two.port}"}  # fmt: skip
    lb = subprocess.Popen([haproxy_binary, "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    clients: list[ResumingClient] = []
    try:
        await asyncio.to_thread(wait_until, lambda: os.path.exists(admin_path)
                                and {state(admin_path, "host1"), state(admin_path, "host2")} == {"up"},
                                timeout=20, what="both hosts up in HAProxy")  # fmt: skip
        url = f"ws://127.0.0.1:{lb_port}/ws/broadcast/"
        clients = [ResumingClient(url) for _ in range(200)]
        await asyncio.to_thread(one.wait_for_clients, 200, timeout=60)
        spread = [receivers(one), receivers(two)]
        print(f"connections per host: {spread}")
        assert all(70 <= n <= 130 for n in spread), spread
        sent = [await publish(text="first", sender="test")]
        # /metrics through the proxy (it sets X-Forwarded-For): refused; straight to a host
        # on loopback: served.
        assert scrape(f"http://127.0.0.1:{lb_port}")[0] == 403
        assert scrape(one.http)[0] == 200

        # Drained through the runtime API: open connections stay, new ones go to host2.
        admin(admin_path, "set server broadcast/host1 state drain")
        held = receivers(one)
        late = [ResumingClient(url) for _ in range(20)]
        clients += late
        await asyncio.to_thread(one.wait_for_clients, 220, timeout=60)
        assert receivers(one) == held and receivers(two) == spread[1] + 20

        # SIGTERM to host1: its clients get 1012 and come back through HAProxy to host2.
        admin(admin_path, "set server broadcast/host1 state ready")
        one.proc.send_signal(15)
        for i in range(30):
            sent.append(await publish(text=f"during {i}", sender="test"))
            await asyncio.sleep(0.1)
        await asyncio.to_thread(wait_until, lambda: one.proc.poll() is not None, timeout=30,
                                what="host1 drained and stopped")  # fmt: skip
        await asyncio.to_thread(two.wait_for_clients, 220, timeout=60)
        sent.append(await publish(text="after", sender="test"))
        expected = [s.seq for s in sent]
        for client in clients:
            for _ in range(300):
                if client.seqs[-1:] == expected[-1:]:
                    break
                await asyncio.sleep(0.1)
        differ = [c.seqs for c in clients if c.seqs != expected]
        assert not differ, f"{len(differ)} clients differ, e.g. {differ[0][:3]}...{differ[0][-3:]}"
        assert receivers(two) == 220
    finally:
        for client in clients:
            await client.stop()
        lb.terminate()
        lb.wait(timeout=10)
