"""protomux: channels over one secret-stream, as ``protomux`` 3.x frames them.

Every stream message is ``uint channel | uint type | body``.  Channel 0 is
control: ``1`` open (``uint id | string protocol | optionalBuffer id |
handshake``), ``2`` reject (``uint id``: the opener's id), ``3`` close
(``uint id``: the closer's id), ``0`` batch (``uint channel`` then items
``uint length | type | body``; a zero length followed by ``uint channel``
switches channel).  Ids in messages are always the *sender's* channel ids.

:class:`Mux` keeps the channel table of one stream: our ids (reused after a
close), the peer's ids (each open may grow them by one, as protomux checks),
and the pairing of a local open with the peer's open of the same protocol and
id.  It does no I/O: :meth:`Mux.receive` turns a decrypted stream message into
events, the ``open``/``close``/``send`` methods return stream messages.
"""
from __future__ import annotations

from typing import AbstractSet, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from ...encoding import Reader, encode_buffer, encode_uint
from ...errors import DecodeError, ProtocolError

OPEN, REJECT, CLOSE, BATCH = 1, 2, 3, 0
MAX_BATCH_DEPTH = 4          # batches inside batches (protomux never nests them)
MAX_CHANNELS = 1024          # channels one peer may have open on a stream


class Open(NamedTuple):
    remote_id: int
    protocol: str
    id: Optional[bytes]
    handshake: bytes


class Reject(NamedTuple):
    local_id: int


class Close(NamedTuple):
    remote_id: int


class Message(NamedTuple):
    remote_id: int
    type: int
    body: bytes


Event = Union[Open, Reject, Close, Message]


# --- codec ---------------------------------------------------------------------------------

def decode(frame: bytes) -> List[Event]:
    """The events in one stream message (a batch gives several).

    :raises DecodeError: malformed.
    """
    out: List[Event] = []
    r = Reader(frame)
    channel = r.uint()
    _decode_item(memoryview(frame)[r.pos:], channel, out, 0)
    return out


def _decode_item(item: memoryview, channel: int, out: List[Event], depth: int) -> None:
    """One ``type | body`` of ``channel``; every read stays inside ``item``."""
    r = Reader(item)  # type: ignore[arg-type]
    kind = r.uint()
    if channel != 0:
        out.append(Message(channel, kind, bytes(item[r.pos:])))
    elif kind == OPEN:
        remote_id = r.uint()
        protocol = r.buffer().decode("utf-8", "replace")
        size = r.uint()
        ident = r.fixed(size) if size else None
        out.append(Open(remote_id, protocol, ident, bytes(item[r.pos:])))
    elif kind == REJECT:
        out.append(Reject(r.uint()))
    elif kind == CLOSE:
        out.append(Close(r.uint()))
    elif kind == BATCH:
        if depth >= MAX_BATCH_DEPTH:
            raise DecodeError("batches nested %d deep" % depth)
        current = r.uint()
        while not r.done():
            size = r.uint()
            if size == 0:
                current = r.uint()
                continue
            if r.pos + size > len(item):
                raise DecodeError("a batched message runs past its batch")
            _decode_item(item[r.pos:r.pos + size], current, out, depth + 1)
            r.pos += size
    # other control types are ignored, as protomux ignores them


def encode_open(local_id: int, protocol: str, ident: Optional[bytes], handshake: bytes) -> bytes:
    return (b"\x00\x01" + encode_uint(local_id) + encode_buffer(protocol.encode())
            + (encode_buffer(ident) if ident else b"\x00") + handshake)


def encode_reject(remote_id: int) -> bytes:
    return b"\x00\x02" + encode_uint(remote_id)


def encode_close(local_id: int) -> bytes:
    return b"\x00\x03" + encode_uint(local_id)


def encode_message(local_id: int, kind: int, body: bytes) -> bytes:
    return encode_uint(local_id) + encode_uint(kind) + body


def encode_batch(items: Sequence[Tuple[int, bytes]]) -> bytes:
    """One batch of ``(channel, type-and-body)`` items, switching channel
    where it changes (control items are channel 0, without their leading 0)."""
    current = items[0][0]
    out = [b"\x00\x00", encode_uint(current)]
    for channel, item in items:
        if channel != current:
            current = channel
            out += [b"\x00", encode_uint(channel)]
        out.append(encode_buffer(item))
    return b"".join(out)


def encode_frames(items: Sequence[Tuple[int, bytes]], batch: int, max_bytes: int,
                  batched: AbstractSet[int]) -> List[bytes]:
    """Stream messages for ``(channel, type-and-body)`` items, in order: runs
    of channel messages whose type (one byte) is in ``batched`` as batches of
    at most ``batch`` items and about ``max_bytes`` (a run of one as a plain
    message), every other item - control items (channel 0) included - on its
    own.  The byte bound keeps a batch of big blocks under the frame limit."""
    frames: List[bytes] = []
    run: List[Tuple[int, bytes]] = []
    size = 0
    for item in items:
        alone = item[0] == 0 or item[1][0] not in batched
        if run and (alone or len(run) == batch or size + len(item[1]) > max_bytes):
            _add_run(frames, run)
            run, size = [], 0
        if alone:
            frames.append(encode_uint(item[0]) + item[1])
        else:
            run.append(item)
            size += len(item[1])
    _add_run(frames, run)
    return frames


