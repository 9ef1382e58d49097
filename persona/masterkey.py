"""The master key that wraps stored Plisio keys: where it lives, its versions, AES-GCM sealing.

The keyring comes from ``PERSONA_MASTER_KEY`` (read by :mod:`persona.config`) or from a key file
created with mode 0600 on first use. Either holds one base64url 32-byte key (version 1) or a JSON
keyring ``{"current": 2, "keys": {"1": "...", "2": "..."}}``; several versions exist only while a
master-key rotation re-wraps the rows. Anything odd (a missing key while ciphertexts exist, a
file other users could read, an unparsable value) is a :class:`VaultError` that says what, where
and how to fix it: the vault fails closed, there is no plaintext fallback. Key text is registered
with the scrubber as soon as it is read, and never appears in a message.

Associated data binds every ciphertext to its row: ``plisio-persona/v1|conn=<id>|persona=<name>|
slot=<slot>|kv=<version>``. AES-GCM refuses a ciphertext moved to any other row.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from persona.errors import VaultError
from tools.redaction import register_secret

if TYPE_CHECKING:
    from persona.settings import Settings

KEY_BYTES = 32
NONCE_BYTES = 12
AAD_PREFIX = "plisio-persona/v1"
CHECK_PLAINTEXT = b"plisio-persona master key check v1"
GENERATE_HINT = "python -c 'import base64,os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'"


def blob_aad(connection_id: str, persona: str, slot: str, version: int) -> bytes:
    """The associated data of one credential row: what the ciphertext is bound to."""
    return f"{AAD_PREFIX}|conn={connection_id}|persona={persona}|slot={slot}|kv={version}".encode()


def check_aad(version: int) -> bytes:
    return f"{AAD_PREFIX}|keycheck|kv={version}".encode()


def encode_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii")


def _decode_key(text: str, where: str) -> bytes:
    cleaned = text.strip()
    try:
        raw = base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise VaultError(
            f"the master key in {where} is not a base64url-encoded 32-byte key"
            f" (fix: put one there, e.g. generated with {GENERATE_HINT})"
        )
    register_secret(cleaned)
    register_secret(cleaned.rstrip("="))
    return raw


@dataclass(frozen=True)
class Keyring:
    """Master-key versions; ``current`` seals new ciphertexts, the others only open old ones."""

    current: int
    keys: Mapping[int, bytes]

    def key(self, version: int, where: str) -> bytes:
        found = self.keys.get(version)
        if found is None:
            have = ", ".join(str(v) for v in sorted(self.keys)) or "none"
            raise VaultError(
                f"master key version {version} is needed but {where} holds only version(s) {have}"
                " (fix: restore the key file or PERSONA_MASTER_KEY that has it; nothing was decrypted)"
            )
        return found

    def with_new_version(self) -> Keyring:
        version = max(self.keys, default=0) + 1
        return Keyring(version, {**self.keys, version: secrets.token_bytes(KEY_BYTES)})

    def keep(self, versions: set[int]) -> Keyring:
        return Keyring(
            self.current, {v: k for v, k in self.keys.items() if v in versions or v == self.current}
        )

    def to_text(self) -> str:
        keys = {str(v): encode_key(k) for v, k in sorted(self.keys.items())}
        return json.dumps({"current": self.current, "keys": keys}, indent=2) + "\n"


def parse_keyring(text: str, where: str) -> Keyring:
    """A single base64url key (version 1) or the JSON keyring form."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return Keyring(1, {1: _decode_key(stripped, where)})
    try:
        data = json.loads(stripped)
        current = int(data["current"])
        raw = data["keys"]
        if not isinstance(raw, dict):
            raise TypeError
        items = {int(v): str(k) for v, k in raw.items()}
    except (ValueError, TypeError, KeyError):
        raise VaultError(
            f"the master keyring in {where} is not valid: expected"
            ' {"current": N, "keys": {"N": "<base64url 32-byte key>"}}'
            " (fix: restore it from your backup)"
        ) from None
    keys = {version: _decode_key(value, where) for version, value in items.items()}
    if current not in keys:
        raise VaultError(f"the master keyring in {where} names current version {current} but has no such key")
    return Keyring(current, keys)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext) with a fresh random nonce."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Plaintext, or ``cryptography.exceptions.InvalidTag`` for a wrong key, row or ciphertext."""
    return AESGCM(key).decrypt(bytes(nonce), bytes(ciphertext), aad)


class MasterKeySource:
    """The keyring from ``PERSONA_MASTER_KEY`` (read-only) or from a key file (created, rewritten)."""

    def __init__(self, *, env: str | None = None, path: Path | None = None) -> None:
        if env is None and path is None:
            raise ValueError("a master key source needs the environment value or a key file path")
        self._env, self.path = env, path
        self._parsed: Keyring | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> MasterKeySource:
        env = settings.master_key.get_secret_value() if settings.master_key is not None else None
        return cls(env=env, path=None if env else settings.master_key_path())

    @property
    def from_env(self) -> bool:
        return self._env is not None

    @property
    def where(self) -> str:
        return "PERSONA_MASTER_KEY" if self._env is not None else f"the key file {self.path}"

    def load(self) -> Keyring | None:
        """The keyring, or None when there is none yet (no variable and no file)."""
        if self._env is not None:
            if self._parsed is None:
                self._parsed = parse_keyring(self._env, self.where)
            return self._parsed
        assert self.path is not None
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise VaultError(
                f"cannot read {self.where}: {exc.strerror} (fix: check its permissions)"
            ) from None
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise VaultError(
                f"{self.where} has mode {stat.S_IMODE(info.st_mode):04o}: other users could read the master key"
                f" (fix: chmod 600 {self.path}; if others did read it, rotate it with `persona connections rekey`)"
            )
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise VaultError(f"cannot read {self.where}: {exc} (fix: check the file)") from None
        return parse_keyring(text, self.where)

    def create(self) -> Keyring:
        """A new version-1 key in a new 0600 file (never overwrites one)."""
        keyring = Keyring(1, {}).with_new_version()
        self._write(keyring, exclusive=True)
        return keyring

    def save(self, keyring: Keyring) -> None:
        """Replace the key file atomically (a rotation adds or drops versions)."""
        self._write(keyring, exclusive=False)

    def _write(self, keyring: Keyring, *, exclusive: bool) -> None:
        if self._env is not None or self.path is None:
            raise VaultError(
                "the master key comes from PERSONA_MASTER_KEY, which this process cannot change"
                " (fix: add a new version to the keyring in PERSONA_MASTER_KEY and make it current, then run"
                " `persona connections rekey` again; or unset it to use the key file)"
            )
        for value in keyring.keys.values():
            register_secret(encode_key(value))
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = path if exclusive else path.with_name(path.name + ".new")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        if not exclusive:
            target.unlink(missing_ok=True)
        try:
            fd = os.open(target, flags, 0o600)
        except FileExistsError:
            raise VaultError(
                f"{self.where} appeared while it was being created; run the command again"
            ) from None
        except OSError as exc:
            raise VaultError(
                f"cannot create {target}: {exc.strerror} (fix: make {path.parent} writable)"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(keyring.to_text())
            out.flush()
            os.fsync(out.fileno())
        if not exclusive:
            os.replace(target, path)
