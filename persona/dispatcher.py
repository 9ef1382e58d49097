"""The gate every tool call passes, whoever asked for it: scope, validation, policy, approval, execution.

Order matters and is fixed: a call is audited as attempted first; a call already answered
(same conversation and call id) gets its stored answer instead of running again; then
scope, then jsonschema + pydantic validation, then policy (caps, daily totals, approval
thresholds), then execution with a timeout. Every outcome is audited and comes back as a
tool message the model can read; nothing here trusts the model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import select

from persona.approvals import Approval, ApprovalStore
from persona.audit import AuditEvent, AuditLog
from persona.config import PersonaSettings, Settings, resolve_tools
from persona.errors import Conflict, Forbidden, VaultError
from persona.events import Event, Source
from persona.llm import ToolCall
from persona.policy import Policy, PolicyDecision, Verdict
from persona.store.engine import Store
from persona.store.tables import tool_results
from tools.plisio.client import PlisioClient
from tools.plisio.tools import PlisioContext
from tools.registry import Registry, Tool, ToolFailure, ToolResult, bounded_json, run, to_jsonable

PlisioAccess = Callable[[str], Awaitable[PlisioClient]]
"""Gives the Plisio client a persona may use right now (a revoked grant raises Forbidden)."""


@dataclass(frozen=True)
class GrantDenial:
    kind: str
    clause: str
    reason: str


class GrantChecker(Protocol):
    """The credentials vault's say on a call: None, or why this persona may not make it (grant scope)."""

    async def check(self, persona: str, tool: str) -> GrantDenial | None: ...


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DENIED = "denied"
    PENDING_APPROVAL = "pending_approval"
    REPLAYED = "replayed"


@dataclass(frozen=True)
class CallContext:
    persona_name: str
    persona: PersonaSettings
    user: str
    conversation_id: str
    source: str = Source.CHAT
    scope: str | None = None
    """Idempotency scope of a flow: when set, a side effect's key is (scope, tool, arguments), so re-running
    the flow (after a crash, a duplicate callback) gets the same Plisio order number, hence the same invoice."""


@dataclass(frozen=True)
class Dispatched:
    call_id: str
    tool: str
    outcome: Outcome
    content: str
    """The tool message handed back to the model (compact, bounded JSON)."""
    result: ToolResult | None = None
    decision: PolicyDecision | None = None
    approval_id: str | None = None
    read_only: bool = True
    notices: tuple[str, ...] = field(default_factory=tuple)


current_call: ContextVar[CallContext | None] = ContextVar("current_call", default=None)
"""The call being executed, so a credential read deep in the Plisio client is audited with its context."""


def canonical(value: Any) -> str:
    return json.dumps(
        to_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )


def digest(value: Any) -> str:
    return hashlib.sha256(canonical(value).encode()).hexdigest()


def _error(kind: str, message: str, **extra: Any) -> str:
    return bounded_json({"ok": False, "error": {"type": kind, "message": message, **extra}})


