"""Replays every core of the JavaScript hypercore 11.39.5 vectors through the
selected backend: keys, discovery keys, every tree node, roots, tree hash and
signature of every signed state, and every proof (byte for byte, verified, and
rejected when altered)."""
from __future__ import annotations

import json
from typing import Dict, List

import pytest

import coremachine_embedded as cm
from coremachine_embedded import _backend
from coremachine_embedded._pure import flat
from coremachine_embedded.encoding import DataMessage
from coremachine_embedded.errors import InvalidProofError

impl = _backend.impl

with open(__import__("tests.conftest", fromlist=["VECTORS_PATH"]).VECTORS_PATH) as _f:
    _VECTORS = json.load(_f)
CORES = {c["name"]: c for c in _VECTORS["cores"]}


def node(n: dict) -> tuple:
    return (n["index"], n["size"], bytes.fromhex(n["hash"]))


def test_flat_tree_indexes(vectors: dict) -> None:
    for e in vectors["flat_tree"]["indexes"]:
        i = e["index"]
        assert flat.depth(i) == e["depth"], i
        assert flat.offset(i) == e["offset"], i
        assert flat.parent(i) == e["parent"], i
        assert flat.sibling(i) == e["sibling"], i
        assert flat.left_span(i) == e["left_span"], i
        assert flat.right_span(i) == e["right_span"], i
        assert flat.count_leaves(i) == e["count_leaves"], i
        if e["children"] is not None:
            assert [flat.left_child(i), flat.right_child(i)] == e["children"], i


def test_full_roots(vectors: dict) -> None:
    for e in vectors["flat_tree"]["full_roots"]:
        assert list(impl.full_roots(e["length"])) == e["full_roots"], e["length"]


def test_primitives(vectors: dict) -> None:
    p = vectors["primitives"]
    for e in p["leaf"]:
        data = bytes.fromhex(e["data"])
        assert impl.hash_leaf(0, data) == (0, len(data), bytes.fromhex(e["hash"]))
    for e in p["parent"]:
        got = impl.hash_parent(node(e["left"]), node(e["right"]), e["index"])
        assert got == (e["index"], e["size"], bytes.fromhex(e["hash"]))
    for e in p["tree"]:
        assert impl.tree_hash([node(r) for r in e["roots"]]) == bytes.fromhex(e["hash"])
    for e in p["discovery_key"]:
        assert impl.discovery_key(bytes.fromhex(e["key"])) == bytes.fromhex(e["discovery_key"])
    assert impl.tree_hash([]).hex() == vectors["constants"]["empty_tree_hash"]


def history(name: str) -> List[dict]:
    """The chronological operations that produced a vector core: append calls
    and truncations, each followed by the state it signs."""
    core = CORES[name]
    ops: List[dict] = []
    if "truncated_from" in core:
        ops = history(core["truncated_from"]["entry"])
    states = core["states"]
    blocks = [bytes.fromhex(b["hex"]) for b in core["blocks"]]
    prev = states[0]
    if "truncated_from" in core:
        ops.append({"op": "truncate", "length": prev["length"], "state": prev, "core": name})
    for st in states[1:]:
        ops.append({"op": "append", "blocks": blocks[prev["length"]:st["length"]], "state": st,
                    "core": name})
        prev = st
    return ops


def open_writer(core: dict, directory: str) -> cm.Core:
    kp = cm.KeyPair.from_seed(bytes.fromhex(core["seed"]))
    assert kp.public_key.hex() == core["public_key"]
    assert kp.secret_key.hex() == core["secret_key"]
    manifest = None
    if not core["compat"] and core["manifest"]["version"] != 1:
        manifest = bytes.fromhex(core["manifest_encoded"])
    return cm.Core(directory, key_pair=kp, compat=core["compat"], manifest=manifest)


def assert_state(c: cm.Core, st: dict) -> None:
    assert c.length == st["length"]
    assert c.fork == st["fork"]
    assert c.byte_length == st["byte_length"]
    assert c.roots() == [node(r) for r in st["roots"]]
    assert c.tree_hash().hex() == st["tree_hash"]
    assert (c.signature.hex() if c.signature else None) == st["signature"]


