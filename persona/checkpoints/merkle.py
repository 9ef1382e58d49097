"""RFC 6962 / RFC 9162 Merkle tree hashing with inclusion and consistency proofs.

The audit log's records are the leaves of one append-only Merkle tree: a signed checkpoint (tree size +
root) then commits to every record before it, an inclusion proof shows one record is in it, and a
consistency proof shows a later tree extends an earlier one (nothing before it was rewritten). Hashing is
RFC 6962's: ``leaf = SHA-256(0x00 || data)``, ``node = SHA-256(0x01 || left || right)``, the empty tree is
``SHA-256("")``. Proof generation follows RFC 6962 §2.1.1-2.1.2 (PATH, SUBPROOF); verification follows
RFC 9162 §2.1.3.2 and §2.1.4.2 step by step, as transparency-dev/merkle's ``proof/verify.go`` does, and is
tested against the same vectors and corruption probes (tests/test_merkle.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from persona.errors import AuditIntegrityError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(AuditIntegrityError):
    """A proof does not verify: the tree it came from is not the one the checkpoint commits to."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class TreeBuilder:
    """An RFC 6962 tree built leaf by leaf in O(log n) memory: the compact range ``[0, size)``.

    ``nodes`` are the roots of the perfect subtrees that make up the first ``size`` leaves, left to right
    (one per set bit of ``size``, largest first), as transparency-dev/merkle's ``compact.Range`` keeps them.
    They are all a pruned prefix of the log needs to keep for the root of any later tree to be computed.
    """

    __slots__ = ("_heights", "_nodes", "size")

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        heights = [bit for bit in range(size.bit_length() - 1, -1, -1) if size >> bit & 1]
        if size < 0 or len(heights) != len(nodes) or any(len(n) != HASH_SIZE for n in nodes):
            raise ProofError(f"a compact range of {size} leaves has {len(heights)} nodes of 32 bytes")
        self.size, self._heights, self._nodes = size, heights, list(nodes)

    @property
    def nodes(self) -> tuple[bytes, ...]:
        return tuple(self._nodes)

    def append(self, leaf: bytes) -> None:
        self.append_node(0, leaf)

    def append_node(self, height: int, node: bytes) -> None:
        """Append a whole perfect subtree of ``2**height`` leaves (a :class:`RangeBuilder`'s node)."""
        if self.size % (1 << height):
            raise ProofError(f"a subtree of {1 << height} leaves cannot follow {self.size} leaves")
        self.size += 1 << height
        heights, nodes = self._heights, self._nodes
        while heights and heights[-1] == height:
            heights.pop()
            node = node_hash(nodes.pop(), node)
            height += 1
        heights.append(height)
        nodes.append(node)

    def copy(self) -> TreeBuilder:
        return TreeBuilder(self.size, self._nodes)

    def root(self) -> bytes:
        """MTH of the leaves so far: the ragged right edge folded from the right, as MTH's recursion does."""
        if not self._nodes:
            return EMPTY_ROOT
        node = self._nodes[-1]
        for left in reversed(self._nodes[:-1]):
            node = node_hash(left, node)
        return node


