"""One Redis configuration for the whole project: a blocking pool and retries, under load
and across a Redis restart (real daphne, real Redis, real clients)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import redis

from broadcaster.backend import redis_client
from tests.support import Client, create_token, http_request

N = 300


async def test_300_concurrent_health_checks_all_answer_200(daphne):
    """300 health checks at once against one process all get 200: none waits for a pool slot in vain."""
    server = daphne()
    answers = await asyncio.gather(*(http_request(server.port, "GET", "/health/") for _ in range(N)))
    assert Counter(a.status for a in answers) == {200: N}


async def test_300_concurrent_api_posts_all_sent_and_numbered_once(daphne, env_for, redis_url):
    """300 API posts at once all get 201, and history numbers each exactly once."""
    server = daphne(BROADCAST_API_RATE_LIMIT="1000")
    secret = await asyncio.to_thread(create_token, "load", env=env_for(redis_url))
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    answers = await asyncio.gather(*(
        http_request(server.port, "POST", "/api/broadcasts/", headers=headers,
                     body=json.dumps({"text": f"load {i}"}).encode())
        for i in range(N)
    ))  # fmt: skip
    assert Counter(a.status for a in answers) == {201: N}, [a.body for a in answers if a.status != 201][:3]
    assert sorted(a.json()["seq"] for a in answers) == list(range(1, N + 1))


async def test_300_concurrent_connects_to_an_idle_process_all_accepted(daphne):
    """300 receivers connecting at once to a process with none are all accepted and counted."""
    server = daphne()
    clients = await asyncio.gather(*(Client(server.ws).connect() for _ in range(N)))
    await asyncio.to_thread(server.wait_for_clients, N)
    await asyncio.gather(*(c.wait_for(lambda c: c.last_count() == N, timeout=20, what=f"count {N}")
                           for c in clients))  # fmt: skip
    assert [c.ws.close_code for c in clients] == [None] * N
    await asyncio.gather(*(c.close() for c in clients))


async def test_after_a_redis_restart_the_next_requests_succeed(daphne, redis_server, env_for, redis_url):
    """Every pooled connection dies with Redis; the first health check, connect and post after it work."""
    server = daphne()
    secret = await asyncio.to_thread(create_token, "restart", env=env_for(redis_url))
    # Fill the pools: concurrent health checks open several connections, the API one more.
    answers = await asyncio.gather(*(http_request(server.port, "GET", "/health/") for _ in range(20)))
    assert Counter(a.status for a in answers) == {200: 20}
    await asyncio.to_thread(redis_server.stop)
    await asyncio.to_thread(redis_server.start)
    assert (await http_request(server.port, "GET", "/health/")).status == 200
    client = await Client(server.ws).connect()
    await client.wait_for(lambda c: c.last_count() == 1, timeout=10, what="count 1")
    posted = await http_request(server.port, "POST", "/api/broadcasts/", body=b'{"text": "after restart"}',
                                headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    assert posted.status == 201, posted.body
    await client.wait_for(lambda c: "after restart" in c.messages(), timeout=10, what="the broadcast")
    await client.close()


def test_every_client_gets_the_same_pool_and_retry_configuration(redis_url):
    """The shared client, the sync client and the channel layer's hosts share one policy."""
    kwargs = redis_client.connection_kwargs()
    assert kwargs["retry"].get_retries() == redis_client.RETRIES
    [host] = redis_client.layer_hosts(redis_url)
    assert host["address"] == redis_url and host["retry"].get_retries() == redis_client.RETRIES
    sync = redis_client.sync_client(redis_url)
    try:
        assert sync.ping() is True
        assert sync.connection_pool.connection_kwargs["retry"].get_retries() == redis_client.RETRIES
    finally:
        sync.close()


async def test_shared_client_waits_for_a_free_connection_instead_of_failing(redis_url):
    """More commands in flight than POOL_SIZE wait for a connection; none fails."""
    client = redis_client.shared_client()
    assert isinstance(client.connection_pool, redis.asyncio.BlockingConnectionPool)
    results = await asyncio.gather(*(client.blpop([f"nothing-{i}"], timeout=0.2)
                                     for i in range(redis_client.POOL_SIZE * 2)))  # fmt: skip
    assert results == [None] * (redis_client.POOL_SIZE * 2)
    pool = client.connection_pool
    assert len(pool._available_connections) + len(pool._in_use_connections) <= redis_client.POOL_SIZE
