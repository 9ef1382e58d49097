"""The persona loop and the dispatcher: chaining, concurrency, hardening, limits, scope and policy."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from persona.app import Runtime
from persona.calls import call_context
from persona.dispatcher import Outcome
from persona.effects import is_order_number
from persona.errors import Conflict, Forbidden
from persona.events import Event
from persona.llm import ScriptedChatModel, ScriptStep, ToolCall, Usage
from persona.loop import TurnResult, run_turn
from persona.settings import Limits
from persona.store.engine import Store
from tests.harness import ConcurrencyProbe, build_runtime, call, repo_settings, say, step
from tools.plisio.sandbox import Sandbox

pytestmark = pytest.mark.anyio

INVOICE = {"order_name": "Pro plan", "source_amount": "49.90", "source_currency": "USD"}


@pytest.fixture
async def rt(store: Store, sandbox: Sandbox) -> Any:
    runtime = build_runtime(store, sandbox)
    yield runtime
    await runtime.plisio.aclose()
    await runtime.audit.aclose()


async def turn(
    rt: Runtime, steps: list[ScriptStep], *, persona: str = "finance", user: str = "alice@example.com",
    message: str = "hi", limits: Limits | None = None, conversation_id: str | None = None,
) -> tuple[TurnResult, ScriptedChatModel, str]:  # fmt: skip
    model = ScriptedChatModel(steps)
    ctx = call_context(rt.settings, persona, user, conversation_id=conversation_id)
    result = await run_turn(
        model=model, dispatcher=rt.dispatcher, ctx=ctx, system_prompt=rt.prompts.for_call(ctx, today=rt.now().date()), user_message=message,
        limits=limits,
    )  # fmt: skip
    return result, model, ctx.conversation_id


def events(rt: Runtime, conversation_id: str) -> list[str]:
    return [r.event for r in rt.audit.conversation(conversation_id)]


def plisio_paths(sandbox: Sandbox) -> list[str]:
    return [r.path for r in sandbox.requests]


async def test_multi_step_conversation_chains_tools(rt: Runtime, sandbox: Sandbox) -> None:
    result, model, conv = await turn(
        rt,
        [
            step(call("plisio_list_transactions", {"status": "expired", "limit": 3})),
            step(call("plisio_get_transaction", {"operation_id": "PLACEHOLDER"})),
            say("Three invoices expired recently."),
        ],
        message="what expired lately?",
    )
    # The scripted second step used a placeholder id: the chain still goes on, with an error as data.
    assert result.text == "Three invoices expired recently."
    assert result.steps == 3 and [c.outcome for c in result.calls] == [Outcome.SUCCEEDED, Outcome.FAILED]
    model.assert_finished()
    second_call_messages = model.calls[1].messages
    tool_msg = second_call_messages[-1]
    assert tool_msg["role"] == "tool" and tool_msg["tool_call_id"] == result.calls[0].call_id
    assert json.loads(tool_msg["content"])["result"]["operations"][0]["status"] == "expired"
    assert (
        model.calls[0].messages[0]["role"] == "system" and "finance" in model.calls[0].messages[0]["content"]
    )
    names = {t["function"]["name"] for t in model.calls[0].tools}
    assert "plisio_create_invoice" in names and len(names) == 13
    ev = events(rt, conv)
    assert ev[0] == Event.TURN_STARTED and ev[-1] == Event.TURN_ENDED
    assert ev.count(Event.MODEL_REQUEST) == 3 and ev.count(Event.TOOL_CALL_SUCCEEDED) == 1
    assert ev.count(Event.TOOL_CALL_FAILED) == 1
    assert [m["role"] for m in result.messages] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]


async def test_read_only_calls_of_one_step_run_concurrently(store: Store, sandbox: Sandbox) -> None:
    probe = ConcurrencyProbe(sandbox.transport(), hold="/balances/")
    rt = build_runtime(store, sandbox, transport=probe)
    result, _, _ = await turn(
        rt, [step(call("plisio_get_balance", {"psys_cid": "BTC"}), call("plisio_get_balance", {"psys_cid": "ETH"})),
             say("done")],
    )  # fmt: skip
    assert probe.max_inflight == 2, "both balance reads were in flight at the same time"
    contents = [json.loads(c.content)["result"]["psys_cid"] for c in result.calls]
    assert sorted(contents) == ["BTC", "ETH"]
    tool_msgs = [m for m in result.messages if m["role"] == "tool"]
    assert [json.loads(m["content"])["result"]["psys_cid"] for m in tool_msgs] == ["BTC", "ETH"], "call order"
    await rt.plisio.aclose()


async def test_side_effect_calls_run_one_at_a_time_in_order(store: Store, sandbox: Sandbox) -> None:
    probe = ConcurrencyProbe(sandbox.transport(), hold="/invoices/new", patience=0.3)
    rt = build_runtime(store, sandbox, transport=probe)
    first = {**INVOICE, "order_name": "first"}
    second = {**INVOICE, "order_name": "second"}
    result, _, _ = await turn(rt, [step(call("plisio_create_invoice", first), call("plisio_create_invoice", second)),
                                   say("two invoices created")])  # fmt: skip
    assert [c.outcome for c in result.calls] == [Outcome.SUCCEEDED, Outcome.SUCCEEDED]
    news = [r for r in sandbox.requests if r.path.endswith("/invoices/new")]
    assert [r.query["order_name"] for r in news] == ["first", "second"]
    assert probe.max_inflight == 1
    assert not result.flags
    await rt.plisio.aclose()


async def test_hardening_cases_are_answered_and_audited(rt: Runtime, sandbox: Sandbox) -> None:
    result, model, conv = await turn(
        rt,
        [
            step(
                ToolCall(id="c1", name="plisio_get_balance", arguments='{"psys_cid": "BTC"'),  # not JSON
                ToolCall(id="c2", name="plisio_get_balance", arguments={"psys_cid": "ETH"}),  # object
                ToolCall(id=None, name="plisio_get_shop_info", arguments="{}"),  # no id
                ToolCall(id="c4", name="plisio_withdraw", arguments="{}"),  # does not exist
            ),
            say('<tool_call>{"name": "plisio_get_balance", "arguments": {"psys_cid": "LTC"}}</tool_call>'),
            say("Balances: ETH known; BTC call was malformed."),
        ],
    )
    assert result.text.startswith("Balances")
    by_name = [(c.tool, c.outcome) for c in result.calls]
    assert by_name == [
        ("plisio_get_balance", Outcome.FAILED),
        ("plisio_get_balance", Outcome.SUCCEEDED),
        ("plisio_get_shop_info", Outcome.SUCCEEDED),
        ("plisio_withdraw", Outcome.DENIED),
    ]
    assert "not valid JSON" in json.loads(result.calls[0].content)["error"]["message"]
    assert "JSON object instead of a JSON string" in json.loads(result.calls[1].content)["notices"][0]
    generated = result.calls[2].call_id
    assert generated.startswith("call_") and "no id" in json.loads(result.calls[2].content)["notices"][0]
    assert "no tool named 'plisio_withdraw'" in json.loads(result.calls[3].content)["error"]["message"]
    # The assistant message in the history carries the generated id and string arguments.
    assistant = model.calls[1].messages[-5]
    assert [c["id"] for c in assistant["tool_calls"]][2] == generated
    assert all(isinstance(c["function"]["arguments"], str) for c in assistant["tool_calls"])
    # The text-written tool call got a notice, not an execution.
    notice = model.calls[2].messages[-1]
    assert notice["role"] == "user" and "written as text" in notice["content"]
    assert "/api/v1/balances/LTC" not in plisio_paths(sandbox)
    ev = events(rt, conv)
    assert ev.count(Event.TOOL_CALL_ATTEMPTED) == 4 and ev.count(Event.TOOL_CALL_IN_TEXT) == 1
    assert ev.count(Event.TOOL_CALL_DENIED) == 1


async def test_loop_guard_stops_the_same_call_repeated(rt: Runtime, sandbox: Sandbox) -> None:
    same = {"psys_cid": "BTC"}
    result, _, conv = await turn(
        rt, [step(call("plisio_get_balance", same)) for _ in range(6)], limits=Limits()
    )
    assert result.stopped_by == "loop_guard"
    assert plisio_paths(sandbox).count("/api/v1/balances/BTC") == 2, "two executions, then refused"
    assert "loop guard" in result.text and "I stopped before finishing" in result.text
    assert Event.LIMIT_REACHED in events(rt, conv)


@pytest.mark.parametrize(
    ("limits", "stopped_by", "phrase"),
    [
        (Limits(max_steps=2), "max_steps", "2 model steps"),
        (Limits(max_tool_calls=3), "max_tool_calls", "3 tool calls"),
        (Limits(max_tokens=500), "max_tokens", "500 tokens"),
    ],
)
async def test_limits_end_the_turn_with_a_plain_message(
    rt: Runtime, limits: Limits, stopped_by: str, phrase: str
) -> None:
    steps = [
        ScriptStep(
            tool_calls=(
                call("plisio_get_balance", {"psys_cid": c}),
                call("plisio_get_fee_plans", {"psys_cid": c}),
            ),
            usage=Usage(300, 50, 350),
        )
        for c in ["BTC", "ETH", "LTC", "DOGE", "TRX"]
    ]
    result, model, _ = await turn(rt, steps, limits=limits)
    assert result.stopped_by == stopped_by
    assert phrase in result.text and "Nothing else was executed" in result.text
    assert model.remaining > 0


async def test_wall_clock_limit(store: Store, sandbox: Sandbox) -> None:
    rt = build_runtime(store, sandbox)
    ticks = iter(range(0, 10_000, 50))
    model = ScriptedChatModel(
        [step(call("plisio_get_balance", {"psys_cid": c})) for c in ["BTC", "ETH", "LTC"]]
    )
    ctx = call_context(rt.settings, "finance", "alice@example.com")
    result = await run_turn(
        model=model, dispatcher=rt.dispatcher, ctx=ctx, system_prompt="s", user_message="go",
        limits=Limits(wall_clock_s=120), clock=lambda: float(next(ticks)),
    )  # fmt: skip
    assert result.stopped_by == "wall_clock" and "120s time limit" in result.text
    await rt.plisio.aclose()


async def test_scope_denial_reaches_nothing(rt: Runtime, sandbox: Sandbox) -> None:
    result, model, conv = await turn(
        rt, [step(call("plisio_create_invoice", INVOICE)), say("I cannot create invoices.")], persona="growth"
    )
    assert result.calls[0].outcome is Outcome.DENIED
    assert "not available to you" in result.calls[0].content
    assert not any("/invoices/new" in p for p in plisio_paths(sandbox))
    assert "plisio_create_invoice" not in {t["function"]["name"] for t in model.calls[0].tools}
    denied = [r for r in rt.audit.conversation(conv) if r.event == Event.TOOL_CALL_DENIED]
    assert denied[0].tool == "plisio_create_invoice" and denied[0].persona == "growth"


async def test_over_cap_invoice_is_denied_naming_the_clause(rt: Runtime, sandbox: Sandbox) -> None:
    big = {**INVOICE, "source_amount": "1500"}
    result, _, _ = await turn(rt, [step(call("plisio_create_invoice", big)), say("Refused: above the cap.")])
    err = json.loads(result.calls[0].content)["error"]
    assert err["type"] == "policy_denied" and err["clause"] == "personas.finance.invoice_policy.max_amount"
    assert "1500.00 USD is above the per-invoice cap of 1000 USD" in err["message"]
    assert not any("/invoices/new" in p for p in plisio_paths(sandbox))


async def test_daily_total_counts_every_conversation(store: Store, sandbox: Sandbox) -> None:
    settings = repo_settings()
    finance = settings.personas["finance"]
    assert finance.invoice_policy is not None
    tight = finance.invoice_policy.model_copy(update={"daily_total": Decimal("600")})
    settings = settings.model_copy(
        update={
            "personas": {**settings.personas, "finance": finance.model_copy(update={"invoice_policy": tight})}
        }
    )
    rt = build_runtime(store, sandbox, settings=settings)
    for i in range(2):
        r, _, _ = await turn(rt, [step(call("plisio_create_invoice", {**INVOICE, "source_amount": "240"})), say("ok")],
                             message=f"invoice {i}")  # fmt: skip
        assert r.calls[0].outcome is Outcome.SUCCEEDED
    r, _, _ = await turn(
        rt, [step(call("plisio_create_invoice", {**INVOICE, "source_amount": "200"})), say("no")]
    )
    err = json.loads(r.calls[0].content)["error"]
    assert err["clause"] == "personas.finance.invoice_policy.daily_total"
    assert "would bring today's invoices to 680.00 USD, above the daily cap of 600 USD" in err["message"]
    r, _, _ = await turn(
        rt, [step(call("plisio_create_invoice", {**INVOICE, "source_amount": "120"})), say("ok")]
    )
    assert r.calls[0].outcome is Outcome.SUCCEEDED, "a denied call reserves nothing"
    assert len([q for q in sandbox.requests if q.path.endswith("/invoices/new")]) == 3
    await rt.plisio.aclose()


async def test_crypto_priced_invoice_is_valued_with_plisio_rates(rt: Runtime) -> None:
    btc = {"order_name": "x", "amount": "0.5", "currency": "BTC"}  # ~32k USD at the sandbox rate
    r, _, _ = await turn(rt, [step(call("plisio_create_invoice", btc)), say("no")])
    assert "above the per-invoice cap" in json.loads(r.calls[0].content)["error"]["message"]


async def test_approval_flow_end_to_end(rt: Runtime, sandbox: Sandbox) -> None:
    held = {**INVOICE, "source_amount": "400", "order_name": "Team plan"}
    result, _, conv = await turn(
        rt,
        [step(call("plisio_create_invoice", held)), say("It is waiting for approval.")],
        user="alice@example.com",
    )
    pending = result.calls[0]
    assert pending.outcome is Outcome.PENDING_APPROVAL and pending.approval_id
    assert "awaits approval" in pending.content and not result.flags
    assert not any("/invoices/new" in p for p in plisio_paths(sandbox))
    assert [a.id for a in rt.approvals.find("pending")] == [pending.approval_id]

    with pytest.raises(Forbidden, match="cannot approve it"):
        await rt.dispatcher.approve(pending.approval_id, by="alice@example.com")
    approval, done = await rt.dispatcher.approve(
        pending.approval_id, by="bob@example.com", note="ok, known client"
    )
    assert approval.status == "executed" and done.outcome is Outcome.SUCCEEDED
    news = [r for r in sandbox.requests if r.path.endswith("/invoices/new")]
    assert (
        len(news) == 1
        and news[0].query["order_name"] == "Team plan"
        and news[0].query["source_amount"] == "400"
    )
    with pytest.raises(Conflict, match="already executed"):
        await rt.dispatcher.approve(pending.approval_id, by="carol@example.com")
    assert len([r for r in sandbox.requests if r.path.endswith("/invoices/new")]) == 1, (
        "executed exactly once"
    )
    ev = events(rt, conv)
    assert (
        ev.index(Event.APPROVAL_REQUESTED)
        < ev.index(Event.APPROVAL_GRANTED)
        < ev.index(Event.TOOL_CALL_SUCCEEDED)
    )

    # If the model asks again with the same call id, the stored answer comes back; nothing re-runs.
    again = await rt.dispatcher.dispatch(
        ToolCall(pending.call_id, "plisio_create_invoice", json.dumps(held)),
        call_context(rt.settings, "finance", "alice@example.com", conversation_id=conv),
    )
    assert again.outcome is Outcome.REPLAYED
    assert len([r for r in sandbox.requests if r.path.endswith("/invoices/new")]) == 1


async def test_rejected_approval_never_executes(rt: Runtime, sandbox: Sandbox) -> None:
    held = {**INVOICE, "source_amount": "400"}
    result, _, conv = await turn(rt, [step(call("plisio_create_invoice", held)), say("waiting")])
    approval = await rt.dispatcher.reject(result.calls[0].approval_id or "", by="bob", note="not a customer")
    assert approval.status == "rejected"
    with pytest.raises(Conflict):
        await rt.dispatcher.approve(approval.id, by="carol")
    assert not any("/invoices/new" in p for p in plisio_paths(sandbox))
    assert Event.APPROVAL_REJECTED in events(rt, conv)


async def test_claim_without_a_successful_create_is_flagged(rt: Runtime) -> None:
    result, _, conv = await turn(
        rt, [say("Done! The invoice has been created: https://plisio.net/invoice/abc")]
    )
    assert result.flags and "no plisio_create_invoice call succeeded" in result.flags[0]
    assert "[Check:" in result.text
    assert Event.CLAIM_UNVERIFIED in events(rt, conv)
    honest, _, _ = await turn(rt, [say("I could not create the invoice: it needs approval.")])
    assert not honest.flags


async def test_create_invoice_order_number_is_chosen_by_the_service(rt: Runtime, sandbox: Sandbox) -> None:
    smuggled = {**INVOICE, "order_number": "ATTACKER-1"}
    r, _, _ = await turn(rt, [step(call("plisio_create_invoice", smuggled)), say("no")])
    assert r.calls[0].outcome is Outcome.FAILED and "order_number" in r.calls[0].content
    ok, _, _ = await turn(rt, [step(call("plisio_create_invoice", INVOICE, call_id="same")), say("made")])
    number = json.loads(ok.calls[0].content)["result"]["order_number"]
    assert is_order_number(number) and number != "ATTACKER-1"
