"""The core-facing sync logic on its own: a :class:`Download` pulling from a
writer through :mod:`serving` over an in-memory, reliable, ordered stream -
no envelopes, cookies, fragments, timers or loss, as a peer speaking
Hypercore's own protocol over TCP uses them."""
from __future__ import annotations

import os
from collections import deque
from typing import Any, Deque, Optional, Tuple

import pytest

import coremachine_embedded as cm
from coremachine_embedded.encoding import DataMessage
from coremachine_embedded.sync import serving, wire
from coremachine_embedded.sync.counters import Counters
from coremachine_embedded.sync.download import WAITING, Download

Message = Tuple[int, bytes]


class Stream:
    """A writer's server side and a replica's download, joined by two FIFO
    queues (a reliable ordered stream in each direction)."""

    def __init__(self, writer: cm.Core, replica: cm.Core, max_run: int = 1,
                 window: int = 16) -> None:
        self.writer = writer
        self.replica = replica
        self.window = window
        self.download = Download(replica, Counters(), max_run=max_run)
        self.served = Counters()
        self.up: Deque[Message] = deque()     # requests to the writer
        self.down: Deque[Message] = deque()   # answers to the replica
        self.requests = 0
        self.max_in_flight = 0
        self.max_ahead = 0

    def ask(self) -> None:
        for ask in self.download.plan(self.writer.fork, self.writer.length, self.window,
                                      run_bytes=4 * 1100):
            self.up.append(self.download.send(ask))
        self.max_in_flight = max(self.max_in_flight, self.download.flight)

    def serve(self) -> None:
        while self.up:
            kind, body = self.up.popleft()
            self.requests += 1
            if kind == wire.REQUEST:
                answer = serving.answer_request(self.writer, wire.Request.decode(body),
                                                self.served)
            else:
                answer = serving.answer_run(self.writer, wire.Run.decode(body), self.served,
                                            budget=1100)
            self.down.extend(answer.messages)

    def deliver(self, kind: int, body: bytes) -> Any:
        if kind == wire.DATA:
            answered = self.download.on_data(body)
            self.max_ahead = max(self.max_ahead, len(self.download.ahead))
            return answered
        if kind == wire.VALUES:
            return self.download.on_values(wire.Values.decode(body))
        assert kind == wire.NO_DATA, kind
        return self.download.on_no_data(wire.NoData.decode(body).request)

    def run(self, reorder: bool = False) -> None:
        """Until caught up: ask, serve, deliver every answer (in order, or
        each round's answers last first)."""
        for _ in range(10000):
            self.ask()
            if not self.up and self.download.caught_up(self.writer.fork, self.writer.length):
                return
            self.serve()
            answers = list(self.down)
            self.down.clear()
            for kind, body in reversed(answers) if reorder else answers:
                self.deliver(kind, body)
        raise AssertionError("no progress")


def same(replica: cm.Core, writer: cm.Core) -> None:
    assert (replica.fork, replica.length, replica.contiguous_length) == (
        writer.fork, writer.length, writer.length)
    assert replica.tree_hash() == writer.tree_hash()
    assert replica.signature == writer.signature
    assert [replica.get(i) for i in range(writer.length)] == \
        [writer.get(i) for i in range(writer.length)]


@pytest.fixture
def pair(tmp_path: Any) -> Any:
    writer = cm.Core(os.path.join(tmp_path, "w"), key_pair=cm.KeyPair.generate(),
                     durability="none")
    writer.append([b"block %d" % i + b"." * (i % 50) for i in range(300)])
    replica = cm.Core(os.path.join(tmp_path, "r"), key=writer.key, durability="none")
    yield writer, replica
    replica.close()
    writer.close()


def test_pull_one_block_per_request(pair: Any) -> None:
    writer, replica = pair
    s = Stream(writer, replica)
    s.run()
    same(replica, writer)
    # one upgrade carrying block 0, then one request per block, the window held
    assert s.requests == writer.length
    assert s.max_in_flight <= s.window
    assert s.download.counters == {"blocks": writer.length}
    assert not s.download.busy and not s.download.ahead and s.download.held == 0


def test_pull_in_batched_runs(pair: Any) -> None:
    writer, replica = pair
    s = Stream(writer, replica, max_run=64, window=256)
    s.run()
    same(replica, writer)
    assert s.requests < writer.length // 16
    assert s.download.counters["blocks"] == writer.length
    assert set(s.download.counters) == {"blocks"}


