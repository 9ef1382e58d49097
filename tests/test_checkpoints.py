"""The checkpoint primitives against known answers: RFC 6962 roots and proofs (the vectors of
transparency-dev/merkle's proof/verify_test.go, with its corruption probes) and Go's sumdb/note
known-answer signature (golang.org/x/mod/sumdb/note)."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from persona.checkpoints import merkle
from persona.checkpoints.merkle import ProofError
from persona.checkpoints.note import Checkpoint, CheckpointError, NoteSigner, NoteVerifier

LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f",
)]  # fmt: skip
ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]  # fmt: skip
"""ROOTS[n] is the root of the first n leaves (ROOTS[0]: the empty tree)."""

INCLUSION = [  # (leaf index, tree size, proof)
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
CONSISTENCY = [  # (size1, size2, proof)
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
HASHES = [merkle.leaf_hash(d) for d in LEAVES]


def flips(path: list[bytes], bit: int) -> list[tuple[int, list[bytes]]]:
    """The proof with one bit of its i-th hash flipped, for each i (as transparency-dev's probes do)."""
    out = []
    for i in range(len(path)):
        flipped = [*path]
        flipped[i] = bytes([flipped[i][0] ^ bit]) + flipped[i][1:]
        out.append((i, flipped))
    return out


def survivors(probes: list[tuple[str, Callable[[], None]]]) -> list[str]:
    """The names of the corrupted proofs that verified anyway (there must be none)."""
    passed = []
    for name, probe in probes:
        try:
            probe()
            passed.append(name)
        except ProofError:
            pass
    return passed


def test_roots_match_rfc_6962_for_every_size() -> None:
    for n in range(len(LEAVES) + 1):
        assert merkle.root(HASHES[:n]) == ROOTS[n], f"size {n}"


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_the_vectors_and_resist_corruption(
    index: int, size: int, proof: list[str]
) -> None:
    path = [bytes.fromhex(p) for p in proof]
    assert merkle.inclusion_proof(index, HASHES[:size]) == path
    root, leaf = ROOTS[size], HASHES[index]
    merkle.verify_inclusion(index, size, leaf, path, root)
    probes: list[tuple[str, Callable[[], None]]] = [
        ("index - 1", lambda: merkle.verify_inclusion(index - 1, size, leaf, path, root)),
        ("index + 1", lambda: merkle.verify_inclusion(index + 1, size, leaf, path, root)),
        ("index ^ 2", lambda: merkle.verify_inclusion(index ^ 2, size, leaf, path, root)),
        ("size * 2", lambda: merkle.verify_inclusion(index, size * 2, leaf, path, root)),
        ("size / 2", lambda: merkle.verify_inclusion(index, size // 2, leaf, path, root)),
        ("wrong leaf", lambda: merkle.verify_inclusion(index, size, merkle.leaf_hash(b"x"), path, root)),
        ("empty root", lambda: merkle.verify_inclusion(index, size, leaf, path, merkle.EMPTY_ROOT)),
        ("random root", lambda: merkle.verify_inclusion(index, size, leaf, path, SOME_HASH)),
        ("trailing root", lambda: merkle.verify_inclusion(index, size, leaf, [*path, root], root)),
        ("preceding root", lambda: merkle.verify_inclusion(index, size, leaf, [root, *path], root)),
        ("trailing garbage", lambda: merkle.verify_inclusion(index, size, leaf, [*path, b""], root)),
        ("removed component", lambda: merkle.verify_inclusion(index, size, leaf, path[:-1], root)),
        ("inserted component", lambda: merkle.verify_inclusion(index, size, leaf, [path[0], SOME_HASH, *path[1:]], root)),
    ]  # fmt: skip
    for i, flipped in flips(path, 8):
        probes.append(
            (f"bit flip in proof[{i}]", lambda f=flipped: merkle.verify_inclusion(index, size, leaf, f, root))
        )  # type: ignore[misc]
    assert survivors(probes) == [], "corrupted proofs verified"


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_vectors_and_resist_corruption(
    size1: int, size2: int, proof: list[str]
) -> None:
    path = [bytes.fromhex(p) for p in proof]
    assert merkle.consistency_proof(size1, HASHES[:size2]) == path
    r1, r2 = ROOTS[size1], ROOTS[size2]
    merkle.verify_consistency(size1, size2, path, r1, r2)
    probes: list[tuple[str, Callable[[], None]]] = [
        ("size1 - 1", lambda: merkle.verify_consistency(size1 - 1, size2, path, r1, r2)),
        ("size1 + 1", lambda: merkle.verify_consistency(size1 + 1, size2, path, r1, r2)),
        ("size1 ^ 2", lambda: merkle.verify_consistency(size1 ^ 2, size2, path, r1, r2)),
        ("size2 * 2", lambda: merkle.verify_consistency(size1, size2 * 2, path, r1, r2)),
        ("size2 / 2", lambda: merkle.verify_consistency(size1, size2 // 2, path, r1, r2)),
        ("wrong root1", lambda: merkle.verify_consistency(size1, size2, path, SOME_HASH, r2)),
        ("wrong root2", lambda: merkle.verify_consistency(size1, size2, path, r1, SOME_HASH)),
        ("swapped roots", lambda: merkle.verify_consistency(size1, size2, path, r2, r1)),
        ("empty proof", lambda: merkle.verify_consistency(size1, size2, [], r1, r2)),
        ("trailing root1", lambda: merkle.verify_consistency(size1, size2, [*path, r1], r1, r2)),
        ("trailing root2", lambda: merkle.verify_consistency(size1, size2, [*path, r2], r1, r2)),
        ("preceding root2", lambda: merkle.verify_consistency(size1, size2, [r2, *path], r1, r2)),
        ("preceding proof[0]", lambda: merkle.verify_consistency(size1, size2, [path[0], *path], r1, r2)),
        ("truncated", lambda: merkle.verify_consistency(size1, size2, path[:-1], r1, r2)),
        ("time travel", lambda: merkle.verify_consistency(size2, size1, path, r2, r1)),
    ]  # fmt: skip
    for i, flipped in flips(path, 16):
        probes.append(
            (f"bit flip in proof[{i}]", lambda f=flipped: merkle.verify_consistency(size1, size2, f, r1, r2))
        )  # type: ignore[misc]
    assert survivors(probes) == [], "corrupted proofs verified"


def test_every_proof_of_larger_trees_round_trips() -> None:
    """Every leaf of every tree up to 40 leaves, and every pair of sizes: generated proofs verify."""
    hashes = [merkle.leaf_hash(bytes([i, i * 7 % 256])) for i in range(40)]
    for n in range(1, 41):
        top = merkle.root(hashes[:n])
        for i in range(n):
            merkle.verify_inclusion(i, n, hashes[i], merkle.inclusion_proof(i, hashes[:n]), top)
        for m in range(0, n + 1):
            merkle.verify_consistency(
                m, n, merkle.consistency_proof(m, hashes[:n]), merkle.root(hashes[:m]), top
            )


def test_a_pruned_prefix_kept_as_its_compact_range_gives_the_same_roots_and_proofs() -> None:
    """After records 1..p are pruned, their compact range (one node per set bit of p) is all it takes: every
    root of a tree no smaller than p, every stored record's inclusion proof and every consistency proof
    from a size no smaller than p are the full tree's; a proof of a pruned record is refused."""
    hashes = [merkle.leaf_hash(bytes([i, i * 5 % 256])) for i in range(25)]
    for n in range(1, 26):
        full = merkle.Tree(hashes[:n])
        for p in range(0, n + 1):
            kept = merkle.TreeBuilder()
            for leaf in hashes[:p]:
                kept.append(leaf)
            assert len(kept.nodes) == bin(p).count("1")
            tree = merkle.Tree(hashes[p:n], pruned=p, nodes=kept.nodes)
            assert tree.root() == full.root()
            for size in range(max(p, 1), n + 1):
                for i in range(p, size):
                    assert tree.inclusion_proof(i, size) == full.inclusion_proof(i, size), (n, p, size, i)
                for m in range(p, size + 1):
                    assert tree.consistency_proof(m, size) == full.consistency_proof(m, size), (n, p, m, size)
            if p:
                with pytest.raises(ProofError, match=f"record {p} was pruned"):
                    tree.inclusion_proof(p - 1)


def test_the_trivial_consistency_cases() -> None:
    some, other = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    merkle.verify_consistency(0, 0, [], some, some)
    merkle.verify_consistency(0, 5, [], some, other)
    merkle.verify_consistency(3, 3, [], other, other)
    for bad in ((1, 1, [], some, other), (0, 0, [], some, other), (1, 0, [], some, other), (1, 2, [], some, other),
                (1, 1, [some], some, some), (0, 1, [some], some, some)):  # fmt: skip
        with pytest.raises(ProofError):
            merkle.verify_consistency(*bad)  # type: ignore[arg-type]


# -- signed notes -------------------------------------------------------------------------------------

GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
GO_NOTE = (GO_TEXT + "\n\u2014 PeterNeumann "
           "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n")  # fmt: skip


def test_signed_notes_are_byte_compatible_with_go_sumdb_note() -> None:
    signer = NoteSigner.from_skey(GO_SKEY)
    assert signer.vkey == GO_VKEY
    assert signer.sign_text(GO_TEXT) == GO_NOTE
    assert NoteVerifier.from_vkey(GO_VKEY).open_text(GO_NOTE) == GO_TEXT


def test_a_checkpoint_signs_and_opens_and_refuses_every_alteration() -> None:
    signer = NoteSigner("persona.example/audit", Ed25519PrivateKey.generate())
    verifier = NoteVerifier.from_vkey(signer.vkey)
    cp = Checkpoint("persona.example/audit", 8, ROOTS[8])
    note = signer.sign(cp)
    assert note.startswith(f"persona.example/audit\n8\n{base64.b64encode(ROOTS[8]).decode()}\n\n\u2014 ")
    assert verifier.open(note) == cp
    altered = {
        "size": note.replace("\n8\n", "\n9\n", 1),
        "root": note.replace(base64.b64encode(ROOTS[8]).decode(), base64.b64encode(ROOTS[7]).decode()),
        "origin": note.replace("persona.example/audit\n", "persona.example/other\n", 1),
        "another key": NoteSigner("persona.example/audit", Ed25519PrivateKey.generate()).sign(cp),
        "no signature": cp.body() + "\n",
        "not a note": "hello",
    }
    for what, text in altered.items():
        with pytest.raises(CheckpointError):
            verifier.open(text)
        assert what  # each alteration is refused
    witness = NoteSigner("witness.example", Ed25519PrivateKey.generate())
    cosigned = note + witness.sign(cp).split("\n\n", 1)[1]  # a witness's line beside ours is ignored
    assert verifier.open(cosigned) == cp


@pytest.mark.parametrize(
    ("vkey", "why"),
    [
        ("nonsense", "reads <name>+<key id>+<key>"),
        ("PeterNeumann+00000000+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match its key"),
        ("PeterNeumann+c74f20a3+!!!", "not base64"),
        ("PeterNeumann+c74f20a3+AAAA", "not an Ed25519 key"),
    ],
)
def test_a_bad_verifier_key_is_refused_with_the_reason(vkey: str, why: str) -> None:
    with pytest.raises(CheckpointError, match=re.escape(why)):
        NoteVerifier.from_vkey(vkey)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("origin\n8\n", "origin, size and root"),
        ("origin\nx\nAAAA\n", "not a decimal number"),
        ("origin\n08\nAAAA\n", "not a decimal number"),
        ("origin\n8\n!!!\n", "not base64"),
        ("origin\n8\nAAAA\n", "not 32"),
        ("\n8\n" + base64.b64encode(bytes(32)).decode() + "\n", "origin"),
    ],
)
def test_a_malformed_checkpoint_body_is_refused_with_the_reason(body: str, why: str) -> None:
    with pytest.raises(CheckpointError, match=why):
        Checkpoint.parse(body)
