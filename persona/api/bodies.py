"""Request bodies of the API: strict (unknown fields refused), bounded, documented."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    persona: str = Field(min_length=1, max_length=64)
    message: str = Field(min_length=1, max_length=20_000)
    conversation_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")


class RefundRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    invoice_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The Plisio txn_id.")
    reason: str = Field(min_length=1, max_length=2000)


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(None, max_length=2000, description="Why (recorded in the audit log).")
