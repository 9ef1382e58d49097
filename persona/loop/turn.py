"""``run_turn``: drive model <-> tools until a final answer or a limit, and record how the turn ended.

What the loop guarantees, whatever the model does: every call goes through the
dispatcher; read-only calls of one step run concurrently while calls with side effects run
one at a time in the order given; results go back in call order bound by
``tool_call_id``; the same call with the same arguments is not repeated endlessly; steps,
tool calls, tokens and wall-clock time are bounded, and hitting a bound ends the turn with
a plain final message, not an exception. Malformed tool calls from real endpoints (no id,
arguments as an object or not JSON, unknown names, calls written as text) are answered
and audited, never fatal. A turn that fails anyway (a bug, a cancellation, the store) writes
``turn_failed`` with the reason, and its records are durable before the error goes on.

Each step is planned (:mod:`.planning`), executed (:mod:`.execution`) and resolved (:mod:`.resolution`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from persona.calls import CallContext, Dispatched, call_event
from persona.dispatcher import Dispatcher
from persona.errors import ModelError
from persona.events import Event
from persona.llm import ChatModel, ModelReply, Usage, embedded_tool_calls, message_extra
from persona.loop import resolution
from persona.loop.execution import execute
from persona.loop.planning import Guard, Planned, arg_text, calls_so_far, normalize
from persona.settings import Limits, ModelSettings, StopReason
from tools.redaction import scrub

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class LoopEvent:
    """Progress for a UI: ``tool_call`` before dispatch, ``tool_result`` after, ``notice``, ``limit``."""

    kind: str
    tool: str | None = None
    call_id: str | None = None
    arguments: Any = None
    outcome: str | None = None
    detail: str | None = None


@dataclass
class TurnResult:
    text: str
    messages: list[dict[str, Any]]
    """The messages this turn added to the conversation (user, assistant, tool, final assistant)."""
    usage: Usage = field(default_factory=Usage)
    steps: int = 0
    calls: list[Dispatched] = field(default_factory=list)
    stopped_by: StopReason | None = None
    flags: list[str] = field(default_factory=list)
    error: Exception | None = None
    model: str = ""
    conversation_id: str = ""


OnEvent = Callable[[LoopEvent], None]


def _estimate_tokens(messages: Sequence[dict[str, Any]]) -> int:
    return sum(len(json.dumps(m, ensure_ascii=False, default=str)) for m in messages) // 4


class _Turn:
    def __init__(
        self,
        model: ChatModel,
        dispatcher: Dispatcher[Any],
        ctx: CallContext,
        limits: Limits,
        settings: ModelSettings,
        on_event: OnEvent | None,
        on_text: Callable[[str], None] | None,
        clock: Callable[[], float],
    ) -> None:
        self.model, self.dispatcher, self.ctx, self.limits = model, dispatcher, ctx, limits
        self.settings, self.on_event, self.on_text, self.clock = settings, on_event, on_text, clock
        self.tools = dispatcher.tools_for(ctx.persona)
        self.tool_names = [t["function"]["name"] for t in self.tools]
        self.guard = Guard(limits.max_tool_calls, limits.loop_guard_repeats)
        self.first_new = 0
        self.result = TurnResult(text="", messages=[])

    def emit(self, **kw: Any) -> None:
        if self.on_event is not None:
            self.on_event(LoopEvent(**kw))

    async def audit(self, event: Event, **fields: Any) -> None:
        """Queue the loop's own records; they are committed with the next flush (at the latest, the turn's end)."""
        self.dispatcher.audit.record(call_event(self.ctx, event, **fields))

    async def run(self, messages: list[dict[str, Any]], first_new: int) -> TurnResult:
        deadline = self.clock() + self.limits.wall_clock_s
        sent_upto = 0
        r = self.result
        self.first_new = first_new
        while True:
            if r.steps >= self.limits.max_steps:
                return await self.stop(
                    messages, "max_steps", f"the limit of {self.limits.max_steps} model steps"
                )
            remaining = deadline - self.clock()
            if remaining <= 0:
                return await self.stop(
                    messages, "wall_clock", f"the {self.limits.wall_clock_s:g}s time limit"
                )
            await self.audit(
                Event.MODEL_REQUEST, model=self.model.name,
                payload={"messages": messages[sent_upto:], "delta": sent_upto > 0, "total_messages": len(messages),
                         "tools": self.tool_names},
            )  # fmt: skip
            sent_upto = len(messages)
            try:
                async with asyncio.timeout(remaining):
                    reply = await self.model.complete(
                        messages, self.tools, parallel_tool_calls=self.settings.parallel_tool_calls,
                        on_text=self.on_text,
                    )  # fmt: skip
            except TimeoutError:
                return await self.stop(
                    messages, "wall_clock", f"the {self.limits.wall_clock_s:g}s time limit"
                )
            except ModelError as exc:
                r.error = exc
                await self.audit(Event.MODEL_FAILED, model=self.model.name, reason=str(exc))
                return await self.stop(messages, "model_error", f"a model failure: {exc}")
            r.steps += 1
            usage = (
                reply.usage if reply.usage.total_tokens else Usage(total_tokens=_estimate_tokens(messages))
            )
            r.usage = r.usage + usage
            await self.audit(
                Event.MODEL_RESPONSE, model=reply.model or self.model.name, latency_ms=reply.latency_ms,
                usage={"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                       "total_tokens": usage.total_tokens},
                payload={"text": reply.text, "finish_reason": reply.finish_reason, "attempts": reply.attempts,
                         "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments,
                                         **({"extra": dict(c.extra)} if c.extra else {})} for c in reply.tool_calls],
                         **({"extra": dict(reply.extra)} if reply.extra else {})},
            )  # fmt: skip
            if not reply.tool_calls:
                embedded = embedded_tool_calls(reply.text, self.tool_names)
                if embedded and r.steps < self.limits.max_steps:
                    await self.text_call(messages, reply, embedded)
                    continue
                return await self.finish(messages, reply.text or "", extra=reply.extra)
            stop = await self.step(messages, reply)
            if stop is not None:
                return await self.stop(messages, *stop)
            if r.usage.total_tokens >= self.limits.max_tokens:
                return await self.stop(
                    messages, "max_tokens", f"the budget of {self.limits.max_tokens} tokens"
                )

    async def text_call(self, messages: list[dict[str, Any]], reply: ModelReply, names: list[str]) -> None:
        await self.audit(Event.TOOL_CALL_IN_TEXT, payload={"tools": names, "text": reply.text})
        self.emit(
            kind="notice", detail=f"model wrote a tool call as text ({', '.join(names)}); asked it to retry"
        )
        messages.append({"role": "assistant", "content": reply.text or "", **message_extra(reply.extra)})
        messages.append(
            {
                "role": "user",
                "content": "(Automatic notice from the runtime, not from the user.) Your last message contains a "
                f"tool call written as text ({', '.join(names)}). Text is never executed. Call tools through the "
                "tool-calling interface, or answer without tools.",
            }
        )

    async def step(self, messages: list[dict[str, Any]], reply: ModelReply) -> tuple[StopReason, str] | None:
        r = self.result
        calls = normalize(reply.tool_calls, calls_so_far(messages))
        messages.append(
            {
                "role": "assistant",
                "content": reply.text or None,
                "tool_calls": [
                    {"id": p.call.id, "type": "function",
                     "function": {"name": p.call.name, "arguments": arg_text(p.call.arguments)},
                     **message_extra(p.call.extra)}
                    for p in calls
                ],
                **message_extra(reply.extra),  # what the provider needs back, exactly as it sent it
            }
        )  # fmt: skip
        plan = self.guard.plan(calls, len(r.calls))
        for planned in plan.guarded:
            await self.audit(
                Event.TOOL_CALL_DENIED, tool=planned.call.name, decision="deny", reason="loop_guard",
                payload={"tool_call_id": planned.call.id, "arguments": planned.call.arguments},
            )  # fmt: skip
            self.emit(
                kind="tool_result", tool=planned.call.name, call_id=planned.call.id, outcome="loop_guard"
            )

        async def one(planned: Planned) -> Dispatched:
            call = planned.call
            self.emit(kind="tool_call", tool=call.name, call_id=call.id, arguments=call.arguments)
            done = await self.dispatcher.dispatch(call, self.ctx, planned.notices, seq=planned.seq)
            self.emit(kind="tool_result", tool=call.name, call_id=call.id, outcome=done.outcome.value)
            finished[planned.call.id or ""] = done
            return done

        finished: dict[str, Dispatched] = {}
        try:
            await execute(plan.runnable, self._read_only, one)
        finally:  # in the model's order, including what finished before a failure
            r.calls.extend(finished[p.call.id or ""] for p in plan.runnable if (p.call.id or "") in finished)
        for done in finished.values():
            plan.answers[done.call_id] = done.content
        messages.extend(resolution.tool_messages(calls, plan.answers))
        return plan.stop

    def _read_only(self, name: str) -> bool:
        tool = self.dispatcher.registry.get(name)
        return tool is None or tool.read_only

    async def stop(self, messages: list[dict[str, Any]], reason: StopReason, what: str) -> TurnResult:
        r = self.result
        r.stopped_by = reason
        text = resolution.stop_text(what, reason, r.calls)
        await self.audit(Event.LIMIT_REACHED, reason=reason, payload={"text": text})
        self.emit(kind="limit", detail=text)
        return await self.finish(messages, text, check_claims=False)

    async def finish(
        self,
        messages: list[dict[str, Any]],
        text: str,
        check_claims: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> TurnResult:
        r = self.result
        if check_claims:
            text = await self.check_claims(messages, text)
        messages.append({"role": "assistant", "content": text, **message_extra(extra)})
        r.text = text
        r.messages = messages[self.first_new :]
        return r

    async def check_claims(self, messages: list[dict[str, Any]], text: str) -> str:
        """Flag an answer that says an invoice was created when no create call succeeded."""
        if not resolution.claims_creation(text) or resolution.created(self.result.calls, messages):
            return text
        flag = resolution.CLAIM_FLAG
        self.result.flags.append(flag)
        await self.audit(Event.CLAIM_UNVERIFIED, reason=flag, payload={"text": text})
        self.emit(kind="notice", detail=flag)
        return f"{text}\n\n[Check: {flag} in this conversation.]"


async def run_turn(
    *,
    model: ChatModel,
    dispatcher: Dispatcher[Any],
    ctx: CallContext,
    system_prompt: str,
    history: Sequence[dict[str, Any]] = (),
    user_message: str | None = None,
    limits: Limits | None = None,
    model_settings: ModelSettings | None = None,
    on_event: OnEvent | None = None,
    on_text: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TurnResult:
    """One user turn. ``history`` excludes the system prompt; the result's ``messages`` are the new ones."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}, *history]
    first_new = len(messages)
    if user_message is not None:
        messages.append({"role": "user", "content": user_message})
    turn = _Turn(
        model, dispatcher, ctx, limits or ctx.persona.limits, model_settings or ctx.persona.model,
        on_event, on_text, clock,
    )  # fmt: skip
    await turn.audit(Event.TURN_STARTED, payload={"user_message": user_message})
    try:
        result = await turn.run(messages, first_new)
    except BaseException as exc:
        await _failed(turn, dispatcher, exc)
        raise
    result.model, result.conversation_id = model.name, ctx.conversation_id
    await turn.audit(
        Event.TURN_ENDED, reason=result.stopped_by,
        usage={"prompt_tokens": result.usage.prompt_tokens, "completion_tokens": result.usage.completion_tokens,
               "total_tokens": result.usage.total_tokens},
        payload={"text": result.text, "steps": result.steps, "tool_calls": len(result.calls), "flags": result.flags},
    )  # fmt: skip
    await dispatcher.audit.flush()  # no answer leaves the turn before its audit trail is durable
    return result


async def _failed(turn: _Turn, dispatcher: Dispatcher[Any], exc: BaseException) -> None:
    """``turn_failed`` with the reason, durable before the error goes on (a cancelled turn included)."""
    cancelled = isinstance(exc, asyncio.CancelledError)
    reason = "cancelled" if cancelled else scrub(f"{type(exc).__name__}: {exc}")[:500]
    r = turn.result
    await turn.audit(
        Event.TURN_FAILED, reason=reason,
        payload={"steps": r.steps, "tool_calls": len(r.calls),
                 "outcomes": [{"tool": c.tool, "outcome": c.outcome.value, "effect_id": c.effect_id} for c in r.calls]},
    )  # fmt: skip
    flush = asyncio.ensure_future(dispatcher.audit.flush())
    try:
        await asyncio.shield(flush)
    except asyncio.CancelledError:
        await asyncio.gather(flush, return_exceptions=True)
    except Exception as err:  # the store is down: the original error is the one to report
        log.error("turn_failed_not_recorded", error=scrub(f"{type(err).__name__}: {err}"))
