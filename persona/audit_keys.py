"""Keys for the audit log's per-record MACs: derived from the master key, versioned with it.

A record's MAC is ``HMAC-SHA-256(key[v], bytes.fromhex(hash))``: the hash already covers every field
and the link to the previous record, so the MAC keys all of it. ``key[v]`` is HKDF-SHA-256 of master-key
version ``v`` (info ``plisio-persona/v1|audit-mac|kv=<v>``, no salt: RFC 5869 §3.1 allows it for a
uniformly random input key). Whoever holds the database but not the master key can rewrite the chain, the
head and even the checkpoints' inputs, but cannot produce one valid MAC.

A master-key rotation (``persona connections rekey``) drops old master versions; the MAC keys derived from
them are then kept sealed under the current master key in ``audit_mac_keys`` (AES-GCM, bound to both
versions), so records keyed before the rotation still verify after it and new records use the new key:
the log is re-keyed forward, never rewritten.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from persona.masterkey import AAD_PREFIX, Keyring, seal, unseal

MAC_BYTES = 32


def derive(master: bytes, version: int) -> bytes:
    info = f"{AAD_PREFIX}|audit-mac|kv={version}".encode()
    return HKDF(algorithm=SHA256(), length=MAC_BYTES, salt=None, info=info).derive(master)


def sealed_aad(version: int, master_version: int) -> bytes:
    return f"{AAD_PREFIX}|audit-mac-key|kv={version}|mkv={master_version}".encode()


@dataclass(frozen=True)
class MacKeys:
    """The MAC key that keys new records (``current``) and every older one that can still be opened."""

    current: int
    keys: Mapping[int, bytes] = field(repr=False)
    unavailable: Mapping[int, str] = field(default_factory=dict)
    """Versions that exist but cannot be opened, and why (named by ``verify``)."""

    def sign(self, digest: str) -> str:
        return hmac.digest(self.keys[self.current], bytes.fromhex(digest), "sha256").hex()

    def why_missing(self, version: int) -> str:
        reason = self.unavailable.get(version)
        if reason is not None:
            return reason
        return (
            f"MAC key version {version} is neither in the master keyring nor kept in audit_mac_keys "
            "(fix: restore the master key file or PERSONA_MASTER_KEY that has it)"
        )

    @classmethod
    def of(cls, keyring: Keyring, sealed: Iterable[Any]) -> MacKeys:
        """Keys derived from every master version in ``keyring``, and the ``audit_mac_keys`` rows it opens."""
        keys = {version: derive(master, version) for version, master in keyring.keys.items()}
        unavailable: dict[int, str] = {}
        for row in sealed:
            version, master_version = int(row.key_version), int(row.master_version)
            if version in keys:
                continue
            master = keyring.keys.get(master_version)
            if master is None:
                unavailable[version] = (
                    f"MAC key version {version} is sealed under master key version {master_version}, which the "
                    "keyring no longer has (fix: restore the master key that has it)"
                )
                continue
            try:
                keys[version] = unseal(master, row.nonce, row.ciphertext, sealed_aad(version, master_version))
            except InvalidTag:
                unavailable[version] = (
                    f"the sealed MAC key version {version} in audit_mac_keys does not open: the row was altered "
                    "(records keyed with it cannot be checked)"
                )
        return cls(keyring.current, keys, unavailable)

    def sealed_rows(self, keyring: Keyring) -> list[dict[str, Any]]:
        """Every key but the current master's own, sealed under it: what ``audit_mac_keys`` holds after a rotation."""
        master = keyring.keys[keyring.current]
        rows = []
        for version, key in sorted(self.keys.items()):
            if version == keyring.current:
                continue
            nonce, ciphertext = seal(master, key, sealed_aad(version, keyring.current))
            rows.append({"key_version": version, "master_version": keyring.current, "nonce": nonce,
                         "ciphertext": ciphertext})  # fmt: skip
        return rows
