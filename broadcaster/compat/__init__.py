"""The one boundary for other packages' internals: every private name of Twisted, autobahn and
daphne the app uses is named, read and written only in this package, one module per dependency
(as websockets keeps `asyncio/compatibility.py`).

Each module lists what it uses (`USES`) and has a `problem()`, called once at start-up
(broadcaster/server/startup.py), that checks those names and a behaviour against the installed
release. Where nothing can replace them (the slow-consumer bound, the request body limit), a
server process with a problem refuses to start, with a message naming the package and its
version; where a fallback needs none of them, the process uses it and says so once.

channels_redis's internals stay in broadcaster/layer.py, whose classes subclass its own: that
module is their boundary (`_RELIES_ON`, checked at start-up and by tests/test_layer_contract.py).
"""
