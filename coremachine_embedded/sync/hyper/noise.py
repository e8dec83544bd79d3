"""Noise XX over Ed25519 keys, as noise-handshake + noise-curve-ed do it.

``Noise_XX_Ed25519_ChaChaPoly_BLAKE2b`` with an empty prologue: BLAKE2b-512
for the handshake hash, HMAC-BLAKE2b for HKDF, ChaCha20-Poly1305 (nonce = 4
zero bytes || u64 LE counter), and a DH that is an Edwards scalar
multiplication with the clamped SHA-512(seed) scalar (``noise_dh`` of the
backend: C or libsodium through ctypes).  Static and ephemeral keys are
Ed25519 signing key pairs.  Generic Noise libraries use X25519 and cannot talk
to this.

Messages: 1 = ``e`` (32 bytes), 2 = ``e, ee, s, es`` (96), 3 = ``s, se`` (64),
each followed by a payload (empty here; a peer's payload is read and hashed).
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Callable, List, Optional, Tuple

from ... import _backend
from ...errors import CoreMachineError, HandshakeError

PROTOCOL = b"Noise_XX_Ed25519_ChaChaPoly_BLAKE2b"
HASHLEN = 64
KEYLEN = 32
TAGLEN = 16

KeyPair = Tuple[bytes, bytes]  # (public key 32, secret key 64)
_impl = _backend.impl


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASHLEN).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def hkdf(chaining_key: bytes, material: bytes) -> Tuple[bytes, bytes]:
    """Noise's HKDF with two outputs (HMAC-BLAKE2b, empty info)."""
    prk = _hmac(chaining_key, material)
    first = _hmac(prk, b"\x01")
    return first, _hmac(prk, first + b"\x02")


def generate_keypair(seed: Optional[bytes] = None) -> KeyPair:
    """An Ed25519 key pair (from ``seed`` when given), as the handshake uses them."""
    pk, sk = _impl.keypair_from_seed(seed) if seed is not None else _impl.keypair_generate()
    return bytes(pk), bytes(sk)


class NoiseXX:
    """One side of the handshake.  Call :meth:`send` and :meth:`recv` in turn
    (the initiator sends first); when :attr:`complete`, :attr:`tx`, :attr:`rx`,
    :attr:`handshake_hash` and :attr:`remote_static` are set.

    :param ephemeral: makes the ephemeral key pair (tests replay recordings).
    :raises HandshakeError: from :meth:`recv` on a message that does not verify.
    """

    def __init__(self, initiator: bool, static: KeyPair,
                 ephemeral: Callable[[], KeyPair] = generate_keypair) -> None:
        self.initiator = initiator
        self.static = static
        self._make_ephemeral = ephemeral
        self._e: Optional[KeyPair] = None
        self._re: Optional[bytes] = None
        self.remote_static: Optional[bytes] = None
        self._h = PROTOCOL + bytes(HASHLEN - len(PROTOCOL))
        self._ck = self._h
        self._key: Optional[bytes] = None
        self._nonce = 0
        self._mix_hash(b"")  # the empty prologue
        # initiator writes steps 0 and 2, the responder step 1
        self._steps: List[Tuple[str, ...]] = [("e",), ("e", "ee", "s", "es"), ("s", "se")]
        self.complete = False
        self.tx = b""
        self.rx = b""
        self.handshake_hash = b""

    @property
    def my_turn(self) -> bool:
        """Whether the next message is ours to send."""
        return not self.complete and (len(self._steps) % 2 == 1) == self.initiator

    # --- symmetric state ---------------------------------------------------------------

    def _mix_hash(self, data: bytes) -> None:
        self._h = _hash(self._h + data)

    def _mix_key(self, shared: bytes) -> None:
        self._ck, temp = hkdf(self._ck, shared)
        self._key = temp[:KEYLEN]
        self._nonce = 0

    def _encrypt_and_hash(self, plaintext: bytes) -> bytes:
        out = plaintext
        if self._key is not None:
            out = _impl.noise_encrypt(self._key, self._nonce, self._h, plaintext)
            self._nonce += 1
        self._mix_hash(out)
        return out

    def _decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        out = ciphertext
        if self._key is not None:
            plain = _impl.noise_decrypt(self._key, self._nonce, self._h, ciphertext)
            if plain is None:
                raise HandshakeError("a handshake message does not authenticate")
            out = plain
            self._nonce += 1
        self._mix_hash(ciphertext)
        return out

    def _dh(self, token: str) -> None:
        # ee: both ephemeral; es: the initiator's ephemeral with the responder's
        # static; se: the initiator's static with the responder's ephemeral
        local_static = (token == "es" and not self.initiator) or (token == "se" and self.initiator)
        remote_static = (token == "es" and self.initiator) or (token == "se" and not self.initiator)
        local = self.static if local_static else self._e
        remote = self.remote_static if remote_static else self._re
        assert local is not None and remote is not None
        try:
            shared = _impl.noise_dh(local[1], remote)
        except CoreMachineError as e:
            raise HandshakeError("the peer's key is not usable: %s" % e) from None
        self._mix_key(shared)

    # --- messages ------------------------------------------------------------------------

    def send(self, payload: bytes = b"") -> bytes:
        """Our next handshake message."""
        if not self.my_turn:
            raise HandshakeError("not our turn to send a handshake message")
        out = []
        for token in self._steps.pop(0):
            if token == "e":
                self._e = self._make_ephemeral()
                self._mix_hash(self._e[0])
                out.append(self._e[0])
            elif token == "s":
                out.append(self._encrypt_and_hash(self.static[0]))
            else:
                self._dh(token)
        out.append(self._encrypt_and_hash(payload))
        self._finish_if_done()
        return b"".join(out)

    def recv(self, message: bytes) -> bytes:
        """Take the peer's next handshake message; returns its payload."""
        if self.complete or self.my_turn:
            raise HandshakeError("unexpected handshake message")
        pos = 0
        for token in self._steps.pop(0):
            if token in ("e", "s"):
                size = 32 if token == "e" or self._key is None else 32 + TAGLEN
                if len(message) - pos < size:
                    raise HandshakeError("a handshake message of %d bytes is too short"
                                         % len(message))
                part = bytes(message[pos:pos + size])
                pos += size
                if token == "e":
                    self._re = part
                    self._mix_hash(part)
                else:
                    self.remote_static = self._decrypt_and_hash(part)
            else:
                self._dh(token)
        payload = self._decrypt_and_hash(bytes(message[pos:]))
        self._finish_if_done()
        return payload

    def _finish_if_done(self) -> None:
        if self._steps:
            return
        k1, k2 = hkdf(self._ck, b"")
        self.tx, self.rx = (k1[:KEYLEN], k2[:KEYLEN]) if self.initiator else \
            (k2[:KEYLEN], k1[:KEYLEN])
        self.handshake_hash = self._h
        self.complete = True
        self._e = None
        self._key = None
