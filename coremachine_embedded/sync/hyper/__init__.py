"""Hypercore's own replication protocol, so that JavaScript peers
(``core.replicate()``, Corestores, Coremachine replicas) replicate with us.

Layer by layer: noise.py (Noise XX over Ed25519), secretstream.py (encrypted
frames), protomux.py (channels), messages.py (the ten hypercore messages),
connection.py (one stream: channels, capability, batching, keepalives),
peer.py (what a channel says and does for a core), api.py (serve, pull,
replicate).  docs/protocol.md, "Hypercore protocol", describes it.
"""
from .api import Server, pull, replicate, serve, tcp_address
from .peer import ChannelPeer, CoreReplicator

__all__ = ["ChannelPeer", "CoreReplicator", "Server", "pull", "replicate", "serve",
           "tcp_address"]
