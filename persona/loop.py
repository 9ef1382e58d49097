"""``run_turn``: drive model <-> tools until a final answer or a limit.

What the loop guarantees, whatever the model does: every call goes through the
dispatcher; read-only calls of one step run concurrently while calls with side effects run
one at a time in the order given; results go back in call order bound by
``tool_call_id``; the same call with the same arguments is not repeated endlessly; steps,
tool calls, tokens and wall-clock time are bounded, and hitting a bound ends the turn with
a plain final message, not an exception. Malformed tool calls from real endpoints (no id,
arguments as an object or not JSON, unknown names, calls written as text) are answered
and audited, never fatal.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from persona.audit import AuditEvent
from persona.config import Limits, ModelSettings
from persona.dispatcher import CallContext, Dispatched, Dispatcher, Outcome, canonical
from persona.errors import ModelError
from persona.events import Event
from persona.llm import ChatModel, ModelReply, ToolCall, Usage, embedded_tool_calls


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
    stopped_by: str | None = None
    flags: list[str] = field(default_factory=list)
    error: Exception | None = None
    model: str = ""
    conversation_id: str = ""


OnEvent = Callable[[LoopEvent], None]

_CLAIM = re.compile(
    r"\b(invoice|payment link)\b[^.\n]{0,60}\b(created|issued|generated|sent|is ready)\b"
    r"|\b(created|issued|generated)\b[^.\n]{0,40}\b(invoice|payment link)\b",
    re.I,
)
_NEGATION = re.compile(
    r"\b(not|n't|no|unable|failed|cannot|couldn't|awaiting|pending|approval|denied|refused|would|will|can)\b",
    re.I,
)


def _estimate_tokens(messages: Sequence[dict[str, Any]]) -> int:
    return sum(len(json.dumps(m, ensure_ascii=False, default=str)) for m in messages) // 4


class _Turn:
    def __init__(
        self,
        model: ChatModel,
        dispatcher: Dispatcher,
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
        self.seen: Counter[str] = Counter()
        self.guard_trips = 0
        self.first_new = 0
        self.result = TurnResult(text="", messages=[])

    def emit(self, **kw: Any) -> None:
        if self.on_event is not None:
            self.on_event(LoopEvent(**kw))

    async def audit(self, event: Event, **fields: Any) -> None:
        """Queue the loop's own records; they are committed with the next flush (at the latest, the turn's end)."""
        c = self.ctx
        self.dispatcher.audit.record(
            AuditEvent(event=event, source=c.source, user=c.user, persona=c.persona_name,
                       conversation_id=c.conversation_id, **fields)
        )  # fmt: skip

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
                         "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments}
                                        for c in reply.tool_calls]},
            )  # fmt: skip
            if not reply.tool_calls:
                embedded = embedded_tool_calls(reply.text, self.tool_names)
                if embedded and r.steps < self.limits.max_steps:
                    await self.text_call(messages, reply, embedded)
                    continue
                return await self.finish(messages, reply.text or "")
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
        messages.append({"role": "assistant", "content": reply.text or ""})
        messages.append(
            {
                "role": "user",
                "content": "(Automatic notice from the runtime, not from the user.) Your last message contains a "
                f"tool call written as text ({', '.join(names)}). Text is never executed. Call tools through the "
                "tool-calling interface, or answer without tools.",
            }
        )

    def normalize(self, calls: Sequence[ToolCall]) -> list[tuple[ToolCall, list[str]]]:
        """Give every call a unique id and string arguments; note what had to be repaired."""
        out: list[tuple[ToolCall, list[str]]] = []
        used: set[str] = set()
        for call in calls:
            notices: list[str] = []
            call_id = call.id
            if not call_id or call_id in used:
                call_id = f"call_{uuid.uuid4().hex[:16]}"
                notices.append(
                    f"the tool call had {'a duplicate' if call.id else 'no'} id; assigned {call_id}"
                )
            used.add(call_id)
            args = call.arguments
            if isinstance(args, dict):
                notices.append("arguments arrived as a JSON object instead of a JSON string; accepted")
            elif args is not None and not isinstance(args, str):
                args = json.dumps(args, default=str)
            out.append((ToolCall(id=call_id, name=call.name or "", arguments=args), notices))
        return out

    async def step(self, messages: list[dict[str, Any]], reply: ModelReply) -> tuple[str, str] | None:
        r = self.result
        calls = self.normalize(reply.tool_calls)
        messages.append(
            {
                "role": "assistant",
                "content": reply.text or None,
                "tool_calls": [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": _arg_text(c.arguments)},
                    }
                    for c, _ in calls
                ],
            }
        )
        budget = self.limits.max_tool_calls - len(r.calls)
        answers: dict[str, str] = {}
        stop: tuple[str, str] | None = None
        runnable: list[tuple[ToolCall, list[str]]] = []
        for call, notices in calls:
            assert call.id is not None
            key = f"{call.name}|{canonical(_parse_loose(call.arguments))}"
            self.seen[key] += 1
            if budget <= 0:
                answers[call.id] = _error(
                    "limit_reached", "not executed: the turn's tool-call limit is reached"
                )
                stop = ("max_tool_calls", f"the limit of {self.limits.max_tool_calls} tool calls")
                continue
            if self.seen[key] > self.limits.loop_guard_repeats:
                self.guard_trips += 1
                answers[call.id] = _error(
                    "loop_guard",
                    f"not executed: this exact call was already made {self.seen[key] - 1} times in this turn; "
                    "use the earlier result or change the arguments",
                )
                await self.audit(
                    Event.TOOL_CALL_DENIED, tool=call.name, decision="deny", reason="loop_guard",
                    payload={"tool_call_id": call.id, "arguments": call.arguments},
                )  # fmt: skip
                self.emit(kind="tool_result", tool=call.name, call_id=call.id, outcome="loop_guard")
                if self.guard_trips >= 2:
                    stop = ("loop_guard", "a repeated tool call (loop guard)")
                continue
            budget -= 1
            runnable.append((call, notices))

        async def one(call: ToolCall, notices: list[str]) -> Dispatched:
            self.emit(kind="tool_call", tool=call.name, call_id=call.id, arguments=call.arguments)
            done = await self.dispatcher.dispatch(call, self.ctx, notices)
            self.emit(kind="tool_result", tool=call.name, call_id=call.id, outcome=done.outcome.value)
            return done

        reads = [(c, n) for c, n in runnable if self._read_only(c.name)]
        writes = [(c, n) for c, n in runnable if not self._read_only(c.name)]

        async def sequential() -> list[Dispatched]:
            return [await one(c, n) for c, n in writes]

        if len(runnable) == 1:  # the common step: no tasks to schedule
            only = await one(*runnable[0])
            read_results, write_results = ([only], []) if reads else ([], [only])
        elif not writes:
            read_results, write_results = list(await asyncio.gather(*(one(c, n) for c, n in reads))), []
        else:
            read_results, write_results = await asyncio.gather(
                asyncio.gather(*(one(c, n) for c, n in reads)), sequential()
            )
        for done in [*read_results, *write_results]:
            answers[done.call_id] = done.content
            r.calls.append(done)
        for call, _ in calls:
            assert call.id is not None
            messages.append({"role": "tool", "tool_call_id": call.id, "content": answers[call.id]})
        return stop

    def _read_only(self, name: str) -> bool:
        tool = self.dispatcher.registry.get(name)
        return tool is None or tool.read_only

    async def stop(self, messages: list[dict[str, Any]], reason: str, what: str) -> TurnResult:
        r = self.result
        r.stopped_by = reason
        done = [c for c in r.calls if c.outcome in (Outcome.SUCCEEDED, Outcome.REPLAYED)]
        pending = [c for c in r.calls if c.outcome is Outcome.PENDING_APPROVAL]
        parts = [f"I stopped before finishing: this turn reached {what}."]
        if done:
            parts.append(f"Completed tool calls: {', '.join(c.tool for c in done)}.")
        if pending:
            parts.append(f"Awaiting approval: {', '.join(str(c.approval_id) for c in pending)}.")
        if reason != "model_error":
            parts.append("Nothing else was executed. Ask me to continue, or raise the limit in config.yaml.")
        text = " ".join(parts)
        await self.audit(Event.LIMIT_REACHED, reason=reason, payload={"text": text})
        self.emit(kind="limit", detail=text)
        return await self.finish(messages, text, check_claims=False)

    async def finish(
        self, messages: list[dict[str, Any]], text: str, check_claims: bool = True
    ) -> TurnResult:
        r = self.result
        if check_claims:
            text = await self.check_claims(messages, text)
        messages.append({"role": "assistant", "content": text})
        r.text = text
        r.messages = messages[self.first_new :]
        return r

    async def check_claims(self, messages: list[dict[str, Any]], text: str) -> str:
        """Flag an answer that says an invoice was created when no create call succeeded."""
        claimed = any(not _NEGATION.search(m.group(0)) for m in _CLAIM.finditer(text))
        if not claimed:
            return text
        created = any(
            c.tool == "plisio_create_invoice" and c.outcome is Outcome.SUCCEEDED for c in self.result.calls
        )
        created = created or _created_before(messages)
        if created:
            return text
        flag = "the answer says an invoice was created, but no plisio_create_invoice call succeeded"
        self.result.flags.append(flag)
        await self.audit(Event.CLAIM_UNVERIFIED, reason=flag, payload={"text": text})
        self.emit(kind="notice", detail=flag)
        return f"{text}\n\n[Check: {flag} in this conversation.]"


def _arg_text(args: Any) -> str:
    if isinstance(args, str):
        return args
    return json.dumps(args if args is not None else {}, ensure_ascii=False, default=str)


def _parse_loose(args: Any) -> Any:
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args
    return args


def _error(kind: str, message: str) -> str:
    return json.dumps({"ok": False, "error": {"type": kind, "message": message}}, separators=(",", ":"))


def _created_before(messages: Sequence[dict[str, Any]]) -> bool:
    names: dict[str, str] = {}
    for m in messages:
        for call in m.get("tool_calls") or ():
            names[call["id"]] = call["function"]["name"]
        is_create = names.get(m.get("tool_call_id", "")) == "plisio_create_invoice"
        if m.get("role") == "tool" and is_create and str(m.get("content", "")).startswith('{"ok":true'):
            return True
    return False


async def run_turn(
    *,
    model: ChatModel,
    dispatcher: Dispatcher,
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
    result = await turn.run(messages, first_new)
    result.model, result.conversation_id = model.name, ctx.conversation_id
    await turn.audit(
        Event.TURN_ENDED, reason=result.stopped_by,
        usage={"prompt_tokens": result.usage.prompt_tokens, "completion_tokens": result.usage.completion_tokens,
               "total_tokens": result.usage.total_tokens},
        payload={"text": result.text, "steps": result.steps, "tool_calls": len(result.calls), "flags": result.flags},
    )  # fmt: skip
    await dispatcher.audit.flush()  # no answer leaves the turn before its audit trail is durable
    return result
