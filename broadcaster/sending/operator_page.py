"""The operator page at /operator/: staff watch the count and the log; permitted staff send.

Inside the Django admin's look (broadcaster/templates/broadcaster/operator.html extends the admin's base).
Who may do what:
    anonymous, or a user who is not active staff -> the admin login page (no operator data)
    staff                                        -> the count and the recent broadcasts
    staff with broadcaster.send_broadcast        -> also the send form; others' POSTs get 403

Each sent broadcast in the list shows its level, expiry, reach (delivered, seen) and, for
those who may send, a Retract button (confirmed first). The count and the list refresh by
polling `operator_status` (JSON, staff only). Polling keeps
every operator endpoint behind the same session and staff check as the admin itself; the
receiver WebSocket stays free of auth middleware and of operator data.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from redis.exceptions import RedisError

from broadcaster import protocol, reach
from broadcaster.backend import redis_client
from broadcaster.models import SEND_PERMISSION, BroadcastRecord
from broadcaster.presence import group_presence
from broadcaster.protocol import LEVEL_INFO, LEVELS
from broadcaster.sending.errors import BroadcastError, BroadcastUnavailable, InvalidAudience, UnknownBroadcast
from broadcaster.sending.publish import (
    check_audience,
    publish,
    retract,
    retractable_record,
    validate,
    validate_options,
)

logger = logging.getLogger(__name__)

# How many broadcasts the page lists, and how often (ms) it asks for the count and the list.
RECENT = 20
REFRESH_MS = 2000
# Each rendering of the form carries a fresh id, claimed in Redis when it is sent, so a double
# click or a resubmitted page does not broadcast twice. Claims are forgotten after this long.
SEND_ID_TTL = 3600
# A send of the text this operator sent in the last REPEAT_WINDOW seconds is asked about first
# (the browser's Back button brings a sent text back with a fresh form id).
REPEAT_WINDOW = 600
OUT_OF_DATE = "This form is out of date: nothing was sent. Check the text and send it again."


async def _staff(request: HttpRequest) -> Any | None:
    user = await request.auser()
    return user if user.is_active and user.is_staff else None


def audience_field(typed: str) -> list[str] | None:
    """The form's audience field: audiences separated by commas (a group's name may hold
    spaces); blank is everyone (None)."""
    names = [name.strip() for name in typed.split(",") if name.strip()]
    return names or None


async def _clients(audience: tuple[str, ...] = protocol.AUDIENCE_EVERYONE) -> tuple[int | None, str]:
    """The client count of `audience` (everyone: the global count) and "ok", or None and why
    Redis did not answer."""
    try:
        return await group_presence(redis_client.shared_client()).audience_total(audience), "ok"
    except (RedisError, OSError) as exc:
        logger.debug("Count unavailable: Redis at %s: %s", redis_client.display_url(), exc)
        return None, "Redis unreachable"


async def _recent() -> list[tuple[BroadcastRecord, reach.Reach | None]]:
    """The newest broadcasts, each with its reach (None when failed, or Redis did not answer)."""
    records = [record async for record in BroadcastRecord.objects.all()[:RECENT]]
    ids = [r.message_id for r in records if r.status == BroadcastRecord.SENT and r.message_id]
    try:
        found = await reach.read(redis_client.shared_client(), ids)
    except (RedisError, OSError):
        found = {}
    return [(record, found.get(record.message_id)) for record in records]


def _row(record: BroadcastRecord, reached: reach.Reach | None) -> dict[str, Any]:
    """The API's report of it, and what the log adds: whether it went out, expired, and why not."""
    return {
        **reach.report(record, reached),
        "status": record.status,
        "expired": record.expires is not None and record.expires <= timezone.now(),
        "error": record.error,
    }


def _send_key(send_id: str) -> str:
    return f"broadcaster:operator:sent:{send_id}"


async def _sent_already(send_id: str) -> bool:
    """Whether this form was sent already (False with Redis down: publish() reports it)."""
    try:
        return bool(await redis_client.shared_client().exists(_send_key(send_id)))
    except (RedisError, OSError):
        return False


def _told_sent_already(request: HttpRequest) -> HttpResponse:
    messages.info(request, "That form was sent already; it was not sent again.")
    return HttpResponseRedirect(reverse("broadcaster:operator"), status=303)


