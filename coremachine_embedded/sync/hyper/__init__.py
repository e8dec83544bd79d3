"""Hypercore's own replication protocol, layer by layer: noise.py (Noise XX
over Ed25519), secretstream.py (encrypted frames), protomux.py (channels),
messages.py (the ten hypercore messages)."""
