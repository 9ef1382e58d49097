"""How the client reads what lax servers really send, each case with the payload shape that broke it:
parallel calls under one ``index``, provider fields that must come back (streamed in pieces or sent once),
errors mid-stream as llama.cpp sends them, a line that is not JSON, bytes that do not decode, and error
bodies as a list, a string or an HTML page. Every failure is one ``ModelError``, never a raw exception."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from persona.errors import ModelError
from persona.llm import ModelReply, OpenAIChatModel
from tests.providers.replay_server import Capture, ReplayServer
from tools.plisio.sandbox import LoopbackServer

pytestmark = pytest.mark.anyio

TOOLS = [{"type": "function", "function": {"name": "plisio_get_balance", "parameters": {"type": "object"}}}]


def sse(*chunks: Any, tail: str = "data: [DONE]\n\n") -> str:
    return "".join(c if isinstance(c, str) else f"data: {json.dumps(c)}\n\n" for c in chunks) + tail


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip


def call_delta(index: int, ident: str | None, name: str | None, args: str, **extra: Any) -> dict[str, Any]:
    fragment: dict[str, Any] = {"index": index, "function": {"arguments": args}, **extra}
    if ident:
        fragment.update(id=ident, type="function")
    if name:
        fragment["function"]["name"] = name
    return chunk({"tool_calls": [fragment]})


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[LoopbackServer] = []

    async def ask(
        response: dict[str, Any], *, stream: bool, messages: list[dict[str, Any]] | None = None,
        provider: str | None = None,
    ) -> ModelReply:  # fmt: skip
        capture = Capture(Path("inline.json"), {"provider": "inline", "case": "x", "response": response})
        server = LoopbackServer(ReplayServer(capture).app).start()
        servers.append(server)
        model = OpenAIChatModel(
            model="m",
            base_url=f"{server.base_url}/v1",
            stream=stream,
            max_retries=0,
            timeout=5,
            provider=provider,
        )
        try:
            return await model.complete(messages or [{"role": "user", "content": "hi"}], TOOLS)
        finally:
            await model.aclose()

    yield ask
    for server in servers:
        server.stop()


def stream(text: str) -> dict[str, Any]:
    return {"status": 200, "content_type": "text/event-stream", "sse": text}


# -- tool calls -------------------------------------------------------------------------------------------


async def test_two_calls_under_one_index_with_their_own_ids_stay_two(serve: Any) -> None:
    """Gemini behind common converters: parallel calls all as ``index: 0``; each starts with id and name."""
    reply = await serve(stream(sse(
        call_delta(0, "call_a", "plisio_get_balance", '{"psys_cid":'), call_delta(0, None, None, '"BTC"}'),
        call_delta(0, "call_b", "plisio_get_balance", '{"psys_cid":"ETH"}'),
        chunk({}, "tool_calls"),
    )), stream=True)  # fmt: skip
    assert [(c.id, c.name, c.arguments) for c in reply.tool_calls] == [
        ("call_a", "plisio_get_balance", '{"psys_cid":"BTC"}'),
        ("call_b", "plisio_get_balance", '{"psys_cid":"ETH"}'),
    ]


async def test_a_repeated_id_on_every_fragment_is_still_one_call(serve: Any) -> None:
    reply = await serve(stream(sse(
        call_delta(0, "call_a", "plisio_get_balance", '{"psys_cid":'), call_delta(0, "call_a", None, '"BTC"}'),
    )), stream=True)  # fmt: skip
    assert [(c.id, c.arguments) for c in reply.tool_calls] == [("call_a", '{"psys_cid":"BTC"}')]


async def test_calls_without_index_are_told_apart_by_id_even_interleaved(serve: Any) -> None:
    def frag(ident: str, name: str | None, args: str) -> dict[str, Any]:
        fragment: dict[str, Any] = {"id": ident, "type": "function", "function": {"arguments": args}}
        if name:
            fragment["function"]["name"] = name
        return chunk({"tool_calls": [fragment]})

    reply = await serve(stream(sse(
        frag("a", "plisio_get_balance", '{"psys_cid":'), frag("b", "plisio_get_balance", '{"psys_cid":'),
        frag("a", None, '"BTC"}'), frag("b", None, '"ETH"}'),
    )), stream=True)  # fmt: skip
    assert [(c.id, c.arguments) for c in reply.tool_calls] == [
        ("a", '{"psys_cid":"BTC"}'),
        ("b", '{"psys_cid":"ETH"}'),
    ]


# -- provider fields that must come back -----------------------------------------------------------------


async def test_streamed_reasoning_is_joined_and_a_signature_is_kept_whole(serve: Any) -> None:
    signature = {"google": {"thought_signature": "CiQBjz1rX8sig=="}}
    reply = await serve(stream(sse(
        chunk({"role": "assistant", "reasoning_content": "The user wants "}),
        chunk({"reasoning_content": "the balance."}),
        call_delta(0, "call_a", "plisio_get_balance", '{"psys_cid":', extra_content=signature),
        call_delta(0, None, None, '"BTC"}', extra_content=signature),  # sent again: never concatenated
        chunk({}, "tool_calls"),
    )), stream=True)  # fmt: skip
    assert reply.extra == {"reasoning_content": "The user wants the balance."}
    [call] = reply.tool_calls
    assert call.extra == {"extra_content": signature}


async def test_fields_of_a_whole_reply_are_kept_and_nulls_dropped(serve: Any) -> None:
    message = {"role": "assistant", "content": None, "reasoning_content": "Think.", "refusal": None,
               "tool_calls": [{"id": "call_a", "type": "function", "extra_content": {"google": {"thought_signature": "s"}},
                               "function": {"name": "plisio_get_balance", "arguments": "{}"}}],
               "vendor_null": None}  # fmt: skip
    body = {"id": "x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}  # fmt: skip
    reply = await serve({"status": 200, "body": body}, stream=False)
    assert reply.extra == {"reasoning_content": "Think."}
    assert reply.tool_calls[0].extra == {"extra_content": {"google": {"thought_signature": "s"}}}


async def test_streamed_reasoning_details_are_joined_by_item_and_other_fields_kept_once(serve: Any) -> None:
    """OpenRouter streams reasoning_details items by index (text in pieces, the signature last); Groq repeats
    ``channel`` on every delta."""
    reply = await serve(stream(sse(
        chunk({"role": "assistant", "channel": "analysis",
               "reasoning_details": [{"type": "reasoning.text", "text": "Let me ", "index": 0}]}),
        chunk({"channel": "analysis", "reasoning_details": [{"type": "reasoning.text", "text": "look.", "index": 0}]}),
        chunk({"reasoning_details": [{"type": "reasoning.text", "signature": "sig==", "index": 0}]}),
        chunk({"content": "Done."}, "stop"),
    )), stream=True)  # fmt: skip
    assert reply.extra == {"reasoning_details": [{"type": "reasoning.text", "text": "Let me look.", "index": 0,
                                                  "signature": "sig=="}]}, "generic keeps no channel"  # fmt: skip


async def test_list_content_parts_give_the_text(serve: Any) -> None:
    message = {"role": "assistant", "content": [{"type": "thinking", "thinking": [{"type": "text", "text": "hm"}]},
                                                 {"type": "text", "text": "The balance is 0.8 BTC."}]}  # fmt: skip
    body = {"id": "x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}  # fmt: skip
    assert (await serve({"status": 200, "body": body}, stream=False)).text == "The balance is 0.8 BTC."


# -- failures: every shape, one ModelError ----------------------------------------------------------------

FAILURES: dict[str, tuple[dict[str, Any], bool, str]] = {
    "llama.cpp error line mid-stream": (
        stream(sse(chunk({"content": "Hel"}), 'error: {"code":500,"message":"context shift is disabled","type":"server_error"}\n\n', tail="")),
        True, "context shift is disabled"),
    "an error event": (
        stream(sse(chunk({"content": "Hel"}), 'event: error\ndata: {"message":"upstream closed","code":502}\n\n', tail="")),
        True, "upstream closed"),
    "an error chunk": (stream(sse({"error": {"message": "Internal error", "code": 500}})), True, "Internal error"),
    "a data line that is not JSON": (stream(sse(chunk({"content": "Hi"}), "data: {not json\n\n")), True,
                                     "a data line that is not JSON"),
    "Google's error list": ({"status": 400, "body": [{"error": {"code": 400, "message": "Function call is missing a thought_signature in functionCall parts.", "status": "INVALID_ARGUMENT"}}]},
                            False, "missing a thought_signature"),
    "a plain string": ({"status": 400, "body": "Invalid model name passed in model=gpt-9"}, False, "Invalid model name"),
    "an HTML page from a proxy": ({"status": 502, "content_type": "text/html",
                                   "text": "<html><head><title>502 Bad Gateway</title></head><body><h1>502</h1></body></html>"},
                                  False, "502 Bad Gateway"),
    "DeepSeek's round-trip refusal": (
        {"status": 400, "body": {"error": {"message": "Missing `reasoning_content` field in the assistant message at message index 2.", "type": "invalid_request_error"}}},
        False, "Missing `reasoning_content`"),
    "a JSON body that is not JSON": ({"status": 200, "content_type": "application/json", "text": "{\"id\": "}, False,
                                     "could not be decoded"),
    "choices that are not a list": ({"status": 200, "body": {"id": "x", "choices": 5}}, False, "unexpected shape"),
    "tool calls that are not a list": ({"status": 200, "body": {"choices": [{"index": 0, "message": {
        "role": "assistant", "tool_calls": 5}}]}}, False, "unexpected shape"),
    "a stream answered with an error body": ({"status": 200, "body": {"error": {"message": "model is loading"}}},
                                             True, "model is loading"),
    "a stream answered with a whole completion": ({"status": 200, "body": {"id": "x", "choices": []}}, True,
                                                  "answered with no stream"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(FAILURES))
async def test_every_failure_is_one_model_error_with_the_providers_reason(serve: Any, name: str) -> None:
    response, streamed, reason = FAILURES[name]
    with pytest.raises(ModelError) as failed:
        await serve(response, stream=streamed)
    message = str(failed.value)
    assert reason in message and "LLM endpoint 127.0.0.1 (model m)" in message, message
    assert "fix:" in message


async def test_a_round_trip_refusal_says_why_not_temperature(serve: Any) -> None:
    response = FAILURES["DeepSeek's round-trip refusal"][0]
    with pytest.raises(ModelError) as failed:
        await serve(response, stream=False)
    assert "temperature" not in str(failed.value) and "sent back" in str(failed.value)


def _refused(message: str) -> dict[str, Any]:
    return {"status": 400, "body": {"error": {"message": message, "type": "invalid_request_error"}}}


@pytest.mark.parametrize(
    ("reason", "provider", "fix"),
    [
        ("Parallel tool calls are not supported.", None,
         "this endpoint does not take parallel_tool_calls: set llm.provider to the kind of server it is (now generic; gemini leaves it out)"),
        ("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
         None, "does not take max_tokens: set llm.provider to the kind of server it is (now generic; openai, azure leave it out)"),
        ("Unrecognized request argument supplied: stream_options", None, "(now generic; mistral leaves it out)"),
        ("Unsupported parameter: 'parallel_tool_calls' is not supported with this model.", "openai",
         "the openai profile sends parallel_tool_calls, which this model or server version refuses; if the server is another kind, set llm.provider (gemini leaves it out)"),
        ("Unknown parameter: 'stream_options'.", "azure", "this Azure API version does not take stream_options"),
        ("body.messages.1.assistant.reasoning_content: Extra inputs are not permitted", None,
         "this server refuses reasoning_content on a message, a field another provider attached"),
        ("'messages' : property 'reasoning' is unsupported", None, "this server refuses reasoning on a message"),
        ("Failed to initialize samplers: failed to parse grammar", None, "set llm.provider: llamacpp (or lmstudio; now generic)"),
        ("Failed to initialize samplers: failed to parse grammar", "llamacpp", "even in the llamacpp dialect: upgrade the server"),
        ("json: cannot unmarshal array into Go struct field .tools.function.parameters.properties.type of type string",
         None, "refuses type arrays in tool schemas: set llm.provider: ollama"),
        ("Invalid value for 'temperature': must be at most 2", None, "check the sampling parameters sent"),
        ("max_tokens must be at most 4096; images are not supported", None, "check the sampling parameters sent"),
        ("The requested schema uses features not supported by xgrammar.", "vllm", "check that llm.model supports tool calling"),
        ("Invalid schema for function 'f': 'format' is not permitted in strict mode.", "openai",
         "check that llm.model supports tool calling"),
    ],
)  # fmt: skip
async def test_a_refused_request_gets_the_fix_of_its_cause(
    serve: Any, reason: str, provider: str | None, fix: str
) -> None:
    with pytest.raises(ModelError) as failed:
        await serve(_refused(reason), stream=False, provider=provider)
    message = str(failed.value)
    assert reason in message and fix in message.partition("; fix: ")[2], message


@pytest.mark.parametrize("streamed", [True, False])
async def test_bytes_that_do_not_decode_are_a_model_error(streamed: bool) -> None:
    """A body labelled gzip that is not: ``httpx`` raises DecodingError while the body is read."""

    async def broken(request: Request) -> Response:
        body = gzip.compress(b"data: ")[:10] + b"not deflate data at all" * 5
        return Response(body, media_type="text/event-stream", headers={"content-encoding": "gzip"})

    app = Starlette(routes=[Route("/v1/chat/completions", broken, methods=["POST"])])
    with LoopbackServer(app) as server:
        model = OpenAIChatModel(
            model="m", base_url=f"{server.base_url}/v1", stream=streamed, max_retries=0, timeout=5
        )
        try:
            with pytest.raises(ModelError, match="could not be decoded") as failed:
                await model.complete([{"role": "user", "content": "hi"}], TOOLS)
        finally:
            await model.aclose()
    assert "unreachable" not in str(failed.value) and "fix:" in str(failed.value)


# -- the CLI: a turn that stopped on a model error is not a success -----------------------------------------


@pytest.mark.slow
def test_chat_m_exits_1_and_prints_the_model_error_once(tmp_path: Path) -> None:
    from tests.fakes.openai_server import FakeOpenAI, FakeStep
    from tests.harness import run_cli, write_config

    google = [{"error": {"code": 400, "message": "Function call is missing a thought_signature in functionCall parts.",
                         "status": "INVALID_ARGUMENT"}}]  # fmt: skip
    fake = FakeOpenAI(lambda body: FakeStep(status=400, error_body=google))  # type: ignore[arg-type]
    with LoopbackServer(fake.app) as server:
        cfg = write_config(tmp_path, llm_url=server.base_url)
        proc = run_cli(cfg, "chat", "--persona", "finance", "--user", "ops@example.com", "-m", "hi", check=1)
    said = " ".join((proc.stdout + proc.stderr).split())
    assert said.count("missing a thought_signature") == 1, said
    assert "stopped: model_error" in said