async def _first_send(send_id: str) -> bool:
    """Claim a form's id: True the first time, False for a repeat (or with Redis down, True:
    publish() then reports the outage)."""
    try:
        claimed = await redis_client.shared_client().set(_send_key(send_id), 1, nx=True, ex=SEND_ID_TTL)
    except (RedisError, OSError):
        return True
    return bool(claimed)


async def _same_text_sent_lately(sender: str, text: str) -> BroadcastRecord | None:
    """The sender's broadcast of this same text in the last REPEAT_WINDOW seconds, if any."""
    since = timezone.now() - datetime.timedelta(seconds=REPEAT_WINDOW)
    return await BroadcastRecord.objects.filter(sender=sender, text=text, status=BroadcastRecord.SENT,
                                                created__gte=since).afirst()  # fmt: skip


async def operator_status(request: HttpRequest) -> JsonResponse:
    """JSON for the page's refresh: {clients, redis, recent}; 403 for anyone but active staff."""
    if await _staff(request) is None:
        return JsonResponse({"error": "Staff only: log in to the admin."}, status=403)
    clients, redis = await _clients()
    recent = [_row(record, reached) for record, reached in await _recent()]
    answer: dict[str, Any] = {"clients": clients, "redis": redis, "recent": recent}
    typed = audience_field(request.GET.get("audience", ""))
    if typed is not None:
        # The send form's audience as typed: how many it reaches now, or why it cannot be sent to.
        try:
            answer["audience_clients"], _ = await _clients(await check_audience(typed))
            answer["audience_error"] = None
        except InvalidAudience as exc:
            answer["audience_clients"], answer["audience_error"] = None, str(exc)
    return JsonResponse(answer)


async def operator_page(request: HttpRequest) -> HttpResponse:
    """GET shows the page; POST sends the form's text through the one publish path."""
    user = await _staff(request)
    if user is None:
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))
    can_send = await user.ahas_perm(SEND_PERMISSION)
    if request.method == "GET":
        return await _page(request, can_send=can_send)
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    if not can_send:
        logger.warning("Operator %s tried to send without %s", user.get_username(), SEND_PERMISSION)
        raise PermissionDenied(f"Sending needs the {SEND_PERMISSION} permission.")
    # Browsers send a textarea's line breaks as CRLF; receivers and the limit count LF.
    text = request.POST.get("text", "").replace("\r\n", "\n")
    form = Form(
        level=request.POST.get("level", LEVEL_INFO),
        expires_in=request.POST.get("expires_in", "").strip(),
        audience=request.POST.get("audience", "").strip(),
    )
    try:
        validate(text)
        level, expires_in = validate_options(level=form.level, expires_in=_seconds(form.expires_in))
        audience = await check_audience(audience_field(form.audience))
    except BroadcastError as exc:
        return await _page(request, can_send=True, text=text, error=str(exc), status=400, form=form)
    send_id = request.POST.get("send_id", "")
    if not send_id:
        return await _page(request, can_send=True, text=text, error=OUT_OF_DATE, status=400, form=form)
    if await _sent_already(send_id):
        return _told_sent_already(request)
    repeat = request.POST.get("repeat") == "yes"
    if not repeat:
        earlier = await _same_text_sent_lately(user.get_username(), text)
        if earlier is not None:
            return await _page(request, can_send=True, text=text, repeat_of=earlier, status=409, form=form)
    count = await _clients(audience)
    clients = count[0]
    threshold: int = settings.BROADCAST_CONFIRM_ABOVE
    if clients is not None and clients > threshold and request.POST.get("confirmed") != "yes":
        # The JS confirm() used the last polled count; this asks again with the count now.
        return await _page(request, can_send=True, text=text, confirm=clients, status=409, count=count,
                           repeat=repeat, form=form)  # fmt: skip
    if not await _first_send(send_id):
        return _told_sent_already(request)
    try:
        sent = await publish(text=text, sender=user.get_username(), level=level, expires_in=expires_in,
                             audience=audience)  # fmt: skip
    except BroadcastUnavailable as exc:
        return await _page(request, can_send=True, text=text, error=str(exc), status=503, form=form)
    except InvalidAudience as exc:  # (deleted since the check above)
        return await _page(request, can_send=True, text=text, error=str(exc), status=400, form=form)
    noun = "client" if sent.clients == 1 else "clients"
    to = "" if sent.audience == protocol.AUDIENCE_EVERYONE else f" of {', '.join(sent.audience)}"
    messages.success(request, f"Sent to {sent.clients} {noun}{to} (broadcast #{sent.seq}).")
    return HttpResponseRedirect(reverse("broadcaster:operator"), status=303)


