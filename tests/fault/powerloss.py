"""A storage that can lose power, for crash tests of both backends.

Each file keeps its *durable* bytes (what ``sync`` made safe) and the list of
operations since the last sync.  ``cut_at=k`` makes the k-th write or truncate
the last one before power fails: that write is torn at a random byte and then
every operation raises :class:`PowerCut`.  :meth:`SimDisk.crashed` builds the
disk as it could look after the reboot: for every file, the durable bytes plus
any subset of the unsynced operations, in order, each kept, dropped, or (for
writes) torn at a random byte - the worst a real disk and page cache can do.
"""
from __future__ import annotations

import random
from typing import Dict, List, Optional, Tuple

from coremachine_embedded.errors import StoreLockedError, StoreNotFoundError
from coremachine_embedded.storage import CREATE, READONLY


class PowerCut(Exception):
    """Raised by every file operation once the power is off."""


Op = Tuple[str, int, bytes]  # ("write", offset, data) or ("truncate", size, b"")


def _apply(buf: bytearray, op: Op) -> None:
    kind, pos, data = op
    if kind == "write":
        if len(buf) < pos:
            buf.extend(bytes(pos - len(buf)))
        buf[pos:pos + len(data)] = data
    else:
        del buf[pos:]
        if len(buf) < pos:
            buf.extend(bytes(pos - len(buf)))


class _FileState:
    def __init__(self, mode: int = 0o644) -> None:
        self.durable = bytearray()
        self.current = bytearray()
        self.pending: List[Op] = []
        self.mode = mode


class SimDisk:
    """A directory of simulated files."""

    def __init__(self, cut_at: Optional[int] = None, seed: int = 0) -> None:
        self.files: Dict[str, _FileState] = {}
        self.cut_at = cut_at
        self.ops = 0
        self.syncs = 0
        self.powered = True
        self.rng = random.Random(seed)
        self.locked: set = set()

    def storage(self) -> "SimStorage":
        return SimStorage(self)

    def _op(self, st: _FileState, op: Op) -> None:
        if not self.powered:
            raise PowerCut()
        self.ops += 1
        if self.cut_at is not None and self.ops >= self.cut_at:
            if op[0] == "write" and op[2]:
                op = ("write", op[1], op[2][:self.rng.randrange(len(op[2]))])
            st.pending.append(op)
            _apply(st.current, op)
            self.powered = False
            raise PowerCut()
        st.pending.append(op)
        _apply(st.current, op)

    def crashed(self, seed: int) -> "SimDisk":
        """The disk after a reboot (see module docstring)."""
        rng = random.Random(seed)
        disk = SimDisk()
        for name, st in self.files.items():
            img = bytearray(st.durable)
            for op in st.pending:
                r = rng.random()
                if r < 0.35:
                    continue  # never reached the disk
                if op[0] == "write" and op[2] and r < 0.55:
                    op = ("write", op[1], op[2][:rng.randrange(len(op[2]))])
                _apply(img, op)
            new = _FileState(st.mode)
            new.durable = bytearray(img)
            new.current = bytearray(img)
            disk.files[name] = new
        return disk

    def flip(self, name: str, offset: int) -> None:
        """Flip one bit of a file, durably (bit rot, a bad SD card)."""
        st = self.files[name]
        st.current[offset] ^= 0x10
        st.durable[offset] ^= 0x10


class SimFile:
    def __init__(self, disk: SimDisk, name: str, readonly: bool = False) -> None:
        self.disk = disk
        self.name = name
        self.state = disk.files[name]
        self.locked = False
        self.readonly = readonly

    def _writing(self) -> None:
        if self.readonly:
            raise AssertionError("%s was opened read-only and written" % self.name)

    def read(self, size: int, offset: int) -> bytes:
        if not self.disk.powered:
            raise PowerCut()
        return bytes(self.state.current[offset:offset + size])

    def write(self, data: bytes, offset: int) -> None:
        self._writing()
        self.disk._op(self.state, ("write", offset, bytes(data)))

    def truncate(self, size: int) -> None:
        self._writing()
        self.disk._op(self.state, ("truncate", size, b""))

    def sync(self) -> None:
        self._writing()
        if not self.disk.powered:
            raise PowerCut()
        self.disk.syncs += 1
        self.state.durable = bytearray(self.state.current)
        self.state.pending = []

    def size(self) -> int:
        if not self.disk.powered:
            raise PowerCut()
        return len(self.state.current)

    def lock(self) -> None:
        self._writing()
        if self.name in self.disk.locked:
            raise StoreLockedError("locked", self.name)
        self.disk.locked.add(self.name)
        self.locked = True

    def close(self) -> None:
        if self.locked:
            self.disk.locked.discard(self.name)
            self.locked = False


class SimStorage:
    def __init__(self, disk: SimDisk) -> None:
        self.disk = disk

    def open(self, name: str, flags: int = 0) -> SimFile:
        if not self.disk.powered:
            raise PowerCut()
        if name not in self.disk.files:
            if not flags & CREATE or flags & READONLY:
                raise StoreNotFoundError("no such file", name)
            # A new file's existence is durable (the real storage fsyncs the directory).
            self.disk.files[name] = _FileState(0o600 if flags & 2 else 0o644)
        return SimFile(self.disk, name, bool(flags & READONLY))
