"""Peer sessions and address validation: who may talk to us, and replays.

A remote endpoint is known by the random session id in its envelopes.  It
proves freshness by echoing the cookie we gave it in a HELLO,
``BLAKE2b-64(key=secret, session || discovery key)``; the secret rotates every
:data:`COOKIE_EPOCH` seconds and the previous one stays valid.  Each session
has a 64-message replay window (as IPsec and DTLS do), so a replayed envelope
does nothing.  Windows are kept for the :data:`MAX_SESSIONS` most recent
sessions.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from typing import Tuple

COOKIE_EPOCH = 300.0   # seconds a cookie secret lives (two are accepted)
MAX_SESSIONS = 4096    # replay windows kept per endpoint
COOKIE_BYTES = 8
SESSION_BYTES = 8
REPLAY_WINDOW = 64     # messages below the highest counter seen that may still arrive once
SECRET_BYTES = 32

# What :meth:`Sessions.check` says of an envelope.
REPLAY = 0   # seen before, or too old: drop it
STALE = 1    # authentic, but without our current cookie: tell the sender the cookie
FRESH = 2    # authentic, new and echoing our cookie


class ReplayWindow:
    """Anti-replay window of one remote session: the highest counter seen and a
    bitmap of the :data:`REPLAY_WINDOW` below it."""

    __slots__ = ("high", "mask", "cookies", "epoch")

    def __init__(self) -> None:
        self.high = -1
        self.mask = 0
        self.cookies: Tuple[bytes, ...] = ()  # the cookies it may echo...
        self.epoch = -1                       # ...under the secrets of this epoch

    def accept(self, counter: int) -> bool:
        if counter > self.high:
            shift = counter - self.high
            if shift < REPLAY_WINDOW:
                self.mask = ((self.mask << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            else:
                self.mask = 1
            self.high = counter
            return True
        behind = self.high - counter
        if behind >= REPLAY_WINDOW or self.mask >> behind & 1:
            return False
        self.mask |= 1 << behind
        return True


class Sessions:
    """The cookie secrets and the replay windows of an endpoint."""

    def __init__(self) -> None:
        self.session = os.urandom(SESSION_BYTES)   # ours
        self.windows: "OrderedDict[Tuple[bytes, bytes], ReplayWindow]" = OrderedDict()
        self._secrets = [os.urandom(SECRET_BYTES), os.urandom(SECRET_BYTES)]
        self._epoch = 0                  # bumped when the secrets rotate
        self._secret_time = time.monotonic()

    def rotate(self, now: float) -> None:
        """A new secret every :data:`COOKIE_EPOCH` seconds; the last one stays valid."""
        if now - self._secret_time > COOKIE_EPOCH:
            self._secrets = [os.urandom(SECRET_BYTES), self._secrets[0]]
            self._epoch += 1
            self._secret_time = now

    def cookie(self, session: bytes, dk: bytes) -> bytes:
        """The cookie a sender of ``session`` must echo for core ``dk``."""
        return self._cookie(session, dk, self._secrets[0])

    @staticmethod
    def _cookie(session: bytes, dk: bytes, secret: bytes) -> bytes:
        return hashlib.blake2b(session + dk, digest_size=COOKIE_BYTES, key=secret).digest()

    def check(self, dk: bytes, session: bytes, counter: int, echo: bytes) -> int:
        """:data:`REPLAY`, :data:`STALE` or :data:`FRESH` for an authentic
        envelope of ``session`` about core ``dk``."""
        key = (dk, session)
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = ReplayWindow()
            while len(self.windows) > MAX_SESSIONS:
                self.windows.popitem(last=False)
        else:
            self.windows.move_to_end(key)
        if not window.accept(counter):
            return REPLAY
        if window.epoch != self._epoch:  # computed once per secret rotation
            window.cookies = tuple(self._cookie(session, dk, s) for s in self._secrets)
            window.epoch = self._epoch
        return FRESH if echo in window.cookies else STALE
