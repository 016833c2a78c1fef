"""The site with channels_redis's own pub/sub layer (no fan-out fast path): for tests."""

from broadcast_site.settings import *  # noqa: F403
from broadcast_site.settings import REDIS_URL
from broadcaster.backend.redis_client import layer_hosts

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": layer_hosts(REDIS_URL)},
    }
}
