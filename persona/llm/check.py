"""``persona llm check``: what a persona needs of an endpoint, tried against it before any persona runs.

Six probes with a harmless read tool (the balance in a coin): the model list, one tool call without and
with streaming, two calls in one step, usage, and the follow-up round trip (the tool's answer sent back
with what the provider attached, which is where DeepSeek and Gemini 3 refuse a careless client). Each row
says what was seen; a failure a persona cannot work around sets ``needed`` and carries the fix.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from persona.errors import ModelError
from persona.llm.client import OpenAIChatModel
from persona.llm.replies import ModelReply, message_extra


def _probe_tool() -> dict[str, Any]:
    """The registry's own balance tool, so the probe sends what a persona sends (in the profile's dialect)."""
    from tools.plisio.tools import PLISIO_TOOLS

    return next(t.openai_tool() for t in PLISIO_TOOLS if t.name == "plisio_get_balance")


PROBE_TOOL = _probe_tool()
SYSTEM = "You check a tool interface. Use the tool when asked; answer in one short sentence."
ONE = "Call plisio_get_balance with psys_cid BTC."
TWO = "Call plisio_get_balance twice in one step, in parallel: once with psys_cid BTC and once with ETH."


@dataclass(frozen=True)
class Row:
    check: str
    ok: bool
    detail: str
    fix: str = ""
    needed: bool = True
    """A failure here stops a persona (False: it only narrows what works)."""


def _calls_balance(reply: ModelReply, coins: set[str]) -> bool:
    seen = set()
    for call in reply.tool_calls:
        if call.name != "plisio_get_balance":
            return False
        try:
            args = call.arguments if isinstance(call.arguments, dict) else json.loads(call.arguments or "")
        except ValueError:
            return False
        seen.add(str(args.get("psys_cid", "")).upper() if isinstance(args, dict) else "")
    return coins <= seen


def _described(reply: ModelReply) -> str:
    if not reply.tool_calls:
        return f"no tool call; answered {(reply.text or '')[:60]!r}"
    return ", ".join(f"{c.name}({c.arguments if isinstance(c.arguments, str) else json.dumps(c.arguments)})"
                     for c in reply.tool_calls)  # fmt: skip


async def run_checks(
    make: Callable[[bool], OpenAIChatModel], model_name: str, *, streams: bool
) -> tuple[str, list[Row]]:
    """The probes, in order; ``make(stream)`` builds the configured model, streaming or not; ``streams``:
    the personas stream (``llm.stream``), so streamed tool calls are needed. Returns the endpoint as it may
    be shown, and the rows."""
    plain, streamed = make(False), make(True)
    rows: list[Row] = []
    try:
        rows.append(Row("profile", True, plain.profile.summary, needed=False))
        try:
            models = await plain.list_models()
        except ModelError as err:
            rows.append(Row("reachable", False, str(err)))  # the message carries its own fix
            return plain.base_url, rows
        rows.append(Row("reachable", True, f"{len(models)} model(s) listed"))
        rows.append(
            Row("model found", model_name in models, model_name if model_name in models else f"{model_name} is not "
                f"listed ({', '.join(models[:5]) or 'none'}{'…' if len(models) > 5 else ''})",
                "check llm.model (or personas.<name>.model.model); some servers list other names (an Azure "
                "deployment, Ollama's ':latest'), so this is a note", needed=False)
        )  # fmt: skip
        one = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ONE}]
        first = await _probe(rows, "tool calls", lambda: plain.complete(one, [PROBE_TOOL]), {"BTC"},
                             "use a model that supports tool calling (function calling) on this server")  # fmt: skip
        flowing = await _probe(rows, "streaming tool calls", lambda: streamed.complete(one, [PROBE_TOOL]), {"BTC"},
                               "set llm.stream: false (this server does not stream tool calls)", needed=streams)  # fmt: skip
        two = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TWO}]
        await _probe(rows, "parallel calls", lambda: plain.complete(two, [PROBE_TOOL]), {"BTC", "ETH"},
                     "set personas.<name>.model.parallel_tool_calls: false", needed=False)  # fmt: skip
        if first is not None:
            usage = first.usage.total_tokens
            rows.append(Row("usage reported", usage > 0, f"{usage} tokens" if usage else "no usage in the reply",
                            "none needed: tokens are then estimated for personas.<name>.limits.max_tokens",
                            needed=False))  # fmt: skip
            # Sent back as personas will: from the streamed reply when they stream (its fields are assembled
            # from deltas), else from the plain one.
            if streams and flowing is not None:
                rows.append(await _round_trip(streamed, one, flowing))
            else:
                rows.append(await _round_trip(plain, one, first))
    finally:
        await plain.aclose()
        await streamed.aclose()
    return plain.base_url, rows


async def _probe(
    rows: list[Row], name: str, ask: Callable[[], Awaitable[ModelReply]], coins: set[str], fix: str,
    *, needed: bool = True,
) -> ModelReply | None:  # fmt: skip
    try:
        reply = await ask()
    except ModelError as err:
        rows.append(Row(name, False, str(err), fix, needed))
        return None
    ok = _calls_balance(reply, coins)
    rows.append(Row(name, ok, _described(reply), "" if ok else fix, needed))
    return reply if ok else None


async def _round_trip(model: OpenAIChatModel, asked: list[dict[str, Any]], reply: ModelReply) -> Row:
    """The tools' answers sent back with what the provider attached; a final answer must come."""
    calls = [
        {"id": c.id or f"check_{n}", "type": "function", **message_extra(c.extra),
         "function": {"name": c.name, "arguments": c.arguments if isinstance(c.arguments, str) else json.dumps(c.arguments)}}
        for n, c in enumerate(reply.tool_calls)
    ]  # fmt: skip
    messages = [
        *asked,
        {"role": "assistant", "content": reply.text, "tool_calls": calls, **message_extra(reply.extra)},
    ]
    messages += [{"role": "tool", "tool_call_id": c["id"], "content": '{"ok":true,"result":{"psys_cid":"BTC",'
                  '"balance":"0.80000000"}}'} for c in calls]  # fmt: skip
    fields = sorted({*(reply.extra or {}), *(k for c in reply.tool_calls for k in (c.extra or {}))})
    returned = ", ".join(fields) or "none"
    try:
        final = await model.complete(messages, [PROBE_TOOL])
    except ModelError as err:
        return Row("round trip", False, f"sent back: {returned}; {err}",
                   "set llm.provider to this server's (see the README's list); `generic` sends everything back")  # fmt: skip
    return Row("round trip", True, f"answered after the tool result; sent back: {returned}"
               + ("" if final.text else " (an empty answer)"))  # fmt: skip
