"""A FanoutChannelLayer whose shards are channels_redis's own: messages never reach the fast
path, as if a release stopped calling the method it overrides (tests only)."""

from __future__ import annotations

from typing import Any

from channels_redis.pubsub import RedisSingleShardConnection
from channels_redis.utils import decode_hosts

from broadcaster.layer import FanoutChannelLayer, FanoutLoopLayer


class _SilentLoopLayer(FanoutLoopLayer):
    def __init__(self, hosts: Any = None, **kwargs: Any) -> None:
        super().__init__(hosts, **kwargs)
        self._shards = [RedisSingleShardConnection(host, self) for host in decode_hosts(hosts)]


class SilentFastPathLayer(FanoutChannelLayer):
    def _get_layer(self) -> Any:
        import asyncio

        from channels_redis.utils import _wrap_close

        loop = asyncio.get_running_loop()
        if loop not in self._layers:
            self._layers[loop] = _SilentLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return self._layers[loop]
