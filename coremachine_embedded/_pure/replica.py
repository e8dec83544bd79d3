"""A replica's operations: verify and store proofs (apply_proof), batched runs
(apply_run), and the sanitize record written on open (docs/format.md,
"Replicas", "Precise rules").

Twin of csrc/cm_replica.c.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

from .. import caps
from ..encoding import DataMessage, Manifest, Node
from ..errors import (BlockNotAvailableError, ForkError, InvalidArgumentError,
                      InvalidProofError, ReadOnlyError, TooLargeError, need_bytes)
from ..proofs import ApplyResult
from . import flat, proof
from .crypto import Verifier, hash_leaf, hash_parent, manifest_hash
from .store import HF_COMPAT, HF_MANIFEST, RF_TRUNCATE
from .treefile import TreeFile, spanning_ancestors
from .wal import Wal


def _is_compat_manifest(manifest: bytes, key: bytes) -> bool:
    """Hypercore's compat case: one signer whose public key is the core key."""
    m = Manifest.decode(manifest)
    return len(m.signers) == 1 and m.signers[0][1] == key


class Replica(Wal, TreeFile):
    """What a core without its secret key stores: what proofs prove."""

    def apply_proof(self, message: bytes) -> ApplyResult:
        """Verify a data message and store what it proves (replicas only)."""
        self._check_open()
        if self._readonly:
            raise ReadOnlyError("a read-only snapshot stores nothing")
        if self._secret_key is not None:
            raise InvalidArgumentError("a writer does not take proofs")
        msg = DataMessage.decode(need_bytes("proof", message))
        res = ApplyResult()
        res.fork = msg.fork
        if msg.fork < self.fork:
            raise ForkError("proof is for fork %d, the core is at fork %d"
                            % (msg.fork, self.fork))
        reorg = msg.fork > self.fork
        if reorg and (msg.upgrade is None or msg.upgrade[0] != 0):
            raise ForkError("proof is for the newer fork %d: an upgrade from 0 is needed"
                            % msg.fork)
        if msg.block is not None and len(msg.block[1]) > self._max_block:
            raise TooLargeError("a block of %d bytes (max_block_size is %d)"
                                % (len(msg.block[1]), self._max_block))
        verifier = self._verifier
        learned = None
        if msg.manifest is not None and not self._flags & (HF_COMPAT | HF_MANIFEST):
            if manifest_hash(msg.manifest) == self.key:
                verifier = Verifier(self.key, msg.manifest)
                learned = msg.manifest
            elif not _is_compat_manifest(msg.manifest, self.key):
                raise InvalidProofError("the manifest does not belong to this core")
        chk = proof.check(verifier, [] if reorg else self.roots, msg)
        if chk.unverified is not None:
            u = chk.unverified
            if reorg or flat.right_span(u[0]) > 2 * self.length - 2:
                raise InvalidProofError("the block is not covered by a trusted tree")
            local = self._get_node_or_none(u[0])
            if local is None:  # the proof that brings it may still be on its way
                raise BlockNotAvailableError("no local node %d to check the proof against yet"
                                             % u[0])
            if local != u:
                raise InvalidProofError("checksum mismatch at node %d" % u[0])
        contiguous = self.contiguous
        contig_bytes = self._contig_bytes
        prefix = 0
        if reorg:
            for r in chk.roots:
                if flat.right_span(r[0]) > 2 * self.length - 2 or self._get_node_or_none(r[0]) != r:
                    break
                prefix += flat.count_leaves(r[0])
            if prefix < contiguous:
                contiguous = prefix
                contig_bytes = self._prefix_bytes(prefix)
            res.reorg = True
            res.reorg_length = prefix
        length = chk.length if chk.upgraded else self.length
        store = (msg.block is not None and msg.block[0] == contiguous and msg.block[0] < length)
        if msg.block is not None:
            res.block_index = msg.block[0]
        if not (chk.upgraded or reorg or store or learned):
            res.length = self.length
            return res
        seen = set()
        nodes = []
        for n in sorted(chk.nodes):
            if n[0] not in seen:
                seen.add(n[0])
                nodes.append(n)
        data = msg.block[1] if store and msg.block is not None else b""
        if chk.upgraded and msg.upgrade is not None:
            byte_length, digest, sig = chk.byte_length, chk.tree_hash, msg.upgrade[4]
        else:
            byte_length, digest, sig = self.byte_length, self._tree_hash, self._sig or b""
        self._commit(RF_TRUNCATE if reorg else 0, msg.fork, length,
                     contiguous + (1 if store else 0), byte_length, digest,
                     signature=sig, manifest=learned,
                     tree_truncate=2 * prefix - 1 if reorg and prefix else 0,
                     data_truncate=contig_bytes if reorg else 0,
                     clear=spanning_ancestors(prefix) if reorg else (),
                     nodes=nodes, data_offset=contig_bytes, data=data)
        if chk.upgraded:
            self.roots = chk.roots
        self._contig_bytes = contig_bytes + len(data)
        res.upgraded = chk.upgraded
        res.block_stored = store
        res.manifest_learned = learned is not None
        res.length = self.length
        self._maybe_checkpoint()
        return res

    def apply_run(self, start: int, values: Sequence[bytes]) -> int:
        """Store a run of blocks proven by the node over them (batched
        transfer, see csrc/cm.h cm_core_apply_run).  Returns blocks added."""
        self._check_open()
        n = len(values)
        if self._readonly:
            raise ReadOnlyError("a read-only snapshot stores nothing")
        if self._secret_key is not None:
            raise InvalidArgumentError("a writer does not take runs")
        if (n < 2 or n > caps.MAX_RUN or n & (n - 1) or start % n
                or start >= caps.MAX_LENGTH or start + n > self.length):
            raise InvalidArgumentError("a run is 2..%d blocks (a power of two) at a multiple "
                                       "of its size, inside the log" % caps.MAX_RUN)
        if self.contiguous <= start:
            raise BlockNotAvailableError("the run's first block is not held yet")
        if self.contiguous >= start + n:
            return 0
        for v in values:
            if len(v) > self._max_block:
                raise TooLargeError("block of %d bytes" % len(v))
        base = 2 * start
        tree: List[Node] = [(0, 0, b"")] * (2 * n - 1)
        for i, v in enumerate(values):
            tree[2 * i] = hash_leaf(start + i, v)
        width = 1
        while width * 2 <= n:   # parents, level by level (relative to base)
            for r in range(2 * width - 1, 2 * n - 1, 4 * width):
                tree[r] = hash_parent(tree[r - width], tree[r + width], base + r)
            width *= 2
        root = self._get_node_or_none(base + n - 1)
        if root is None:
            raise BlockNotAvailableError("the node over the run is not held yet")
        if root != tree[n - 1]:
            raise InvalidProofError("the run's values do not match node %d" % (base + n - 1))
        held = self.contiguous - start
        data = b"".join(values[held:])
        self._commit(0, self.fork, self.length, start + n, self.byte_length, self._tree_hash,
                     signature=self._sig or b"", nodes=tree, data_offset=self._contig_bytes,
                     data=data)
        self._contig_bytes += len(data)
        self._maybe_checkpoint()
        return n - held

    def _sanitize(self) -> None:
        """Drop sparse-region node slots that no durable record may own: cut
        ``tree`` at the contiguous region, then write back the roots of
        ``length`` and the path from the contiguous region up to its root."""
        c = self.contiguous
        keep = {r[0]: r for r in self.roots if flat.right_span(r[0]) > 2 * c - 2}
        c_roots = flat.full_roots(c)
        k = 0
        while k < len(c_roots) and k < len(self.roots) and self.roots[k][0] == c_roots[k]:
            k += 1
        if k < len(c_roots):
            top = self.roots[k]  # the root of `length` over the last held blocks
            stack = [self._read_held(i) for i in c_roots[k:]]
            path: Dict[int, Node] = {}
            while stack[-1][0] != top[0]:
                sib = self._read_node(flat.sibling(stack[-1][0]))
                if sib is None:
                    path = {}  # nothing to rebuild from: keep the plain rule
                    break
                if sib[0] < stack[-1][0]:
                    raise self._damaged("no path from the held blocks to root %d" % top[0],
                                        "tree")
                path[sib[0]] = sib
                _merge(stack, sib, path)
            if path and stack[-1] != top:
                raise self._damaged("the nodes over the held blocks do not match root %d"
                                    % top[0], "tree")
            keep.update(path)
        self._commit(RF_TRUNCATE, self.fork, self.length, c, self.byte_length,
                     self._tree_hash, signature=self._sig or b"",
                     tree_truncate=2 * c - 1 if c else 0, data_truncate=self._contig_bytes,
                     clear=spanning_ancestors(c), nodes=[keep[i] for i in sorted(keep)])


def _merge(stack: List[Node], node: Node, out: Dict[int, Node]) -> None:
    """Push ``node`` and merge siblings into parents, recording each parent."""
    stack.append(node)
    while len(stack) >= 2 and flat.sibling(stack[-1][0]) == stack[-2][0]:
        parent = hash_parent(stack[-2], stack[-1], flat.parent(stack[-1][0]))
        del stack[-2:]
        stack.append(parent)
        out[parent[0]] = parent
