"""The congestion window of a link (sync/congestion.py), driven directly with
answers, round trips and losses at chosen times: it grows while queueing
stays under the target, shrinks above it, keeps its size under steady random
loss, halves on a loss with a growing delay or a jump of the loss rate (once
per round trip), and shares itself fairly between the pulls of a link."""
from __future__ import annotations

from coremachine_embedded.sync import congestion as cc
from coremachine_embedded.sync.congestion import LinkWindow, Links

BASE = 0.002   # the link's round trip with empty queues


def _window() -> LinkWindow:
    """A new link's window whose round-trip estimate (the endpoint keeps it
    from its requests' answers) has one sample of BASE."""
    window = LinkWindow()
    window.rtt.sample(BASE)
    return window


def _answers(window: LinkWindow, now: float, rtt: float, count: int,
             blocks: int = 1) -> float:
    """``count`` answers of ``blocks`` blocks, each after round trip ``rtt``,
    a millisecond apart; returns the time after them."""
    for _ in range(count):
        window.on_answer(blocks, rtt, now)
        now += 0.001
    return now


def test_grows_while_queueing_is_under_the_target() -> None:
    window = _window()
    start = window.cwnd
    _answers(window, 0.0, BASE, 200)
    assert window.base_delay == BASE and window.queueing == 0.0
    # about GAIN of itself per window's worth of answers
    assert window.cwnd == start + cc.GAIN * 200
    _answers(window, 1.0, BASE, 20000, blocks=8)
    assert window.cwnd == cc.MAX_WINDOW   # and no further


def test_shrinks_when_queueing_exceeds_the_target() -> None:
    window = _window()
    window.cwnd = 8.0 * cc.MIN_WINDOW
    now = _answers(window, 0.0, BASE, 10)
    now = _answers(window, now, BASE + 2 * cc.TARGET, cc.CURRENT_SAMPLES)
    assert abs(window.queueing - 2 * cc.TARGET) < 1e-12
    before = window.cwnd
    now = _answers(window, now, BASE + 2 * cc.TARGET, 20)
    assert window.cwnd == before - cc.GAIN * 20   # off target by -1 (the most it counts)
    _answers(window, now, BASE + 3 * cc.TARGET, 5000)
    assert window.cwnd == cc.MIN_WINDOW          # and no lower
    # at the target exactly, it holds
    held = _window()
    now = _answers(held, 0.0, BASE, 1)
    now = _answers(held, now, BASE + cc.TARGET, cc.CURRENT_SAMPLES)
    before = held.cwnd
    _answers(held, now, BASE + cc.TARGET, 50)
    assert held.cwnd == before


def test_the_current_delay_is_the_lowest_of_the_last_samples() -> None:
    window = _window()
    now = _answers(window, 0.0, BASE, 1)
    now = _answers(window, now, BASE + cc.TARGET, cc.CURRENT_SAMPLES - 1)
    assert window.queueing == 0.0    # one low sample among the last ones: no queue yet
    _answers(window, now, BASE + cc.TARGET, 1)
    assert abs(window.queueing - cc.TARGET) < 1e-12


def test_the_base_delay_forgets_old_periods() -> None:
    window = _window()
    _answers(window, 0.0, BASE, 1)
    later = cc.BASE_PERIOD * (cc.BASE_PERIODS + 1)
    for k in range(1, cc.BASE_PERIODS + 2):   # a new route: every period slower
        _answers(window, k * cc.BASE_PERIOD, 0.05, 1)
    assert window.base_delay == 0.05 and later > 0


def test_steady_random_loss_keeps_the_window() -> None:
    """One ask in five lost, the delay flat: a lossy medium, not a queue."""
    window = _window()
    now = 0.0
    for _ in range(200):
        now = _answers(window, now, BASE, 4)
        assert window.on_loss(1, now) is False
    assert window.loss_rate is not None and 0.15 < window.loss_rate < 0.25
    assert window.cwnd > cc.INITIAL_WINDOW   # it even grew: the delay said there was room


