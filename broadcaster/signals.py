"""Signals a host can mirror broadcasts with (its audit trail, a chat), docs/EMBEDDING.md.

Each is sent once per broadcast, whichever path it came from (console, operator page, API,
`broadcaster.send()`, the outbox), in the process that sent it, after it went out:

- `broadcast_sent(sender=BroadcastRecord, broadcast=<broadcaster.Sent>)`
- `broadcast_retracted(sender=BroadcastRecord, id=<its id>, by=<who>, seq=<the retraction's seq>)`

A receiver that raises is logged and does not undo or fail the send.
"""

from django.dispatch import Signal

__all__ = ["broadcast_retracted", "broadcast_sent"]

broadcast_sent = Signal()
broadcast_retracted = Signal()