class RangeBuilder:
    """The compact range ``[begin, begin + count)`` of leaves appended one by one: the maximal perfect subtrees
    that lie inside it, left to right, as ``(height, hash)`` (transparency-dev/merkle's ``compact.Range``
    with any ``begin``). Pieces of one tree built apart (a parallel verify's segments) are joined by appending
    each range's nodes, in order, to the :class:`TreeBuilder` of everything before it."""

    __slots__ = ("_heights", "_nodes", "_starts", "begin", "end")

    def __init__(self, begin: int) -> None:
        self.begin = self.end = begin
        self._heights: list[int] = []
        self._starts: list[int] = []
        self._nodes: list[bytes] = []

    def append(self, leaf: bytes) -> None:
        heights, starts, nodes = self._heights, self._starts, self._nodes
        height, start, node = 0, self.end, leaf
        while heights and heights[-1] == height and not starts[-1] >> height & 1:
            heights.pop()
            start = starts.pop()
            node = node_hash(nodes.pop(), node)
            height += 1
        heights.append(height)
        starts.append(start)
        nodes.append(node)
        self.end += 1

    @property
    def nodes(self) -> tuple[tuple[int, bytes], ...]:
        return tuple(zip(self._heights, self._nodes, strict=True))


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of leaf hashes, in O(n) hashes (no recursion)."""
    tree = TreeBuilder()
    for leaf in leaves:
        tree.append(leaf)
    return tree.root()


class Tree:
    """The log's tree for proofs: the leaves still stored, after a pruned prefix kept as its compact range.

    Proof generation follows RFC 6962 §2.1.1-2.1.2 (PATH, SUBPROOF) over ranges ``[lo, hi)``. A range
    inside the pruned prefix is available only as one of its compact-range nodes, which is every range a
    proof of a stored leaf, or between trees no smaller than the prefix, ever needs; anything else is a
    :class:`ProofError` naming the prune.
    """

    def __init__(self, leaves: Sequence[bytes], *, pruned: int = 0, nodes: Sequence[bytes] = ()) -> None:
        TreeBuilder(pruned, nodes)  # validates the compact range
        self.pruned, self._leaves = pruned, leaves
        self.size = pruned + len(leaves)
        self._nodes: dict[tuple[int, int], bytes] = {}
        lo = 0
        for bit, node in zip([b for b in range(pruned.bit_length() - 1, -1, -1) if pruned >> b & 1], nodes,
                             strict=True):  # fmt: skip
            self._nodes[(lo, lo + (1 << bit))] = node
            lo += 1 << bit

    def leaf(self, index: int) -> bytes:
        if index < self.pruned:
            raise ProofError(
                f"record {index + 1} was pruned (records 1..{self.pruned}): it has no proof any more"
            )
        return self._leaves[index - self.pruned]

    def hash(self, lo: int, hi: int) -> bytes:
        """MTH of leaves ``[lo, hi)``."""
        if hi <= self.pruned:
            node = self._nodes.get((lo, hi))
            if node is not None:
                return node
            if (hi - lo) & (hi - lo - 1) == 0:  # a perfect subtree inside one kept node: gone with the prune
                raise ProofError(
                    f"records {lo + 1}..{hi} lie inside the pruned range 1..{self.pruned}: this proof needs them"
                )
        elif lo >= self.pruned:
            return root(self._leaves[lo - self.pruned : hi - self.pruned])
        k = _split(hi - lo)
        return node_hash(self.hash(lo, lo + k), self.hash(lo + k, hi))

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if not self.pruned <= size <= self.size:
            raise ProofError(
                f"the tree of size {size} cannot be computed: the log holds {self.pruned}..{self.size}"
            )
        return EMPTY_ROOT if size == 0 else self.hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(m, D[n]) (RFC 6962 §2.1.1): the audit path of leaf ``index`` in the tree of ``size``."""
        size = self.size if size is None else size
        if not 0 <= index < size <= self.size:
            raise ValueError(f"leaf {index} is not in a tree of {size}")
        self.leaf(index)
        return self._path(index, 0, size)

    def _path(self, m: int, lo: int, hi: int) -> list[bytes]:
        if hi - lo == 1:
            return []
        k = _split(hi - lo)
        if m < lo + k:
            return [*self._path(m, lo, lo + k), self.hash(lo + k, hi)]
        return [*self._path(m, lo + k, hi), self.hash(lo, lo + k)]

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """PROOF(m, D[n]) (RFC 6962 §2.1.2) from the tree of ``size1`` leaves to the tree of ``size2``."""
        size2 = self.size if size2 is None else size2
        if not 0 <= size1 <= size2 <= self.size:
            raise ValueError(f"a tree of {size1} is not a prefix of a tree of {size2}")
        if size1 in (0, size2):
            return []
        return self._subproof(size1, 0, size2, True)

    def _subproof(self, m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        if m == hi:
            return [] if complete else [self.hash(lo, hi)]
        k = _split(hi - lo)
        if m <= lo + k:
            return [*self._subproof(m, lo, lo + k, complete), self.hash(lo + k, hi)]
        return [*self._subproof(m, lo + k, hi, False), self.hash(lo, lo + k)]


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) over all of ``leaves``."""
    return Tree(leaves).inclusion_proof(index)


def consistency_proof(size1: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) from the tree of ``size1`` leaves to the tree of all of ``leaves``."""
    return Tree(leaves).consistency_proof(size1)


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2: the root that ``proof`` implies for ``leaf`` at ``index`` in a tree of ``size``."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    if len(leaf) != HASH_SIZE or any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("a hash in the proof is not 32 bytes")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError(f"the proof is longer than a tree of size {size} allows")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"the proof is shorter than a tree of size {size} needs")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes
) -> None:
    got = root_from_inclusion(index, size, leaf, proof)
    if got != expected_root:
        raise ProofError(
            f"record {index + 1} is not in the tree of size {size}: its proof leads to root {got.hex()[:16]}…, "
            f"the checkpoint says {expected_root.hex()[:16]}…"
        )


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """RFC 9162 §2.1.4.2: the tree of ``size2`` (``root2``) extends the tree of ``size1`` (``root1``)."""
    if size2 < size1:
        raise ProofError(f"a tree of size {size2} cannot extend one of size {size1} (the log went back)")
    if size1 == size2:
        if proof:
            raise ProofError("equal tree sizes need an empty consistency proof")
        if root1 != root2:
            raise ProofError(f"two different roots for the same tree size {size1}")
        return
    if size1 == 0:
        if proof:
            raise ProofError("a consistency proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError(f"no consistency proof from size {size1} to {size2}")
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("a hash in the proof is not 32 bytes")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # a power of two: the first tree is a subtree, its root starts the path
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"the consistency proof is longer than sizes {size1} -> {size2} allow")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"the consistency proof is shorter than sizes {size1} -> {size2} need")
    if fr != root1:
        raise ProofError(
            f"the tree of size {size1} was rewritten: its root does not match the older checkpoint"
        )
    if sr != root2:
        raise ProofError(f"the tree of size {size2} does not extend the one of size {size1}")


def check_prefix(leaves: Sequence[bytes], size: int, expected_root: bytes, *, what: str, short: str) -> None:
    """The first ``size`` of ``leaves`` have ``expected_root`` (a signed checkpoint's), else :class:`ProofError`:
    ``short`` says why too few records may be there, ``what`` names them ("the log", "the export")."""
    if len(leaves) < size:
        raise ProofError(f"{what} has {len(leaves)} records, and the checkpoint signed {size}: {short}")
    if root(leaves[:size]) != expected_root:
        raise ProofError(
            f"the first {size} records are not the ones the checkpoint signed: a record before {size + 1} was "
            "changed, removed, inserted or re-chained"
        )
