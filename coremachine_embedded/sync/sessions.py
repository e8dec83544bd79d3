"""Address validation and replays: who may make us keep state or send much.

A remote endpoint proves that it receives at its address by echoing the
cookie we sent there, ``BLAKE2b-64(key=secret, discovery key || origin)``
where the origin is the link and the source address (as DTLS's and QUIC's
address validation do).  The cookie is computed, not stored: an envelope
that does not echo it creates nothing and gets at most one small answer
(our HELLO, :data:`AMPLIFICATION` times its size at most, and
:data:`ANSWER_RATE` a second in all), so spoofed source addresses can neither
fill our memory nor turn us into an amplifier.
The secret rotates every :data:`COOKIE_EPOCH` seconds and the previous one
stays valid.  (An echo found valid is remembered until the next rotation, so
that a busy peer's envelopes cost a constant-time comparison, not a hash.)
Behind the cookie, each remote session (a random id per
process run) has a 64-message replay window (as IPsec and DTLS do), created
only once its address is validated; windows are kept for the
:data:`MAX_SESSIONS` most recent sessions.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from typing import Dict, Tuple

COOKIE_EPOCH = 300.0   # seconds a cookie secret lives (two are accepted)
MAX_SESSIONS = 4096    # replay windows kept per endpoint
COOKIE_BYTES = 8
SESSION_BYTES = 8
REPLAY_WINDOW = 64     # messages below the highest counter seen that may still arrive once
SECRET_BYTES = 32
AMPLIFICATION = 3      # an unvalidated address gets at most this many times what it sent
ANSWER_RATE = 500.0    # stateless answers a second, all senders together...
ANSWER_BURST = 100     # ...after a burst of this many (a flood costs its receiving only)


class ReplayWindow:
    """Anti-replay window of one remote session: the highest counter seen and a
    bitmap of the :data:`REPLAY_WINDOW` below it."""

    __slots__ = ("high", "mask")

    def __init__(self) -> None:
        self.high = -1
        self.mask = 0

    def accept(self, counter: int) -> bool:
        if counter > self.high:
            shift = counter - self.high
            if shift < REPLAY_WINDOW:
                self.mask = ((self.mask << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            else:
                self.mask = 1
            self.high = counter
            return True
        if self.seen(counter):
            return False
        self.mask |= 1 << (self.high - counter)
        return True

    def seen(self, counter: int) -> bool:
        """Whether ``counter`` would be refused (seen, or older than the window)."""
        behind = self.high - counter
        return behind >= 0 and (behind >= REPLAY_WINDOW or bool(self.mask >> behind & 1))


class Sessions:
    """The cookie secrets and the replay windows of an endpoint."""

    def __init__(self) -> None:
        self.session = os.urandom(SESSION_BYTES)   # ours
        self.windows: "OrderedDict[Tuple[bytes, bytes], ReplayWindow]" = OrderedDict()
        self._secrets = [os.urandom(SECRET_BYTES), os.urandom(SECRET_BYTES)]
        self._secret_time = time.monotonic()
        self._validated: Dict[Tuple[bytes, bytes], bytes] = {}   # (dk, origin) -> echo
        self._tokens = float(ANSWER_BURST)
        self._tokens_at = self._secret_time

    def rotate(self, now: float) -> None:
        """A new secret every :data:`COOKIE_EPOCH` seconds; the last one stays valid."""
        if now - self._secret_time > COOKIE_EPOCH:
            self._secrets = [os.urandom(SECRET_BYTES), self._secrets[0]]
            self._secret_time = now
            self._validated.clear()

    def cookie(self, dk: bytes, origin: bytes) -> bytes:
        """The cookie whoever is at ``origin`` must echo for core ``dk``."""
        return self._cookie(dk, origin, self._secrets[0])

    @staticmethod
    def _cookie(dk: bytes, origin: bytes, secret: bytes) -> bytes:
        return hashlib.blake2b(dk + origin, digest_size=COOKIE_BYTES, key=secret).digest()

    def valid(self, dk: bytes, origin: bytes, echo: bytes) -> bool:
        """Whether ``echo`` is a cookie we sent to ``origin`` (for ``dk``) in
        this epoch or the last: the sender receives there."""
        key = (dk, origin)
        known = self._validated.get(key)
        if known is not None and hmac.compare_digest(echo, known):
            return True
        if not any(hmac.compare_digest(echo, self._cookie(dk, origin, s)) for s in self._secrets):
            return False
        if len(self._validated) >= MAX_SESSIONS:
            self._validated.clear()
        self._validated[key] = echo
        return True

    def may_answer(self) -> bool:
        """Whether to answer one more envelope without our cookie now."""
        now = time.monotonic()
        self._tokens = min(ANSWER_BURST, self._tokens + (now - self._tokens_at) * ANSWER_RATE)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def replayed(self, dk: bytes, session: bytes, counter: int) -> bool:
        """Whether envelope ``counter`` of ``session`` is one a validated
        session sent before (nothing is created or changed: an envelope from
        an address not validated may be a replay of one)."""
        window = self.windows.get((dk, session))
        return window is not None and window.seen(counter)

    def fresh(self, dk: bytes, session: bytes, counter: int) -> bool:
        """Whether envelope ``counter`` of ``session`` (about core ``dk``, from
        a validated address) is new; false for a replay."""
        key = (dk, session)
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = ReplayWindow()
            while len(self.windows) > MAX_SESSIONS:
                self.windows.popitem(last=False)
            # The window starts here, at the session's first envelope from a
            # validated address: what it sent before (greetings answered
            # statelessly) counts as seen, so a replay of it is dropped.
            window.high, window.mask = counter, (1 << REPLAY_WINDOW) - 1
            return True
        else:
            self.windows.move_to_end(key)
        return window.accept(counter)
