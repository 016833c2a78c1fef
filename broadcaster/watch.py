"""Membership changes Django can see, announced to the server processes (broadcaster/changes.py).

Connected once, when the app is ready: a user saved or deleted (deactivation, staff, a new
username), group membership and permissions changed (either side of each many-to-many, through
the admin or the ORM), a group renamed or deleted, a logout, a receiver token saved or revoked.
(A session that expires or is deleted otherwise is found by the sweep in fanout/membership.py.)
What Django cannot see (an LDAP sync, a host's tenant table) a host announces with
`broadcaster.audiences_changed(user)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models.signals import m2m_changed, post_delete, post_save

from broadcaster import identity
from broadcaster.changes import announce


def audiences_changed(users: Any) -> None:
    """Tell every server process that what `users` (a user, a pk, or an iterable of either)
    belong to may have changed in ways Django cannot see: their open connections get their
    audiences worked out again within a couple of seconds (after the transaction commits)."""
    many = users if isinstance(users, Iterable) and not isinstance(users, str) else [users]
    announce(users=[getattr(u, "pk", u) for u in many])


def _user_saved(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return  # a login: nothing it belongs to changed
    announce(users=[instance.pk])


def _user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    announce(users=[instance.pk])


def _users_changed_by_m2m(sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any,
                          **kwargs: Any) -> None:  # fmt: skip
    """user.groups / user.user_permissions, from the user's side or the other."""
    if not action.startswith("post_"):
        return
    if not reverse:
        announce(users=[instance.pk])
    elif pk_set:
        announce(users=pk_set)
    else:
        announce(everyone=True)  # group.user_set.clear(): who was in it is gone already


def _group_permissions_changed(sender: Any, instance: Any, action: str, reverse: bool, **kwargs: Any) -> None:
    if not action.startswith("post_"):
        return
    if reverse:
        announce(everyone=True)  # permission.group_set changed: any group's members
    else:
        announce(users=instance.user_set.values_list("pk", flat=True))


def _group_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    announce(users=instance.user_set.values_list("pk", flat=True))


def _everyone(sender: Any, **kwargs: Any) -> None:
    announce(everyone=True)


def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    key = getattr(getattr(request, "session", None), "session_key", None)
    announce(users=[user.pk] if user is not None else [],
             credentials=[identity.credential_key(identity.SESSION, key)] if key else [])  # fmt: skip


def _token_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    announce(credentials=[f"{identity.TOKEN}:{instance.secret_hash}"], users=[instance.user_id])


def connect() -> None:
    """Called once from the app's ready() (audiences need django.contrib.auth)."""
    from django.apps import apps

    if not apps.is_installed("django.contrib.auth"):
        return
    from django.contrib.auth import get_user_model, user_logged_out
    from django.contrib.auth.models import Group, Permission

    from broadcaster.models import ReceiverToken

    user = get_user_model()
    uid = "broadcaster.watch"
    post_save.connect(_user_saved, sender=user, dispatch_uid=f"{uid}.user_saved")
    post_delete.connect(_user_deleted, sender=user, dispatch_uid=f"{uid}.user_deleted")
    for name in ("groups", "user_permissions"):
        field = getattr(user, name, None)
        if field is not None and hasattr(field, "through"):
            m2m_changed.connect(_users_changed_by_m2m, sender=field.through, dispatch_uid=f"{uid}.{name}")
    m2m_changed.connect(_group_permissions_changed, sender=Group.permissions.through,
                        dispatch_uid=f"{uid}.group_permissions")  # fmt: skip
    post_save.connect(_group_saved, sender=Group, dispatch_uid=f"{uid}.group_saved")
    post_delete.connect(_everyone, sender=Group, dispatch_uid=f"{uid}.group_deleted")
    post_delete.connect(_everyone, sender=Permission, dispatch_uid=f"{uid}.permission_deleted")
    user_logged_out.connect(_logged_out, dispatch_uid=f"{uid}.logged_out")
    post_save.connect(_token_changed, sender=ReceiverToken, dispatch_uid=f"{uid}.token_saved")
    post_delete.connect(_token_changed, sender=ReceiverToken, dispatch_uid=f"{uid}.token_deleted")
