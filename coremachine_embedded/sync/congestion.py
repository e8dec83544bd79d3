"""Congestion control per link: one window of blocks in flight shared by every
core pulled from the same remote endpoint (link, address and session), grown
and shrunk by queueing delay and by loss, as LEDBAT (RFC 6817) does.

Every pull on a link draws from its :class:`LinkWindow`: the blocks asked
and not answered of all its pulls (an upgrade counts as one) stay within the
window, and each pull keeps at most its fair share of it (the window over the
pulls with something in flight, at least :data:`MIN_SHARE`).  A pull that
finds no room waits in line and is let go, first come first served, as
answers free room (:meth:`LinkWindow.allow`, :meth:`LinkWindow.next_waiting`):
no pull starves, and 100 concurrent pulls put as much on the link as one
does.  The window moves with what the answers say:

- Delay: the lowest round trip seen lately is the link's base delay; a round
  trip above it is time spent in queues (the server's, a socket buffer's, a
  relay's, or our own event loop's).  Below :data:`TARGET` of queueing the
  window grows, above it shrinks, in proportion to the distance from the
  target (:data:`GAIN` of the window per round trip at most), as LEDBAT does
  - but multiplicatively, so that it reaches a LAN's rate in a few round
  trips rather than one block per round trip.
- Loss: a lost request (a later answer came first, or the link went quiet)
  shrinks the window by :data:`DECREASE` only when the link looks congested:
  the queueing delay is above half the target (the loss came from a full
  queue), or the loss rate of the last round trips jumped well above the
  link's long-run rate.  A steadily lossy link (a radio, a relay dropping one
  datagram in five) keeps its window: shrinking it would not make fewer
  datagrams get lost, only fewer get through.  At most one decrease per round
  trip (one loss event, as TCP counts them).
- Quiet: a timeout (nothing came back for a retry timeout) is a loss like
  the others: on a lossy link all of a small window is lost now and then.
  Retries after a timeout are spaced by the backed-off retry timeout
  (``flow.Rtt``), and a swamped peer shows first as a growing delay.

The window only bounds what is asked; which asks are retried and when is
``flow.py``'s business (the fast retry on out-of-order answers is kept).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Dict, Hashable, Iterator, List, Optional, Tuple

from .flow import Rtt

INITIAL_WINDOW = 256    # blocks in flight on a new link: as many as one pull may have (Endpoint's window)
MIN_WINDOW = 32         # the window never shrinks below this many blocks...
MAX_WINDOW = 4096       # ...nor grows past this many
MIN_SHARE = 1           # blocks one pull may always have in flight (none starves)
TARGET = 0.1            # seconds of queueing delay aimed at (RFC 6817 allows up to 0.1)
GAIN = 0.5              # at most this fraction of the window gained or lost per round trip
DECREASE = 0.5          # the window is multiplied by this on a congestion loss or a timeout
BASE_PERIOD = 10.0      # the base delay is the lowest round trip of the last...
BASE_PERIODS = 6        # ...this many periods (a route change is forgotten in a minute)
CURRENT_SAMPLES = 4     # the current delay: the lowest of this many recent round trips
LOSS_EPOCH_MIN = 16     # a loss-rate epoch ends after a round trip and this many outcomes
LOSS_SMOOTHING = 8      # the long-run loss rate follows epochs with weight 1/this...
LOSS_HISTORY = 4        # ...and is trusted after this many epochs
LOSS_JUMP = 2.0         # an epoch's loss rate this many times the long-run one...
LOSS_FLOOR = 0.05       # ...plus this is a jump: congestion, not a lossy medium
FORGET = 60.0           # a window with no pull for this long is forgotten


class LinkWindow:
    """The congestion window of one link to one remote endpoint, in blocks."""

    def __init__(self, now: float = 0.0) -> None:
        self.cwnd = float(INITIAL_WINDOW)
        self.users: Dict[Hashable, int] = {}   # pulls with something in flight: how much
        self.inflight = 0                      # ...their sum
        self.waiting: "OrderedDict[Hashable, None]" = OrderedDict()   # pulls wanting room
        self.last_heard = 0.0   # when anything last came from there (for any core)
        self.last_used = now
        self._bases: List[Tuple[float, float]] = []   # (period start, lowest rtt in it)
        self._base: Optional[float] = None            # the lowest of them
        self._recent: List[float] = []                # the last CURRENT_SAMPLES rtts
        self._recovery_until = 0.0                    # no further decrease before
        self.rtt = Rtt()   # the retry timing of every pull on the link (the endpoint samples it)
        self._epoch_start = now
        self._epoch = [0, 0]                          # answered, lost in this epoch
        self.loss_rate: Optional[float] = None        # long-run fraction of asks lost
        self._epochs = 0                              # epochs that loss rate has seen
        self.epoch_loss = 0.0                         # ...and of the last finished epoch
        self.forgotten = False   # swept by Links: a peer that kept it must look again

    # --- what a pull may ask ----------------------------------------------------------

    def allow(self, user: Hashable, flight: int) -> int:
        """Blocks ``user``, a pull with ``flight`` blocks in flight that wants
        to ask more, may have in flight: its fair share of the window, within
        what the window has left.  At most ``flight``: no room; below its
        share, it waits in line for :meth:`next_waiting` (at its share, its
        own answers make room)."""
        self._flight(user, flight)
        share = max(MIN_SHARE, int(self.cwnd / len(self.users)))
        allowed = min(share, flight + max(0, int(self.cwnd) - self.inflight))
        if allowed > flight:
            self.waiting.pop(user, None)
        elif flight < share:
            self.waiting[user] = None
        return max(allowed, flight)

    def update(self, user: Hashable, flight: int, now: float) -> None:
        """``user`` has ``flight`` blocks in flight now (0: it leaves, and
        waits no more)."""
        if flight:
            self._flight(user, flight)
        else:
            self.inflight -= self.users.pop(user, 0)
            self.waiting.pop(user, None)
        self.last_used = now

    def next_waiting(self) -> Optional[Hashable]:
        """The pull first in line, taken out of it, if the window has room now."""
        if not self.waiting or self.inflight >= int(self.cwnd):
            return None
        user = next(iter(self.waiting))
        del self.waiting[user]
        return user

    def heard(self, now: float) -> Iterator[Any]:
        """Something came from the link (it is not quiet): the pulls waiting
        in line, each at most once, while there is room (each should ask
        what it may as it comes)."""
        self.last_heard = now
        return self._ready() if self.waiting else iter(())

    def _ready(self) -> Iterator[Any]:
        for _ in range(len(self.waiting)):
            user = self.next_waiting()
            if user is None:
                return
            yield user

    def _flight(self, user: Hashable, flight: int) -> None:
        self.inflight += flight - self.users.get(user, 0)
        self.users[user] = flight

    # --- delay --------------------------------------------------------------------------

    @property
    def base_delay(self) -> Optional[float]:
        """The lowest round trip of the last BASE_PERIODS periods (None: no sample)."""
        return self._base

    @property
    def queueing(self) -> float:
        """Seconds the last round trips spent in queues (0 before any sample)."""
        base = self.base_delay
        return 0.0 if base is None else min(self._recent) - base

    def on_answer(self, blocks: int, rtt: Optional[float], now: float) -> None:
        """An answer brought ``blocks`` blocks; ``rtt``: the round trip of the
        request it answered, if known.  Moves the window toward the queueing
        delay target."""
        self.last_heard = self.last_used = now
        self._outcome(now, lost=False)
        if rtt is None:
            return
        if not self._bases or now - self._bases[-1][0] >= BASE_PERIOD:
            self._bases.append((now, rtt))
            del self._bases[:-BASE_PERIODS]
            self._base = min(b for _, b in self._bases)
        elif rtt < self._bases[-1][1]:
            self._bases[-1] = (self._bases[-1][0], rtt)
            self._base = min(self._base, rtt) if self._base is not None else rtt
        self._recent.append(rtt)
        del self._recent[:-CURRENT_SAMPLES]
        off_target = max(-1.0, (TARGET - self.queueing) / TARGET)
        # per round trip the window's worth of blocks is answered: the window
        # changes by about GAIN x off_target of itself per round trip
        self._set(self.cwnd + GAIN * off_target * blocks)

    # --- loss ---------------------------------------------------------------------------

    def on_loss(self, asks: int, now: float) -> bool:
        """``asks`` requests were lost (a later answer came first, or the link
        went quiet for a retry timeout).  True if the window shrank: the link
        looks congested, not just lossy."""
        for _ in range(asks):
            self._outcome(now, lost=True)
        if now < self._recovery_until or not self.congested:
            return False
        self._set(self.cwnd * DECREASE)
        self._recovery_until = now + self.rtt.srtt
        return True

    @property
    def congested(self) -> bool:
        """Losses now come from a full queue: the queueing delay is above half
        the target, or the loss rate of the last epoch jumped well above the
        long-run one."""
        jumped = self._epochs >= LOSS_HISTORY and self.loss_rate is not None and \
            self.epoch_loss > LOSS_JUMP * self.loss_rate + LOSS_FLOOR
        return jumped or self.queueing > TARGET / 2

    def _outcome(self, now: float, lost: bool) -> None:
        """Count an answer or a loss in the current epoch; close the epoch
        after a round trip and LOSS_EPOCH_MIN outcomes."""
        self._epoch[1 if lost else 0] += 1
        total = self._epoch[0] + self._epoch[1]
        if total < LOSS_EPOCH_MIN or now - self._epoch_start < self.rtt.srtt:
            return
        rate = self._epoch[1] / total
        self.epoch_loss = rate
        self._epochs += 1
        if self.loss_rate is None:
            self.loss_rate = rate
        else:
            self.loss_rate += (rate - self.loss_rate) / LOSS_SMOOTHING
        self._epoch = [0, 0]
        self._epoch_start = now

    def _set(self, cwnd: float) -> None:
        self.cwnd = min(float(MAX_WINDOW), max(float(MIN_WINDOW), cwnd))


class Links:
    """The windows of an endpoint, one per remote endpoint it pulls from
    (link, address and session: a restarted peer is a new link)."""

    def __init__(self) -> None:
        self._windows: Dict[Tuple[int, Any, bytes], LinkWindow] = {}

    def of(self, peer: Any) -> LinkWindow:
        """The window of the link to ``peer`` (a ``peers.Peer``), whose
        round-trip estimate becomes the link's (its greeting's round trip a
        sample of it).  The peer keeps it: it is looked up a few times for
        every envelope."""
        window: Optional[LinkWindow] = peer.window
        if window is not None and not window.forgotten:
            return window
        window = peer.window = self.window(peer.link, peer.addr, peer.session, time.monotonic())
        if peer.rtt is not window.rtt:
            if peer.rtt.sampled:
                window.rtt.sample(peer.rtt.srtt)
            peer.rtt = window.rtt
        return window

    def window(self, link: Any, addr: Any, session: bytes, now: float) -> LinkWindow:
        """The window to the endpoint at ``addr`` on ``link`` with ``session``."""
        key = (id(link), addr, session)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = LinkWindow(now)
        return window

    def sweep(self, now: float) -> None:
        """Forget windows no pull has used for FORGET seconds."""
        for key, window in list(self._windows.items()):
            if not window.users and now - window.last_used > FORGET:
                del self._windows[key]
                window.forgotten = True

    def __len__(self) -> int:
        return len(self._windows)

    def __iter__(self) -> Iterator[LinkWindow]:
        return iter(list(self._windows.values()))
