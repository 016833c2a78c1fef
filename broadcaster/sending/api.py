"""The publish API for other services (docs/API.md): POST /api/broadcasts/ sends; GET
/api/broadcasts/<id>/ reports a broadcast's reach; DELETE /api/broadcasts/<id>/ retracts it."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from redis.exceptions import RedisError

from broadcaster import protocol, reach
from broadcaster.backend import redis_client
from broadcaster.bearer import ASK_FOR_BEARER, bearer
from broadcaster.models import BroadcastRecord, PublishToken, hash_secret
from broadcaster.sending import ratelimit
from broadcaster.sending.errors import (
    BroadcastUnavailable,
    IdempotencyConflict,
    InvalidBroadcast,
    MessageTooLong,
    UnknownBroadcast,
)
from broadcaster.sending.idempotency import Idempotency
from broadcaster.sending.publish import Sent, check_audience, publish, retract, validate, validate_options

logger = logging.getLogger(__name__)

TOO_MANY_FAILURES = "Too many failed token checks from this address; retry later."
CHECKS_BUSY = "Too many token checks from this address at once; retry shortly."


def error(status: int, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


def _client_network(address: str) -> str:
    """What failed token checks are counted under: the client's IPv4 address, or its IPv6 /64
    (one host usually has a whole /64 to pick addresses from)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address or "unknown"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        # An IPv4 client on a dual-stack socket (HOST=::): counted as the IPv4 address it is,
        # not in the one /64 that every such client would share.
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


# Token checks from one client network, one at a time in each process: a check reads the
# failure count only after the previous one has added to it, so a burst of guesses cannot all
# pass the count before any is counted (200 at once once got 116-179 lookups past a limit of 10).
# Across processes, at most the limit plus one per process get a lookup. A valid token waits
# behind the checks ahead of it from its network, each one indexed read.
_checks = ratelimit.Turns()
# How long a request waits for its turn (and its check) before it is answered 503.
TURN_WAIT = 10.0


async def _token(request: HttpRequest) -> PublishToken | JsonResponse:
    """The request's active token, or the error to answer. Failed checks are counted per
    client address: past BROADCAST_API_FAILED_AUTH_LIMIT in a window, 429 before any lookup."""
    secret = bearer(request)
    if not secret:
        return error(401, ASK_FOR_BEARER, **{"WWW-Authenticate": "Bearer"})
    network = _client_network(request.META.get("REMOTE_ADDR") or "")
    try:
        async with asyncio.timeout(TURN_WAIT), _checks.of(network):
            return await _check(request, secret, ratelimit.failures_key(network))
    except TimeoutError:  # the checks ahead of it are slow (Redis or the database is)
        return error(
            503, "Too many token checks from this address at once; retry shortly.", **{"Retry-After": "1"}
        )


async def _check(request: HttpRequest, secret: str, failures: str) -> PublishToken | JsonResponse:
    redis = redis_client.shared_client()
    limit, window = settings.BROADCAST_API_FAILED_AUTH_LIMIT, settings.BROADCAST_API_RATE_WINDOW
    try:
        verdict = await ratelimit.peek(redis, failures, limit=limit)
    except (RedisError, OSError):
        verdict = None  # Redis is down: publish() reports it; tokens are still checked.
    if verdict is not None and not verdict.allowed:
        return error(429, TOO_MANY_FAILURES, **{"Retry-After": str(verdict.retry_after)})
    token = await PublishToken.objects.filter(secret_hash=hash_secret(secret)).afirst()
    if token is not None and token.revoked is None:
        return token
    try:
        verdict = await ratelimit.hit(redis, failures, limit=limit, window=window)
    except (RedisError, OSError):
        verdict = None
    if verdict is not None and verdict.count == limit:  # once per window: later tries stop at peek()
        logger.warning("Refusing token checks from %s for up to %d s: %d failed",
                       request.META.get("REMOTE_ADDR"), window, limit)  # fmt: skip
    if token is None:
        return error(401, "Unknown token.", **{"WWW-Authenticate": "Bearer"})
    return error(403, "This token was revoked.")


