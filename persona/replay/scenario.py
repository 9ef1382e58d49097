"""Replay scenarios: YAML files that script a conversation and say what must (not) happen.

A scenario is documentation as much as a test, so the format is small: who talks (persona,
user), what starts it (a chat turn, a Plisio callback, a refund request, a churn scan), the
model's scripted steps, and expectations. Loading validates everything and reports errors
with the file, the line and the field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from persona.errors import ScenarioError
from persona.settings import StopReason
from persona.yaml_errors import line_of

DEFAULT_NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
"""Scenarios run against the sandbox seeded at this instant unless they say otherwise."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScriptedCall(Strict):
    id: str | None = None
    name: str
    arguments: dict[str, Any] | str | None = None
    """An object (sent as JSON text), or a raw string (to script malformed arguments)."""


class ModelStep(Strict):
    text: str | None = None
    tool_calls: list[ScriptedCall] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.text is None and not self.tool_calls:
            raise ValueError("a model step needs text, tool_calls, or both")
        return self


class Turn(Strict):
    user: str | None = None
    """The user's message (chat scenarios); flows have no user message."""
    model: list[ModelStep] = Field(min_length=1)


class InvoiceSpec(Strict):
    order_name: str = "Northwind Studio — annual"
    source_amount: str = "240"
    source_currency: str = "USD"
    currency: str = "BTC"
    email: str = "maria.garcia@example.com"


class Trigger(Strict):
    kind: Literal["chat", "callback", "refund_request", "churn_scan"] = "chat"
    invoice: InvoiceSpec | None = None
    """callback: the invoice the sandbox creates and then moves."""
    action: Literal["expire", "cancel", "error", "underpay"] = "expire"
    encoding: Literal["form", "json"] = "form"
    paid: str | None = None
    """callback with action underpay: the amount received before expiry."""
    order_number: str | None = None
    """refund_request: the seeded invoice, by order number."""
    reason: str | None = None


class ToolExpect(Strict):
    name: str
    arguments: dict[str, Any] | None = None
    """Subset match; a value may be ``{re: <regex>}`` or ``{any: true}``."""
    outcome: Literal["succeeded", "failed", "denied", "pending_approval", "replayed"] | None = None


class PolicyExpect(Strict):
    tool: str
    decision: Literal["allow", "deny", "approval_required"]
    clause: str | None = None


class TextExpect(Strict):
    contains: list[str] = Field(default_factory=list)
    not_contains: list[str] = Field(default_factory=list)


class DraftExpect(Strict):
    status: str = "pending_review"
    payment_link: bool | None = None
    body_contains: list[str] = Field(default_factory=list)
    body_not_contains: list[str] = Field(default_factory=list)


class RefundExpect(Strict):
    decision: Literal["approve", "deny", "escalate"]
    clause: str | None = None


class Expectations(Strict):
    tools_called: list[ToolExpect] = Field(default_factory=list)
    """In this order (other calls may come between)."""
    tools_not_executed: list[str] = Field(default_factory=list)
    """Tools that must not have run successfully (denied or absent is fine)."""
    plisio_never: list[str] = Field(default_factory=list)
    """Sandbox request paths (glob) that must never be hit, e.g. ``/api/v1/invoices/new``."""
    policy: list[PolicyExpect] = Field(default_factory=list)
    approvals_pending: int | None = None
    drafts: list[DraftExpect] | None = None
    refund: RefundExpect | None = None
    churn_signals: dict[str, list[str]] | None = None
    """e.g. ``churned_repeat_customers: [olivia.hart@example.com]`` (subset match)."""
    final_text: TextExpect | None = None
    stopped_by: Literal["completed", StopReason] | None = None
    """How the turn must end; left out, a turn stopped by a limit or a model failure fails the scenario."""
    flags: int | None = None


class Scenario(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    description: str = ""
    persona: str
    user: str = "alice@example.com"
    now: datetime = DEFAULT_NOW
    seed: int = 7
    trigger: Trigger = Trigger()
    turns: list[Turn] = Field(min_length=1)
    expect: Expectations = Expectations()
    source: str = Field("", exclude=True)

    @field_validator("now")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        kind = self.trigger.kind
        if kind == "chat" and any(t.user is None for t in self.turns):
            raise ValueError("every turn of a chat scenario needs a user message")
        if kind != "chat" and len(self.turns) != 1:
            raise ValueError(f"a {kind} scenario has exactly one turn (the flow's persona turn)")
        if kind == "refund_request" and not (self.trigger.order_number and self.trigger.reason):
            raise ValueError("a refund_request trigger needs order_number and reason")
        return self


def load(path: Path) -> Scenario:
    """Parse and validate one scenario file; errors name the file, the line and the field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ScenarioError(f"{path}:{line}: not valid YAML: {exc.problem}") from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}:1: a scenario is a mapping (name:, persona:, turns:, expect:)")
    try:
        return Scenario.model_validate({**raw, "source": str(path)})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        field = ".".join(loc) or "(scenario)"
        line = line_of(text, loc) or 1
        message = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        raise ScenarioError(f"{path}:{line}: {field}: {message}") from None


def dump(scenario: dict[str, Any]) -> str:
    """YAML for a scenario dict, readable (block style, key order kept)."""
    return yaml.safe_dump(scenario, sort_keys=False, allow_unicode=True, width=110)


def discover(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix in {".yaml", ".yml"})
        else:
            out.append(path)
    return out