def test_a_run_takes_its_first_block_from_the_proof_the_core_verified(pair: Any) -> None:
    writer, replica = pair
    assert DataMessage.value(writer.proof(block=5)) == writer.get(5)
    assert DataMessage.value(writer.proof(upgrade=(0, 3))) is None
    reads = []
    read = replica.get
    replica.get = lambda index: reads.append(index) or read(index)   # the real read, counted
    s = Stream(writer, replica, max_run=64, window=256)
    s.run()
    assert reads == []   # no run read its first block back from the store
    del replica.get
    same(replica, writer)


def test_answers_out_of_order_wait_ahead(pair: Any) -> None:
    """Each round's answers arrive last first: every proof but the next one
    waits ahead for the blocks it builds on, and nothing is asked twice."""
    writer, replica = pair
    s = Stream(writer, replica, window=32)
    s.run(reorder=True)
    same(replica, writer)
    assert s.max_ahead >= s.window - 1
    assert s.requests == writer.length
    assert not s.download.ahead and set(s.download.counters) == {"blocks"}


def test_live_appends_and_a_reorg(pair: Any) -> None:
    writer, replica = pair
    s = Stream(writer, replica, max_run=64, window=64)
    s.run()
    writer.append([b"live %d" % i for i in range(5)])
    s.requests = 0
    s.run()
    same(replica, writer)
    assert s.requests <= 5   # the first new block rides with the upgrade
    writer.truncate(250)
    writer.append([b"other %d" % i for i in range(20)])
    s.run()
    same(replica, writer)
    assert replica.fork == 1


def test_forged_and_refused_answers(pair: Any) -> None:
    """A forged proof stores nothing and its ask is due again; a NO_DATA
    names the ask it refused; proofs nobody asked for are dropped."""
    writer, replica = pair
    s = Stream(writer, replica, window=4)
    s.ask()                                   # the upgrade (with block 0)
    s.serve()
    s.deliver(*s.down.popleft())
    assert replica.length == writer.length and replica.contiguous_length == 1
    s.ask()
    asks = list(s.download.inflight.values())
    assert [a.index for a in asks] == [1, 2, 3, 4]
    s.up.clear()
    genuine = writer.proof(block=1, nodes=replica.missing_nodes(1), request=asks[0].id)
    m = DataMessage.decode(genuine)
    assert m.block is not None
    m.block = (1, b"forged", m.block[2])
    asks[0].deadline = 123.0
    s.deliver(wire.DATA, m.encode())
    assert s.download.counters["dropped_invalid_proof"] == 1
    assert replica.contiguous_length == 1 and asks[0].deadline == 0.0   # ask again now
    assert s.deliver(wire.DATA, writer.proof(block=200)).ask is None
    assert s.download.counters["dropped_unsolicited"] == 1
    refused = serving.answer_request(writer, wire.Request(asks[1].id, 7, block=(2, 0)),
                                     s.served)
    assert refused.resync is True and refused.messages[0][0] == wire.NO_DATA
    assert s.deliver(*refused.messages[0]) == [asks[1]]
    answered = s.deliver(wire.DATA, writer.proof(block=1, nodes=replica.missing_nodes(1),
                                                 request=asks[0].id))
    assert answered.ask is asks[0] and replica.contiguous_length == 2


def test_the_window_bounds_what_is_held(pair: Any) -> None:
    """Answers that wait for an earlier block count against ``WAITING`` x window."""
    writer, replica = pair
    s = Stream(writer, replica, window=4)
    s.ask()
    s.serve()
    s.deliver(*s.down.popleft())
    for _ in range(100):   # answer everything except block 1: the rest waits ahead
        s.ask()
        s.serve()
        answers = [(k, b) for k, b in s.down if DataMessage.peek(b).block_index != 1]
        s.down.clear()
        for kind, body in answers:
            s.deliver(kind, body)
    assert s.download.held == WAITING * s.window
    assert len(s.download.ahead) == s.download.held - 1
    one: Optional[Any] = s.download.inflight.get(1)
    assert one is not None and one.missing == 1
    held = s.download.held
    s.deliver(wire.DATA, writer.proof(block=1, nodes=replica.missing_nodes(1)))
    assert replica.contiguous_length == 1 + held   # block 1 and everything waiting for it
    s.run()
    same(replica, writer)


