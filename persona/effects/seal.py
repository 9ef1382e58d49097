"""An approval's seal: an HMAC over the held call, so an edit of the stored row is refused at approval.

A held call waits in the ``effects`` table, possibly for days; the approver executes exactly what it
holds. A digest alone (``arguments_hash``) protects nothing against whoever can write that table: they
change the amount and the email and recompute it. The seal is ``HMAC-SHA-256(k[v], message)`` where
``message`` is the canonical JSON of everything the approver's decision rests on: the effect's id (so a
sealed row copied onto another is refused), its key and order number, the tool, the persona (its caps),
the asker (the four-eyes rule), the conversation and the model's call id, the arguments' digest (the
dispatcher recomputes it from the stored arguments), and the amount, currency and reason the approver is
shown. ``k[v]`` is HKDF-SHA-256 of the audit MAC key of version ``v``
(:mod:`persona.audit_keys`, info ``plisio-persona/v1|approval-seal``): it comes from the master key, and
because a master-key rotation keeps the older MAC keys sealed in ``audit_mac_keys``, approvals held
before a ``persona connections rekey`` still open after it, while new ones are sealed with the new
version. A row without a seal (held before seals existed, or inserted by hand) is never executed.

The state is not sealed (it moves): a decided call set back to ``held`` in the database would carry an
intact seal, so before executing the dispatcher also looks for the decision in the audit log (whose
records are MAC-keyed) and refuses a call that was approved or rejected once.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from persona.audit_keys import MacKeys
from persona.effects.keys import EffectKey, normalised
from persona.masterkey import AAD_PREFIX

SEAL_INFO = f"{AAD_PREFIX}|approval-seal".encode()


@dataclass(frozen=True)
class Held:
    """What a seal binds: the fields of a held call the approver's decision rests on."""

    id: str
    key: EffectKey
    order_number: str
    tool: str
    persona: str
    user: str
    conversation_id: str
    model_call_id: str | None
    arguments_hash: str
    amount: Decimal | None
    currency: str | None
    reason: str | None

    def message(self) -> bytes:
        fields = [
            self.id, self.key.namespace, self.key.slot, self.order_number, self.tool, self.persona, self.user,
            self.conversation_id, self.model_call_id, self.arguments_hash, normalised(self.amount), self.currency,
            self.reason,
        ]  # fmt: skip
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode()


class SealState(StrEnum):
    INTACT = "intact"
    BROKEN = "broken"
    """The row was changed after it was sealed (or the seal was)."""
    UNSEALED = "unsealed"
    """No seal: held before approvals were sealed, or inserted into the table by hand."""
    UNCHECKABLE = "uncheckable"
    """Sealed with a key version this process cannot open (the master key that has it is missing)."""


@dataclass(frozen=True)
class Check:
    state: SealState
    why: str = ""

    @property
    def intact(self) -> bool:
        return self.state is SealState.INTACT


@dataclass(frozen=True)
class Seal:
    """Signs held calls with the current key version and checks them with any version it can open."""

    current: int
    keys: Mapping[int, bytes] = field(repr=False)
    unavailable: Mapping[int, str] = field(default_factory=dict)

    @classmethod
    def of(cls, macs: MacKeys) -> Seal:
        keys = {version: _derive(key) for version, key in macs.keys.items()}
        return cls(macs.current, keys, dict(macs.unavailable))

    def sign(self, held: Held) -> tuple[str, int]:
        """(seal, key version) for a call about to be held."""
        return _mac(self.keys[self.current], held), self.current

    def check(self, held: Held, seal: str | None, version: int | None) -> Check:
        if seal is None or version is None:
            return Check(
                SealState.UNSEALED,
                "it carries no seal (held before approvals were sealed, or written into the effects table by hand)",
            )
        key = self.keys.get(version)
        if key is None and version > self.current:
            return Check(
                SealState.UNCHECKABLE,
                f"it was sealed with key version {version}, newer than this process's {self.current}: the master "
                "key was rotated (`persona connections rekey`) since this process started",
            )
        if key is None:
            why = self.unavailable.get(version) or f"seal key version {version} is not in this master keyring"
            return Check(SealState.UNCHECKABLE, f"its seal cannot be checked here: {why}")
        if not hmac.compare_digest(_mac(key, held), seal):
            return Check(
                SealState.BROKEN,
                "its stored call does not match its seal: the amount, arguments, asker, persona or tool were "
                "changed in the database after it was asked for",
            )
        return Check(SealState.INTACT)


def _derive(mac_key: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=SEAL_INFO).derive(mac_key)


def _mac(key: bytes, held: Held) -> str:
    return hmac.digest(key, held.message(), "sha256").hex()
