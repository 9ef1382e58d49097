"""A recovery link is tied to the debt, in code: whatever the model asks (steered by text in the customer's
own fields), the fresh invoice has the failed one's price, currency and email, or exactly the remainder of
an underpaid one, and the reviewer sees both side by side."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest

from persona.app import Runtime
from persona.audit import AuditFilter
from persona.clock import utcnow
from persona.flows import recovery
from persona.llm import ScriptedChatModel
from persona.store.engine import Store
from persona.store.schema import prepare
from tests.harness import build_runtime, call, say, step
from tests.test_recovery import failed_invoice, recovery_script
from tools.plisio.sandbox import Sandbox

pytestmark = pytest.mark.anyio


@pytest.fixture
async def rt(store: Store, sandbox: Sandbox) -> Any:
    runtime = build_runtime(store, sandbox)
    runtime.model_factory = lambda flow, persona, facts: recovery_script(facts)
    yield runtime
    await runtime.plisio.aclose()


def steered(**args: Any) -> Any:
    """A model that does what injected text told it: a link with its own amount, currency or email."""

    def factory(flow: str, persona: str, facts: Mapping[str, Any]) -> ScriptedChatModel:
        link = {"order_name": facts["order_name"], **args}
        return ScriptedChatModel(
            [
                step(call("plisio_create_invoice", link)),
                say(json.dumps({"subject": "A fresh link", "body": "Pay here."})),
            ],
            name="steered",
        )

    return factory


def invoice_of(sandbox: Sandbox, txn_id: str | None) -> Any:
    assert txn_id is not None
    return sandbox.state.operations[txn_id]


@pytest.mark.parametrize(
    "asked",
    [
        {"source_amount": "999", "source_currency": "USD", "email": "attacker@example.net"},
        {"source_amount": "400", "source_currency": "EUR", "email": "maria.garcia@example.com"},
        {"amount": "0.5", "currency": "BTC", "email": "maria.garcia@example.com"},
        {"source_amount": "1", "source_currency": "USD"},
    ],
)
async def test_the_model_cannot_choose_the_links_amount_currency_or_email(
    rt: Runtime, sandbox: Sandbox, asked: dict[str, Any]
) -> None:
    rt.model_factory = steered(**asked)
    op = await failed_invoice(rt, sandbox)  # 240 USD, maria.garcia@example.com
    draft = await recovery.handle_failure(rt.flows, op, trigger="webhook")
    assert draft is not None and draft.payment_link
    made = invoice_of(sandbox, draft.new_txn_id)
    assert (made.source_amount, made.source_currency, made.email) == (
        Decimal("240"),
        "USD",
        "maria.garcia@example.com",
    )
    pinned = rt.audit.query(AuditFilter(event="tool_call_arguments_pinned"))
    assert len(pinned) == 1 and pinned[0].conversation_id == draft.conversation_id
    assert "fixed by the flow" in (pinned[0].reason or "")


async def test_an_underpaid_invoice_gets_a_link_for_exactly_the_remainder(
    rt: Runtime, sandbox: Sandbox
) -> None:
    rt.model_factory = steered(source_amount="240", source_currency="USD", email="maria.garcia@example.com")
    op = await failed_invoice(rt, sandbox, partial="0.001")
    facts = recovery.facts_for(op)
    draft = await recovery.handle_failure(rt.flows, op, trigger="webhook")
    assert draft is not None
    [asked] = [r.query for r in sandbox.requests if r.path.endswith("/invoices/new")][-1:]
    assert (asked["amount"], asked["currency"], asked["email"]) == (
        facts["amount_still_due"], "BTC", "maria.garcia@example.com",
    )  # fmt: skip
    assert "source_amount" not in asked, "a crypto remainder, not the fiat price again"
    made = invoice_of(sandbox, draft.new_txn_id)
    assert made.psys_cid == "BTC" and made.email == "maria.garcia@example.com"


async def test_a_model_that_asks_the_right_terms_is_not_flagged(rt: Runtime, sandbox: Sandbox) -> None:
    op = await failed_invoice(rt, sandbox)
    draft = await recovery.handle_failure(rt.flows, op, trigger="webhook")  # the fixture's well-behaved model
    assert draft is not None and draft.payment_link
    assert rt.audit.query(AuditFilter(event="tool_call_arguments_pinned")) == []


async def test_the_template_path_is_tied_the_same_way(rt: Runtime, sandbox: Sandbox) -> None:
    rt.model_factory = None
    op = await failed_invoice(rt, sandbox)
    draft = await recovery.handle_failure(rt.flows, op, trigger="webhook")
    assert draft is not None and draft.drafted_by == "template"
    made = invoice_of(sandbox, draft.new_txn_id)
    assert (made.source_amount, made.source_currency, made.email) == (
        Decimal("240"),
        "USD",
        "maria.garcia@example.com",
    )


async def test_the_reviewer_is_told_when_a_link_differs_from_the_debt(rt: Runtime, sandbox: Sandbox) -> None:
    import dataclasses

    from persona.draft_links import fresh_link, link_of, original_terms
    from persona.effects.ledger import EffectLedger

    op = await failed_invoice(rt, sandbox)
    draft = await recovery.handle_failure(rt.flows, op, trigger="webhook")
    assert draft is not None
    ledger = EffectLedger(rt.store, rt.now)
    shown = link_of(ledger, draft)
    assert shown.warnings == () and shown.terms == original_terms(draft)
    assert (shown.terms.amount, shown.terms.currency, shown.terms.email) == (
        "240",
        "USD",
        "maria.garcia@example.com",
    )
    effect = ledger.get(shown.effect_id or "")
    older = dataclasses.replace(
        effect, arguments={**effect.arguments, "source_amount": "999", "email": "x@evil.example"}
    )
    assert fresh_link(draft, older).warnings == (
        "amount 999 USD differs from the failed invoice's 240 USD",
        "billed to x@evil.example, not to maria.garcia@example.com",
    )


@pytest.mark.slow
async def test_drafts_show_puts_the_failed_invoice_beside_the_link(tmp_path: Any, sandbox: Sandbox) -> None:
    from persona.config import load_settings
    from tests.harness import run_cli, write_config

    cfg = write_config(tmp_path)
    settings = load_settings(cfg, env={})
    store = Store.open(settings.store.url)
    prepare(store, now=utcnow)
    rt = build_runtime(store, sandbox, settings=settings)
    rt.model_factory = steered(source_amount="999", source_currency="USD", email="attacker@example.net")
    draft = await recovery.handle_failure(rt.flows, await failed_invoice(rt, sandbox), trigger="webhook")
    assert draft is not None
    await rt.aclose()
    shown = run_cli(cfg, "drafts", "show", draft.id).stdout
    assert "Failed invoice: 240 USD · expired · maria.garcia@example.com · owed 240 USD" in shown
    assert f"(new invoice {draft.new_txn_id}) · 240 USD · maria.garcia@example.com" in shown, shown
    assert "attacker" not in shown and "! " not in shown
