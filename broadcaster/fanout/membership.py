"""The identities of this process's receivers, kept in step with Django's users and sessions.

Receivers that showed the same credential (the tabs of one browser session, say) share one
identity, worked out once. Membership changes reach it two ways, each within a couple of
heartbeats (BROADCAST_COUNT_INTERVAL, 1 s by default):

- announced changes (broadcaster/changes.py: users, groups, permissions, tokens, logouts),
  read by every process at each heartbeat;
- a sweep, every SWEEP_INTERVAL, of the sessions and receiver tokens its receivers came with:
  a session that expired or was deleted without a signal (`clearsessions`, a cache that evicted
  it), a token revoked by a queryset update, is found there.

A credential that no longer gives a user makes its receivers anonymous (they hear `everyone`
only) or, under BROADCAST_RECEIVERS = "authenticated", closes them with 4401.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError

from broadcaster import changes, identity
from broadcaster.identity import NOBODY, Credential, Identity

logger = logging.getLogger(__name__)

# How often the sessions of this process's receivers are checked for expiry or deletion (s).
SWEEP_INTERVAL = 2.0


class Member(Protocol):
    """A receiver, as far as its identity goes (the WebSocket consumer)."""

    member_of: frozenset[str]
    identity: Identity

    def signed_out(self) -> None:
        """Called when its credential no longer gives a user, under BROADCAST_RECEIVERS =
        "authenticated": close it with UNAUTHENTICATED."""


class Regroup(Protocol):
    def regroup(self, receiver: Member, member_of: frozenset[str]) -> None: ...


def authenticated_only() -> bool:
    """Whether anonymous receivers are refused (BROADCAST_RECEIVERS = "authenticated")."""
    return bool(settings.BROADCAST_RECEIVERS == "authenticated")


class Members:
    """This process's credentials, their identities and their receivers."""

    def __init__(self, hub: Regroup) -> None:
        self._hub = hub
        self._receivers: dict[str, set[Member]] = {}
        self._credentials: dict[str, Credential] = {}
        self._identities: dict[str, Identity] = {}
        self._by_user: dict[str, set[str]] = {}
        # Credentials being worked out now: the tabs of one session that connect together
        # (a page reload storm, a service's pool) wait for one database read, not one each.
        self._resolving: dict[str, asyncio.Future[Identity]] = {}
        self.feed = changes.Feed()
        self._swept_at = 0.0

    async def identify(self, found: Credential | None) -> Identity:
        """Called on a handshake: the identity its credential gives (a database read unless
        another receiver of this process showed the same credential)."""
        if found is None:
            return NOBODY
        known = self._identities.get(found.key)
        if known is not None:
            return known
        while (resolving := self._resolving.get(found.key)) is not None:
            try:
                return await asyncio.shield(resolving)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not resolving.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The receiver working it out went away mid-read: take over.
        known = self._identities.get(found.key)
        if known is not None:
            return known
        resolving = self._resolving[found.key] = asyncio.get_running_loop().create_future()
        try:
            who = await self._resolve(found)
        except asyncio.CancelledError:
            resolving.cancel()
            raise
        except Exception as exc:
            resolving.set_exception(exc)
            resolving.exception()  # (retrieved: nobody else may be waiting for it)
            raise
        else:
            resolving.set_result(who)
        finally:
            del self._resolving[found.key]
        return who

    async def _resolve(self, found: Credential) -> Identity:
        for _ in range(3):
            # A change read from the feed while this was resolved may not be in the answer,
            # and this receiver was not there to be refreshed by it: resolve again.
            before = self.feed.version
            who = await database_sync_to_async(identity.resolve)(found)
            if self.feed.version == before:
                break
        return who

    def join(self, receiver: Member, found: Credential, who: Identity) -> None:
        """Called when a receiver with a credential joins the hub."""
        key = found.key
        self._receivers.setdefault(key, set()).add(receiver)
        self._credentials[key] = found
        if key not in self._identities:
            self._set_identity(key, who)

    def leave(self, receiver: Member, found: Credential) -> None:
        """Called when a receiver with a credential leaves the hub."""
        key = found.key
        receivers = self._receivers.get(key)
        if receivers is None:
            return
        receivers.discard(receiver)
        if not receivers:
            del self._receivers[key], self._credentials[key]
            self._forget_identity(key)

    def _set_identity(self, key: str, who: Identity) -> None:
        self._forget_identity(key)
        self._identities[key] = who
        if who.user_id is not None:
            self._by_user.setdefault(str(who.user_id), set()).add(key)

    def _forget_identity(self, key: str) -> None:
        old = self._identities.pop(key, None)
        if old is not None and old.user_id is not None:
            keys = self._by_user.get(str(old.user_id))
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_user[str(old.user_id)]

    async def check(self, redis: object, *, now: float) -> None:
        """Called at each heartbeat: apply announced changes, and sweep sessions when due."""
        # Read with no receivers too: the feed's first read cannot say what changed (it is
        # `everyone`), and had it waited for the first receivers, it would work out every one
        # of a connect storm's identities a second time.
        changed = await self.feed.read(redis)  # type: ignore[arg-type]
        if not self._receivers:
            return
        keys: set[str] = set()
        if changed is not None:
            if changed.everyone:
                keys = set(self._receivers)
            else:
                keys = {k for k in changed.credentials if k in self._receivers}
                for user in changed.users:
                    keys.update(self._by_user.get(user, ()))
        if now - self._swept_at >= SWEEP_INTERVAL:
            self._swept_at = now
            keys.update(await self._dead_credentials())
        if keys:
            await self.refresh(keys)

    async def _dead_credentials(self) -> set[str]:
        """The credentials of this process's receivers that no longer hold: sessions expired or
        deleted, receiver tokens revoked or deleted (also by a queryset update, which sends no
        signal). One query each for all of them (database session backends)."""
        sessions = {f.secret: key for key, f in self._credentials.items() if f.kind == identity.SESSION}
        tokens = {f.secret: key for key, f in self._credentials.items() if f.kind == identity.TOKEN}
        if not sessions and not tokens:
            return set()
        try:
            alive = await database_sync_to_async(identity.alive)(list(sessions), list(tokens))
        except DatabaseError as exc:
            logger.warning("Could not check receivers' sessions and tokens: %s", exc)
            return set()
        return {key for secret, key in [*sessions.items(), *tokens.items()] if secret not in alive}

    async def refresh(self, keys: set[str]) -> None:
        """Work out the identity of each credential in `keys` again and apply it to its
        receivers (database reads, in one thread hop)."""
        found = [self._credentials[k] for k in keys if k in self._credentials]
        try:
            fresh = await database_sync_to_async(_resolve_all)(found)
        except DatabaseError as exc:
            # Kept as they were for now; the next beat works out every receiver's again.
            logger.warning("Could not work out receivers' audiences again (retried next beat): %s", exc)
            self.feed.lost()
            return
        for credential, who in zip(found, fresh, strict=True):
            key = credential.key
            receivers = self._receivers.get(key)
            if receivers is None:
                continue  # gone meanwhile
            self._set_identity(key, who)
            for receiver in list(receivers):
                if who.anonymous and authenticated_only():
                    receiver.signed_out()
                    continue
                receiver.identity = who
                self._hub.regroup(receiver, who.member_of)

    def lost_redis(self) -> None:
        """Redis was unreachable: announced changes may have been missed."""
        self.feed.lost()


def _resolve_all(found: list[Credential]) -> list[Identity]:
    return [identity.resolve(c) for c in found]
