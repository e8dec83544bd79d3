"""Hypercore's replication stream, pure-Python twin of csrc/cm_stream.c: the
Noise DH of noise-curve-ed, Noise's ChaCha20-Poly1305, and secret-stream frames.

libsodium is reached through the library pysodium loaded, with ctypes:
pysodium has no ``crypto_scalarmult_ed25519_noclamp``, and its secretstream
wrappers hand libsodium an immutable ``bytes`` as the state to update in place.
"""
from __future__ import annotations

import ctypes
import hashlib
from typing import Any, List, Optional, Sequence, Tuple

from ..caps import SS_ABYTES as ABYTES, SS_FRAME_PREFIX as PREFIX, SS_MAX_BODY as MAX_BODY
from ..errors import DecodeError, DecryptError, KeyMismatchError, TooLargeError, need_bytes

TAG_MESSAGE = 0
_STATE_BYTES = 52
_lib: Any = None


def _sodium() -> Any:
    global _lib
    if _lib is None:
        import pysodium  # type: ignore[import-untyped]
        lib = pysodium.sodium
        lib.crypto_secretstream_xchacha20poly1305_statebytes.restype = ctypes.c_size_t
        if lib.crypto_secretstream_xchacha20poly1305_statebytes() != _STATE_BYTES:
            raise ImportError("unexpected libsodium secretstream state size")
        _lib = lib
    return _lib


def noise_dh(secret_key: bytes, public_key: bytes) -> bytes:
    """noise-curve-ed's DH: the clamped SHA-512(seed) scalar times the remote
    Edwards point (KeyMismatchError if that point is unusable)."""
    sk = need_bytes("secret_key", secret_key, 64)
    pk = need_bytes("public_key", public_key, 32)
    scalar = bytearray(hashlib.sha512(sk[:32]).digest()[:32])
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    out = ctypes.create_string_buffer(32)
    if _sodium().crypto_scalarmult_ed25519_noclamp(out, bytes(scalar), pk) != 0:
        raise KeyMismatchError("noise DH: not a usable Ed25519 public key")
    return out.raw


def _nonce(counter: int) -> bytes:
    return bytes(4) + counter.to_bytes(8, "little")


def noise_encrypt(key: bytes, counter: int, ad: bytes, plaintext: bytes) -> bytes:
    """ChaCha20-Poly1305 with Noise's nonce (4 zero bytes, u64 LE counter)."""
    k = need_bytes("key", key, 32)
    m = need_bytes("plaintext", plaintext)
    a = need_bytes("ad", ad)
    out = ctypes.create_string_buffer(len(m) + 16)
    out_len = ctypes.c_ulonglong(0)
    _sodium().crypto_aead_chacha20poly1305_ietf_encrypt(
        out, ctypes.byref(out_len), m, ctypes.c_ulonglong(len(m)), a,
        ctypes.c_ulonglong(len(a)), None, _nonce(counter), k)
    return out.raw


def noise_decrypt(key: bytes, counter: int, ad: bytes, ciphertext: bytes) -> Optional[bytes]:
    """The plaintext, or None if the ciphertext does not authenticate."""
    k = need_bytes("key", key, 32)
    c = need_bytes("ciphertext", ciphertext)
    a = need_bytes("ad", ad)
    if len(c) < 16:
        return None
    out = ctypes.create_string_buffer(len(c) - 16)
    out_len = ctypes.c_ulonglong(0)
    if _sodium().crypto_aead_chacha20poly1305_ietf_decrypt(
            out, ctypes.byref(out_len), None, c, ctypes.c_ulonglong(len(c)), a,
            ctypes.c_ulonglong(len(a)), _nonce(counter), k) != 0:
        return None
    return out.raw


class StreamPush:
    """The sending half of a secret-stream: ``header`` goes to the peer once,
    then :meth:`seal` turns messages into frames.  With ``header`` given, the
    state is the one that header implies (to reproduce a recorded stream)."""

    __slots__ = ("_state", "header")

    def __init__(self, key: bytes, header: Optional[bytes] = None) -> None:
        k = need_bytes("key", key, 32)
        lib = _sodium()
        self._state = ctypes.create_string_buffer(_STATE_BYTES)
        if header is None:
            head = ctypes.create_string_buffer(24)
            lib.crypto_secretstream_xchacha20poly1305_init_push(self._state, head, k)
            self.header = head.raw
        else:
            self.header = need_bytes("header", header, 24)
            lib.crypto_secretstream_xchacha20poly1305_init_pull(self._state, self.header, k)

    def seal(self, messages: Sequence[bytes]) -> bytes:
        """The frames of ``messages``, back to back."""
        push = _sodium().crypto_secretstream_xchacha20poly1305_push
        out: List[bytes] = []
        for message in messages:
            m = message if type(message) is bytes else need_bytes("message", message)
            body = len(m) + ABYTES
            if body > MAX_BODY:
                raise TooLargeError("secret-stream frame: a message of %d bytes" % len(m))
            cipher = ctypes.create_string_buffer(body)
            push(self._state, cipher, None, m, ctypes.c_ulonglong(len(m)), None,
                 ctypes.c_ulonglong(0), ctypes.c_ubyte(TAG_MESSAGE))
            out.append(body.to_bytes(3, "little"))
            out.append(cipher.raw)
        return b"".join(out)


class StreamPull:
    """The receiving half of a secret-stream, from the peer's header."""

    __slots__ = ("_state",)

    def __init__(self, key: bytes, header: bytes) -> None:
        k = need_bytes("key", key, 32)
        h = need_bytes("header", header, 24)
        self._state = ctypes.create_string_buffer(_STATE_BYTES)
        _sodium().crypto_secretstream_xchacha20poly1305_init_pull(self._state, h, k)

    def open(self, data: Any, start: int = 0) -> Tuple[List[bytes], int]:
        """``(messages, end)``: the plaintexts of the complete frames in
        ``data[start:]`` and where the first incomplete one begins.

        :raises DecodeError: a frame too short to hold a message.
        :raises DecryptError: a frame that does not authenticate.
        """
        pull = _sodium().crypto_secretstream_xchacha20poly1305_pull
        view = memoryview(data)
        out: List[bytes] = []
        pos, end = start, len(view)
        plain_len = ctypes.c_ulonglong(0)
        tag = ctypes.c_ubyte(0)
        while end - pos >= PREFIX:
            body = view[pos] | view[pos + 1] << 8 | view[pos + 2] << 16
            if end - pos - PREFIX < body:
                break
            if body < ABYTES:
                raise DecodeError("secret-stream frame of %d bytes" % body)
            cipher = bytes(view[pos + PREFIX:pos + PREFIX + body])
            plain = ctypes.create_string_buffer(body - ABYTES)
            if pull(self._state, plain, ctypes.byref(plain_len), ctypes.byref(tag), cipher,
                    ctypes.c_ulonglong(body), None, ctypes.c_ulonglong(0)) != 0:
                raise DecryptError("secret-stream frame: an encrypted message failed "
                                   "authentication")
            out.append(plain.raw)
            pos += PREFIX + body
        return out, pos