@pytest.mark.parametrize("name", sorted(CORES))
def test_core_history(name: str, tmp_path) -> None:
    core = CORES[name]
    c = open_writer(core, str(tmp_path / "w"))
    try:
        assert c.key.hex() == core["key"]
        assert c.discovery_key.hex() == core["discovery_key"]
        if not core["compat"]:
            assert c.manifest.hex() == core["manifest_encoded"]
            assert core["manifest_hash"] == core["key"]
        assert_state(c, CORES[history(name)[0]["core"]]["states"][0])
        proofs_by_state: Dict[tuple, list] = {}
        for p in core["proofs"]:
            proofs_by_state.setdefault((p["at_length"], p["fork"]), []).append(p)
        checked = 0
        for op in history(name):
            if op["op"] == "append":
                assert c.append(op["blocks"]) == op["state"]["length"]
            else:
                c.truncate(op["length"])
            assert_state(c, op["state"])
            if op["core"] == name:
                for p in proofs_by_state.pop((c.length, c.fork), []):
                    check_proof(c, core, p)
                    checked += 1
        assert not proofs_by_state, "proofs at states never reached: %s" % list(proofs_by_state)
        assert checked == len(core["proofs"])
        assert [c.get(i).hex() for i in range(c.length)] == [b["hex"] for b in core["blocks"]]
        for n in core["nodes"]:
            assert c.get_node(n["index"]) == node(n)
    finally:
        c.close()
    # Reopened from disk, everything is the same.
    with cm.Core(str(tmp_path / "w")) as c:
        assert c.writable
        assert_state(c, core["states"][-1])
        assert [c.get(i).hex() for i in range(c.length)] == [b["hex"] for b in core["blocks"]]


def check_proof(c: cm.Core, core: dict, p: dict) -> None:
    req = p["request"]
    block = req["block"]
    up = req["upgrade"]
    wire = c.proof(block=block["index"] if block else None,
                   nodes=block["nodes"] if block else 0,
                   upgrade=(up["start"], up["length"]) if up else None, request=1)
    assert wire.hex() == p["wire_data_hex"]
    nodes = {n["index"]: node(n) for n in core["nodes"]}
    start = up["start"] if up else c.length
    roots = [nodes[i] for i in flat.full_roots(start)]
    manifest = None if core["compat"] else bytes.fromhex(core["manifest_encoded"])
    key = bytes.fromhex(core["key"])

    def verify(message: bytes) -> None:
        result = impl.check_proof(key, manifest, roots, message)
        if result.unverified is not None:
            u = tuple(result.unverified)
            if nodes.get(u[0]) != u:
                raise InvalidProofError("block does not match the trusted node")

    verify(wire)
    msg = DataMessage.decode(wire)
    for alter in alterations(msg):
        with pytest.raises(InvalidProofError):
            verify(alter.encode())


def _flip(b: bytes, i: int = 0) -> bytes:
    return b[:i] + bytes([b[i] ^ 1]) + b[i + 1:]


def alterations(msg: DataMessage) -> List[DataMessage]:
    out = []
    copy = lambda: DataMessage.decode(msg.encode())  # noqa: E731
    if msg.block is not None:
        m = copy()
        i, v, nodes = m.block
        m.block = (i, _flip(v) if v else b"\x00", nodes)
        out.append(m)
        if nodes:
            m = copy()
            i, v, nodes = m.block
            nodes = list(nodes)
            nodes[-1] = (nodes[-1][0], nodes[-1][1], _flip(nodes[-1][2], 5))
            m.block = (i, v, nodes)
            out.append(m)
    if msg.upgrade is not None:
        start, length, nodes, extra, sig = msg.upgrade
        m = copy()
        m.upgrade = (start, length, nodes, extra, _flip(sig, len(sig) - 10))
        out.append(m)
        if nodes:
            m = copy()
            n = list(nodes)
            n[0] = (n[0][0], n[0][1], _flip(n[0][2], 31))
            m.upgrade = (start, length, n, extra, sig)
            out.append(m)
        if extra:
            m = copy()
            n = list(extra)
            n[0] = (n[0][0], n[0][1] + 1, n[0][2])
            m.upgrade = (start, length, nodes, n, sig)
            out.append(m)
        m = copy()
        m.fork += 1
        out.append(m)
    assert out
    return out
