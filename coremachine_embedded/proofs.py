"""Result types of proof verification and application, shared by both backends.

A proof is a Hypercore ``data`` message (see :mod:`coremachine_embedded.encoding`).
A writer builds one with :meth:`Core.proof`; a replica checks and stores it with
:meth:`Core.apply_proof`, which returns an :class:`ApplyResult`.
"""
from __future__ import annotations

from typing import List, Optional

from .encoding import Node


class Check:
    """What a stateless verification established.

    ``unverified`` is the node the block path reached when no upgrade consumed
    it: it must equal a node the verifier already trusts.  With an upgrade,
    ``length``/``roots``/``tree_hash`` describe the newly signed state and
    ``nodes`` holds every node computed or received.
    """

    __slots__ = ("unverified", "upgraded", "length", "byte_length", "roots", "tree_hash",
                 "nodes")

    def __init__(self) -> None:
        self.unverified: Optional[Node] = None
        self.upgraded = False
        self.length = 0
        self.byte_length = 0
        self.roots: List[Node] = []
        self.tree_hash = b""
        self.nodes: List[Node] = []


class ApplyResult:
    """What :meth:`Core.apply_proof` verified and stored.

    ``upgraded``: the signed length/fork moved; ``reorg``: a newer fork replaced
    local history beyond ``reorg_length``; ``block_stored``: the proved block
    (``block_index``) was the next contiguous one and is now held - a verified
    block further ahead is not stored; ``length``: the signed length after.
    """

    __slots__ = ("fork", "upgraded", "reorg", "reorg_length", "block_index", "block_stored",
                 "manifest_learned", "length")

    def __init__(self) -> None:
        self.fork = 0
        self.upgraded = False
        self.reorg = False
        self.reorg_length = 0
        self.block_index: Optional[int] = None
        self.block_stored = False
        self.manifest_learned = False
        self.length = 0

    def __repr__(self) -> str:
        return "ApplyResult(%s)" % ", ".join("%s=%r" % (k, getattr(self, k))
                                             for k in self.__slots__)
