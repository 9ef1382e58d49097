"""persona.llm over the real openai client and a fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
import structlog
import uvicorn

from persona.errors import ModelError, NotConfigured, ScriptExhausted, ScriptUnfinished
from persona.llm import (
    ModelReply,
    OpenAIChatModel,
    ScriptedChatModel,
    ScriptStep,
    ToolCall,
    Usage,
    embedded_tool_calls,
)
from tests.fakes.openai_server import FakeOpenAI, FakeStep

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "plisio_get_balance",
            "description": "Balance of one currency.",
            "parameters": {
                "type": "object",
                "properties": {"currency": {"type": "string"}},
                "required": ["currency"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "plisio_list_invoices",
            "description": "Recent invoices.",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    },
]
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Balance?"}]
SECRET_KEY = "sk-test-Zq8uXk2LrT9vWmP4nB7c"


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; stop it on exit."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("fake OpenAI server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def fake(steps: list[FakeStep], **model_kwargs: Any) -> Iterator[tuple[FakeOpenAI, OpenAIChatModel]]:
    server = FakeOpenAI(steps)
    with serve(server.app) as base_url:
        model_kwargs.setdefault("model", "fake-model")
        yield server, OpenAIChatModel(base_url=base_url, **model_kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


TWO_CALLS = [
    {"id": "call_a", "name": "plisio_get_balance", "arguments": '{"currency": "BTC"}'},
    {"id": "call_b", "name": "plisio_list_invoices", "arguments": "{}"},
]


@pytest.mark.anyio
async def test_plain_text_reply_with_usage() -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    with fake([FakeStep(text="You have 0.5 BTC.", usage=usage)]) as (server, model):
        reply = await model.complete(MESSAGES, [])
        await model.aclose()
    assert reply.text == "You have 0.5 BTC."
    assert reply.tool_calls == ()
    assert reply.usage == Usage(12, 3, 15)
    assert reply.model == "fake-model"
    assert reply.finish_reason == "stop"
    assert reply.attempts == 1
    assert reply.latency_ms > 0
    assert server.requests[0]["messages"] == MESSAGES
    assert "tools" not in server.requests[0]
    assert "parallel_tool_calls" not in server.requests[0]
    assert model.name == "fake-model"


@pytest.mark.anyio
async def test_parallel_tool_calls_preserved_and_sent_on_the_wire() -> None:
    with fake([FakeStep(tool_calls=TWO_CALLS)], temperature=0.0) as (server, model):
        reply = await model.complete(MESSAGES, TOOLS, parallel_tool_calls=False)
        await model.aclose()
    assert reply.tool_calls == (
        ToolCall("call_a", "plisio_get_balance", '{"currency": "BTC"}'),
        ToolCall("call_b", "plisio_list_invoices", "{}"),
    )
    assert reply.finish_reason == "tool_calls"
    assert reply.text is None
    sent = server.requests[0]
    assert sent["tools"] == TOOLS
    assert sent["parallel_tool_calls"] is False
    assert sent["temperature"] == 0.0
    assert server.tool_calls_served == 2
    assert server.remaining == 0


@pytest.mark.anyio
async def test_streaming_text_reaches_on_text_in_order_and_matches_non_streaming() -> None:
    text = "Your BTC balance is 0.5 and your ETH balance is 2."
    usage = {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22}
    deltas: list[str] = []
    with fake([FakeStep(text=text, usage=usage)], stream=True) as (server, streaming):
        streamed = await streaming.complete(MESSAGES, TOOLS, on_text=deltas.append)
        await streaming.aclose()
    with fake([FakeStep(text=text, usage=usage)]) as (_, plain):
        single = await plain.complete(MESSAGES, TOOLS)
        await plain.aclose()
    assert len(deltas) > 3
    assert "".join(deltas) == text
    assert server.requests[0]["stream"] is True
    assert server.requests[0]["stream_options"] == {"include_usage": True}

    def comparable(reply: ModelReply) -> tuple[Any, ...]:
        return reply.text, reply.tool_calls, reply.usage, reply.model, reply.finish_reason, reply.attempts

    assert comparable(streamed) == comparable(single)


@pytest.mark.anyio
async def test_streaming_tool_call_deltas_are_assembled() -> None:
    calls = [
        *TWO_CALLS,
        {"name": "plisio_get_balance", "arguments": '{"currency": "ETH", "x": "long enough"}'},
    ]
    with fake([FakeStep(text="Checking.", tool_calls=calls)], stream=True) as (server, model):
        reply = await model.complete(MESSAGES, TOOLS)
        await model.aclose()
    assert reply.text == "Checking."
    assert reply.tool_calls == (
        ToolCall("call_a", "plisio_get_balance", '{"currency": "BTC"}'),
        ToolCall("call_b", "plisio_list_invoices", "{}"),
        ToolCall(None, "plisio_get_balance", '{"currency": "ETH", "x": "long enough"}'),
    )
    assert reply.finish_reason == "tool_calls"
    assert reply.usage.total_tokens > 0
    assert server.requests[0]["parallel_tool_calls"] is True


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_tool_calls_pass_through_raw(stream: bool) -> None:
    calls: list[dict[str, Any]] = [
        {"name": "plisio_get_balance", "arguments": '{"currency": "BTC"}'},  # no id
        {"id": "call_2", "name": "plisio_get_balance", "arguments": "currency=BTC, please"},  # not JSON
        {"id": "call_3", "name": "plisio_get_balance", "arguments": {"currency": "LTC"}},  # an object
        {"id": "call_4", "name": "plisio_drain_wallet", "arguments": "{}"},  # never offered
        {"id": "call_5", "arguments": "{}"},  # no name
    ]
    with fake([FakeStep(tool_calls=calls)], stream=stream) as (_, model):
        reply = await model.complete(MESSAGES, TOOLS)
        await model.aclose()
    assert reply.tool_calls == (
        ToolCall(None, "plisio_get_balance", '{"currency": "BTC"}'),
        ToolCall("call_2", "plisio_get_balance", "currency=BTC, please"),
        ToolCall("call_3", "plisio_get_balance", {"currency": "LTC"}),
        ToolCall("call_4", "plisio_drain_wallet", "{}"),
        ToolCall("call_5", "", "{}"),
    )


@pytest.mark.anyio
async def test_429_then_success_is_retried_by_the_client() -> None:
    steps = [FakeStep(status=429, retry_after=0), FakeStep(text="ok")]
    with fake(steps) as (server, model):
        reply = await model.complete(MESSAGES, [])
        await model.aclose()
    assert reply.text == "ok"
    assert reply.attempts == 2
    assert len(server.requests) == 2


@pytest.mark.anyio
async def test_attempts_are_counted_per_call_when_calls_overlap() -> None:
    seen: set[str] = set()

    def script(body: dict[str, Any]) -> FakeStep:
        who = body["messages"][-1]["content"]
        if who == "slow" and who not in seen:
            seen.add(who)
            return FakeStep(status=429, retry_after=0.05)
        return FakeStep(text=who, delay=0.02)

    server = FakeOpenAI(script)
    replies: dict[str, ModelReply] = {}
    with serve(server.app) as base_url:
        model = OpenAIChatModel(model="fake-model", base_url=base_url)

        async def ask(who: str) -> None:
            replies[who] = await model.complete([{"role": "user", "content": who}], [])

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, "slow")
            tg.start_soon(ask, "fast")
        await model.aclose()
    assert replies["slow"].attempts == 2
    assert replies["fast"].attempts == 1
    assert server.remaining == 0


@pytest.mark.anyio
async def test_persistent_503_raises_model_error_after_bounded_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    steps = [FakeStep(status=503, retry_after=0.01) for _ in range(5)]
    with fake(steps, api_key=SECRET_KEY, max_retries=2) as (server, model):
        with structlog.testing.capture_logs() as events, pytest.raises(ModelError) as info:
            await model.complete(MESSAGES, [])
        await model.aclose()
    message = str(info.value)
    assert len(server.requests) == 3
    assert "HTTP 503" in message
    assert "127.0.0.1" in message
    assert "after 3 attempts" in message
    assert "fix:" in message
    assert SECRET_KEY not in message
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert [e["event"] for e in events] == ["llm_call_failed"]
    assert events[0]["status"] == 503
    assert events[0]["attempts"] == 3
    assert SECRET_KEY not in caplog.text + json.dumps(events, default=str)


@pytest.mark.anyio
async def test_unreachable_endpoint() -> None:
    model = OpenAIChatModel(model="llama3", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1)
    with pytest.raises(ModelError) as info:
        await model.complete(MESSAGES, [])
    await model.aclose()
    message = str(info.value)
    assert "unreachable" in message
    assert "127.0.0.1" in message
    assert "llama3" in message
    assert "after 2 attempts" in message
    assert "check llm.base_url" in message
    assert "server is running" in message


@pytest.mark.anyio
async def test_timeout_is_reported() -> None:
    with fake([FakeStep(text="late", delay=1.0)], timeout=0.2, max_retries=0) as (_, model):
        with pytest.raises(ModelError, match=r"timed out \(0.2s per attempt\) after 1 attempt;"):
            await model.complete(MESSAGES, [])
        await model.aclose()


@pytest.mark.anyio
async def test_401_names_the_key_variable_and_never_the_key(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    body = {
        "error": {"message": f"Incorrect API key provided: {SECRET_KEY}", "type": "invalid_request_error"}
    }
    with fake([FakeStep(status=401, error_body=body)], api_key=SECRET_KEY) as (server, model):
        with structlog.testing.capture_logs() as events, pytest.raises(ModelError) as info:
            await model.complete(MESSAGES, TOOLS)
        shown = repr(model)
        await model.aclose()
    message = str(info.value)
    assert len(server.requests) == 1  # 401 is not retried
    assert "HTTP 401" in message
    assert "OPENAI_API_KEY" in message
    assert "llm.api_key_env" in message
    assert SECRET_KEY not in message
    assert SECRET_KEY not in shown
    assert shown.startswith("OpenAIChatModel(base_url='http://127.0.0.1:")
    assert "model='fake-model'" in shown
    out = capsys.readouterr()
    assert SECRET_KEY not in caplog.text + out.out + out.err + json.dumps(events, default=str)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "expected"),
    [(404, "llm.model"), (400, r"\(HTTP 400\): bad tools"), (403, "refused access")],
)
async def test_client_errors_are_not_retried(status: int, expected: str) -> None:
    body = {"error": {"message": "bad tools", "type": "invalid_request_error"}}
    with fake([FakeStep(status=status, error_body=body), FakeStep(text="never")]) as (server, model):
        with pytest.raises(ModelError, match=expected):
            await model.complete(MESSAGES, TOOLS)
        await model.aclose()
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_fake_server_exhausted_script_is_a_500() -> None:
    with fake([], max_retries=0) as (_, model):
        with pytest.raises(ModelError, match="script exhausted"):
            await model.complete(MESSAGES, [])
        await model.aclose()


def test_remote_endpoint_without_key_is_not_configured() -> None:
    with pytest.raises(NotConfigured, match="OPENAI_API_KEY"):
        OpenAIChatModel(model="gpt-4o-mini", base_url="https://api.openai.com/v1")


@pytest.mark.anyio
async def test_local_endpoint_without_key_uses_a_placeholder() -> None:
    with fake([FakeStep(text="hi")]) as (_, model):
        assert (await model.complete(MESSAGES, [])).text == "hi"
        await model.aclose()


# ScriptedChatModel


@pytest.mark.anyio
async def test_scripted_model_records_calls_and_replies() -> None:
    call = ToolCall("call_1", "plisio_get_balance", '{"currency": "BTC"}')
    model = ScriptedChatModel(
        [ScriptStep(tool_calls=(call,)), ScriptStep(text="Done.", usage=Usage(1, 2, 3))]
    )
    history = [dict(m) for m in MESSAGES]
    first = await model.complete(history, TOOLS, parallel_tool_calls=False)
    history.append({"role": "tool", "tool_call_id": "call_1", "content": "0.5"})
    seen: list[str] = []
    second = await model.complete(history, TOOLS, on_text=seen.append)
    assert first.tool_calls == (call,)
    assert first.finish_reason == "tool_calls"
    assert second.text == "Done."
    assert second.usage == Usage(1, 2, 3)
    assert seen == ["Done."]
    assert len(model.calls) == 2
    assert model.calls[0].messages == MESSAGES  # a copy: later appends did not leak in
    assert model.calls[0].parallel_tool_calls is False
    assert model.calls[1].parallel_tool_calls is True
    assert model.calls[1].tools == TOOLS
    assert model.remaining == 0
    model.assert_finished()


@pytest.mark.anyio
async def test_scripted_model_past_the_end() -> None:
    model = ScriptedChatModel([ScriptStep(text="one")])
    await model.complete(MESSAGES, [])
    with pytest.raises(
        ScriptExhausted, match=r"step 2 but the script has only 1 steps; last message: user: Balance\?"
    ):
        await model.complete(MESSAGES, [])


@pytest.mark.anyio
async def test_scripted_model_error_step() -> None:
    model = ScriptedChatModel([ScriptStep(error=ModelError("provider down")), ScriptStep(text="ok")])
    with pytest.raises(ModelError, match="provider down"):
        await model.complete(MESSAGES, [])
    assert (await model.complete(MESSAGES, [])).text == "ok"


@pytest.mark.anyio
async def test_scripted_model_unfinished_names_the_step() -> None:
    steps = [
        ScriptStep(text="hello"),
        ScriptStep(tool_calls=(ToolCall("c", "plisio_create_invoice", "{}"),)),
        ScriptStep(text="bye"),
    ]
    model = ScriptedChatModel(steps, name="refund-scenario")
    await model.complete(MESSAGES, [])
    with pytest.raises(ScriptUnfinished, match=r"step 2 of 3: tool calls plisio_create_invoice") as info:
        model.assert_finished()
    assert "2 step(s) unused" in str(info.value)


# embedded_tool_calls

NAMES = ["plisio_get_balance", "plisio_create_invoice"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '<tool_call>{"name": "plisio_get_balance", "arguments": {"currency": "BTC"}}</tool_call>',
            ["plisio_get_balance"],
        ),
        ('{"name": "plisio_create_invoice", "arguments": {"amount": "10"}}', ["plisio_create_invoice"]),
        (
            'Sure:\n```json\n{"function": {"name": "plisio_get_balance", "parameters": {}}}\n```',
            ["plisio_get_balance"],
        ),
        ('```json\n{"function": "plisio_get_balance", "args": {}}\n```', ["plisio_get_balance"]),
        ('plisio_get_balance({"currency": "BTC"})', ["plisio_get_balance"]),
        ("Let me check.\nplisio_get_balance(currency='BTC')\n", ["plisio_get_balance"]),
        ('[plisio_create_invoice(amount="5"), plisio_get_balance()]', NAMES[::-1]),
        ('<function=plisio_get_balance>{"currency": "BTC"}</function>', ["plisio_get_balance"]),
        (
            '[TOOL_CALLS] [{"name": "plisio_get_balance", "arguments": {}}, {"name": "plisio_create_invoice"}]',
            ["plisio_get_balance", "plisio_create_invoice"],
        ),
        ('{"name": "plisio_drain_wallet", "arguments": {}}', []),  # not an offered tool
    ],
)
def test_embedded_tool_calls_found(text: str, expected: list[str]) -> None:
    assert embedded_tool_calls(text, NAMES) == expected


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "I can check your balance with plisio_get_balance if you like.",
        "Use `plisio_get_balance` to see balances; plisio_create_invoice makes an invoice.",
        "plisio_get_balance returned 0.5 BTC.",
        "plisio_get_balance (read-only) shows what the shop holds",
        "Your name is on the invoice and the function works fine.",
        "The tool: 'plisio_get_balance' is read-only; name = 'Alice'.",
    ],
)
def test_embedded_tool_calls_ignores_prose(text: str | None) -> None:
    assert embedded_tool_calls(text, NAMES) == []
