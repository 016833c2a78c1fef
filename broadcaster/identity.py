"""Who a receiver is: its credentials on the handshake, and the user and audiences they give.

A browser tab is identified by the Django session cookie it sends with the WebSocket
handshake (as Channels' AuthMiddlewareStack does); any other receiver by
`Authorization: Bearer <secret>` of a ReceiverToken (`manage.py create_receiver_token`).
Without either it is anonymous: it hears broadcasts to `everyone` only, and costs no database
read. Credentials are kept only as SHA-256 hashes (`Credential.key`), in memory and in Redis.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from types import SimpleNamespace
from typing import Any

from django.conf import settings

from broadcaster import audiences, protocol

SESSION = "session"
TOKEN = "token"  # noqa: S105 - a kind of credential, not a secret


@dataclass(frozen=True)
class Credential:
    """What a receiver showed on its handshake: a session key or a receiver token's secret."""

    kind: str
    secret: str

    @property
    def key(self) -> str:
        """What it is known by outside this object (never the secret itself)."""
        return credential_key(self.kind, self.secret)


def credential_key(kind: str, secret: str) -> str:
    return f"{kind}:{hashlib.sha256(secret.encode()).hexdigest()}"


@dataclass(frozen=True)
class Identity:
    """A receiver's user (None: anonymous) and the audiences it belongs to."""

    user_id: Any
    username: str
    member_of: frozenset[str]

    @property
    def anonymous(self) -> bool:
        return self.user_id is None


NOBODY = Identity(user_id=None, username="", member_of=protocol.ANONYMOUS)


def credential(headers: list[tuple[bytes, bytes]]) -> Credential | None:
    """The receiver token (preferred) or session cookie of a WebSocket handshake, or None."""
    session: str | None = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, secret = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                return Credential(TOKEN, secret.strip())
        elif name == b"cookie" and session is None:
            session = _cookie(value.decode("latin-1"), settings.SESSION_COOKIE_NAME)
    return Credential(SESSION, session) if session else None


def _cookie(header: str, name: str) -> str | None:
    jar = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        # One malformed cookie (a host's own) must not hide the session's: read it by hand.
        for part in header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value or None
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None and morsel.value else None


def resolve(found: Credential) -> Identity:
    """The identity a credential gives now (database and session reads: call through a
    thread). A session that is gone or expired, a user that is inactive or deleted, an unknown
    or revoked token: NOBODY."""
    user = _session_user(found.secret) if found.kind == SESSION else _token_user(found.secret)
    if user is None or not user.is_authenticated or not user.is_active:
        return NOBODY
    return Identity(user_id=user.pk, username=user.get_username(), member_of=audiences.memberships(user))


def _session_user(session_key: str) -> Any:
    from importlib import import_module

    from django.contrib import auth

    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key)
    # auth.get_user checks the session's auth hash (a password change logs it out) and the
    # backend's get_user (ModelBackend: inactive users are nobody).
    return auth.get_user(SimpleNamespace(session=store))  # type: ignore[arg-type]


def _token_user(secret: str) -> Any:
    from broadcaster.models import ReceiverToken, hash_secret

    token = ReceiverToken.objects.select_related("user").filter(secret_hash=hash_secret(secret)).first()
    if token is None or token.revoked is not None:
        return None
    return token.user


def alive(session_keys: list[str], token_secrets: list[str]) -> set[str]:
    """Which of these session keys and receiver token secrets still hold (database reads:
    call through a thread)."""
    return sessions_alive(session_keys) | tokens_alive(token_secrets)


def tokens_alive(secrets: list[str]) -> set[str]:
    """Which of these receiver token secrets name an unrevoked token (one query)."""
    if not secrets:
        return set()
    from broadcaster.models import ReceiverToken, hash_secret

    by_hash = {hash_secret(s): s for s in secrets}
    active = ReceiverToken.objects.filter(secret_hash__in=list(by_hash), revoked__isnull=True)
    return {by_hash[h] for h in active.values_list("secret_hash", flat=True)}


def sessions_alive(session_keys: list[str]) -> set[str]:
    """Which of these session keys still name a live session (database or cache reads: call
    through a thread). With the database backends, one query for all of them."""
    from importlib import import_module

    if not session_keys:
        return set()
    engine = settings.SESSION_ENGINE
    if engine in ("django.contrib.sessions.backends.db", "django.contrib.sessions.backends.cached_db"):
        from django.contrib.sessions.models import Session
        from django.utils import timezone

        alive = set()
        for start in range(0, len(session_keys), 500):
            chunk = session_keys[start : start + 500]
            alive.update(Session.objects.filter(session_key__in=chunk, expire_date__gt=timezone.now())
                         .values_list("session_key", flat=True))  # fmt: skip
        return alive
    if engine == "django.contrib.sessions.backends.signed_cookies":
        return set(session_keys)  # no server-side state: a logout cannot be seen (docs/PROTOCOL.md)
    store_class = import_module(engine).SessionStore
    return {key for key in session_keys if store_class().exists(key)}