def test_loss_with_a_growing_delay_halves_once_per_round_trip() -> None:
    window = _window()
    window.cwnd = 8.0 * cc.MIN_WINDOW
    now = _answers(window, 0.0, BASE, 10)
    now = _answers(window, now, BASE + cc.TARGET, cc.CURRENT_SAMPLES)
    before = window.cwnd
    assert window.on_loss(1, now) is True
    assert window.cwnd == before * cc.DECREASE
    # more losses of the same round trip (one loss event) change nothing more
    assert window.on_loss(3, now + window.rtt.srtt / 2) is False
    assert window.cwnd == before * cc.DECREASE
    assert window.on_loss(1, now + window.rtt.srtt * 1.01) is True
    assert window.cwnd == before * cc.DECREASE ** 2


def test_a_jump_of_the_loss_rate_halves_without_delay() -> None:
    """Steady 5% loss, then an epoch losing half: congestion (a queue
    overflowing somewhere we cannot see the delay of)."""
    window = _window()
    now = 0.0
    for _ in range(40):   # epochs of 20 outcomes, one lost
        now = _answers(window, now, BASE, 19)
        assert window.on_loss(1, now) is False
    assert window.loss_rate is not None and window.loss_rate < 0.1
    now = _answers(window, now, BASE, 8)
    before = window.cwnd
    shrunk = [window.on_loss(1, now + window.rtt.srtt * k / 20) for k in range(12)]
    assert shrunk.count(True) == 1 and window.cwnd == before * cc.DECREASE


def test_no_jump_is_seen_before_the_loss_rate_has_a_history() -> None:
    window = _window()
    now = _answers(window, 0.0, BASE, 2)
    for k in range(10):
        assert window.on_loss(1, now + k * 0.001) is False
    assert window.cwnd > cc.INITIAL_WINDOW


def test_pulls_share_the_window_fairly_and_wait_in_line() -> None:
    window = _window()
    window.cwnd = 100.0
    assert window.allow("a", 0) == 100               # alone: all of it
    window.update("a", 100, 0.0)
    assert window.allow("b", 0) == 0                 # full: b waits...
    assert list(window.waiting) == ["b"]
    assert window.next_waiting() is None             # ...until there is room
    window.update("a", 60, 0.0)                      # 40 blocks of a answered
    assert window.next_waiting() == "b" and not window.waiting
    assert window.allow("b", 0) == 40                # its share is 50: 40 are left
    window.update("b", 40, 0.0)
    assert window.allow("a", 60) == 60               # a is above its share now
    assert "a" not in window.waiting                 # (its own answers make room)
    window.update("a", 10, 0.0)
    assert window.allow("a", 10) == 50               # a's share
    window.update("a", 0, 0.0)
    window.update("b", 0, 0.0)
    assert window.users == {} and window.inflight == 0


def test_every_pull_gets_at_least_one_block_in_turn() -> None:
    window = _window()
    window.cwnd = float(cc.MIN_WINDOW)
    pulls = ["p%d" % k for k in range(3 * cc.MIN_WINDOW)]
    granted = []
    for p in pulls:
        if window.allow(p, 0) > 0:
            window.update(p, cc.MIN_SHARE, 0.0)
            granted.append(p)
    assert len(granted) == cc.MIN_WINDOW and window.inflight == cc.MIN_WINDOW
    assert list(window.waiting) == pulls[cc.MIN_WINDOW:]   # in the order they came
    served = []
    for p in granted:                                 # each answer lets the next one go
        window.update(p, 0, 0.0)
        nxt = window.next_waiting()
        assert nxt is not None and window.allow(nxt, 0) == cc.MIN_SHARE
        window.update(nxt, cc.MIN_SHARE, 0.0)
        served.append(nxt)
    assert served == pulls[cc.MIN_WINDOW:2 * cc.MIN_WINDOW]


def test_links_are_per_address_and_session_and_forgotten_when_unused() -> None:
    links = Links()
    link = object()
    a = links.window(link, ("10.0.0.1", 1), b"s1", 0.0)
    assert links.window(link, ("10.0.0.1", 1), b"s1", 1.0) is a
    assert links.window(link, ("10.0.0.1", 1), b"s2", 1.0) is not a   # restarted peer
    assert links.window(link, ("10.0.0.2", 1), b"s1", 1.0) is not a
    assert len(links) == 3
    a.allow("pull", 0)
    links.sweep(cc.FORGET * 2)
    assert len(links) == 1 and list(links) == [a]     # the one in use stays
    a.update("pull", 0, cc.FORGET * 2)
    links.sweep(cc.FORGET * 3 + 1)
    assert len(links) == 0