@csrf_exempt  # bearer-token API: no cookies, so no CSRF
async def broadcasts(request: HttpRequest) -> JsonResponse:
    """Publish {"text": ...} to every client; 201 with the broadcast's id, seq and client count."""
    if request.method != "POST":
        return error(405, "Use POST.", Allow="POST")
    token = await _token(request)
    if isinstance(token, JsonResponse):
        return token
    try:
        body = json.loads(request.body)
    except RequestDataTooBig:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return error(413, f"The body is over {limit} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE).")
    except (ValueError, UnicodeDecodeError):
        return error(400, "The body is not JSON.")
    except RecursionError:  # arrays or objects nested about a thousand deep
        return error(400, "The body is nested too deep to be a broadcast.")
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str):
        return error(400, 'Send a JSON object with a string "text".')
    try:
        validate(text)
        level, expires_in = validate_options(level=_or_default(body.get("level"), protocol.LEVEL_INFO),
                                             expires_in=body.get("expires_in"))  # fmt: skip
        audience = await check_audience(body.get("audience"))
        key = request.headers.get("Idempotency-Key")
        again = None if key is None else Idempotency.of(f"token:{token.pk}", key, text=text, level=level,
                                                        expires_in=expires_in, audience=audience)  # fmt: skip
        if again is not None and (earlier := await again.find()) is not None:
            # Answered before: the first answer again, with no send and no rate-limit hit.
            return _sent(await again.replay(earlier), replayed=True)

        async def admit() -> None:
            limited = await _over_send_limit(token)
            if limited is not None:
                raise _Refused(limited)

        sent = await publish(text=text, sender=token.sender, level=level, expires_in=expires_in,
                             audience=audience, idempotency=again, admit=admit)  # fmt: skip
    except _Refused as refused:
        return refused.response
    except MessageTooLong as exc:
        return error(413, str(exc))
    except IdempotencyConflict as exc:
        return error(422, str(exc))
    except InvalidBroadcast as exc:
        return error(400, str(exc))
    except BroadcastUnavailable as exc:
        return error(503, str(exc), **{"Retry-After": "1"})
    return _sent(sent)


class _Refused(Exception):
    """A request turned away before its broadcast was sent (the rate limit), with its answer."""

    def __init__(self, response: JsonResponse) -> None:
        self.response = response


def _sent(sent: Sent, *, replayed: bool = False) -> JsonResponse:
    """201 with the broadcast (docs/API.md); a replayed answer says so in a header."""
    response = JsonResponse(sent.answer(), status=201)
    if replayed:
        response["Idempotent-Replayed"] = "true"
    return response


def _or_default(value: object, default: str) -> object:
    """An optional field: absent and null both mean the default."""
    return default if value is None else value


async def _over_send_limit(token: PublishToken) -> JsonResponse | None:
    """429 once this token has sent (or retracted) BROADCAST_API_RATE_LIMIT times in the window."""
    try:
        verdict = await ratelimit.hit(
            redis_client.shared_client(),
            ratelimit.sends_key(token.sender),
            limit=settings.BROADCAST_API_RATE_LIMIT,
            window=settings.BROADCAST_API_RATE_WINDOW,
        )
    except (RedisError, OSError):
        return None  # Redis is down: publish() reports it and records the broadcast as failed.
    if not verdict.allowed:
        return error(429, "Too many broadcasts; retry later.", **{"Retry-After": str(verdict.retry_after)})
    return None


@csrf_exempt  # bearer-token API: no cookies, so no CSRF
async def broadcast(request: HttpRequest, id: str) -> HttpResponse:
    """GET: the broadcast and its reach; DELETE: retract it (204). 404 for an unknown id."""
    if request.method not in ("GET", "DELETE"):
        return error(405, "Use GET or DELETE.", Allow="GET, DELETE")
    token = await _token(request)
    if isinstance(token, JsonResponse):
        return token
    if request.method == "DELETE":
        limited = await _over_send_limit(token)
        if limited is not None:
            return limited
        try:
            await retract(id=id, sender=token.sender)
        except UnknownBroadcast as exc:
            return error(404, str(exc))
        except BroadcastUnavailable as exc:
            return error(503, str(exc), **{"Retry-After": "1"})
        return HttpResponse(status=204)
    record = await BroadcastRecord.objects.filter(message_id=id, status=BroadcastRecord.SENT).afirst()
    if record is None:
        return error(404, f"No broadcast with id {id!r} went out.")
    try:
        found = (await reach.read(redis_client.shared_client(), [id]))[id]
    except (RedisError, OSError):
        return error(503, "Cannot reach Redis: the reach report is unavailable. Try again in a moment.",
                     **{"Retry-After": "1"})  # fmt: skip
    return JsonResponse(reach.report(record, found))
