"""``persona llm check`` against fake servers that behave like three kinds of provider: one that cannot
stream tool calls, one (DeepSeek-like) that refuses a follow-up without its ``reasoning_content``, one that is
down. Real processes; the output is what the README shows."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.openai_server import FakeOpenAI, FakeStep
from tests.harness import run_cli, write_config
from tools.plisio.sandbox import LoopbackServer


def _wants(body: dict[str, Any]) -> list[str]:
    """What the probe asked for: the coins, or nothing once the tool answered."""
    messages = body.get("messages") or []
    if any(m.get("role") == "tool" for m in messages):
        return []
    return ["BTC", "ETH"] if "twice" in str(messages[-1].get("content")) else ["BTC"]


def no_streamed_tools(body: dict[str, Any]) -> FakeStep:
    coins = _wants(body)
    if body.get("stream") and coins:
        return FakeStep(text="I would call plisio_get_balance now.")
    calls = [
        {"id": f"call_{c}", "name": "plisio_get_balance", "arguments": json.dumps({"psys_cid": c})}
        for c in coins
    ]
    return FakeStep(text=None if calls else "The BTC balance is 0.8.", tool_calls=calls)


class Thinking:
    """DeepSeek's thinking mode as it behaves: reasoning_content on the reply, required back."""

    def __init__(self) -> None:
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"]),
                                     Route("/v1/models", self.models)])  # fmt: skip

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "deepseek-reasoner", "object": "model"}]})

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        for m in body["messages"]:
            if m["role"] == "assistant" and m.get("tool_calls") and not m.get("reasoning_content"):
                return JSONResponse({"error": {"message": "Missing `reasoning_content` field in the assistant message "
                                     "at message index 2.", "type": "invalid_request_error"}}, status_code=400)  # fmt: skip
        coins = _wants(body)
        calls = [{"index": n, "id": f"call_0{n}_x", "type": "function",
                  "function": {"name": "plisio_get_balance", "arguments": json.dumps({"psys_cid": c})}}
                 for n, c in enumerate(coins)]  # fmt: skip
        message = {"role": "assistant", "content": None if calls else "0.8 BTC.",
                   "reasoning_content": "The user wants the balance.", **({"tool_calls": calls} if calls else {})}  # fmt: skip
        usage = {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}
        if body.get("stream"):
            delta = {k: v for k, v in message.items()}
            chunks = [{"id": "x", "object": "chat.completion.chunk", "model": "deepseek-reasoner",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": "tool_calls" if calls else "stop"}]},
                      {"id": "x", "object": "chat.completion.chunk", "model": "deepseek-reasoner", "choices": [],
                       "usage": usage}]  # fmt: skip
            text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return Response(text, media_type="text/event-stream")
        return JSONResponse({"id": "x", "object": "chat.completion", "model": "deepseek-reasoner", "usage": usage,
                             "choices": [{"index": 0, "message": message,
                                          "finish_reason": "tool_calls" if calls else "stop"}]})  # fmt: skip


def check(tmp_path: Path, url: str, *, model: str = "fake-model", code: int) -> tuple[str, str]:
    cfg = write_config(tmp_path, llm_url=url)
    cfg.write_text(
        cfg.read_text(encoding="utf-8").replace("model: fake-model", f"model: {model}"), encoding="utf-8"
    )
    proc = run_cli(cfg, "llm", "check", check=code)
    return proc.stdout, proc.stderr


def rows(out: str) -> dict[str, tuple[str, str]]:
    """The table as printed to a pipe: check, result, detail, separated by two or more spaces."""
    found = {}
    for line in out.splitlines()[2:]:
        parts = re.split(r"\s{2,}", line.strip(), maxsplit=2)
        if len(parts) == 3:
            found[parts[0]] = (parts[1], parts[2])
    return found


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.mark.slow
def test_a_server_that_cannot_stream_tool_calls_fails_with_the_fix(tmp_path: Path) -> None:
    with LoopbackServer(FakeOpenAI(no_streamed_tools).app) as server:  # type: ignore[arg-type]
        out, err = check(tmp_path, server.base_url, code=1)
    seen = rows(out)
    assert seen["tool calls"][0] == "ok" and seen["parallel calls"][0] == "ok"
    assert seen["streaming tool calls"] == (
        "FAILED",
        "no tool call; answered 'I would call plisio_get_balance now.'",
    )
    assert "error: streaming tool calls: fix: set llm.stream: false" in err
    assert seen["round trip"][0] == "ok"


@pytest.mark.slow
def test_a_server_that_needs_its_reasoning_back_passes_and_says_so(tmp_path: Path) -> None:
    with LoopbackServer(Thinking().app) as server:
        out, _ = check(tmp_path, server.base_url, model="deepseek-reasoner", code=0)
    seen = rows(out)
    assert all(result == "ok" for result, _ in seen.values()), out
    assert "sent back: reasoning_content" in seen["round trip"][1]
    assert seen["profile"][1] == "generic (tools: loose schema)" and "a persona can use this endpoint" in out


@pytest.mark.slow
def test_a_server_that_is_down_is_one_clear_failure(tmp_path: Path, closed_port: int) -> None:
    out, err = check(tmp_path, f"http://127.0.0.1:{closed_port}", code=1)
    seen = rows(out)
    assert seen["reachable"][0] == "FAILED" and "is unreachable" in seen["reachable"][1]
    assert "tool calls" not in seen, "nothing else is tried"
    assert "error: a persona cannot use this endpoint: reachable failed" in err


@pytest.mark.slow
def test_without_streaming_a_server_that_cannot_stream_tool_calls_is_usable(tmp_path: Path) -> None:
    with LoopbackServer(FakeOpenAI(no_streamed_tools).app) as server:  # type: ignore[arg-type]
        cfg = write_config(tmp_path, llm_url=server.base_url)
        text = cfg.read_text(encoding="utf-8")
        cfg.write_text(text.replace("  stream: true", "  stream: false", 1), encoding="utf-8")
        proc = run_cli(cfg, "llm", "check", check=0)
    assert rows(proc.stdout)["streaming tool calls"][0] == "no"
    assert "note: streaming tool calls: fix: set llm.stream: false" in proc.stderr
