"""Side effects happen once: one ledger of intended effects, and every outcome recorded and resolved.

An **effect** is one intended side effect (today: an invoice at Plisio) under a key the server chose
(:mod:`persona.effects.keys`); the Plisio order number is derived from the key, so every attempt of one
effect is one invoice. Its states (:mod:`persona.effects.ledger`)::

    held --approve--> claimed --send--> applied
      |                  |   \\--definite refusal--> failed      (reservation released)
      \\--reject--> rejected   \\--timeout / cancel / drop / 5xx after send--> unknown --lookup--> applied | failed

* claim and the daily-total reservation are one transaction; only a definite "not applied" releases it;
* the handler runs shielded from cancellation, and so does the record of its outcome
  (:mod:`persona.effects.executor`);
* ``unknown`` (and a ``claimed`` effect whose process died) is resolved by looking the order number up at
  Plisio: inline right away when possible, else by the sweep (``EffectExecutor.sweep``: ``persona effects
  resolve``, and the worker on a schedule), which so also settles approvals cut off half-way: executed if
  Plisio has the invoice, failed if not (never re-sent on their own). Only the sweep, after
  ``effects.resolve_after_s``, concludes "not there" = ``failed``; an answer that still arrives after that
  moves it to ``applied`` (the invoice exists: the truth wins over the conclusion).

A held call is sealed (:mod:`persona.effects.seal`): an HMAC keyed from the master key over what its
approver decides on, checked before it executes.

Errors: this package raises the service's own :mod:`persona.errors` (``NotFound`` for an unknown id,
``Conflict`` for a transition someone else made first, ``StoreError`` from the store); a tool's failure
is an outcome recorded on the effect, never an exception.
"""

from persona.effects.keys import EffectKey, arguments_hash, chat_key, is_order_number, order_number
from persona.effects.ledger import Effect, EffectLedger, State

__all__ = [
    "Effect", "EffectKey", "EffectLedger", "State", "arguments_hash", "chat_key", "is_order_number", "order_number",
]  # fmt: skip
