"""Pipe helpers for the stream side of a :class:`Coremachine` (asyncio).

The Python form of the JS Duplex: actions flow in (``await machine.send(msg)``,
with backpressure) and state changes flow out (``machine.changes()``).  These
helpers connect an action source and a change sink::

    await pipe(source, machine, sink)

``source`` is an async iterable, a plain iterable or an ``asyncio.Queue`` of
``{"event"|"action": name, "value": v}`` messages (a queue ends at ``None``);
``sink`` is a callable or coroutine function taking a :class:`Snapshot`, or an
``asyncio.Queue``.  An invalid message is reported to ``machine.on_error``
callbacks and the pipe keeps going.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Optional

from .awaitables import is_awaitable

if TYPE_CHECKING:
    from .coremachine import Coremachine, Snapshot


class ChangeIterator:
    """``machine.changes()``: an async iterator of changes, fed from any
    thread; ``dropped`` counts what a consumer more than ``maxsize`` behind lost."""

    def __init__(self, maxsize: int, on_end: "Callable[[ChangeIterator], None]") -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: "asyncio.Queue[Optional[Snapshot]]" = asyncio.Queue()
        self.maxsize = maxsize
        self.dropped = 0
        self.ended = False
        self._on_end = on_end

    def put(self, snap: "Optional[Snapshot]") -> None:
        def add() -> None:
            if self.queue.qsize() >= self.maxsize and snap is not None:
                self.queue.get_nowait()
                self.dropped += 1
            self.queue.put_nowait(snap)
        try:
            running: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            add()
        elif not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(add)
            except RuntimeError:
                pass  # the loop closed meanwhile

    def end(self) -> None:
        """Stop: the iterator yields what is queued, then finishes."""
        self._on_end(self)
        if not self.ended:
            self.ended = True
            self.put(None)

    def __aiter__(self) -> "ChangeIterator":
        return self

    async def __anext__(self) -> "Snapshot":
        snap = await self.queue.get()
        if snap is None:
            raise StopAsyncIteration
        return snap

    async def aclose(self) -> None:
        self.end()


async def _messages(source: Any) -> AsyncIterator[Any]:
    if isinstance(source, asyncio.Queue):
        while True:
            item = await source.get()
            if item is None:
                return
            yield item
    elif hasattr(source, "__aiter__"):
        async for item in source:
            yield item
    else:
        for item in source:
            yield item


async def serial_messages(url: str, maxsize: int = 256) -> AsyncIterator[Any]:
    """Action messages sent by a device over a serial line: each frame (the
    sync framing, ``COBS(json + CRC32) 0x00``) holds one JSON
    ``{"event": ..., "value": ...}``; frames that are not JSON objects are
    skipped.  ``pipe(serial_messages(url), machine)`` feeds a machine from a
    microcontroller (see boards/examples/micropython/action_source.py)."""
    from . import _json
    from .sync.serial import SerialLink
    queue: "asyncio.Queue[bytes]" = asyncio.Queue(maxsize)

    def received(frame: bytes, _addr: Any) -> None:
        if queue.full():
            queue.get_nowait()  # a device that outruns the machine loses the oldest
        queue.put_nowait(frame)

    link = SerialLink.from_url(url)
    await link.start(received)
    try:
        while True:
            frame = await queue.get()
            try:
                message = _json.loads(frame)
            except ValueError:
                continue
            if isinstance(message, dict):
                yield message
    finally:
        await link.close()


async def pipe_actions(source: Any, machine: "Coremachine", maxsize: int = 64) -> int:
    """Feed every message of ``source`` to the machine (waiting while
    ``maxsize`` are pending) and wait until they are applied.  Returns how
    many messages were read."""
    count = 0
    async for message in _messages(source):
        await machine.send(message, maxsize)
        count += 1
    await machine.drain()
    return count


async def _deliver(sink: Any, snap: "Snapshot") -> None:
    if isinstance(sink, asyncio.Queue):
        await sink.put(snap)
        return
    result = sink(snap)
    if is_awaitable(result):
        await result


async def pipe_changes(machine: "Coremachine", sink: Any, limit: Optional[int] = None) -> int:
    """Deliver the machine's changes to ``sink`` until cancelled (or ``limit``
    changes).  Returns how many were delivered."""
    count = 0
    changes = machine.changes()
    try:
        async for snap in changes:
            await _deliver(sink, snap)
            count += 1
            if limit is not None and count >= limit:
                break
    finally:
        await changes.aclose()
    return count


async def pipe(source: Any, machine: "Coremachine", sink: Any = None) -> int:
    """``source -> machine -> sink``: returns once the source is exhausted,
    every message is applied and the changes they caused were delivered."""
    if sink is None:
        return await pipe_actions(source, machine)
    changes = machine.changes()

    async def forward() -> None:
        async for snap in changes:
            await _deliver(sink, snap)
    task = asyncio.get_running_loop().create_task(forward())
    try:
        return await pipe_actions(source, machine)
    finally:
        changes.end()  # delivers what is queued, then stops
        await task