class Dispatcher:
    def __init__(
        self,
        *,
        settings: Settings,
        registry: Registry[PlisioContext],
        policy: Policy,
        audit: AuditLog,
        approvals: ApprovalStore,
        store: Store,
        plisio: PlisioAccess,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        grants: GrantChecker | None = None,
    ) -> None:
        self.settings, self.registry, self.policy, self.audit = settings, registry, policy, audit
        self.approvals, self._store, self._plisio, self._now = approvals, store, plisio, now
        self._grants = grants

    def tools_for(self, persona: PersonaSettings) -> list[dict[str, Any]]:
        """The OpenAI tool definitions offered to a persona: its scope, nothing more."""
        return self.registry.openai_tools(resolve_tools(persona))

    def tools_for_names(self, persona: PersonaSettings) -> tuple[str, ...]:
        return resolve_tools(persona)

    async def _audit(
        self, ctx: CallContext, event: Event, tool: str | None, *, durable: bool = True, **fields: Any
    ) -> None:
        """Append a record. ``durable=False`` queues it for the next group commit instead of waiting:
        for records that precede no side effect (the loop flushes before a side effect and at turn end)."""
        record = AuditEvent(
            event=event, source=ctx.source, user=ctx.user, persona=ctx.persona_name,
            conversation_id=ctx.conversation_id, tool=tool, **fields,
        )  # fmt: skip
        if durable:
            await self.audit.append(record)
        else:
            self.audit.record(record)

    async def dispatch(self, call: ToolCall, ctx: CallContext, notices: Sequence[str] = ()) -> Dispatched:
        assert call.id, "the loop assigns an id to every call before dispatch"
        call_id, name, raw = call.id, call.name, call.arguments
        await self._audit(
            ctx, Event.TOOL_CALL_ATTEMPTED, name or None, durable=False,
            payload={"tool_call_id": call_id, "arguments": raw, "notices": list(notices)},
        )  # fmt: skip
        scope = resolve_tools(ctx.persona)
        tool = self.registry.get(name)
        if tool is None or name not in scope:
            kind = "unknown_tool" if tool is None else "out_of_scope"
            what = f"there is no tool named {name!r}" if tool is None else f"{name} is not available to you"
            content = _error(kind, f"{what}; the tools you can call are: {', '.join(scope)}")
            return await self._deny(ctx, call_id, name, content, kind)

        parsed = tool.parse(raw)
        if isinstance(parsed, ToolFailure):
            result = ToolResult.failure(name, parsed)
            await self._audit(
                ctx, Event.TOOL_CALL_FAILED, name, durable=False, decision="invalid_arguments",
                reason=parsed.message, payload={"tool_call_id": call_id, "arguments": raw, "error": parsed.as_dict()},
            )  # fmt: skip
            return Dispatched(
                call_id, name, Outcome.FAILED, result.to_content(), result, read_only=tool.read_only
            )

        # A side effect that already ran (the model repeats a call id after a retry, an approval was
        # executed) is answered from its stored result, never run again. Reads are simply re-run.
        stored = (
            None if tool.read_only else await asyncio.to_thread(self._stored, ctx.conversation_id, call_id)
        )
        if stored is not None:
            if stored["arguments_hash"] == digest(parsed) and stored["tool"] == name:
                await self._audit(
                    ctx, Event.TOOL_CALL_REPLAYED, name, durable=False, payload={"tool_call_id": call_id}
                )
                return Dispatched(
                    call_id, name, Outcome.REPLAYED, stored["content"], read_only=tool.read_only
                )
            content = _error("duplicate_call_id", f"tool_call_id {call_id} was already used for another call")
            return await self._deny(ctx, call_id, name, content, "duplicate_call_id")

        denial = None if self._grants is None else await self._grants.check(ctx.persona_name, name)
        if denial is not None:
            held = PolicyDecision(Verdict.DENY, denial.clause, denial.reason)
            content = _error(denial.kind, denial.reason, clause=denial.clause)
            return await self._deny(ctx, call_id, name, content, "grant", held)

        decision = await self.policy.evaluate(
            persona_name=ctx.persona_name, persona=ctx.persona, tool=name, args=parsed,
            conversation_id=ctx.conversation_id, tool_call_id=call_id,
        )  # fmt: skip
        if decision.verdict is Verdict.DENY:
            content = _error("policy_denied", decision.reason, clause=decision.clause)
            return await self._deny(ctx, call_id, name, content, "policy", decision)
        if decision.verdict is Verdict.APPROVAL:
            return await self._hold(ctx, call_id, tool, parsed, decision)
        return await self._execute(ctx, call_id, tool, parsed, decision, notices)

    async def _deny(
        self,
        ctx: CallContext,
        call_id: str,
        name: str,
        content: str,
        kind: str,
        decision: PolicyDecision | None = None,
    ) -> Dispatched:
        reason = decision.reason if decision else json.loads(content)["error"]["message"]
        await self._audit(
            ctx, Event.TOOL_CALL_DENIED, name or None, durable=False, decision=Verdict.DENY.value, reason=reason,
            payload={"tool_call_id": call_id, "kind": kind, "clause": decision.clause if decision else None},
        )  # fmt: skip
        return Dispatched(call_id, name, Outcome.DENIED, content, decision=decision)

    async def _hold(
        self,
        ctx: CallContext,
        call_id: str,
        tool: Tool[Any, PlisioContext],
        args: Any,
        decision: PolicyDecision,
    ) -> Dispatched:
        arguments = to_jsonable(args.model_dump(mode="python"))
        approval = await asyncio.to_thread(
            self.approvals.request,
            persona=ctx.persona_name, user=ctx.user, conversation_id=ctx.conversation_id, tool_call_id=call_id,
            tool=tool.name, arguments_json=canonical(arguments), arguments_hash=digest(arguments),
            reason=decision.reason, amount=decision.amount, now=self._now(),
        )  # fmt: skip
        await self._audit(
            ctx, Event.APPROVAL_REQUESTED, tool.name, decision=decision.verdict.value, reason=decision.reason,
            payload={"tool_call_id": call_id, "approval_id": approval.id, "arguments": arguments,
                     "clause": decision.clause},
        )  # fmt: skip
        content = bounded_json(
            {
                "ok": False,
                "status": "pending_approval",
                "approval_id": approval.id,
                "message": f"Not executed yet: {decision.reason}. It is queued as approval {approval.id}. "
                "Tell the user it awaits approval; do not call it again.",
            }
        )
        return Dispatched(
            call_id, tool.name, Outcome.PENDING_APPROVAL, content, decision=decision, approval_id=approval.id,
            read_only=False,
        )  # fmt: skip

    async def _execute(
        self,
        ctx: CallContext,
        call_id: str,
        tool: Tool[Any, PlisioContext],
        args: Any,
        decision: PolicyDecision,
        notices: Sequence[str] = (),
    ) -> Dispatched:
        if not tool.read_only:
            await self.audit.flush()  # write-ahead: the attempt is durable before anything changes
        token = current_call.set(ctx)
        try:
            client = await self._plisio(ctx.persona_name)
            call_key = f"{ctx.conversation_id}:{call_id}"
            if ctx.scope is not None:
                call_key = f"{ctx.scope}:{tool.name}:{digest(args)[:24]}"
            pctx = PlisioContext(client=client, call_key=call_key, callback_url=self.settings.callback_url())
            started = asyncio.get_running_loop().time()
            # The key is decrypted per request inside the client: a revoke lands here, mid-call too.
            result = await run(tool, args, pctx, timeout=ctx.persona.limits.tool_timeout_s)
        except (Forbidden, VaultError) as exc:
            grant = isinstance(exc, Forbidden)
            content = _error("no_plisio_access" if grant else "credential_unavailable", str(exc))
            if not tool.read_only:
                await self.policy.settle(
                    conversation_id=ctx.conversation_id, tool_call_id=call_id, committed=False
                )
            return await self._deny(ctx, call_id, tool.name, content, "grant" if grant else "vault")
        finally:
            current_call.reset(token)
        latency = round((asyncio.get_running_loop().time() - started) * 1000, 2)
        if not tool.read_only:
            unknown = result.error is not None and result.error.type == "plisio_outcome_unknown"
            await self.policy.settle(
                conversation_id=ctx.conversation_id, tool_call_id=call_id, committed=result.ok or unknown
            )
        payload = result.payload()
        if notices:
            payload["notices"] = list(notices)
        content = bounded_json(payload)
        if not tool.read_only:
            await asyncio.to_thread(
                self._remember, ctx.conversation_id, call_id, tool.name, digest(args), result, content
            )
        await self._audit(
            ctx, Event.TOOL_CALL_SUCCEEDED if result.ok else Event.TOOL_CALL_FAILED, tool.name,
            durable=not tool.read_only,
            decision=decision.verdict.value, reason=decision.reason, latency_ms=latency,
            payload={"tool_call_id": call_id, "arguments": to_jsonable(args.model_dump(mode="python")),
                     "result": to_jsonable(payload)},
        )  # fmt: skip
        outcome = Outcome.SUCCEEDED if result.ok else Outcome.FAILED
        return Dispatched(call_id, tool.name, outcome, content, result, decision, read_only=tool.read_only)

    # ------------------------------------------------------------------ approvals

    async def approve(
        self, approval_id: str, *, by: str, note: str | None = None, source: str = Source.CLI
    ) -> tuple[Approval, Dispatched]:
        """Approve a held call and execute it once, with exactly the arguments that were approved."""
        pending = await asyncio.to_thread(self.approvals.get, approval_id)
        if (
            self.settings.approvals.require_different_user
            and by == pending.user_id
            and pending.status == "pending"
        ):
            raise Forbidden(
                f"{by} asked for this call and cannot approve it (approvals.require_different_user); "
                "another person must approve it"
            )
        approval = await asyncio.to_thread(
            self.approvals.decide, approval_id, approve=True, by=by, note=note, now=self._now()
        )
        persona = self.settings.persona(approval.persona)
        ctx = CallContext(approval.persona, persona, approval.user_id, approval.conversation_id, source)
        await self._audit(
            ctx, Event.APPROVAL_GRANTED, approval.tool, decision="approved", reason=note or "approved",
            payload={"approval_id": approval.id, "approved_by": by, "tool_call_id": approval.tool_call_id},
        )  # fmt: skip
        tool = self.registry.get(approval.tool)
        if tool is None:
            raise Conflict(f"tool {approval.tool} no longer exists; approval {approval_id} cannot execute")
        parsed = tool.parse(approval.arguments)
        if isinstance(parsed, ToolFailure) or digest(approval.arguments) != approval.arguments_hash:
            raise Conflict(
                f"approval {approval_id}: stored arguments no longer validate; nothing was executed"
            )
        denial = None if self._grants is None else await self._grants.check(approval.persona, tool.name)
        decision = (
            PolicyDecision(Verdict.DENY, denial.clause, denial.reason)
            if denial is not None
            else await self.policy.evaluate(
                persona_name=approval.persona, persona=persona, tool=tool.name, args=parsed,
                conversation_id=approval.conversation_id, tool_call_id=approval.tool_call_id, approved=True,
            )
        )  # fmt: skip
        if decision.verdict is not Verdict.ALLOW:
            kind = "policy_denied" if denial is None else denial.kind
            content = _error(kind, decision.reason, clause=decision.clause)
            await asyncio.to_thread(self.approvals.finish, approval_id, ok=False, result=content)
            return approval, await self._deny(
                ctx, approval.tool_call_id, tool.name, content, "policy", decision
            )
        done = await self._execute(ctx, approval.tool_call_id, tool, parsed, decision)
        await asyncio.to_thread(
            self.approvals.finish, approval_id, ok=done.outcome is Outcome.SUCCEEDED, result=done.content
        )
        return await asyncio.to_thread(self.approvals.get, approval_id), done

    async def reject(
        self, approval_id: str, *, by: str, note: str | None = None, source: str = Source.CLI
    ) -> Approval:
        approval = await asyncio.to_thread(
            self.approvals.decide, approval_id, approve=False, by=by, note=note, now=self._now()
        )
        ctx = CallContext(
            approval.persona, self.settings.persona(approval.persona), approval.user_id, approval.conversation_id,
            source,
        )  # fmt: skip
        await self._audit(
            ctx, Event.APPROVAL_REJECTED, approval.tool, decision="rejected", reason=note or "rejected",
            payload={"approval_id": approval.id, "rejected_by": by, "tool_call_id": approval.tool_call_id},
        )  # fmt: skip
        return approval

    # ------------------------------------------------------------------ stored results

    def _stored(self, conversation_id: str, call_id: str) -> dict[str, Any] | None:
        with self._store.read("read stored tool results") as conn:
            row = conn.execute(
                select(tool_results).where(
                    tool_results.c.conversation_id == conversation_id, tool_results.c.tool_call_id == call_id
                )
            ).first()
        return dict(row._mapping) if row is not None else None

    def _remember(
        self, conversation_id: str, call_id: str, tool: str, args_hash: str, result: ToolResult, content: str
    ) -> None:
        with self._store.begin("store a tool result") as conn:
            conn.execute(
                tool_results.insert().values(
                    conversation_id=conversation_id, tool_call_id=call_id, tool=tool, arguments_hash=args_hash,
                    ok=int(result.ok), content=content, created_at=self._now(),
                )
            )  # fmt: skip
