"""The fan-out path: from a broadcast arriving from Redis to the bytes on every receiver's socket.

routing (the ASGI entry for /ws/broadcast/) -> consumers (one receiver: handshake, catch-up,
client frames) -> hub (this process's receivers: numbering via sequencer, batching, count pushes)
-> transport (one Link per connection, keeping the slow-consumer bound). The channel layer that
feeds the hub is broadcaster/layer.py (a public name: CHANNEL_LAYERS' BACKEND).
"""
