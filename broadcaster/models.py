"""Database models: the broadcast log, and the API's publish tokens (and the send permission)."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

from broadcaster.protocol import AUDIENCE_EVERYONE, LEVEL_INFO, LEVELS

# Who may broadcast from the operator page (defined on PublishToken's Meta below).
SEND_PERMISSION = "broadcaster.send_broadcast"


def hash_secret(secret: str) -> str:
    """Tokens are 256 random bits, so one SHA-256 suffices (unlike passwords); only this is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


class PublishToken(models.Model):
    """A bearer token another service uses with POST /api/broadcasts/."""

    name = models.CharField(max_length=100, help_text="Recorded as the sender (one active token per name).")
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    created = models.DateTimeField(default=timezone.now, editable=False)
    revoked = models.DateTimeField(null=True, blank=True, help_text="Set to revoke the token.")

    class Meta:
        ordering = ["name"]
        permissions = [("send_broadcast", "Can send broadcasts")]
        # A revoked token's name may be given to a new token (rotation); two active ones may not.
        constraints = [
            models.UniqueConstraint(
                fields=["name"], condition=models.Q(revoked__isnull=True), name="one_active_token_per_name"
            )
        ]

    def __str__(self) -> str:
        return self.name

    def issue_secret(self) -> str:
        """Give the token a new secret and return it; it is shown once and stored only hashed."""
        secret = secrets.token_urlsafe(32)
        self.secret_hash = hash_secret(secret)
        return secret

    @property
    def sender(self) -> str:
        return f"api:{self.name}"


class BroadcastRecord(models.Model):
    """One broadcast, from any path, whether it went out or not (the broadcast log).

    Written before the broadcast goes out (`pending`), then marked `sent` or `failed`: a
    broadcast without its row is never sent, and a row stays `pending` while a committed
    broadcast waits for Redis (broadcaster/sending/outbox.py sends it then)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"

    created = models.DateTimeField(default=timezone.now, db_index=True)
    sender = models.CharField(
        max_length=150, db_index=True, help_text="console:<user>, api:<token> or a user."
    )
    text = models.TextField()
    status = models.CharField(
        max_length=10, choices=[(PENDING, "pending"), (SENT, "sent"), (FAILED, "failed")]
    )
    clients = models.PositiveIntegerField(null=True, help_text="Clients connected when it was sent.")
    seq = models.PositiveBigIntegerField(null=True, help_text="Its number in the broadcast history.")
    message_id = models.CharField(max_length=32, blank=True, db_index=True)
    error = models.TextField(blank=True)
    level = models.CharField(max_length=10, default=LEVEL_INFO, choices=[(v, v) for v in LEVELS])
    expires = models.DateTimeField(null=True, blank=True, help_text="When receivers stop showing it.")
    retracted = models.DateTimeField(null=True, blank=True, help_text="When it was taken back.")
    retracted_by = models.CharField(max_length=150, blank=True, help_text="Who took it back.")
    audience = models.JSONField(default=list, help_text="Who it is for (broadcaster/audiences.py).")
    # Idempotency (broadcaster/sending/idempotency.py): a key is unique within its scope (a
    # publish token's, or code's) while set; the row is the first request's answer.
    idempotency_scope = models.CharField(max_length=150, blank=True, editable=False)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True, editable=False)
    request_hash = models.CharField(max_length=64, blank=True, editable=False)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_scope", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="one_broadcast_per_idempotency_key",
            )
        ]
        indexes = [
            models.Index(fields=["status", "id"], name="broadcast_by_status"),
        ]

    def __str__(self) -> str:
        return f"{self.created:%Y-%m-%d %H:%M:%S} {self.sender}: {self.text[:50]}"

    @property
    def audiences(self) -> tuple[str, ...]:
        """Who it is for, as the publish path writes it (AUDIENCE_EVERYONE for older rows)."""
        return tuple(self.audience) if self.audience else AUDIENCE_EVERYONE


class ReceiverToken(models.Model):
    """A bearer token a receiver that is not a browser (`manage.py listen --token`, a service)
    connects with: it hears what its user would (docs/PROTOCOL.md, "Who is listening")."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100, blank=True, help_text="What it is for (shown in the admin).")
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    created = models.DateTimeField(default=timezone.now, editable=False)
    revoked = models.DateTimeField(null=True, blank=True, help_text="Set to revoke the token.")

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name or 'receiver token'} ({self.user})"

    def issue_secret(self) -> str:
        """Give the token a new secret and return it; it is shown once and stored only hashed."""
        secret = "rcv_" + secrets.token_urlsafe(32)
        self.secret_hash = hash_secret(secret)
        return secret


class WriteCheck(models.Model):
    """One row, written to find out whether the database takes writes (readiness, start-up)."""

    at = models.DateTimeField()
