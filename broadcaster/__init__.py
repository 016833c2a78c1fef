"""The broadcast app.

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
