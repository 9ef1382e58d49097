"""Request bodies of the API: strict (unknown fields refused), bounded, documented with examples.

The examples are what ``/docs`` and ``/openapi.json`` show a caller first, so each is a body the
model accepts as it stands (``tests/test_api_docs.py`` validates them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator
from pydantic.config import JsonDict

TXN_ID = r"^[A-Za-z0-9_-]{1,64}$"


class ChatRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"persona": "finance", "message": "What is my BTC balance?"},
                {"persona": "finance", "message": "And in USDT?", "conversation_id": "conv_3f9a1c0d2b7e4a61"},
            ]
        },
    )

    persona: str = Field(min_length=1, max_length=64, description="A chat persona of config.yaml.")
    message: str = Field(min_length=1, max_length=20_000, description="The user's message.")
    conversation_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="Continue this conversation (yours only)."
    )


def _refund_schema(schema: JsonDict) -> None:
    """Document the deprecated ``invoice_id`` too: either it or ``invoice`` is required, not both."""
    properties = schema.setdefault("properties", {})
    assert isinstance(properties, dict)
    invoice = properties.get("invoice", {})
    properties["invoice_id"] = {
        **(invoice if isinstance(invoice, dict) else {}),
        "title": "Invoice Id",
        "deprecated": True,
        "description": "Deprecated alias of `invoice` (the name before it matched the CLI's --invoice).",
    }
    required = schema.get("required", [])
    schema["required"] = [n for n in (required if isinstance(required, list) else []) if n != "invoice"]
    schema["anyOf"] = [{"required": ["invoice"]}, {"required": ["invoice_id"]}]
    schema["examples"] = [
        {"invoice": "6a1b2c3d4e5f60718293a4b5", "reason": "bought the wrong plan"},
        {"invoice_id": "6a1b2c3d4e5f60718293a4b5", "reason": "bought the wrong plan (the deprecated name)"},
    ]


class RefundRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_refund_schema)

    invoice: str = Field(
        pattern=TXN_ID,
        validation_alias=AliasChoices("invoice", "invoice_id"),
        description="The Plisio invoice id (its txn_id), as `persona refunds triage --invoice` takes it.",
    )
    reason: str = Field(min_length=1, max_length=2000, description="Why the customer wants a refund.")

    @model_validator(mode="before")
    @classmethod
    def _one_invoice(cls, data: Any) -> Any:
        if isinstance(data, dict) and "invoice" in data and "invoice_id" in data:
            raise ValueError("give invoice (or its deprecated alias invoice_id), not both")
        return data


class Decision(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"note": "amount and customer checked"}, {}]}
    )

    note: str | None = Field(None, max_length=2000, description="Why (recorded in the audit log).")


class ChurnScan(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{}, {"slot": "2026-11-23T06:00:00Z"}]}
    )

    slot: datetime | None = Field(
        None,
        description="Run this schedule slot (ISO 8601; UTC when no offset is given): once per slot, whoever "
        "asks, so a slot already scanned returns its report. Left out: a new manual scan.",
    )
