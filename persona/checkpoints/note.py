"""Signed checkpoints in the C2SP formats: ``tlog-checkpoint`` bodies inside ``signed-note`` envelopes.

A checkpoint commits to a log of ``size`` records with root hash ``root`` (RFC 6962, see ``merkle.py``)::

    <origin>\\n
    <size, decimal>\\n
    <root, base64>\\n
    [<extension line>\\n ...]
    \\n
    — <key name> <base64(key id[4] || Ed25519 signature[64])>\\n

The signature covers the body including its final newline; the key id is the first four bytes of
SHA-256(key name || 0x0A || 0x01 || public key); a verifier key is ``<name>+<hex key id>+<base64(0x01 ||
public key)>``. Byte-compatible with Go's golang.org/x/mod/sumdb/note and transparency-dev (tested against
the sumdb/note known-answer vector), so any C2SP tool can check our checkpoints.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from persona.errors import AuditIntegrityError

ALG_ED25519 = 0x01
DASH = "\u2014 "
MAX_SIGNATURES = 100
_NAME = re.compile(r"^[^\s+]+$")


class CheckpointError(AuditIntegrityError):
    """A checkpoint cannot be read or its signature does not verify with the key given."""


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = field(default=())

    def body(self) -> str:
        if not self.origin or "\n" in self.origin:
            raise ValueError("a checkpoint's origin is one non-empty line")
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "".join(f"{line}\n" for line in lines)

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        lines = body.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise CheckpointError(
                "a checkpoint body is origin, size and root hash lines, each ended by a newline"
            )
        origin, size_text, root_text, *extensions = lines[:-1]
        if not origin:
            raise CheckpointError("the checkpoint's first line (its origin) is empty")
        if not re.fullmatch(r"0|[1-9][0-9]{0,19}", size_text):
            raise CheckpointError(f"the checkpoint's tree size {size_text!r} is not a decimal number")
        try:
            root = base64.b64decode(root_text, validate=True)
        except (binascii.Error, ValueError):
            raise CheckpointError(f"the checkpoint's root hash {root_text!r} is not base64") from None
        if len(root) != 32:
            raise CheckpointError(f"the checkpoint's root hash is {len(root)} bytes, not 32")
        if any(not line for line in extensions):
            raise CheckpointError("a checkpoint extension line is empty")
        return cls(origin, int(size_text), root, tuple(extensions))


def key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public).digest()[:4]


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


class NoteSigner:
    """Signs checkpoints as ``name`` with an Ed25519 key."""

    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        if not _NAME.match(name):
            raise ValueError(f"a key name has no spaces and no '+': {name!r}")
        self.name, self._key = name, key
        self._public = _raw(key.public_key())
        self.key_id = key_id(name, self._public)

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        """Go's ``PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>``."""
        parts = skey.split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise CheckpointError("a signer key reads PRIVATE+KEY+<name>+<key id>+<key>")
        raw = base64.b64decode(parts[4])
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise CheckpointError("the signer key is not an Ed25519 key")
        signer = cls(parts[2], Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.key_id.hex() != parts[3]:
            raise CheckpointError("the signer key's id does not match its key")
        return signer

    @property
    def vkey(self) -> str:
        """The verifier key to hand out (what ``persona audit pubkey`` prints)."""
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(bytes([ALG_ED25519]) + self._public).decode()}"

    def sign_text(self, text: str) -> str:
        if not text.endswith("\n") or "\n\n" in text:
            raise ValueError("a note's text ends with one newline and has no blank line")
        signature = self._key.sign(text.encode())
        blob = base64.b64encode(self.key_id + signature).decode()
        return f"{text}\n{DASH}{self.name} {blob}\n"

    def sign(self, checkpoint: Checkpoint) -> str:
        return self.sign_text(checkpoint.body())


class NoteVerifier:
    def __init__(self, name: str, public: Ed25519PublicKey) -> None:
        self.name, self._public = name, public
        self.key_id = key_id(name, _raw(public))

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3 or not _NAME.match(parts[0]):
            raise CheckpointError(
                "a verifier key reads <name>+<key id>+<key>, as `persona audit pubkey` prints"
            )
        try:
            raw = base64.b64decode(parts[2], validate=True)
        except (binascii.Error, ValueError):
            raise CheckpointError("the verifier key's key part is not base64") from None
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise CheckpointError("the verifier key is not an Ed25519 key")
        verifier = cls(parts[0], Ed25519PublicKey.from_public_bytes(raw[1:]))
        if verifier.key_id.hex() != parts[1].lower():
            raise CheckpointError("the verifier key's id does not match its key (a mistyped or altered key)")
        return verifier

    def open_text(self, note: str) -> str:
        """The note's text, if a signature line of this key verifies it; else :class:`CheckpointError`."""
        cut = note.rfind("\n\n")
        if cut < 0 or not note.endswith("\n"):
            raise CheckpointError("not a signed note: no blank line before the signature lines")
        text, sigs = note[: cut + 1], note[cut + 2 :].split("\n")[:-1]
        if not sigs or len(sigs) > MAX_SIGNATURES:
            raise CheckpointError(f"a signed note has 1 to {MAX_SIGNATURES} signature lines")
        for line in sigs:
            if not line.startswith(DASH) or line.count(" ") != 2:
                raise CheckpointError(f"not a signature line: {line[:60]!r}")
            name, blob = line[len(DASH) :].split(" ")
            try:
                raw = base64.b64decode(blob, validate=True)
            except (binascii.Error, ValueError):
                raise CheckpointError(f"the signature of {name} is not base64") from None
            if name != self.name or raw[:4] != self.key_id:
                continue  # another key's signature (a witness): not ours to judge
            try:
                self._public.verify(raw[4:], text.encode())
            except InvalidSignature:
                raise CheckpointError(f"the signature of {name} does not verify: the checkpoint was altered "
                                      "or signed with another key") from None  # fmt: skip
            return text
        raise CheckpointError(f"the note has no signature by {self.name} ({self.key_id.hex()})")

    def open(self, note: str) -> Checkpoint:
        return Checkpoint.parse(self.open_text(note))
