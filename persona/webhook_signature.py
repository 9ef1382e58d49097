"""The signature on every webhook this service sends (approved messages, audit checkpoints).

``X-Persona-Signature: sha256=<hex HMAC-SHA256(secret, body)>`` over the exact bytes of the body. A
receiver recomputes it with the shared secret and compares in constant time (``hmac.compare_digest``)
before trusting anything in the body.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Persona-Signature"
DELIVERY_HEADER = "X-Persona-Delivery"
"""An idempotency key for the receiver: the same value is the same delivery, sent again."""


def sign(body: bytes, secret: str) -> str:
    """The ``X-Persona-Signature`` value of ``body``: ``sha256=`` and the hex HMAC-SHA256 under ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