async def operator_retract(request: HttpRequest) -> HttpResponse:
    """POST {id, confirmed}: retract a broadcast (the send permission); without `confirmed`,
    the page asks first (the page's script asks in a dialog and sets it)."""
    user = await _staff(request)
    if user is None:
        return redirect_to_login(reverse("broadcaster:operator"), reverse("admin:login"))
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "POST"})
    if not await user.ahas_perm(SEND_PERMISSION):
        logger.warning("Operator %s tried to retract without %s", user.get_username(), SEND_PERMISSION)
        raise PermissionDenied(f"Retracting needs the {SEND_PERMISSION} permission.")
    id = request.POST.get("id", "")
    if request.POST.get("confirmed") != "yes":
        record = await retractable_record(id)
        if record is None:
            return await _page(
                request, can_send=True, error=f"No broadcast with id {id!r} went out.", status=404
            )
        return await _page(request, can_send=True, retract_confirm=record, status=409)
    try:
        done = await retract(id=id, sender=user.get_username())
    except UnknownBroadcast as exc:
        return await _page(request, can_send=True, error=str(exc), status=404)
    except BroadcastUnavailable as exc:
        return await _page(request, can_send=True, error=str(exc), status=503)
    if done.seq:
        messages.success(request, f"Retracted: every client was told (retraction #{done.seq}).")
    else:
        messages.info(request, f"That broadcast was retracted already, by {done.by}.")
    return HttpResponseRedirect(reverse("broadcaster:operator"), status=303)


@dataclass(frozen=True)
class Form:
    """The send form's level and expiry as typed (kept when the page is shown again)."""

    level: str = LEVEL_INFO
    expires_in: str = ""
    audience: str = ""


def _seconds(typed: str) -> float | str | None:
    """The expiry field: blank is none; a number of seconds; anything else goes to validation."""
    if not typed:
        return None
    try:
        return float(typed)
    except ValueError:
        return typed


async def _page(request: HttpRequest, *, can_send: bool, text: str = "", error: str = "",
                confirm: int | None = None, status: int = 200,
                count: tuple[int | None, str] | None = None,
                repeat_of: BroadcastRecord | None = None, repeat: bool = False,
                form: Form = Form(), retract_confirm: BroadcastRecord | None = None
                ) -> HttpResponse:  # fmt: skip
    """Render the page; `count` is _clients()'s answer when the caller has just asked."""
    clients, redis = count or await _clients()
    recent = await _recent()

    def build() -> HttpResponse:
        context = {
            **admin.site.each_context(request),
            "title": "Operator",
            "clients": clients,
            "redis": redis,
            "recent": [_row(record, reached) for record, reached in recent],
            "levels": LEVELS,
            "form": form,
            "retract_confirm": retract_confirm,
            "can_send": can_send,
            # The admin's log of every broadcast, for those it lets in (broadcaster/admin.py).
            "log_url": reverse("admin:broadcaster_broadcastrecord_changelist")
            if admin.site.get_model_admin(BroadcastRecord).has_view_permission(request)
            else None,
            "text": text,
            "error": error,
            "confirm": confirm,
            "repeat_of": repeat_of,
            "repeat": repeat,
            "max_length": settings.BROADCAST_MAX_LENGTH,
            "confirm_above": settings.BROADCAST_CONFIRM_ABOVE,
            "refresh_ms": REFRESH_MS,
            "send_id": uuid.uuid4().hex,
        }
        response = render(request, "broadcaster/operator.html", context, status=status)
        # Not kept for the Back button: a page from history would bring back a sent form.
        response["Cache-Control"] = "no-store"
        return response

    return await sync_to_async(build)()
