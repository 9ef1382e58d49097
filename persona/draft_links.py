"""A recovery draft's fresh payment link beside the invoice that failed, for whoever reviews it.

The link's terms are fixed to the debt in code (:func:`persona.flows.recovery.debt_terms`, applied by the
dispatcher); the reviewer still sees both side by side, read from the effect that made the link, and is
told when they differ (a link from before the terms were fixed, or a bug: either way, look before sending).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from persona.drafts import Draft, Terms, original_terms
from persona.effects.keys import EffectKey
from persona.effects.ledger import Effect, EffectLedger

__all__ = ["FreshLink", "Terms", "fresh_link", "link_of", "link_terms", "original_terms"]

LINK_SLOT = "fresh_link"


@dataclass(frozen=True)
class FreshLink:
    url: str | None
    txn_id: str | None
    terms: Terms
    state: str | None
    effect_id: str | None
    warnings: tuple[str, ...]


def link_terms(effect: Effect | None) -> Terms:
    args = effect.arguments if effect is not None else {}
    if args.get("source_amount") is not None:
        return Terms(str(args["source_amount"]), args.get("source_currency"), args.get("email"))
    return Terms(
        None if args.get("amount") is None else str(args["amount"]), args.get("currency"), args.get("email")
    )


def fresh_link(draft: Draft, effect: Effect | None) -> FreshLink:
    """The link with its terms, and where they differ from the failed invoice's."""
    owed, asked = original_terms(draft), link_terms(effect)
    warnings: list[str] = []
    if draft.payment_link and effect is None:
        warnings.append("no effect record for this link: its amount and email are unknown")
    if effect is not None:
        if not _same(asked.amount, owed.amount) or asked.currency != owed.currency:
            warnings.append(f"amount {asked.amount} {asked.currency} differs from the failed invoice's "
                            f"{owed.amount} {owed.currency}")  # fmt: skip
        if (asked.email or None) != (owed.email or None):
            warnings.append(f"billed to {asked.email or 'no email'}, not to {owed.email or 'no email'}")
    return FreshLink(draft.payment_link, draft.new_txn_id, asked, None if effect is None else effect.state.value,
                     None if effect is None else effect.id, tuple(warnings))  # fmt: skip


def link_of(ledger: EffectLedger, draft: Draft) -> FreshLink:
    return fresh_link(draft, ledger.by_key(EffectKey(draft.flow_key, LINK_SLOT)))


def _same(a: Any, b: Any) -> bool:
    try:
        return Decimal(str(a)) == Decimal(str(b))
    except (InvalidOperation, ValueError):
        return False
