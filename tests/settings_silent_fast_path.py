"""The site with a layer whose fast path is never called (a channels_redis release that kept
the names but changed the receive path): the process must refuse to start. For tests."""

from broadcast_site.settings import *  # noqa: F403
from broadcast_site.settings import CHANNEL_LAYERS

CHANNEL_LAYERS = {
    "default": {**CHANNEL_LAYERS["default"], "BACKEND": "tests.silent_layer.SilentFastPathLayer"}
}
