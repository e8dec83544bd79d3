"""Hashes, keys, signables, manifests and signature checks (hypercore-crypto 3.x).

BLAKE2b comes from :mod:`hashlib`; Ed25519 from libsodium through pysodium,
imported on first use so that importing the package stays light.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Any, List, Optional, Tuple

from ..caps import MAX_SIGNATURE, MAX_SIGNERS, NS_DEFAULT, NS_MANIFEST, NS_TREE
from ..encoding import Manifest, Node, Reader
from ..errors import (DecodeError, InvalidSignatureError, KeyMismatchError,
                      MissingDependencyError)

_U64 = struct.Struct("<Q")
_blake2b = hashlib.blake2b
_sodium: Any = None


def _nacl() -> Any:
    global _sodium
    if _sodium is None:
        try:
            import pysodium  # type: ignore[import-untyped]
        except (ImportError, OSError) as e:  # pysodium loads libsodium when imported
            raise MissingDependencyError(
                "the pure-Python backend signs with libsodium through pysodium: %s "
                "(apt-get install libsodium23; pip install pysodium)" % e) from e
        _sodium = pysodium
    return _sodium


def hash_leaf(block_index: int, data: bytes) -> Node:
    h = _blake2b(b"\x00", digest_size=32)
    h.update(_U64.pack(len(data)))
    h.update(data)
    return (2 * block_index, len(data), h.digest())


def hash_parent(a: Node, b: Node, index: int) -> Node:
    size = a[1] + b[1]
    h = _blake2b(b"\x01", digest_size=32)
    h.update(_U64.pack(size))
    h.update(a[2])
    h.update(b[2])
    return (index, size, h.digest())


def tree_hash(roots: List[Node]) -> bytes:
    h = _blake2b(b"\x02", digest_size=32)
    for index, size, digest in roots:
        h.update(digest)
        h.update(_U64.pack(index))
        h.update(_U64.pack(size))
    return h.digest()


def discovery_key(key: bytes) -> bytes:
    return _blake2b(b"hypercore", digest_size=32, key=key).digest()


def signable(compat: bool, manifest_hash: bytes, tree_hash_: bytes, length: int,
             fork: int) -> bytes:
    tail = tree_hash_ + _U64.pack(length) + _U64.pack(fork)
    return NS_TREE + tail if compat else NS_TREE + manifest_hash + tail


def keypair_from_seed(seed: bytes) -> Tuple[bytes, bytes]:
    pk, sk = _nacl().crypto_sign_seed_keypair(bytes(seed))
    return bytes(pk), bytes(sk)


def keypair_generate() -> Tuple[bytes, bytes]:
    pk, sk = _nacl().crypto_sign_keypair()
    return bytes(pk), bytes(sk)


def sign(message: bytes, secret_key: bytes) -> bytes:
    return bytes(_nacl().crypto_sign_detached(message, secret_key))


def verify(message: bytes, signature: bytes, public_key: bytes) -> bool:
    try:
        _nacl().crypto_sign_verify_detached(signature, message, public_key)
    except ValueError:
        return False
    return True


def aead_seal(key: bytes, nonce: bytes, ad: bytes, message: bytes) -> bytes:
    """XChaCha20-Poly1305: the ciphertext with its 16-byte tag."""
    return bytes(_nacl().crypto_aead_xchacha20poly1305_ietf_encrypt(message, ad, nonce, key))


def aead_open(key: bytes, nonce: bytes, ad: bytes, ciphertext: bytes) -> Optional[bytes]:
    """The message, or None if the ciphertext, ad, key or nonce do not match."""
    if len(ciphertext) < 16:
        return None
    try:
        return bytes(_nacl().crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce,
                                                                         key))
    except ValueError:
        return None


# --- manifests ---------------------------------------------------------------

def default_manifest(public_key: bytes) -> bytes:
    return Manifest([(NS_DEFAULT, public_key)]).encode()


def manifest_hash(encoded: bytes) -> bytes:
    return _blake2b(NS_MANIFEST + encoded, digest_size=32).digest()


class Verifier:
    """What a reader needs to check a signature: the key and, unless compat, the manifest."""

    __slots__ = ("compat", "key", "manifest", "manifest_bytes")

    def __init__(self, key: bytes, manifest: Optional[bytes] = None) -> None:
        self.key = key
        self.manifest_bytes = manifest
        if manifest is None:
            self.compat = True
            self.manifest = None
        else:
            self.compat = False
            self.manifest = Manifest.decode(manifest)
            if manifest_hash(manifest) != key:
                raise KeyMismatchError("manifest does not hash to the core key")

    def signable(self, tree_hash_: bytes, length: int, fork: int) -> bytes:
        return signable(self.compat, self.key, tree_hash_, length, fork)

    def check(self, tree_hash_: bytes, length: int, fork: int, signature: bytes) -> None:
        """Raise :class:`InvalidSignatureError` unless ``signature`` signs the state."""
        msg = self.signable(tree_hash_, length, fork)
        if self.compat:
            if len(signature) != 64 or not verify(msg, signature, self.key):
                raise InvalidSignatureError("signature does not verify")
            return
        assert self.manifest is not None
        if len(signature) > MAX_SIGNATURE:
            raise InvalidSignatureError("signature container too large")
        try:
            r = Reader(signature)
            count = r.uint()
            if count > MAX_SIGNERS:
                raise InvalidSignatureError("too many proofs in the signature")
            proofs = [(r.uint(), r.fixed(64), r.uint()) for _ in range(count)]
            if r.uint() != 0:
                raise InvalidSignatureError("patched signatures are not supported")
            if not r.done():
                raise InvalidSignatureError("trailing bytes after the signature")
        except DecodeError:
            raise InvalidSignatureError("malformed signature container") from None
        quorum = self.manifest.quorum
        if quorum == 0 or quorum > len(self.manifest.signers):
            raise InvalidSignatureError("manifest quorum %d with %d signers"
                                        % (quorum, len(self.manifest.signers)))
        seen = set()
        for signer, sig, patch in proofs:
            if patch != 0 or signer in seen or signer >= len(self.manifest.signers):
                raise InvalidSignatureError("invalid signer entry")
            if not verify(msg, sig, self.manifest.signers[signer][1]):
                raise InvalidSignatureError("signature does not verify")
            seen.add(signer)
        if len(seen) < self.manifest.quorum:
            raise InvalidSignatureError("quorum not reached")

    def sign(self, secret_key: bytes, tree_hash_: bytes, length: int, fork: int) -> bytes:
        sig = sign(self.signable(tree_hash_, length, fork), secret_key)
        if self.compat:
            return sig
        return b"\x01\x00" + sig + b"\x00\x00"
