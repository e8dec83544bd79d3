"""The checksummed regions of a store's files, checked as ``Core.verify``
does (docs/format.md, "Verifying"): both header slots and the wal records.

What the store uses - the newest header slot and the records of its
generation (the live wal) - must check: damage there is a
:class:`~.errors.CorruptionError` naming the file.  Older copies - the other
header slot and the records of earlier generations after the live ones -
are not read by anything, so damage there is a warning.  Tree nodes and
blocks are checked by re-hashing every block, not here.

The format is the same on both backends, so one reader (the pure backend's
parsers) serves both.
"""
from __future__ import annotations

import os
import struct
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .errors import CorruptionError
from .storage import READONLY

Read = Callable[[str], bytes]     # a store file's bytes, by name
SNAPSHOT_TRIES = 16                    # reads of a snapshot's files (as cm_opening.c)
_GENERATION = struct.Struct("<Q")
_HEAD = struct.Struct("<IQQ")          # a frame's payload length, generation, seq
_RECORD_FIXED = 144                    # a record payload's fixed part (REC_FIXED)


def check_store(directory: Optional[str], storage: Any, snapshot: bool) -> List[str]:
    """:func:`check_files` on a store's files, in ``directory`` or through
    ``storage``.  A ``snapshot``'s files may be changing under the read
    (another process appending or checkpointing): a failure counts when the
    files read the same again a moment later."""
    def read_file(name: str) -> bytes:
        if directory is not None:
            with open(os.path.join(directory, name), "rb") as f:
                return f.read()
        f = storage.open(name, READONLY if snapshot else 0)
        try:
            return bytes(f.read(f.size(), 0))
        finally:
            f.close()

    def path(name: str) -> Optional[str]:
        return os.path.join(directory, name) if directory is not None else name

    attempt = 1
    while True:
        files: Dict[str, bytes] = {}

        def read(name: str) -> bytes:
            if name not in files:
                files[name] = read_file(name)
            return files[name]
        try:
            return check_files(read, path, settled=not snapshot)
        except CorruptionError:
            if not snapshot or attempt == SNAPSHOT_TRIES:
                raise
            time.sleep(0.01)
            if all(read_file(name) == got for name, got in files.items()):
                raise
        attempt += 1


def check_files(read: Read, path: Callable[[str], Optional[str]],
                settled: bool = True) -> List[str]:
    """Check what ``read`` returns of ``header`` and ``wal``; the warnings
    about older copies.  ``path(name)`` is what errors name.

    ``settled``: the store is open here, locked, so every record of its
    generation was written whole and any that does not check is damage.
    Otherwise (a read-only snapshot) the files may be a crash image or being
    written: a record that does not check where the live ones end is a torn
    tail (a warning; opening drops it) unless a later record of the
    generation says it had been synced - as opening judges.

    :raises CorruptionError: damage in the header slot or wal records in use.
    """
    from ._pure.store import SLOT_SIZE
    from ._pure.wal import parse_record, parse_slot

    warnings: List[str] = []
    header = read("header")
    slots = [parse_slot(header, i) for i in (0, 1)]
    valid = [s for s in slots if s is not None]
    if not valid:
        raise CorruptionError("no header slot checks", path("header"))
    current = max(valid, key=lambda s: s.seq)
    other = 1 - current.seq % 2
    if slots[other] is None and any(header[SLOT_SIZE * other:SLOT_SIZE * (other + 1)]):
        warnings.append("header slot %d (an older copy) does not check" % other)
    if not hasattr(current, "generation"):
        return warnings   # another format version: opening refuses it
    generation = current.generation
    wal = read("wal")
    first = parse_record(wal, 0)
    if first is not None and first.generation > generation:
        raise CorruptionError("the header slot in use does not check (the wal is newer)",
                              path("header"))
    off, seq, prev = 0, 0, 0
    while True:
        rec = parse_record(wal, off)
        if rec is None or rec.generation != generation or rec.seq != seq \
                or rec.prev_crc != prev:
            break
        off, seq, prev = rec.end, seq + 1, rec.crc
    # Where the live records end, only older generations (or nothing) follow.
    unchecked = False     # a frame of the generation right there that does not check
    later = []            # records of the generation further on that check
    for at in range(off, len(wal) - 15, 8):     # (a frame's generation: bytes 8..16)
        if _GENERATION.unpack_from(wal, at + 8)[0] == generation:
            rec = parse_record(wal, at)
            if rec is not None and rec.generation == generation:
                later.append(rec)
            elif at == off:
                unchecked = True
    if settled and (unchecked or later):
        raise CorruptionError("wal record %d (in use) does not check" % seq, path("wal"))
    if any(rec.durable_count > seq for rec in later):
        raise CorruptionError("wal record %d does not check but had been synced" % seq,
                              path("wal"))
    if unchecked:
        warnings.append("wal record %d is incomplete (a torn write, or one under way): "
                        "the writer's next open drops it" % seq)
    for at in _damaged_stale(wal, off, generation):
        warnings.append("a wal record of an earlier generation (an older copy) at offset %d "
                        "does not check" % at)
    return warnings


def _damaged_stale(wal: bytes, start: int, generation: int) -> List[int]:
    """Offsets of damaged records of earlier generations after the live ones.

    Each generation wrote its records from offset 0 on, over the older ones,
    so what lies after the live records is pieces of older generations: a
    record is looked for where one must start - right after the live ones,
    and right after each stale record that checks (the next of its
    generation) - and its frame is judged by the fields before its checksum.
    Elsewhere, the bytes may be the middle of an older record."""
    from ._pure.wal import parse_record
    damaged: List[int] = []
    # offset -> (generation, seq) expected there (None: any earlier generation)
    starts: Dict[int, Optional[Tuple[int, int]]] = {start: None}
    for at in range(start, len(wal) - 8, 8):    # every stale record that checks
        rec = parse_record(wal, at)
        if rec is not None and rec.generation < generation:
            starts[rec.end] = (rec.generation, rec.seq + 1)
    for at, expect in sorted(starts.items()):
        if at + 8 + _HEAD.size > len(wal) or parse_record(wal, at) is not None:
            continue
        length, gen, seq = _HEAD.unpack_from(wal, at + 4)
        fits = _RECORD_FIXED <= length <= len(wal) - at - 8
        if fits and ((gen, seq) == expect if expect is not None else gen < generation):
            damaged.append(at)
    return damaged
