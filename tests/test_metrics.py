"""GET /metrics on a real daphne (one process; `make serve`'s several workers are in
test_serve.py): the numbers match what real clients hold, and who may read them."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request

import pytest
from django.test import RequestFactory, override_settings

from broadcaster.sending.publish import publish
from broadcaster.views import metrics_view
from tests.support import Client, manage, scrape, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-token-" + "y" * 30


async def test_metrics_match_what_clients_hold(daphne):
    server = daphne()
    pid = server.proc.pid
    clients = [await Client(server.ws).connect() for _ in range(20)]
    try:
        await asyncio.to_thread(server.wait_for_clients, 20)
        status, samples, body = scrape(server.http)
        assert status == 200, body
        assert samples["broadcaster_connections"] == 20
        assert samples[f'broadcaster_worker_connections{{pid="{pid}"}}'] == 20
        assert samples["broadcaster_connections_accepted_total"] == 20
        assert samples["broadcaster_redis_errors_total"] == 0

        sent = await publish(text="counted", sender="test")
        for client in clients:
            await client.wait_for(lambda c: "counted" in c.messages(), timeout=10, what="the broadcast")
        # Deliveries are added to the counter when the fan-out ends (before clients read it).
        _, samples, _ = scrape(server.http)
        assert samples["broadcaster_deliveries_total"] == 20
        assert samples["broadcaster_broadcasts_total"] == 1
        assert samples["broadcaster_fanout_seconds_count"] == 1
        assert samples["broadcaster_publish_lag_seconds_count"] == 1
        assert 0 < samples["broadcaster_publish_lag_seconds_sum"] < 5

        # Resumes: one replayed (the newest it missed), one told to reset (an unknown epoch).
        replayed = await Client(f"{server.ws}?since=0&epoch={sent.epoch}").connect()
        reset = await Client(f"{server.ws}?since=1&epoch=gone").connect()
        clients += [replayed, reset]
        await replayed.wait_for(lambda c: "counted" in c.messages(), timeout=10, what="the replay")
        await reset.wait_for(lambda c: any(f["type"] == "reset" for f in c.frames), timeout=10, what="reset")
        for client in clients[:5]:
            await client.close()

        def settled() -> dict[str, float]:
            samples = scrape(server.http)[1]
            return samples if samples["broadcaster_connections"] == 17 else {}

        samples = await asyncio.to_thread(wait_until, settled, timeout=10, what="17 connections")
        assert samples["broadcaster_connections_accepted_total"] == 22
        assert samples['broadcaster_resumes_total{result="replayed"}'] == 1
        assert samples['broadcaster_resumes_total{result="reset"}'] == 1

        # The replay (1) and the reset client's catch-up (1) are deliveries too.
        def deliveries() -> float:
            return scrape(server.http)[1]["broadcaster_deliveries_total"]

        await asyncio.to_thread(wait_until, lambda: deliveries() == 22, timeout=10, what="catch-ups counted")
    finally:
        for client in clients:
            await client.close()


async def test_redis_errors_are_counted(daphne, dead_redis_url):
    """Each failed operation once, after its retries (redis-py nests a connect's retries in a
    command's: they are not counted again)."""
    server = daphne(url=dead_redis_url)
    before = scrape(server.http)[1]["broadcaster_redis_errors_total"]
    for _ in range(3):
        assert server.health()[0] == 503
    status, samples, _ = scrape(server.http)
    assert status == 200
    assert samples["broadcaster_redis_errors_total"] == before + 3


def test_who_may_read_metrics_over_the_network(daphne):
    """Loopback without a proxy's header: allowed. Through a proxy (X-Forwarded-For, as the
    shipped HAProxy config sets): refused, unless the request carries the token."""
    open_server = daphne()
    assert scrape(open_server.http)[0] == 200
    status, _, body = scrape(open_server.http, {"X-Forwarded-For": "8.8.8.8"})
    assert status == 403 and "BROADCAST_METRICS_TOKEN" in body
    assert scrape(open_server.http, {"Forwarded": "for=8.8.8.8"})[0] == 403
    # No token configured: no bearer value opens it.
    assert scrape(open_server.http, {"X-Forwarded-For": "8.8.8.8", "Authorization": "Bearer "})[0] == 403

    with_token = daphne(BROADCAST_METRICS_TOKEN=TOKEN)
    proxied = {"X-Forwarded-For": "8.8.8.8"}
    assert scrape(with_token.http, {**proxied, "Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert scrape(with_token.http, {**proxied, "Authorization": f"Bearer {TOKEN}x"})[0] == 403
    # A wrong token is refused even from loopback (it says the scraper is misconfigured).
    assert scrape(with_token.http, {"Authorization": "Bearer wrong"})[0] == 403
    assert scrape(with_token.http)[0] == 200


@pytest.mark.parametrize(
    ("address", "allowed"),
    [("127.0.0.1", True), ("10.1.2.3", True), ("192.168.0.9", True), ("172.16.5.5", True), ("::1", True),
     ("::ffff:192.168.1.4", True), ("fd00::7", True), ("8.8.8.8", False), ("100.64.0.1", False),
     ("2a00:1450:4001::1", False), ("::ffff:8.8.8.8", False), ("", False), ("2001:db8::1", False),
     ("2001::1", False), ("198.18.0.1", False), ("240.0.0.1", False), ("0.0.0.0", False)],
)  # fmt: skip
def test_metrics_addresses(address, allowed):
    """The address rule on its own (a request from a public address cannot be made on loopback;
    RequestFactory sets REMOTE_ADDR, the view is the real one)."""
    request = RequestFactory().get("/metrics", REMOTE_ADDR=address)
    with override_settings(BROADCAST_METRICS_TOKEN=""):
        assert (metrics_view(request).status_code == 200) is allowed


def test_metrics_refuse_other_methods():
    request = RequestFactory().post("/metrics", REMOTE_ADDR="127.0.0.1")
    assert metrics_view(request).status_code == 405


def test_metrics_folder_setting(tmp_path, env_for, redis_url):
    """PROMETHEUS_MULTIPROC_DIR naming no folder is a clear start-up error, not a traceback at
    the first connection; blank means unset."""
    missing = manage(["check"], env=env_for(redis_url, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "nope")))
    assert missing.returncode != 0
    assert f"PROMETHEUS_MULTIPROC_DIR={tmp_path / 'nope'} is not a folder" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert manage(["check"], env=env_for(redis_url, PROMETHEUS_MULTIPROC_DIR="")).returncode == 0


def test_probes_answer_whatever_the_host_and_scheme(daphne):
    """Load balancers and scrapers reach a host by its address, over plain HTTP: with
    ALLOWED_HOSTS naming only the public name and HTTPS redirects on, /health/, /health/ready/
    and /metrics still answer; every other page still checks both."""
    server = daphne(DJANGO_ALLOWED_HOSTS="broadcast.example.com", DJANGO_SSL_REDIRECT="1")
    by_address = {"Host": "10.0.0.5:8000"}
    for path in ("/health/", "/health/ready/", "/metrics"):
        request = urllib.request.Request(server.http + path, headers=by_address)
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200, path
    # (An HTTP/1.0 check with no Host header at all, as HAProxy's default httpchk sends.)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /health/ready/ HTTP/1.0\r\n\r\n")
        assert sock.makefile("rb").readline().split()[1] == b"200"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(server.http + "/", headers=by_address), timeout=10)
    assert refused.value.code == 400
    redirect = urllib.request.Request(server.http + "/operator/", headers={"Host": "broadcast.example.com"})
    with pytest.raises(urllib.error.HTTPError) as moved:
        urllib.request.build_opener(NoRedirect).open(redirect, timeout=10)
    assert moved.value.code == 301 and moved.value.headers["Location"].startswith("https://")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None