def _all_but_block_1_waits(s: Stream) -> None:
    s.ask()
    s.serve()
    s.deliver(*s.down.popleft())   # the upgrade with block 0
    for _ in range(100):
        s.ask()
        s.serve()
        answers = [(k, b) for k, b in s.down if DataMessage.peek(b).block_index != 1]
        s.down.clear()
        for kind, body in answers:
            s.deliver(kind, body)


def test_shedding_what_waits_asks_it_again_farthest_first(pair: Any) -> None:
    """A spent memory budget takes back proofs waiting ahead, the farthest
    first; their asks are due again, and the pull still ends complete."""
    writer, replica = pair
    s = Stream(writer, replica, window=4)
    _all_but_block_1_waits(s)
    waiting = sorted(s.download.ahead)
    held = s.download.held_bytes()
    freed = s.download.shed(held // 2)
    assert held // 2 <= freed < held
    kept = sorted(s.download.ahead)
    assert kept == waiting[:len(kept)] and len(kept) < len(waiting)   # the nearest stay
    dropped = waiting[len(kept):]
    assert all(s.download.inflight[i].deadline == 0.0 and s.download.inflight[i].missing
               for i in dropped)
    assert s.download.counters["dropped_memory"] == len(dropped)
    for i in dropped:                 # what a datagram endpoint's timer does: ask again
        s.up.append(s.download.send(s.download.inflight[i]))
    s.deliver(wire.DATA, writer.proof(block=1, nodes=replica.missing_nodes(1)))
    s.run()
    same(replica, writer)


def test_a_forged_proof_waiting_ahead_never_pushes_out_the_real_one(pair: Any) -> None:
    """Two different proofs of a block wait side by side (the answer to the
    ask in flight first); the first that verifies is stored."""
    writer, replica = pair
    s = Stream(writer, replica, window=8)
    s.ask()
    s.serve()
    s.deliver(*s.down.popleft())
    s.ask()
    s.up.clear()
    ask3 = s.download.inflight[3]
    forged = DataMessage.decode(writer.proof(block=3, nodes=replica.missing_nodes(3)))
    assert forged.block is not None
    forged.block = (3, b"forged", forged.block[2])
    s.deliver(wire.DATA, forged.encode())
    genuine = writer.proof(block=3, nodes=replica.missing_nodes(3), request=ask3.id)
    s.deliver(wire.DATA, genuine)
    s.deliver(wire.DATA, genuine)     # a copy is a duplicate, not a third candidate
    assert s.download.ahead[3] == [genuine, forged.encode()]
    assert s.download.counters["duplicates"] == 1
    for i in (1, 2):
        s.deliver(wire.DATA, writer.proof(block=i, nodes=replica.missing_nodes(i)))
    assert replica.contiguous_length == 4 and replica.get(3) == writer.get(3)
    assert 3 not in s.download.ahead and 3 not in s.download.inflight


def test_requests_and_runs_are_refused_with_the_same_reasons(pair: Any) -> None:
    """NO_DATA reasons (Hypercore's noData): another fork is an invalid
    request, what the server does not hold is not available - the same for a
    REQUEST and a RUN (issue 10: they were swapped)."""
    writer, _ = pair
    counters = Counters()

    def reason(answer: serving.Answer) -> int:
        (kind, body), = answer.messages
        assert kind == wire.NO_DATA
        return wire.NoData.decode(body).reason

    other_fork = (serving.answer_request(writer, wire.Request(1, 7, block=(3, 0)), counters),
                  serving.answer_run(writer, wire.Run(2, 7, 0, 4, 0), counters, 1100))
    assert [reason(a) for a in other_fork] == [serving.INVALID_REQUEST] * 2
    assert all(a.resync for a in other_fork)
    beyond = writer.length + 64 - writer.length % 64
    not_held = (serving.answer_request(writer, wire.Request(3, 0, block=(beyond, 0)), counters),
                serving.answer_run(writer, wire.Run(4, 0, beyond, 64, 0), counters, 1100))
    assert [reason(a) for a in not_held] == [serving.NOT_AVAILABLE] * 2
    refused = (serving.answer_request(writer, wire.Request(5, 0, block=(4, 1000)), counters),
               serving.answer_run(writer, wire.Run(6, 0, 4, 4, 1000), counters, 1100))
    assert [reason(a) for a in refused] == [serving.NOT_AVAILABLE] * 2
