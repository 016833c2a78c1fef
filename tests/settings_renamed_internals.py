"""The site with a channels_redis whose private receive hook was renamed (as a future release
might): the project's layer must notice and run as the plain layer. For tests.

A stand-in for a release that cannot be installed here: the installed class is changed the way
such a release would differ (`_receive_message` renamed, its caller updated)."""

from channels_redis.pubsub import RedisSingleShardConnection

from broadcast_site.settings import *  # noqa: F403

_hook = RedisSingleShardConnection._receive_message
del RedisSingleShardConnection._receive_message
RedisSingleShardConnection._handle_message = _hook  # type: ignore[attr-defined]
_receiving = RedisSingleShardConnection._do_receiving


async def _do_receiving(self):  # type: ignore[no-untyped-def]
    self._receive_message = self._handle_message
    await _receiving(self)


RedisSingleShardConnection._do_receiving = _do_receiving  # type: ignore[method-assign]
