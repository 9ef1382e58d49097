"""The persona loop over the REAL openai client and a fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from persona.app import Runtime
from persona.calls import call_context
from persona.dispatcher import Outcome
from persona.events import Event
from persona.llm import OpenAIChatModel
from persona.loop import LoopEvent, run_turn
from persona.store.engine import Store
from tests.fakes.openai_server import FakeOpenAI, FakeStep
from tests.harness import build_runtime
from tools.plisio.sandbox import SANDBOX_API_KEY, LoopbackServer, Sandbox

pytestmark = pytest.mark.anyio

CHAIN = [
    FakeStep(
        tool_calls=[
            {"id": "call_a", "name": "plisio_get_balance", "arguments": '{"psys_cid":"BTC"}'},
            {"id": "call_b", "name": "plisio_get_balance", "arguments": '{"psys_cid":"ETH"}'},
        ]
    ),
    FakeStep(
        tool_calls=[
            {
                "id": "call_c",
                "name": "plisio_create_invoice",
                "arguments": '{"order_name":"Consulting","source_amount":"120","source_currency":"USD","email":null}',
            }
        ]
    ),
    FakeStep(text="Balances checked; invoice created for 120 USD."),
]


@pytest.fixture
def fake_server() -> Iterator[tuple[FakeOpenAI, LoopbackServer]]:
    holder: dict[str, Any] = {}

    def script(body: dict[str, Any]) -> FakeStep:
        steps: list[FakeStep] = holder["steps"]
        return (
            steps.pop(0) if steps else FakeStep(status=500, error_body={"error": {"message": "script over"}})
        )

    fake = FakeOpenAI(script)
    with LoopbackServer(fake.app) as server:
        holder["steps"] = []
        fake.holder = holder  # type: ignore[attr-defined]
        yield fake, server


def load(fake: FakeOpenAI, steps: list[FakeStep]) -> None:
    fake.holder["steps"][:] = list(steps)  # type: ignore[attr-defined]


async def converse(
    rt: Runtime, server: LoopbackServer, *, stream: bool, message: str = "balances, then bill ACME 120 USD"
) -> tuple[Any, list[LoopEvent], list[str], str]:
    model = OpenAIChatModel(
        model="fake-model", base_url=f"{server.base_url}/v1", stream=stream, max_retries=2
    )
    ctx = call_context(rt.settings, "finance", "alice@example.com")
    seen: list[LoopEvent] = []
    deltas: list[str] = []
    try:
        result = await run_turn(
            model=model, dispatcher=rt.dispatcher, ctx=ctx, system_prompt=rt.prompts.for_call(ctx, today=rt.now().date()),
            user_message=message, on_event=seen.append, on_text=deltas.append,
        )  # fmt: skip
    finally:
        await model.aclose()
    return result, seen, deltas, ctx.conversation_id


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
async def test_chained_conversation_with_parallel_calls(
    store: Store, sandbox: Sandbox, fake_server: tuple[FakeOpenAI, LoopbackServer], stream: bool
) -> None:
    fake, server = fake_server
    load(fake, CHAIN)
    rt = build_runtime(store, sandbox)
    result, seen, deltas, conv = await converse(rt, server, stream=stream)
    assert result.text == "Balances checked; invoice created for 120 USD." and not result.flags
    assert [c.outcome for c in result.calls] == [Outcome.SUCCEEDED] * 3
    assert "".join(deltas).endswith(result.text)
    if stream:
        assert len(deltas) > 1, "text arrived in pieces"
    # What went over the wire: tools, parallel_tool_calls, and tool results bound to their ids.
    first, second, third = fake.requests
    assert first["parallel_tool_calls"] is True and len(first["tools"]) == 13
    assert bool(first.get("stream")) is stream
    tool_msgs = [m for m in second["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_msgs] == ["call_a", "call_b"]
    assert json.loads(tool_msgs[1]["content"])["result"]["psys_cid"] == "ETH"
    assert third["messages"][-1]["tool_call_id"] == "call_c"
    assert json.loads(third["messages"][-1]["content"])["result"]["txn_id"]
    kinds = [(e.kind, e.tool) for e in seen if e.kind in {"tool_call", "tool_result"}]
    assert kinds.count(("tool_result", "plisio_create_invoice")) == 1
    ev = [r.event for r in rt.audit.conversation(conv)]
    assert ev.count(Event.MODEL_REQUEST) == 3 and ev.count(Event.TOOL_CALL_SUCCEEDED) == 3
    usage = [r.usage for r in rt.audit.conversation(conv) if r.event == Event.MODEL_RESPONSE]
    assert all(u and u["total_tokens"] > 0 for u in usage)
    await rt.plisio.aclose()


async def test_hardening_over_the_wire(
    store: Store, sandbox: Sandbox, fake_server: tuple[FakeOpenAI, LoopbackServer]
) -> None:
    fake, server = fake_server
    load(
        fake,
        [
            FakeStep(
                tool_calls=[
                    {"id": "x1", "name": "plisio_get_balance", "arguments": "psys_cid=BTC"},
                    {"id": "x2", "name": "plisio_get_balance", "arguments": {"psys_cid": "LTC"}},
                    {"id": None, "name": "plisio_get_shop_info", "arguments": "{}"},
                    {"id": "x4", "name": "plisio_send_money", "arguments": "{}"},
                ]
            ),
            FakeStep(text='{"name": "plisio_get_balance", "arguments": {"psys_cid": "DOGE"}}'),
            FakeStep(text="Done."),
        ],
    )
    rt = build_runtime(store, sandbox)
    result, _, _, conv = await converse(rt, server, stream=True)
    assert result.text == "Done."
    assert [c.outcome for c in result.calls] == [
        Outcome.FAILED,
        Outcome.SUCCEEDED,
        Outcome.SUCCEEDED,
        Outcome.DENIED,
    ]
    second = fake.requests[1]
    answered = [m["tool_call_id"] for m in second["messages"] if m["role"] == "tool"]
    assistant = [m for m in second["messages"] if m.get("tool_calls")][-1]
    assert answered == [c["id"] for c in assistant["tool_calls"]], "every call answered, bound by id"
    assert "written as text" in fake.requests[2]["messages"][-1]["content"]
    assert "/api/v1/balances/DOGE" not in [r.path for r in sandbox.requests]
    assert Event.TOOL_CALL_IN_TEXT in [r.event for r in rt.audit.conversation(conv)]
    await rt.plisio.aclose()


async def test_provider_errors_are_retried_without_rerunning_tools(
    store: Store, sandbox: Sandbox, fake_server: tuple[FakeOpenAI, LoopbackServer]
) -> None:
    fake, server = fake_server
    load(
        fake,
        [
            FakeStep(status=429, retry_after=0.01),
            FakeStep(tool_calls=[{"id": "c1", "name": "plisio_create_invoice",
                                  "arguments": '{"order_name":"A","source_amount":"10","source_currency":"USD"}'}]),
            FakeStep(status=503, retry_after=0.01),
            FakeStep(status=500, retry_after=0.01),
            FakeStep(text="Invoice created."),
        ],
    )  # fmt: skip
    rt = build_runtime(store, sandbox)
    result, _, _, conv = await converse(rt, server, stream=False)
    assert result.text == "Invoice created." and result.calls[0].outcome is Outcome.SUCCEEDED
    assert len([r for r in sandbox.requests if r.path.endswith("/invoices/new")]) == 1
    attempts = [r.payload["attempts"] for r in rt.audit.conversation(conv) if r.event == Event.MODEL_RESPONSE]
    assert attempts == [2, 3]
    await rt.plisio.aclose()


async def test_unreachable_model_ends_the_turn_with_a_clear_message(store: Store, sandbox: Sandbox) -> None:
    rt = build_runtime(store, sandbox)
    model = OpenAIChatModel(model="m", base_url="http://127.0.0.1:9/v1", max_retries=0)
    ctx = call_context(rt.settings, "finance", "alice")
    result = await run_turn(
        model=model, dispatcher=rt.dispatcher, ctx=ctx, system_prompt="s", user_message="hi"
    )
    await model.aclose()
    assert result.stopped_by == "model_error"
    assert "unreachable" in result.text and "127.0.0.1" in result.text
    assert Event.MODEL_FAILED in [r.event for r in rt.audit.conversation(ctx.conversation_id)]
    await rt.plisio.aclose()


async def test_plisio_key_never_reaches_the_audit_file_or_logs(
    tmp_path: Path,
    sandbox: Sandbox,
    fake_server: tuple[FakeOpenAI, LoopbackServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, server = fake_server
    load(fake, CHAIN)
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "audit.sqlite3"
    store = Store.open(f"sqlite:///{db}")
    rt = build_runtime(store, sandbox)
    result, _, _, _ = await converse(rt, server, stream=False)
    assert result.calls
    await rt.aclose()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert SANDBOX_API_KEY.encode() not in raw
    assert SANDBOX_API_KEY not in caplog.text
    assert SANDBOX_API_KEY not in json.dumps(fake.requests), "the key never reaches the model's context"
