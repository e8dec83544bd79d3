"""A systematic Reed-Solomon erasure code over GF(2^8) with a Cauchy parity
matrix: :func:`encode` cuts data into ``k`` equal chunks and adds ``m``
parity chunks; :func:`decode` rebuilds the data from any ``k`` of the
``k + m``.  Multiplying a chunk by a constant is one ``bytes.translate`` and
adding chunks one XOR of integers, so an envelope of a few KiB costs about a
millisecond either way in pure Python.  Used by :mod:`.linkcode` on noisy
serial lines.
"""
from __future__ import annotations

from typing import Dict, List, Optional

MAX_SHARDS = 255                # k + m (the Cauchy points must be distinct bytes)

# --- GF(2^8), polynomial x^8 + x^4 + x^3 + x^2 + 1 -----------------------------------
_EXP = [0] * 512
_LOG = [0] * 256
_x = 1
for _i in range(255):
    _EXP[_i] = _x
    _LOG[_x] = _i
    _x <<= 1
    if _x & 0x100:
        _x ^= 0x11D
for _i in range(255, 512):
    _EXP[_i] = _EXP[_i - 255]
_TABLES: Dict[int, bytes] = {}


def gf_mul(a: int, b: int) -> int:
    """a * b in GF(2^8)."""
    return 0 if a == 0 or b == 0 else _EXP[_LOG[a] + _LOG[b]]


def gf_inv(a: int) -> int:
    """1 / a in GF(2^8) (ZeroDivisionError for 0)."""
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(256)")
    return _EXP[255 - _LOG[a]]


def _table(c: int) -> bytes:
    """The multiplication-by-``c`` table, for ``bytes.translate``."""
    t = _TABLES.get(c)
    if t is None:
        t = _TABLES[c] = bytes(gf_mul(c, x) for x in range(256))
    return t


def _combine(coefs: List[int], shards: List[bytes], size: int) -> int:
    """sum(c * shard) over GF(2^8), as an int of ``size`` little-endian bytes."""
    acc = 0
    for c, shard in zip(coefs, shards):
        if c:
            acc ^= int.from_bytes(shard if c == 1 else shard.translate(_table(c)), "little")
    return acc


def _cauchy(j: int, k: int) -> List[int]:
    """Row ``j`` of the parity matrix: 1 / (x_j + y_i), x_j = k + j, y_i = i."""
    return [gf_inv((k + j) ^ i) for i in range(k)]


def encode(data: bytes, k: int, m: int) -> List[bytes]:
    """The ``k`` data and ``m`` parity chunks of ``data``."""
    if not (1 <= k and 0 <= m and k + m <= MAX_SHARDS) or not data:
        raise ValueError("bad code parameters")
    size = -(-len(data) // k)
    padded = data + bytes(k * size - len(data))
    shards = [padded[i * size:(i + 1) * size] for i in range(k)]
    return shards + [_combine(_cauchy(j, k), shards, size).to_bytes(size, "little")
                     for j in range(m)]


def _invert(matrix: List[List[int]]) -> List[List[int]]:
    """Gauss-Jordan inverse over GF(2^8) (the matrix is a Cauchy submatrix:
    always invertible)."""
    n = len(matrix)
    a = [row[:] + [int(i == r) for i in range(n)] for r, row in enumerate(matrix)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if a[r][col])
        a[col], a[pivot] = a[pivot], a[col]
        inv = gf_inv(a[col][col])
        a[col] = [gf_mul(inv, v) for v in a[col]]
        for r in range(n):
            f = a[r][col]
            if r != col and f:
                a[r] = [v ^ gf_mul(f, w) for v, w in zip(a[r], a[col])]
    return [row[n:] for row in a]


def decode(chunks: Dict[int, bytes], k: int, length: int) -> bytes:
    """The ``length`` bytes of data from any ``k`` of the chunks (by index)."""
    if len(chunks) < k:
        raise ValueError("%d chunks, %d needed" % (len(chunks), k))
    size = len(next(iter(chunks.values())))
    missing = [i for i in range(k) if i not in chunks]
    data: List[Optional[bytes]] = [chunks.get(i) for i in range(k)]
    if missing:
        known = [i for i in range(k) if i in chunks]
        parity = sorted(i for i in chunks if i >= k)[:len(missing)]
        rows = [_cauchy(p - k, k) for p in parity]
        # what each parity chunk holds beyond the known data chunks
        residue = [int.from_bytes(chunks[p], "little")
                   ^ _combine([row[i] for i in known], [chunks[i] for i in known], size)
                   for p, row in zip(parity, rows)]
        res_bytes = [r.to_bytes(size, "little") for r in residue]
        inv = _invert([[row[i] for i in missing] for row in rows])
        for n, i in enumerate(missing):
            data[i] = _combine(inv[n], res_bytes, size).to_bytes(size, "little")
    return b"".join(d for d in data if d is not None)[:length]
