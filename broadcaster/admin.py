"""Admin: publish tokens (created with their secret shown once, revocable)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest
from django.utils import timezone

from broadcaster.models import SEND_PERMISSION, BroadcastRecord, PublishToken, ReceiverToken


@admin.register(PublishToken)
class PublishTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "created", "revoked"]
    search_fields = ["name"]
    actions = ["revoke"]

    def save_model(self, request: HttpRequest, obj: PublishToken, form: Any, change: bool) -> None:
        if not change:
            secret = obj.issue_secret()
            messages.warning(request, f"Secret for {obj.name} (shown once, copy it now): {secret}")
        super().save_model(request, obj, form, change)

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: Any) -> None:
        names = sorted(queryset.filter(revoked__isnull=True).values_list("name", flat=True))
        revoked = queryset.filter(revoked__isnull=True).update(revoked=timezone.now())
        if revoked:
            messages.success(request, f"Revoked {revoked} token(s): {', '.join(names)}. Their secrets no "
                             "longer work; a new token may take the same name.")  # fmt: skip
        else:
            messages.info(request, "The selected tokens were revoked already; nothing changed.")


@admin.register(BroadcastRecord)
class BroadcastRecordAdmin(admin.ModelAdmin):
    """The broadcast log: read-only, searchable, filterable by date, sender, status and level;
    it shows who retracted what, and when."""

    list_display = [
        "sent_at",
        "sender",
        "status",
        "level",
        "clients",
        "seq",
        "text",
        "retraction",
    ]
    list_filter = ["status", "level", "created", "sender"]
    search_fields = ["text", "sender"]
    date_hierarchy = "created"

    @admin.display(description="time (UTC)", ordering="created")
    def sent_at(self, record: BroadcastRecord) -> str:
        """To the second: two sends in one minute can be told apart."""
        return f"{record.created:%Y-%m-%d %H:%M:%S}"

    @admin.display(description="retracted", ordering="retracted")
    def retraction(self, record: BroadcastRecord) -> str:
        """Who took it back, and when."""
        if record.retracted is None:
            return ""
        return f"{record.retracted:%Y-%m-%d %H:%M:%S} by {record.retracted_by}"

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Whoever may send may read the whole log of what was sent.
        return super().has_view_permission(request, obj) or request.user.has_perm(SEND_PERMISSION)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ReceiverToken)
class ReceiverTokenAdmin(admin.ModelAdmin):
    """Receiver tokens (manage.py create_receiver_token): revoke one and its open connections
    stop hearing that user's broadcasts within seconds."""

    list_display = ["__str__", "user", "created", "revoked"]
    search_fields = ["name", "user__username"]
    actions = ["revoke"]
    raw_id_fields = ["user"]

    def save_model(self, request: HttpRequest, obj: ReceiverToken, form: Any, change: bool) -> None:
        if not change:
            secret = obj.issue_secret()
            messages.warning(request, f"Secret for {obj} (shown once, copy it now): {secret}")
        super().save_model(request, obj, form, change)

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: Any) -> None:
        # One save each, not update(): each revocation is announced to the server processes.
        revoked = 0
        for token in queryset.filter(revoked__isnull=True):
            token.revoked = timezone.now()
            token.save(update_fields=["revoked"])
            revoked += 1
        messages.success(request, f"Revoked {revoked} receiver token(s).")
