"""Effect keys: chosen by the server, never taken from model text, and the order number derived from them.

A chat call is ``("chat:<conversation_id>", "<call seq>")``, the seq counted by the loop over the
conversation's history, so a turn retried from the same history maps to the same effects. A flow's
effect is ``(<flow key>, <slot>)``, e.g. ``("recovery:<txn_id>", "fresh_link")``: the model path and the
template path of one flow run name the same effect. Plisio's ``order_number`` is a hash of the key, so
every attempt of one effect (a retry, a resumed approval, a re-run flow) is the same invoice at Plisio.

The order number is 16 decimal digits: Plisio's docs say it "must be an unique number in your store" and
its Python SDK types it ``int`` (tools/plisio/README.md). 16 digits from 1 to 8 leading stay below 2**53,
so a JavaScript page or any double that reads it keeps every digit, fit a signed 64-bit column, and lie far
above the order numbers a shop's own cart counts up to. Two effects share one with a chance of about
n**2 / 1.6e16 (one in 16,000 at a million effects); the read-back compares price and payer besides.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Any

from persona.jsonutil import canonical_json

ORDER_DIGITS = 16


@dataclass(frozen=True)
class EffectKey:
    namespace: str
    slot: str

    def __str__(self) -> str:
        return f"{self.namespace}#{self.slot}"


def chat_key(conversation_id: str, seq: int) -> EffectKey:
    return EffectKey(f"chat:{conversation_id}", str(seq))


def order_number(key: EffectKey) -> str:
    """The key's order number: ``ORDER_DIGITS`` digits from ``1000000000000000`` to ``8999999999999999``."""
    digest = hashlib.sha256(f"{key.namespace}\x1f{key.slot}".encode()).digest()
    low = 10 ** (ORDER_DIGITS - 1)
    return str(low + int.from_bytes(digest[:16], "big") % (8 * low))


def is_order_number(text: str) -> bool:
    """An order number this service makes (of any key)."""
    return len(text) == ORDER_DIGITS and text.isascii() and text.isdigit() and text[0] not in "09"


def normalised(value: Any) -> Any:
    """JSON-able form in which equal amounts are equal: Decimal("240") and Decimal("240.00") alike."""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # "240", "0.5": no exponent, no trailing zeros
    if isinstance(value, Enum):
        return normalised(value.value)
    if isinstance(value, dict):
        return {str(k): normalised(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalised(v) for v in value]
    return value


def arguments_hash(arguments: Any) -> str:
    """Digest of validated arguments (a pydantic model's ``model_dump()``), amounts normalised."""
    return hashlib.sha256(canonical_json(normalised(arguments)).encode()).hexdigest()