def _add_run(frames: List[bytes], run: List[Tuple[int, bytes]]) -> None:
    if len(run) == 1:
        frames.append(encode_uint(run[0][0]) + run[0][1])
    elif run:
        frames.append(encode_batch(run))


# --- channel table --------------------------------------------------------------------------

class Channel:
    """One protocol channel on a stream (ours, paired with the peer's when
    ``remote_id`` is set)."""

    __slots__ = ("protocol", "id", "local_id", "remote_id", "remote_handshake", "closed",
                 "user")

    def __init__(self, protocol: str, ident: Optional[bytes], local_id: int) -> None:
        self.protocol = protocol
        self.id = ident
        self.local_id = local_id
        self.remote_id = 0
        self.remote_handshake = b""
        self.closed = False
        self.user: Any = None      # whatever the protocol keeps per channel

    @property
    def opened(self) -> bool:
        """Both sides opened it."""
        return self.remote_id != 0 and not self.closed


class Mux:
    """The channel table of one stream.  ``aliases`` maps a protocol name to
    the one it is known by (``hypercore`` -> ``hypercore/alpha``)."""

    def __init__(self, aliases: Optional[Dict[str, str]] = None) -> None:
        self.aliases = aliases or {}
        self._local: Dict[int, Channel] = {}
        self._remote: Dict[int, Channel] = {}
        self._remote_max = 0                        # the peer's ids seen so far
        self._incoming: Dict[Tuple[str, bytes], Open] = {}  # its opens we have not answered

    def _key(self, protocol: str, ident: Optional[bytes]) -> Tuple[str, bytes]:
        return self.aliases.get(protocol, protocol), ident or b""

    def channel(self, remote_id: int) -> Optional[Channel]:
        return self._remote.get(remote_id)

    def channels(self) -> List[Channel]:
        return list(self._local.values())

    def find(self, protocol: str, ident: Optional[bytes]) -> Optional[Channel]:
        key = self._key(protocol, ident)
        for ch in self._local.values():
            if self._key(ch.protocol, ch.id) == key:
                return ch
        return None

    def open(self, protocol: str, ident: Optional[bytes], handshake: bytes
             ) -> Tuple[Channel, bytes]:
        """Open a channel; returns it and the message to send.  If the peer
        opened the same protocol and id already, the channel is paired."""
        local_id = 1
        while local_id in self._local:
            local_id += 1
        ch = Channel(protocol, ident, local_id)
        self._local[local_id] = ch
        pending = self._incoming.pop(self._key(protocol, ident), None)
        if pending is not None:
            self._pair(ch, pending)
        return ch, encode_open(local_id, protocol, ident, handshake)

    def _pair(self, ch: Channel, event: Open) -> None:
        ch.remote_id = event.remote_id
        ch.remote_handshake = event.handshake
        self._remote[event.remote_id] = ch

    def on_open(self, event: Open) -> Optional[Channel]:
        """The peer opened a channel: the local channel it pairs with, or None
        (then the caller opens one with :meth:`open` or answers :meth:`reject`).

        :raises ProtocolError: an id protomux would not accept.
        """
        rid = event.remote_id
        if rid == 0 or rid > self._remote_max + 1 or rid in self._remote or \
                any(o.remote_id == rid for o in self._incoming.values()):
            raise ProtocolError("invalid channel open (id %d)" % rid)
        if len(self._remote) + len(self._incoming) >= MAX_CHANNELS:
            raise ProtocolError("more than %d channels" % MAX_CHANNELS)
        self._remote_max = max(self._remote_max, rid)
        key = self._key(event.protocol, event.id)
        for ch in self._local.values():
            if ch.remote_id == 0 and not ch.closed and self._key(ch.protocol, ch.id) == key:
                self._pair(ch, event)
                return ch
        self._incoming[key] = event
        return None

    def reject(self, event: Open) -> bytes:
        """Refuse the peer's open (its id is free again)."""
        self._incoming.pop(self._key(event.protocol, event.id), None)
        return encode_reject(event.remote_id)

    def on_reject(self, event: Reject) -> Optional[Channel]:
        """The peer refused our open: that channel is closed (None if unknown)."""
        ch = self._local.get(event.local_id)
        if ch is None or ch.remote_id != 0:
            return None
        self._forget(ch)
        return ch

    def on_close(self, event: Close) -> Optional[Channel]:
        """The peer closed its side: ours is closed too (None if unknown)."""
        ch = self._remote.get(event.remote_id)
        if ch is None:
            return None
        self._forget(ch)
        return ch

    def close(self, ch: Channel) -> bytes:
        """Close our side; returns the message to send."""
        self._forget(ch)
        return encode_close(ch.local_id)

    def _forget(self, ch: Channel) -> None:
        ch.closed = True
        if self._local.get(ch.local_id) is ch:
            del self._local[ch.local_id]
        if ch.remote_id and self._remote.get(ch.remote_id) is ch:
            del self._remote[ch.remote_id]
