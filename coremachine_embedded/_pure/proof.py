"""Merkle proofs: building them (prover) and checking them (verifier).

DEV NOTES.  A proof is a hypercore ``data`` message.  The prover answers a
request for a block (``index`` and ``nodes``, the number of tree levels the
requester is missing above the leaf) and/or an upgrade from the requester's
length ``start`` by ``length`` blocks.  The signature is always the prover's
latest; when the upgrade stops short of it, ``additional`` nodes lead on to the
signed length.  The verifier hashes the block up its path (B), then rebuilds the
roots of the new length from its trusted roots plus the upgrade nodes, taking B
where the upgrade would have sent that node, and checks the signature over the
new tree hash.  If the upgrade did not use B (or there is no upgrade), B must
equal a node the verifier already trusts.  Node selection mirrors hypercore's
generateProof so that proofs are byte-identical to the JavaScript ones.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

from ..encoding import DataMessage, Node
from ..caps import MAX_BLOCK_INDEX, MAX_NODE_INDEX, MAX_NODE_SIZE, MAX_PROOF_NODES
from ..errors import InvalidArgumentError, InvalidProofError, OutOfRangeError
from ..proofs import Check
from . import flat
from .crypto import Verifier, hash_leaf, hash_parent, tree_hash


def _merge_push(stack: List[Node], node: Node, out: List[Node]) -> None:
    stack.append(node)
    out.append(node)
    while len(stack) >= 2:
        top = stack[-1]
        below = stack[-2]
        if flat.sibling(top[0]) != below[0]:
            break
        parent = hash_parent(below, top, flat.parent(top[0]))
        del stack[-2:]
        stack.append(parent)
        out.append(parent)


def _check_node(node: Node) -> None:
    if node[0] >= MAX_NODE_INDEX or node[1] >= MAX_NODE_SIZE:
        raise InvalidProofError("node index or size out of range")


def _path(start: Node, nodes: List[Node], out: List[Node]) -> Node:
    """Hash ``start`` up through its siblings ``nodes``."""
    cur = start
    out.append(cur)
    for node in nodes:
        _check_node(node)
        if node[0] != flat.sibling(cur[0]):
            raise InvalidProofError("expected node %d, got %d" % (flat.sibling(cur[0]), node[0]))
        a, b = (cur, node) if cur[0] < node[0] else (node, cur)
        cur = hash_parent(a, b, flat.parent(cur[0]))
        if cur[1] >= MAX_NODE_SIZE:
            raise InvalidProofError("node size out of range")
        out.append(node)
        out.append(cur)
    return cur


def check(verifier: Verifier, roots: List[Node], msg: DataMessage) -> Check:
    """Verify ``msg`` against trusted ``roots``; raise InvalidProofError/
    InvalidSignatureError.  See :class:`Check`."""
    result = Check()
    out = result.nodes
    pending: Optional[Node] = None
    if msg.seek is not None:
        raise InvalidProofError("seek proofs are not supported")
    if msg.block is not None and msg.hash is not None:
        raise InvalidProofError("a block and a hash proof in one message")
    if msg.block is not None:
        index, value, nodes = msg.block
        if index >= MAX_BLOCK_INDEX:
            raise InvalidProofError("block index out of range")
        pending = _path(hash_leaf(index, value), nodes, out)
    elif msg.hash is not None:
        index, nodes = msg.hash
        if index >= MAX_NODE_INDEX or not nodes or nodes[0][0] != index:
            raise InvalidProofError("hash proof does not start at its node")
        _check_node(nodes[0])
        pending = _path(nodes[0], nodes[1:], out)

    if msg.upgrade is None:
        result.unverified = pending
        return result

    start, length, up_nodes, additional, signature = msg.upgrade
    trusted_length = sum(flat.count_leaves(r[0]) for r in roots)
    if start != trusted_length:
        raise InvalidProofError("upgrade starts at %d, trusted length is %d"
                                % (start, trusted_length))
    if length == 0 or start + length >= MAX_BLOCK_INDEX:
        raise InvalidProofError("upgrade length out of range")

    queue = iter(up_nodes)
    consumed = [pending is None]

    def take(index: int) -> Node:
        if not consumed[0] and pending is not None and pending[0] == index:
            consumed[0] = True
            return pending
        node = next(queue, None)
        if node is None:
            raise InvalidProofError("expected node %d, got none" % index)
        _check_node(node)
        if node[0] != index:
            raise InvalidProofError("expected node %d, got %d" % (index, node[0]))
        return node

    stack = list(roots)
    j = 0
    grow = len(roots) > 0
    for r in flat.full_roots(start + length):
        if j < len(roots) and roots[j][0] == r:
            j += 1
            continue
        if grow:
            grow = False
            if j < len(roots):
                p = stack[-1][0]
                while p != r:
                    _merge_push(stack, take(flat.sibling(p)), out)
                    p = stack[-1][0]
                continue
        _merge_push(stack, take(r), out)
    if next(queue, None) is not None:
        raise InvalidProofError("unused upgrade nodes")

    k = 0
    p = flat.sibling(stack[-1][0])
    while k < len(additional) and additional[k][0] == p:
        _check_node(additional[k])
        _merge_push(stack, additional[k], out)
        k += 1
        p = flat.sibling(stack[-1][0])
    while k < len(additional):
        node = additional[k]
        _check_node(node)
        k += 1
        while p != node[0]:
            if p & 1 == 0:
                raise InvalidProofError("unexpected additional node %d" % node[0])
            p = flat.left_child(p)
        _merge_push(stack, node, out)
        p = flat.sibling(stack[-1][0])

    for a, b in zip(stack, stack[1:]):
        if flat.right_span(a[0]) + 2 != flat.left_span(b[0]):
            raise InvalidProofError("upgrade roots are not contiguous")
    if flat.left_span(stack[0][0]) != 0:
        raise InvalidProofError("upgrade roots do not start at block 0")
    new_length = flat.right_span(stack[-1][0]) // 2 + 1
    if [r for r in flat.full_roots(new_length)] != [n[0] for n in stack]:
        raise InvalidProofError("upgrade does not end on a full set of roots")
    digest = tree_hash(stack)
    verifier.check(digest, new_length, msg.fork, signature)
    result.upgraded = True
    result.length = new_length
    result.byte_length = sum(n[1] for n in stack)
    result.roots = stack
    result.tree_hash = digest
    if not consumed[0]:
        result.unverified = pending
    return result


# --- prover -------------------------------------------------------------------

GetNode = Callable[[int], Node]


def _nodes_to_root(index: int, nodes: int, head: int) -> int:
    for _ in range(nodes):
        index = flat.parent(index)
        if flat.contains(index, head):
            raise InvalidArgumentError("nodes is out of bounds")
    return index


def _block_path(get_node: GetNode, node: int, root: int, out: List[Node]) -> None:
    i = node
    while i != root:
        i = flat.sibling(i)
        out.append(get_node(i))
        i = flat.parent(i)


def _upgrade_nodes(get_node: GetNode, from_: int, to: int, node: Optional[int],
                   sub_tree: int, block_nodes: List[Optional[List[Node]]]) -> List[Node]:
    """Nodes that take a verifier from length from_/2 to to/2.  When the block
    path is needed to build one of them, it goes into block_nodes[0]."""
    out: Optional[List[Node]] = [] if from_ == 0 else None
    for r in flat.full_roots(to // 2):
        if r + (1 << flat.depth(r)) < from_:
            continue  # the verifier has it
        if out is None and flat.contains(r, from_ - 2):
            out = []
            target = from_ - 2
            i = target
            while i != r:
                i = flat.sibling(i)
                if i > target:
                    if node is not None and block_nodes[0] is None and flat.contains(i, sub_tree):
                        path: List[Node] = []
                        _block_path(get_node, node, i, path)
                        block_nodes[0] = path
                    else:
                        out.append(get_node(i))
                i = flat.parent(i)
            continue
        if out is None:
            out = []
        if node is not None and block_nodes[0] is None and flat.contains(r, sub_tree):
            path = []
            _block_path(get_node, node, r, path)
            block_nodes[0] = path
            continue
        out.append(get_node(r))
    return out or []


def build(get_node: GetNode, length: int, fork: int, signature: bytes,
          block: Optional[Tuple[int, bytes, int]],
          upgrade: Optional[Tuple[int, int]], request: int = 0,
          manifest: Optional[bytes] = None) -> DataMessage:
    """Answer a request: ``block`` is ``(index, value, nodes)``, ``upgrade`` is
    ``(start, length)``."""
    head = 2 * length
    msg = DataMessage(request, fork)
    msg.manifest = manifest
    if upgrade is not None:
        from_ = 2 * upgrade[0]
        to = from_ + 2 * upgrade[1]
        if upgrade[0] < 0 or upgrade[1] <= 0 or to > head:
            raise InvalidArgumentError("invalid upgrade %d+%d at length %d"
                                       % (upgrade[0], upgrade[1], length))
    else:
        from_, to = 0, head
    block_nodes: List[Optional[List[Node]]] = [None]
    node = None
    sub_tree = head
    if block is not None:
        index, _, nodes = block
        if index < 0 or index >= length:
            raise OutOfRangeError("block %d is outside a log of %d blocks" % (index, length))
        if nodes < 0 or nodes > MAX_PROOF_NODES:
            raise InvalidArgumentError("nodes must be between 0 and %d" % MAX_PROOF_NODES)
        node = 2 * index
        if upgrade is None or index < upgrade[0]:
            sub_tree = _nodes_to_root(node, nodes, to)
            path: List[Node] = []
            _block_path(get_node, node, sub_tree, path)
            block_nodes[0] = path
        else:
            sub_tree = node
    if upgrade is not None:
        nodes_up = _upgrade_nodes(get_node, from_, to, node, sub_tree, block_nodes)
        additional = _upgrade_nodes(get_node, to, head, None, head, [None]) if head > to else []
        msg.upgrade = (upgrade[0], upgrade[1], nodes_up, additional, signature)
    if block is not None:
        if block_nodes[0] is None:  # past the end of the upgrade
            raise InvalidArgumentError("block %d is not covered by the upgrade" % block[0])
        msg.block = (block[0], block[1], block_nodes[0])
    return msg
