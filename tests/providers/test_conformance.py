"""The conformance suite: every capture in ``captures/`` served verbatim to the real ``openai`` client, one
turn of the growth persona against the sandbox. A tool-calling capture must run exactly the calls it holds
and send back what its provider requires (the replay server refuses the follow-up otherwise, with the
provider's own error); an error capture must end the turn with a ``ModelError`` that names the provider's
own reason. A second run with the provider's fields stripped from the reply shows the check has teeth."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest

from persona.app import Runtime
from persona.calls import call_context
from persona.llm import ModelReply, OpenAIChatModel
from persona.llm.profiles import PROFILES
from persona.loop import run_turn
from persona.store.engine import Store
from tests.harness import build_runtime
from tests.providers.replay_server import CAPTURES, CHECKS, REQUEST_CHECKS, Capture, ReplayServer, captures
from tools.plisio.sandbox import LoopbackServer, Sandbox

pytestmark = pytest.mark.anyio

ALL = list(captures())
PROVIDERS = {
    "openai", "azure", "gemini-2.5", "gemini-3", "deepseek", "ollama", "vllm", "llamacpp", "lmstudio",
    "openrouter", "groq", "mistral",
}  # fmt: skip


@pytest.fixture
async def rt(store: Store, sandbox: Sandbox) -> AsyncIterator[Runtime]:
    runtime = build_runtime(store, sandbox)
    yield runtime
    await runtime.aclose()


class Stripped:
    """The model as a client that drops what the provider attached (this project before the fix)."""

    def __init__(self, inner: OpenAIChatModel) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    async def complete(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]], **kw: Any
    ) -> ModelReply:
        reply = await self.inner.complete(messages, tools, **kw)
        calls = tuple(replace(c, extra=None) for c in reply.tool_calls)
        return replace(reply, extra=None, tool_calls=calls)


async def turn(rt: Runtime, capture: Capture, *, strip: bool = False) -> tuple[Any, ReplayServer]:
    server = ReplayServer(capture)
    with LoopbackServer(server.app) as http:
        model = OpenAIChatModel(
            model="replayed", base_url=f"{http.base_url}/v1", stream=capture.streamed, max_retries=0, timeout=10,
            provider=capture.profile,
        )  # fmt: skip
        ctx = call_context(rt.settings, "growth", "conformance@example.com")
        try:
            result = await run_turn(
                model=Stripped(model) if strip else model, dispatcher=rt.dispatcher, ctx=ctx,
                system_prompt="You read a Plisio shop.", user_message="What is the BTC balance?",
            )  # fmt: skip
        finally:
            await model.aclose()
    return result, server


def test_the_suite_covers_every_provider_the_readme_names() -> None:
    assert {c.data["provider"] for c in ALL} >= PROVIDERS
    for capture in ALL:
        assert capture.data["fidelity"] in ("verbatim", "reconstructed"), capture.name
        assert capture.data["source"].startswith("https://"), capture.name
        assert capture.expect, f"{capture.name}: no expect block"
        assert set(capture.expect.get("round_trip", [])) <= set(CHECKS), capture.name
        for refusal in capture.data.get("refuses") or []:
            assert refusal["check"] in REQUEST_CHECKS and refusal["sent_by"] in PROFILES, capture.name
            assert (CAPTURES / f"{refusal['refusal_from']}.json").is_file(), capture.name


@pytest.mark.parametrize("capture", ALL, ids=lambda c: c.name)
async def test_a_real_reply_is_understood(rt: Runtime, capture: Capture) -> None:
    result, server = await turn(rt, capture)
    expect = capture.expect
    if "error" in expect:
        assert result.stopped_by == "model_error", result.text
        message = str(result.error)
        assert expect["error"] in message, message
        assert "fix:" in message or "mid-response" in message, message
        assert expect.get("fix", "") in message.partition("fix:")[2], message
        return
    if "text" in expect:  # a plain answer: no tool call, one request
        assert result.calls == [] and expect["text"] in result.text and len(server.requests) == 1
        return
    ran = [(c.tool, json.loads(_arguments(result, c.call_id))) for c in result.calls]
    assert ran == [(name, args) for name, args in expect["calls"]], ran
    assert all(c.outcome.value == "succeeded" for c in result.calls), [c.content for c in result.calls]
    assert server.refused == [], f"the follow-up lacked {server.refused}"
    assert result.stopped_by is None and result.text == "Your BTC balance is shown above."
    assert len(server.requests) == 2


def _arguments(result: Any, call_id: str) -> str:
    for message in result.messages:
        for call in message.get("tool_calls") or []:
            if call["id"] == call_id:
                return str(call["function"]["arguments"])
    raise AssertionError(f"no call {call_id} in the turn's messages")


FIELDS = {"reasoning_content", "reasoning_details", "thought_signature"}
ROUND_TRIPS = [c for c in ALL if FIELDS & set(c.expect.get("round_trip", []))]
"""Captures whose provider needs fields of its reply back (Mistral's own ids are kept by the loop anyway)."""


@pytest.mark.parametrize("capture", ROUND_TRIPS, ids=lambda c: c.name)
async def test_without_the_round_trip_the_provider_refuses(rt: Runtime, capture: Capture) -> None:
    result, server = await turn(rt, capture, strip=True)
    assert server.refused, "the replay server checks what comes back"
    assert result.stopped_by == "model_error"
    source = capture.expect.get("refusal_from")
    if source:
        (refusal,) = [c for c in ALL if c.name == source]
        assert refusal.expect["error"] in str(result.error), str(result.error)


STRICT = [c for c in ALL if c.expect.get("strict_fields") and "calls" in c.expect]


@pytest.mark.parametrize("capture", STRICT, ids=lambda c: c.name)
async def test_a_strict_provider_is_not_sent_fields_it_refuses(rt: Runtime, capture: Capture) -> None:
    """Sent back blindly (the generic profile), what the provider attached to its reply is refused by its
    own strict server; its profile keeps that off the wire (the test above)."""
    generic = replace(capture, data={**capture.data, "provider": "generic-strict", "refuses": []})
    result, server = await turn(rt, generic)
    attached = any(
        set(m) - {"role", "content", "tool_calls"} for m in result.messages if m["role"] == "assistant"
    )
    attached |= any(
        set(c) - {"id", "type", "function"} for m in result.messages for c in m.get("tool_calls") or []
    )
    assert bool(server.refused) == attached, (server.refused, result.messages)
    if attached:
        assert result.stopped_by == "model_error" and "is unsupported" in str(result.error)


REFUSING = [(c, r) for c in ALL for r in c.data.get("refuses") or []]
"""Captures whose server refuses a request some other profile would send (its own error body)."""


@pytest.mark.parametrize(
    ("capture", "refusal"), REFUSING, ids=lambda x: x["check"] if isinstance(x, dict) else x.name
)
async def test_what_a_server_refuses_stays_off_its_wire(
    rt: Runtime, capture: Capture, refusal: dict[str, str]
) -> None:
    """Under its own profile the request passes (the test above); under a profile that sends what this
    server refuses (a type array, parallel_tool_calls, a long repetition bound), the provider's own error
    comes back, and the fix names llm.provider."""
    other = replace(capture, data={**capture.data, "provider": refusal["sent_by"]})
    result, server = await turn(rt, other)
    assert server.refused == [refusal["check"]], server.refused
    assert result.stopped_by == "model_error" and result.calls == []
    (source,) = [c for c in ALL if c.name == refusal["refusal_from"]]
    message = str(result.error)
    assert source.expect["error"] in message and "llm.provider" in message.partition("fix:")[2], message
