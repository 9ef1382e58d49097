"""Tables of the webhook receiver and the worker (filled in by the webhooks work)."""

from __future__ import annotations
