"""Settings for the stock Channels baseline: the project's, with channels_redis's stock pub/sub layer."""

from broadcast_site.settings import *  # noqa: F403
from broadcast_site.settings import REDIS_URL

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}
