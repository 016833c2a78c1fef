"""Audiences: who a broadcast is for, and which audiences a receiver belongs to.

An audience is a string: `everyone`, `authenticated`, `staff`, `user:<username>`,
`group:<group name>`, `perm:<app_label>.<codename>`, or `<kind>:<value>` for a kind the host
names in BROADCAST_AUDIENCE_KINDS. A broadcast has one audience or several (the union).

A receiver's *memberships* are the audiences it belongs to, computed once from Django's own
users, groups and permissions (when it connects, and again when they change: see
broadcaster/fanout/membership.py). A broadcast reaches a receiver when the two meet:
`protocol.for_member(audience, memberships)`. This module holds the rules; the parsing and checking of
an audience given by a sender, and the membership computation (database reads, sync).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from broadcaster.protocol import ANONYMOUS, AUDIENCE_EVERYONE

EVERYONE = "everyone"
AUTHENTICATED = "authenticated"
STAFF = "staff"
USER = "user"
GROUP = "group"
PERM = "perm"

# The audience of a broadcast to everyone (the default); ANONYMOUS: an anonymous receiver's
# memberships (it hears `everyone` broadcasts only).
EVERYONE_ONLY = AUDIENCE_EVERYONE

# Kinds without a value, and the built-in kinds with one.
_PLAIN = (EVERYONE, AUTHENTICATED, STAFF)
_BUILT_IN = (USER, GROUP, PERM)

# A broadcast names at most this many audiences, each at most this long.
MAX_AUDIENCES = 100
MAX_AUDIENCE_LENGTH = 300


class InvalidAudience(ValueError):
    """An audience a broadcast cannot have: malformed, or naming a user, group or permission
    that does not exist. The text says which, for the sender."""


def custom_kinds() -> dict[str, Callable[[Any], Iterable[str]]]:
    """The host's own kinds (BROADCAST_AUDIENCE_KINDS: kind -> dotted path of a callable
    given a user, returning the values that user belongs to), imported at call time."""
    configured: dict[str, str] = getattr(settings, "BROADCAST_AUDIENCE_KINDS", {}) or {}
    kinds = {}
    for kind, path in configured.items():
        if kind in _PLAIN or kind in _BUILT_IN:
            raise InvalidAudience(f"BROADCAST_AUDIENCE_KINDS may not redefine the built-in kind {kind!r}.")
        kinds[kind] = import_string(path) if isinstance(path, str) else path
    return kinds


def parse(value: object) -> tuple[str, ...]:
    """The audience a sender gave (a string or a list of strings) in its one written form:
    sorted, each once; EVERYONE_ONLY when `everyone` is among them. Checks the form only
    (`check` also checks that what it names exists)."""
    if value is None:
        return EVERYONE_ONLY
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise InvalidAudience(f"The audience must be a string or a non-empty list of strings; got {value!r}.")
    if len(items) > MAX_AUDIENCES:
        raise InvalidAudience(f"A broadcast may name at most {MAX_AUDIENCES} audiences; got {len(items)}.")
    known = set(_BUILT_IN) | set(getattr(settings, "BROADCAST_AUDIENCE_KINDS", {}) or {})
    found = set()
    for item in items:
        if not isinstance(item, str):
            raise InvalidAudience(f"Each audience must be a string; got {item!r}.")
        if len(item) > MAX_AUDIENCE_LENGTH:
            raise InvalidAudience(f"An audience may be at most {MAX_AUDIENCE_LENGTH} characters long.")
        if item in _PLAIN:
            found.add(item)
            continue
        kind, colon, rest = item.partition(":")
        if not colon or kind not in known:
            kinds = ", ".join([*_PLAIN, *(f"{k}:<value>" for k in sorted(known))])
            raise InvalidAudience(f"Unknown audience {item!r}; an audience is one of {kinds}.")
        if not rest or rest != rest.strip() or not rest.isprintable():
            raise InvalidAudience(f"The audience {item!r} names no {kind} (an empty or blank value).")
        found.add(item)
    if EVERYONE in found:
        return EVERYONE_ONLY
    return tuple(sorted(found))


def check(value: object) -> tuple[str, ...]:
    """`parse`, then refuse an audience naming a user, group or permission that does not
    exist (database reads: call from sync code, or through a thread)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group, Permission

    audience = parse(value)
    wanted: dict[str, set[str]] = {USER: set(), GROUP: set(), PERM: set()}
    for item in audience:
        kind, _, rest = item.partition(":")
        if kind in wanted:
            wanted[kind].add(rest)
    if wanted[USER]:
        model = get_user_model()
        field = model.USERNAME_FIELD
        have = set(
            model._default_manager.filter(**{f"{field}__in": wanted[USER]}).values_list(field, flat=True)
        )
        _refuse_missing("user", wanted[USER] - {str(h) for h in have})
    if wanted[GROUP]:
        have = set(Group.objects.filter(name__in=wanted[GROUP]).values_list("name", flat=True))
        _refuse_missing("group", wanted[GROUP] - have)
    if wanted[PERM]:
        missing = set()
        for perm in wanted[PERM]:
            app_label, dot, codename = perm.partition(".")
            if (
                not dot
                or not Permission.objects.filter(
                    content_type__app_label=app_label, codename=codename
                ).exists()
            ):
                missing.add(perm)
        _refuse_missing("permission", missing)
    return audience


def _refuse_missing(what: str, missing: set[str]) -> None:
    if missing:
        names = ", ".join(repr(m) for m in sorted(missing))
        raise InvalidAudience(f"No {what} {names} exists: nothing was sent.")


def memberships(user: Any) -> frozenset[str]:
    """The audiences `user` belongs to (database reads): ANONYMOUS for an anonymous or
    inactive user; else everyone, authenticated, user:<username>, staff if staff, each group,
    each permission the auth backends give it (superusers: all), and the host's own kinds."""
    if user is None or not user.is_authenticated or not user.is_active:
        return ANONYMOUS
    found = {EVERYONE, AUTHENTICATED, f"{USER}:{user.get_username()}"}
    if user.is_staff:
        found.add(STAFF)
    found.update(f"{GROUP}:{name}" for name in user.groups.values_list("name", flat=True))
    found.update(f"{PERM}:{perm}" for perm in user.get_all_permissions())
    for kind, values in custom_kinds().items():
        found.update(f"{kind}:{value}" for value in values(user))
    return frozenset(found)
