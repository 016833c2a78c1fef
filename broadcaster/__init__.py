"""The broadcast app.

Send from your own code (docs/EMBEDDING.md, "Send from your code"):

    import broadcaster
    broadcaster.send("Deploy finished", audience="group:ops")   # or: await broadcaster.asend(...)

The names below are imported on first use (this package is imported before Django is set up).

A blank PROMETHEUS_MULTIPROC_DIR means unset. prometheus_client reads it once, when first
imported (by broadcaster/metrics.py), and would take "" for a folder: the current directory.
"""

import os

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR", "x").strip():
    del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def audiences_changed(users: object) -> None:
    """Tell every server process that what `users` (a user, a pk, or a list of either) belong
    to may have changed in ways Django cannot see (an LDAP sync, a host's own tenant table):
    their open connections hear what is for their new audiences within a couple of seconds,
    after the current transaction commits (docs/EMBEDDING.md)."""
    from broadcaster.watch import audiences_changed as announce

    announce(users)


# name -> the module that defines it (broadcaster/sending/).
_PUBLIC = {
    "send": "code", "asend": "code", "retract": "code", "aretract": "code",
    "Sent": "publish", "Retracted": "publish",
    "BroadcastError": "errors", "InvalidBroadcast": "errors", "BroadcastUnavailable": "errors",
    "EmptyMessage": "errors", "InvalidText": "errors", "MessageTooLong": "errors", "InvalidOptions": "errors",
    "InvalidAudience": "errors", "IdempotencyConflict": "errors", "BrokerUnavailable": "errors",
    "LogUnavailable": "errors", "StillInProgress": "errors", "UnknownBroadcast": "errors",
}  # fmt: skip
__all__ = ["audiences_changed", *_PUBLIC]


def __getattr__(name: str) -> object:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'broadcaster' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"broadcaster.sending.{module}"), name)
