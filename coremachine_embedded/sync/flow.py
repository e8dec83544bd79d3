"""Flow control and retry timing of a datagram link: round-trip estimates,
when a request counts as lost, how fast to greet a silent peer.

Requests are retried at once when the answer to a later one arrives first (it
or its answer was lost), otherwise after a timeout that fires only on a quiet
link, with exponential backoff.  The retry timeout is RFC 6298's (smoothed RTT
+ 4 deviations, the first sample replacing the guess), bounded by
:data:`MIN_RTO` and :data:`MAX_RTO`.  A reliable stream needs none of this.
"""
from __future__ import annotations

from typing import List, Optional

from .download import Ask, Download

MIN_RTO, MAX_RTO = 0.01, 3.0   # retry timeout bounds (seconds), adaptive in between
INITIAL_SRTT, INITIAL_RTTVAR = 0.2, 0.1   # guesses until the first sample
MAX_BACKOFF = 4                # timeouts double the RTO at most this many times...
MAX_RETRY_WAIT = 2 * MAX_RTO   # ...but a request waits at most this long to be asked again
TICK_BUSY, TICK_IDLE = 0.005, 0.05  # timer period with requests in flight / without
STALL = 0.01                   # a timer this late means this process stalled: no timeouts...
MAX_STALLS = 4                 # ...unless it was that late this many times in a row
HELLO_FIRST = 0.05             # seconds before the first HELLO to a silent source is repeated...
HELLO_MAX = 1.0                # ...doubling up to this
KEEPALIVE = 2.0                # a live pull SYNCs a source quiet for this long...
LIVE_REFRESH = 15.0            # ...and any source this often (a source stops announcing to
#                                a puller silent for endpoint.PEER_TIMEOUT)
SWEEP = 0.5                    # seconds between timer visits of every pull (keepalives)
QUIET_FRAMES = 2.0             # a link is quiet after this many frame times without an answer
OTHERS_PATIENCE = 4.0          # ...or for one core, this many times that while others get theirs
RUN_ENVELOPES = 4              # a batched run's values fill about this many envelopes


class Rtt:
    """Round-trip time estimate of one peer (RFC 6298)."""

    __slots__ = ("srtt", "rttvar", "sampled", "backoff")

    def __init__(self) -> None:
        self.srtt = INITIAL_SRTT
        self.rttvar = INITIAL_RTTVAR
        self.sampled = False
        self.backoff = 1      # doubled by each timeout, reset by the next answer

    def rto(self) -> float:
        return min(MAX_RTO, max(MIN_RTO, self.srtt + 4 * self.rttvar) * self.backoff)

    def timed_out(self) -> None:
        """A request timed out: the RTO stays doubled for the next ones until an
        answer gives a sample (RFC 6298, 5.5) - a swamped peer, or our own
        swamped loop, is not sent every request again and again."""
        self.backoff = min(self.backoff * 2, 1 << MAX_BACKOFF)

    def answered(self, rtt: Optional[float]) -> None:
        """An answer came: the backoff goes, and ``rtt`` (None when the answer
        may be to any of several sends of its request, as Karn's algorithm
        says) is a sample.  Any answer ends the backoff, as any acknowledgment
        ends QUIC's (RFC 9002, 6.2.1): the peer is there.  Waiting for a
        sample instead kept the end of a pull through 20% loss, where every
        request left has been sent more than once, backing off for seconds."""
        self.backoff = 1
        if rtt is not None:
            self.sample(rtt)

    def sample(self, rtt: float) -> None:
        self.backoff = 1
        if not self.sampled:  # the first sample replaces the guess (RFC 6298)
            self.sampled = True
            self.srtt, self.rttvar = rtt, rtt / 2
            return
        self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
        self.srtt = 0.875 * self.srtt + 0.125 * rtt


def deadline(sent: float, rto: float, tries: int, lost: bool) -> float:
    """When a request sent at ``sent`` for the ``tries``-th time is retried:
    back off after a timeout (the peer may be gone or swamped), not after a loss,
    and never beyond :data:`MAX_RETRY_WAIT`: on a noisy line the same request
    is lost several times in a row by bad luck alone, and the last blocks of a
    pull have no later answer to reveal their loss (issue 10: 45 s without
    progress at 392 of 400 blocks, waiting 16 RTOs)."""
    return sent + min(MAX_RETRY_WAIT, rto * (1 if lost else 2 ** min(tries - 1, MAX_BACKOFF)))


def hello_backoff(hellos: int) -> float:
    """Seconds to wait for an answer after ``hellos`` unanswered HELLOs."""
    return min(HELLO_MAX, HELLO_FIRST * (1 << min(hellos, 30)))


def hello_due(now: float, sent: float, hellos: int) -> bool:
    """Whether to greet a silent source again (``hellos`` unanswered so far)."""
    return now - sent > hello_backoff(hellos)


class Pace:
    """The period of an endpoint's timer, and whether it fired so late that
    its process stalled."""

    __slots__ = ("stalls",)

    def __init__(self) -> None:
        self.stalls = 0      # late ticks in a row

    @staticmethod
    def period(busy: bool) -> float:
        """Fine-grained while requests are in flight (RTOs on a LAN are a few ms)."""
        return TICK_BUSY if busy else TICK_IDLE

    def stalled(self, late: float) -> bool:
        """The tick came ``late`` seconds late: if that is a stall (up to
        MAX_STALLS in a row), this process did not run for a while (a busy
        machine) and what arrived meanwhile waits in socket buffers, unread:
        read it before taking anything for lost (skip this tick)."""
        if late > STALL and self.stalls < MAX_STALLS:
            self.stalls += 1
            return True
        self.stalls = 0
        return False


class Retries:
    """Which asks of a download to send again."""

    __slots__ = ("lost_scan",)

    def __init__(self) -> None:
        self.lost_scan = 0.0   # lost_before looked up to here

    def lost_before(self, download: Download, sent: float) -> List[Ask]:
        """The answer to an ask sent at ``sent`` came before an earlier block:
        the unanswered asks sent before it were lost (or their answers were) -
        retry them now rather than after a timeout."""
        if sent <= self.lost_scan:
            return []  # whatever was sent before that was looked at (and retried) already
        self.lost_scan = sent
        return [ask for ask in download.unanswered() if ask.sent < sent]

    @staticmethod
    def expired(download: Download, now: float, rto: float, quiet: bool) -> List[Ask]:
        """Asks past their deadline on a quiet link.  While answers keep
        coming, a later answer finds the losses (:meth:`lost_before`): a
        backlog of answers, however long, ends, and then the link is quiet."""
        if not quiet:
            return []
        out = []
        for ask in download.inflight.values():
            if now > ask.deadline:
                if not ask.missing:
                    ask.deadline = now + rto  # it waits for an earlier block
                else:
                    out.append(ask)
        return out
