"""The checkpoint signing key: ``PERSONA_AUDIT_SIGNING_KEY`` or a 0600 key file created on first use.

Separate from the master key on purpose: the master key protects Plisio credentials at rest, this one
vouches for the audit log's history, and its public half (``persona audit pubkey``) is what an auditor
keeps. Like the master key, it fails closed: a key file others can read, or an unreadable value, is an
error that says where and how to fix it; the key text is registered with the scrubber when read.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from persona.checkpoints.note import ALG_ED25519, CheckpointError, NoteSigner
from persona.settings import Settings
from tools.redaction import register_secret


def skey_of(name: str, key: Ed25519PrivateKey) -> str:
    """Go sumdb/note's signer key text: ``PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>``."""
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    signer = NoteSigner(name, key)
    return (
        f"PRIVATE+KEY+{name}+{signer.key_id.hex()}+{base64.b64encode(bytes([ALG_ED25519]) + seed).decode()}"
    )


def signing_key_path(settings: Settings) -> Path:
    return settings.beside_store(settings.audit.signing_key_file, "audit-signing.key")


def load_signer(settings: Settings, *, create: bool = True) -> NoteSigner:
    if settings.audit_signing_key is not None:
        text = settings.audit_signing_key.get_secret_value().strip()
        register_secret(text)
        return _parse(text, "$PERSONA_AUDIT_SIGNING_KEY")
    path = signing_key_path(settings)
    if not path.exists():
        if not create:
            raise CheckpointError(
                f"no checkpoint signing key at {path} (fix: on the server that signs, set PERSONA_AUDIT_SIGNING_KEY or "
                "audit.signing_key_file to its key; elsewhere, pass --pubkey with the key `persona audit pubkey` "
                "printed there)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        text = skey_of(settings.audit.origin, Ed25519PrivateKey.generate())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(text + "\n")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CheckpointError(
            f"the checkpoint signing key {path} is readable by other users (mode {mode:o}); fix: chmod 600 {path}"
        )
    text = path.read_text(encoding="ascii").strip()
    register_secret(text)
    return _parse(text, str(path))


def _parse(text: str, where: str) -> NoteSigner:
    try:
        return NoteSigner.from_skey(text)
    except (CheckpointError, ValueError) as exc:
        raise CheckpointError(
            f"the checkpoint signing key in {where} cannot be used: {exc} (fix: remove the file to create a new "
            "key, or set PERSONA_AUDIT_SIGNING_KEY to a PRIVATE+KEY+... value)"
        ) from None
