"""`rediss://`: the whole site over TLS to a real redis-server started with TLS and a
certificate made here (Debian's redis-server; the project's embedded one has no TLS)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support import Client, free_port, manage, redis_answers, self_signed_certificate, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TLS_REDIS = os.environ.get("REDIS_TLS_SERVER_BIN", "/usr/bin/redis-server")


@pytest.fixture
def tls_redis(tmp_path: Path):
    if not os.path.exists(TLS_REDIS):
        if os.environ.get("BROADCAST_REQUIRE_REDIS_TLS"):
            pytest.fail("a redis-server with TLS is required here (apt-get install redis-server)")
        pytest.skip("no redis-server with TLS (apt-get install redis-server)")
    cert, key = self_signed_certificate(tmp_path)
    port = free_port()
    args = [TLS_REDIS, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
            "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
            "--dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"

        wait_until(lambda: redis_answers(url), timeout=10, what="redis-server with TLS")
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def test_site_runs_over_tls_to_redis(tls_redis, daphne, env_for):
    server = daphne(url=tls_redis)
    assert server.health()[0] == 200
    client = await Client(server.ws).connect()
    try:
        done = manage(["broadcast", "-m", "over TLS"], env=env_for(tls_redis))
        assert done.returncode == 0, done.stderr
        await client.wait_for(lambda c: "over TLS" in c.messages(), timeout=15, what="the broadcast")
        await client.wait_for(lambda c: c.last_count() == 1, timeout=15, what="the count")
    finally:
        await client.close()
    # Plain redis:// against the TLS port is refused with a clear answer, not a hang.
    plain = tls_redis.replace("rediss://", "redis://").split("?")[0]
    refused = manage(["broadcast", "-m", "not over TLS"], env=env_for(plain), timeout=60)
    assert refused.returncode != 0 and "Cannot reach Redis" in refused.stderr + refused.stdout
    assert "Traceback" not in server.log()
