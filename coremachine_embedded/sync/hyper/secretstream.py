"""@hyperswarm/secret-stream without I/O: the Noise handshake, then
encrypted messages, over any reliable byte stream.

Every frame is ``uint24 LE length | body``.  The three Noise XX messages are
frames; then each side sends ``id (32) | secretstream header (24)`` where
``id = BLAKE2b-256(key = handshake hash, NS[own role])`` and ``NS =
namespace('hyperswarm/secret-stream', 3)`` (the receiver checks it against the
other role), and from then on every message is a frame holding
``crypto_secretstream_xchacha20poly1305_push(message, TAG_MESSAGE)``.  An empty
message is a keepalive.  Sealing and opening run in the backend (C: many
frames per call).

Feed received bytes to :meth:`SecretStream.feed` (it returns the messages that
completed) and write out what :meth:`SecretStream.take_output` returns.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, List, Optional

from ... import _backend
from ...caps import SS_HEADER, SS_MAX_BODY, namespace
from ...errors import HandshakeError, ProtocolError, TooLargeError
from .noise import KeyPair, NoiseXX, generate_keypair

NS_INITIATOR, NS_RESPONDER, NS_SEND = namespace(b"hyperswarm/secret-stream", 3)
HEADER_FRAME = 32 + SS_HEADER
MAX_FRAME = SS_MAX_BODY          # a uint24 length: just under 16 MiB
MAX_HANDSHAKE_FRAME = 65535      # Noise's message limit

_impl = _backend.impl


def stream_id(handshake_hash: bytes, initiator: bool) -> bytes:
    """The id the ``initiator`` (or responder) side announces with its header."""
    return hashlib.blake2b(NS_INITIATOR if initiator else NS_RESPONDER, digest_size=32,
                           key=handshake_hash).digest()


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(3, "little") + body


class SecretStream:
    """One end of an encrypted stream.

    :param initiator: the side that sends the first handshake message (the
        one that connected, by convention).
    :param key_pair: this side's static Ed25519 key pair ``(public, secret)``
        (random by default); the peer learns it as :attr:`remote_public_key`.
    :param max_frame: frames announced larger than this close the stream.
    :param ephemeral: makes the ephemeral key pair, and ``header`` is our
        secretstream header (both only to replay recordings byte for byte).
    """

    def __init__(self, initiator: bool, key_pair: Optional[KeyPair] = None, *,
                 max_frame: int = MAX_FRAME,
                 ephemeral: Callable[[], KeyPair] = generate_keypair,
                 header: Optional[bytes] = None) -> None:
        self.initiator = initiator
        self.key_pair = key_pair or generate_keypair()
        self.max_frame = min(max_frame, MAX_FRAME)
        self.handshake_hash = b""
        self.remote_public_key = b""
        self.keepalives = 0                  # empty messages received
        self._noise: Optional[NoiseXX] = NoiseXX(initiator, self.key_pair, ephemeral)
        self._header = header
        self._rx = b""
        self._push: Any = None
        self._pull: Any = None
        self._buf = bytearray()
        self._pos = 0
        self._out: List[bytes] = []
        self._queued: List[bytes] = []       # messages sent before our header went out
        if initiator:
            self._out.append(frame(self._noise.send()))

    @property
    def ready(self) -> bool:
        """Both headers are exchanged: messages flow both ways."""
        return self._pull is not None

    @property
    def handshake_done(self) -> bool:
        return self._noise is None

    def take_output(self) -> bytes:
        """The bytes to write to the peer now."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def send(self, messages: List[bytes]) -> None:
        """Seal ``messages`` (queued until the handshake is done)."""
        if self._push is None:
            self._queued.extend(messages)
            return
        self._out.append(self._push.seal(messages))

    def keepalive(self) -> None:
        self.send([b""])

    def feed(self, data: bytes) -> List[bytes]:
        """Take bytes from the peer; returns the (non-empty) messages they completed.

        :raises HandshakeError, ProtocolError, DecryptError, DecodeError: the
            stream is broken and must be closed.
        """
        self._buf += data
        out: List[bytes] = []
        while self._pull is None:
            body = self._next_frame()
            if body is None:
                break
            self._on_setup_frame(body)
        if self._pull is not None and len(self._buf) - self._pos >= 3:
            messages, self._pos = self._pull.open(self._buf, self._pos)
            for m in messages:
                if m:
                    out.append(m)
                else:
                    self.keepalives += 1
            self._check_pending_length()
        if self._pos > 65536 or self._pos == len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        return out

    def _check_pending_length(self) -> None:
        if len(self._buf) - self._pos >= 3:
            size = int.from_bytes(self._buf[self._pos:self._pos + 3], "little")
            if size > self.max_frame:
                raise TooLargeError("a frame of %d bytes (at most %d)" % (size, self.max_frame))

    def _next_frame(self) -> Optional[bytes]:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 3:
            return None
        size = int.from_bytes(buf[pos:pos + 3], "little")
        limit = MAX_HANDSHAKE_FRAME if self._noise is not None else HEADER_FRAME
        if size > limit:
            raise HandshakeError("a setup frame of %d bytes" % size)
        if len(buf) - pos - 3 < size:
            return None
        self._pos = pos + 3 + size
        return bytes(buf[pos + 3:pos + 3 + size])

    def _on_setup_frame(self, body: bytes) -> None:
        noise = self._noise
        if noise is not None:
            noise.recv(body)
            if not noise.complete:
                self._out.append(frame(noise.send()))
            if noise.complete:
                self._start(noise)
            return
        if len(body) != HEADER_FRAME:
            raise ProtocolError("invalid secret-stream header (%d bytes)" % len(body))
        if body[:32] != stream_id(self.handshake_hash, not self.initiator):
            raise ProtocolError("invalid secret-stream header id")
        self._pull = _impl.StreamPull(self._rx, body[32:])

    def _start(self, noise: NoiseXX) -> None:
        assert noise.remote_static is not None
        self.handshake_hash = noise.handshake_hash
        self.remote_public_key = noise.remote_static
        self._rx = noise.rx
        self._noise = None
        push = _impl.StreamPush(noise.tx, self._header)
        self._push = push
        self._out.append(frame(stream_id(self.handshake_hash, self.initiator) + push.header))
        queued, self._queued = self._queued, []
        if queued:
            self.send(queued)
