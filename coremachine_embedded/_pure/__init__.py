"""The pure-Python backend: the reference model of the C core, same interface.

Exports exactly what ``coremachine_embedded._core`` (the Cython extension)
exports: the contract ``_backend.Backend`` (tests/unit/test_backend_contract.py).
"""
from __future__ import annotations

from typing import List, Optional

from ..encoding import DataMessage, Node
from .crypto import (Verifier, aead_open, aead_seal, default_manifest, discovery_key,
                     hash_leaf, hash_parent, keypair_from_seed, keypair_generate, manifest_hash,
                     sign, tree_hash, verify)
from .flat import full_roots
from ..proofs import ApplyResult, Check
from .opening import Log
from .stream import StreamPull, StreamPush, noise_decrypt, noise_dh, noise_encrypt
from .table import Table

NAME = "python"


def check_proof(key: bytes, manifest: Optional[bytes], roots: List[Node],
                message: bytes) -> Check:
    """Verify a data message against trusted ``roots`` (stateless)."""
    from .proof import check
    return check(Verifier(bytes(key), manifest), [(r[0], r[1], r[2]) for r in roots],
                 DataMessage.decode(bytes(message)))


def check_signature(key: bytes, manifest: Optional[bytes], tree_hash: bytes, length: int,
                    fork: int, signature: bytes) -> None:
    """Raise InvalidSignatureError unless ``signature`` signs the state."""
    Verifier(bytes(key), manifest).check(bytes(tree_hash), length, fork, bytes(signature))


__all__ = ["NAME", "aead_open", "aead_seal", "ApplyResult", "Check", "Log", "StreamPull",
           "StreamPush", "Table", "check_proof", "check_signature", "default_manifest",
           "discovery_key", "full_roots", "hash_leaf", "hash_parent", "keypair_from_seed",
           "keypair_generate", "manifest_hash", "noise_decrypt", "noise_dh", "noise_encrypt",
           "sign", "tree_hash", "verify"]
