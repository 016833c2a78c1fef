"""POST /api/broadcasts/: the publish API for other services (docs/API.md)."""

from __future__ import annotations

import json
import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from redis.exceptions import RedisError

from broadcaster import ratelimit, redis_client
from broadcaster.models import PublishToken, hash_secret
from broadcaster.publish import (
    BrokerUnavailable,
    EmptyMessage,
    InvalidText,
    MessageTooLong,
    publish,
    validate,
)

logger = logging.getLogger(__name__)


def error(status: int, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


async def _token(request: HttpRequest) -> PublishToken | JsonResponse:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return error(401, "Send 'Authorization: Bearer <token>'.", **{"WWW-Authenticate": "Bearer"})
    token = await PublishToken.objects.filter(secret_hash=hash_secret(secret.strip())).afirst()
    if token is None:
        return error(401, "Unknown token.", **{"WWW-Authenticate": "Bearer"})
    if token.revoked is not None:
        return error(403, "This token was revoked.")
    return token


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
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str):
        return error(400, 'Send a JSON object with a string "text".')
    try:
        validate(text)
    except (EmptyMessage, InvalidText) as exc:
        return error(400, str(exc))
    except MessageTooLong as exc:
        return error(413, str(exc))
    try:
        verdict = await ratelimit.hit(
            redis_client.shared_client(),
            sender=token.sender,
            limit=settings.BROADCAST_API_RATE_LIMIT,
            window=settings.BROADCAST_API_RATE_WINDOW,
        )
    except (RedisError, OSError):
        verdict = None  # Redis is down: publish() reports it and records the broadcast as failed.
    if verdict is not None and not verdict.allowed:
        return error(429, "Too many broadcasts; retry later.", **{"Retry-After": str(verdict.retry_after)})
    try:
        sent = await publish(text=text, sender=token.sender)
    except BrokerUnavailable as exc:
        return error(503, str(exc))
    return JsonResponse(
        {"id": sent.id, "seq": sent.seq, "time": sent.time, "clients": sent.clients}, status=201
    )
