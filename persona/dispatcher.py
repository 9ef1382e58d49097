"""The gate every tool call passes, whoever asked for it: scope, validation, policy, approval, execution.

Order matters and is fixed: a call is audited as attempted first; then scope, then jsonschema +
pydantic validation, then the grant, then policy (caps, approval thresholds). A read then runs with a
timeout. A side effect goes through the effects ledger (:mod:`persona.effects`): its key is chosen
here (never from model text), the same intent already on the ledger is answered from it instead of
running again, a claim reserves the amount against the daily total in one transaction, and the call
runs shielded, its outcome (``unknown`` included) recorded and resolved. Every outcome is audited and
comes back as a tool message the model can read; nothing here trusts the model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import structlog
from pydantic import ValidationError

from persona.approvals import Approval, ApprovalStore
from persona.audit import AuditEvent, AuditFilter, AuditLog, AuditRecord
from persona.calls import (
    CallContext,
    Dispatched,
    Outcome,
    current_call,
    error_content,
    record_call,
)
from persona.effects.executor import EffectExecutor, pending_content
from persona.effects.keys import EffectKey, arguments_hash
from persona.effects.ledger import Effect, Intent, State
from persona.effects.seal import Check, SealState
from persona.errors import Conflict, Forbidden, VaultError
from persona.events import Event, Source
from persona.jsonutil import canonical_json
from persona.llm import ToolCall
from persona.policy import CENT, GrantChecker, Policy, PolicyDecision, Verdict, over_daily_total
from persona.settings import PersonaSettings, Settings, resolve_tools
from persona.users import same_identity
from tools.registry import (
    ContextFactory,
    Registry,
    Tool,
    ToolFailure,
    ToolResult,
    bounded_json,
    run,
    to_jsonable,
)

log = structlog.get_logger(__name__)

C = TypeVar("C")
"""The context the tools run with (the integration's: ``PlisioContext`` for Plisio)."""

__all__ = ["CallContext", "Dispatched", "Dispatcher", "Outcome"]

MAX_CALL_ID = 64
"""The model's call id is kept for the wire only; longer ones are stored cut (the loop replaces them)."""


class Dispatcher(Generic[C]):
    def __init__(
        self,
        *,
        settings: Settings,
        registry: Registry[C],
        policy: Policy,
        audit: AuditLog,
        effects: EffectExecutor[C],
        contexts: ContextFactory[C],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        grants: GrantChecker | None = None,
    ) -> None:
        self.settings, self.registry, self.policy, self.audit = settings, registry, policy, audit
        self.effects, self._contexts, self._now, self._grants = effects, contexts, now, grants
        self.approvals = ApprovalStore(effects.ledger)

    def tools_for(self, persona: PersonaSettings) -> list[dict[str, Any]]:
        """The OpenAI tool definitions offered to a persona: its scope, nothing more."""
        return self.registry.openai_tools(resolve_tools(persona))

    async def _audit(
        self, ctx: CallContext, event: Event, tool: str | None, *, durable: bool = True, **fields: Any
    ) -> None:
        await record_call(self.audit, ctx, event, tool, durable=durable, **fields)

    async def dispatch(
        self, call: ToolCall, ctx: CallContext, notices: Sequence[str] = (), *, seq: int | None = None
    ) -> Dispatched:
        """One call. ``seq`` is the server's number for it in the conversation (the loop counts them): a side
        effect's key. Callers outside the loop may leave it out; their side effect gets a one-off key."""
        assert call.id, "the loop assigns an id to every call before dispatch"
        call_id, name, raw = call.id, call.name, call.arguments
        await self._audit(
            ctx, Event.TOOL_CALL_ATTEMPTED, name or None, durable=False,
            payload={"tool_call_id": call_id, "seq": seq, "arguments": raw, "notices": list(notices)},
        )  # fmt: skip
        scope = resolve_tools(ctx.persona)
        tool = self.registry.get(name)
        if tool is None or name not in scope:
            kind = "unknown_tool" if tool is None else "out_of_scope"
            what = f"there is no tool named {name!r}" if tool is None else f"{name} is not available to you"
            content = error_content(kind, f"{what}; the tools you can call are: {', '.join(scope)}")
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

        if name in ctx.pinned:
            parsed = await self._pin(ctx, call_id, name, parsed)
            if parsed is None:  # fail closed: the fixed values do not make a valid call of this tool
                content = error_content("pinned_arguments", f"{name}: the values this flow fixes do not fit")
                return await self._deny(ctx, call_id, name, content, "pinned")
        denial = None if self._grants is None else await self._grants.check(ctx.persona_name, name)
        if denial is not None:
            held = PolicyDecision(Verdict.DENY, denial.clause, denial.reason)
            content = error_content(denial.kind, denial.reason, clause=denial.clause)
            return await self._deny(ctx, call_id, name, content, "grant", held)
        if not tool.read_only:
            return await self._side_effect(ctx, call_id, tool, parsed, notices, seq)
        decision = await self.policy.evaluate(
            persona_name=ctx.persona_name, persona=ctx.persona, tool=tool, args=parsed
        )
        if decision.verdict is not Verdict.ALLOW:
            content = error_content("policy_denied", decision.reason, clause=decision.clause)
            return await self._deny(ctx, call_id, name, content, "policy", decision)
        return await self._read(ctx, call_id, tool, parsed, decision, notices)

    async def _pin(self, ctx: CallContext, call_id: str, name: str, parsed: Any) -> Any | None:
        """The arguments with the flow's fixed values in place of the model's (a recovery link's amount,
        currency and email are the failed invoice's); a difference is audited, and the call goes on with
        the fixed values, so whatever text steered the model, it cannot choose them."""
        fixed = dict(ctx.pinned[name])
        asked = parsed.model_dump(mode="json")
        try:
            pinned = type(parsed).model_validate({**asked, **fixed})
        except ValidationError:
            log.error("pinned_arguments_invalid", tool=name, fields=sorted(fixed))
            return None
        held = pinned.model_dump(mode="json")
        changed = {
            k: {"asked": asked.get(k), "used": held.get(k)} for k in fixed if asked.get(k) != held.get(k)
        }
        if changed:
            await self._audit(
                ctx, Event.TOOL_CALL_ARGUMENTS_PINNED, name, durable=False, decision="pinned",
                reason="fixed by the flow: " + ", ".join(f"{k} {v['asked']!r} -> {v['used']!r}" for k, v in changed.items()),
                payload={"tool_call_id": call_id, "changed": changed},
            )  # fmt: skip
        return pinned

    async def _deny(
        self,
        ctx: CallContext,
        call_id: str,
        name: str,
        content: str,
        kind: str,
        decision: PolicyDecision | None = None,
        *,
        read_only: bool = True,
    ) -> Dispatched:
        reason = decision.reason if decision else json.loads(content)["error"]["message"]
        await self._audit(
            ctx, Event.TOOL_CALL_DENIED, name or None, durable=False, decision=Verdict.DENY.value, reason=reason,
            payload={"tool_call_id": call_id, "kind": kind, "clause": decision.clause if decision else None},
        )  # fmt: skip
        return Dispatched(call_id, name, Outcome.DENIED, content, decision=decision, read_only=read_only)

    async def _read(
        self,
        ctx: CallContext,
        call_id: str,
        tool: Tool[Any, C],
        args: Any,
        decision: PolicyDecision,
        notices: Sequence[str],
    ) -> Dispatched:
        token = current_call.set(ctx)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            tool_ctx = await self._contexts(ctx.persona_name)
            # The key is decrypted per request inside the client: a revoke lands here, mid-call too.
            result = await run(tool, args, tool_ctx, timeout=ctx.persona.limits.tool_timeout_s)
        except (Forbidden, VaultError) as exc:
            grant = isinstance(exc, Forbidden)
            content = error_content("no_plisio_access" if grant else "credential_unavailable", str(exc))
            return await self._deny(ctx, call_id, tool.name, content, "grant" if grant else "vault")
        finally:
            current_call.reset(token)
        latency = round((loop.time() - started) * 1000, 2)
        payload = result.payload()
        if notices:
            payload["notices"] = list(notices)
        content = bounded_json(payload)
        await self._audit(
            ctx, Event.TOOL_CALL_SUCCEEDED if result.ok else Event.TOOL_CALL_FAILED, tool.name, durable=False,
            decision=decision.verdict.value, reason=decision.reason, latency_ms=latency,
            payload={"tool_call_id": call_id, "arguments": to_jsonable(args.model_dump(mode="python")),
                     "result": to_jsonable(payload)},
        )  # fmt: skip
        outcome = Outcome.SUCCEEDED if result.ok else Outcome.FAILED
        return Dispatched(call_id, tool.name, outcome, content, result, decision)

    # ------------------------------------------------------------------ side effects

    async def _side_effect(
        self,
        ctx: CallContext,
        call_id: str,
        tool: Tool[Any, C],
        args: Any,
        notices: Sequence[str],
        seq: int | None,
    ) -> Dispatched:
        ledger = self.effects.ledger
        dumped = args.model_dump(mode="python")
        digest = arguments_hash(dumped)
        fixed = ctx.fixed_slot(tool.name)
        if seq is None and not fixed:
            key = EffectKey(ctx.effect_key(tool.name, 0).namespace, f"direct:{uuid.uuid4().hex[:12]}")
        else:
            key = ctx.effect_key(tool.name, seq or 0)
        existing = await asyncio.to_thread(ledger.by_key, key)
        mine = (tool.name, digest, ctx.persona_name, ctx.user)
        if existing is not None and not fixed:
            if (existing.tool, existing.arguments_hash, existing.persona, existing.user_id) != mine:
                # Another intent under this number (a history this server no longer has, a conversation
                # id someone else used): it gets a key of its own and never touches the other effect.
                key = EffectKey(key.namespace, f"{key.slot}~{_short(digest, ctx.persona_name, ctx.user)}")
                existing = await asyncio.to_thread(ledger.by_key, key)
        elif existing is not None and (existing.persona, existing.user_id) != (ctx.persona_name, ctx.user):
            # A flow's key is its own; the flow's system user and persona never change between runs.
            raise Conflict(f"effect {existing.id} under {key} belongs to another persona or user")
        if existing is not None and existing.state is not State.FAILED:
            return await self.effects.answer(ctx, call_id, tool, existing, notices)
        # Not fixed: the same arguments again in this conversation ("240" and "240.00" alike: a model
        # retrying, a client re-sending) are the same effect until it definitely failed; the ledger checks
        # that under the claim's own lock.
        dedupe = not fixed

        decision = await self.policy.evaluate(
            persona_name=ctx.persona_name, persona=ctx.persona, tool=tool, args=args
        )
        if decision.verdict is Verdict.DENY:
            content = error_content("policy_denied", decision.reason, clause=decision.clause)
            return await self._deny(ctx, call_id, tool.name, content, "policy", decision, read_only=False)
        intent = Intent(
            key=existing.key if existing is not None else key, tool=tool.name, persona=ctx.persona_name,
            user=ctx.user, conversation_id=ctx.conversation_id, source=ctx.source, model_call_id=call_id[:MAX_CALL_ID],
            arguments_json=canonical_json(to_jsonable(dumped)), arguments_hash=digest, reason=decision.reason, amount=decision.amount,
            currency=decision.currency,
        )  # fmt: skip
        if decision.verdict is Verdict.APPROVAL:
            return await self._hold(ctx, call_id, tool, intent, decision, notices, dedupe)
        claim = await asyncio.to_thread(
            ledger.claim, intent, day=self._day(), cap=decision.daily_total, dedupe=dedupe
        )
        if claim.status == "exists" and claim.effect is not None:
            return await self.effects.answer(ctx, call_id, tool, claim.effect, notices)
        if claim.status == "over_cap":
            denied = over_daily_total(decision, claim.spent)
            content = error_content("policy_denied", denied.reason, clause=denied.clause)
            return await self._deny(ctx, call_id, tool.name, content, "policy", denied, read_only=False)
        assert claim.effect is not None
        return await self.effects.perform(
            ctx, call_id, tool, args, claim.effect, _with_total(decision, claim.spent), notices
        )

    async def _hold(
        self,
        ctx: CallContext,
        call_id: str,
        tool: Tool[Any, C],
        intent: Intent,
        decision: PolicyDecision,
        notices: Sequence[str],
        dedupe: bool,
    ) -> Dispatched:
        effect, created = await asyncio.to_thread(self.effects.ledger.hold, intent, dedupe=dedupe)
        if not created:
            return await self.effects.answer(ctx, call_id, tool, effect, notices)
        await self._audit(
            ctx, Event.APPROVAL_REQUESTED, tool.name, decision=decision.verdict.value, reason=decision.reason,
            payload={"tool_call_id": call_id, "approval_id": effect.id, "effect_id": effect.id,
                     "arguments": json.loads(intent.arguments_json), "clause": decision.clause},
        )  # fmt: skip
        return Dispatched(
            call_id, tool.name, Outcome.PENDING_APPROVAL, pending_content(effect.id, decision.reason),
            decision=decision, approval_id=effect.id, read_only=False, effect_id=effect.id,
        )  # fmt: skip

    def _day(self) -> str:
        return self._now().astimezone(UTC).date().isoformat()

    # ------------------------------------------------------------------ approvals

    async def approve(
        self, approval_id: str, *, by: str, note: str | None = None, source: str = Source.CLI
    ) -> tuple[Approval, Dispatched]:
        """Approve a held call and execute it once, with exactly the arguments that were approved.

        ``held -> claimed`` (with the reservation) is one transaction; a crash after it leaves the effect
        ``claimed``, which the sweep resolves by order number, so no approval stays half-done."""
        ledger = self.effects.ledger
        effect = await asyncio.to_thread(self.approvals.effect, approval_id)
        if effect.state is State.HELD:
            await self._check_held(effect, by=by, source=source)
        if (
            self.settings.approvals.require_different_user
            and same_identity(by, effect.user_id)  # normalised: Bob@Example.com is bob@example.com
            and effect.state is State.HELD
        ):
            raise Forbidden(
                f"{by} asked for this call and cannot approve it (approvals.require_different_user); "
                "another person must approve it"
            )
        if effect.state is not State.HELD:
            raise Conflict(
                f"approval {approval_id} is already {self.approvals.status(effect)}"
                f" (decided by {effect.decided_by or 'nobody'}); nothing was done"
            )
        tool = self.registry.get(effect.tool)
        if tool is None:
            raise Conflict(f"tool {effect.tool} no longer exists; approval {approval_id} cannot execute")
        parsed = tool.parse(effect.arguments)
        if (
            isinstance(parsed, ToolFailure)
            or arguments_hash(parsed.model_dump(mode="python")) != effect.arguments_hash
        ):
            raise Conflict(
                f"approval {approval_id}: stored arguments no longer validate; nothing was executed"
            )
        persona = self.settings.persona(effect.persona)
        ctx = CallContext(effect.persona, persona, effect.user_id, effect.conversation_id, source)
        call_id = effect.model_call_id or effect.id
        denial = None if self._grants is None else await self._grants.check(effect.persona, tool.name)
        decision = (
            PolicyDecision(Verdict.DENY, denial.clause, denial.reason)
            if denial is not None
            else await self.policy.evaluate(
                persona_name=effect.persona, persona=persona, tool=tool, args=parsed, approved=True
            )
        )
        refused = decision.verdict is not Verdict.ALLOW
        claim = await asyncio.to_thread(
            ledger.approve, approval_id, by=by, note=note, reason=decision.reason, amount=decision.amount,
            currency=decision.currency, day=self._day(), cap=decision.daily_total, checked=effect, refused=refused,
        )  # fmt: skip
        denied = None
        if claim.status == "over_cap":
            denied = decision if refused else over_daily_total(decision, claim.spent)
        await self._audit(  # the approver's act: their name on the record, in the asker's conversation
            replace(ctx, user=by), Event.APPROVAL_GRANTED, tool.name, decision="approved",
            reason=(note or "approved") + ("" if denied is None else f"; not executed: {denied.reason}"),
            payload={"approval_id": approval_id, "effect_id": approval_id, "approved_by": by, "tool_call_id": call_id,
                     "executes": denied is None},
        )  # fmt: skip
        if denied is not None:
            kind = "policy_denied" if denial is None else denial.kind
            content = error_content(kind, denied.reason, clause=denied.clause)
            await asyncio.to_thread(
                ledger.mark, approval_id, State.FAILED, result=content, only_from=(State.FAILED,)
            )
            how = "policy" if denial is None else "grant"
            done = await self._deny(ctx, call_id, tool.name, content, how, denied, read_only=False)
            return await asyncio.to_thread(self.approvals.get, approval_id), done
        assert claim.effect is not None
        # Executed as checked: what the row says now (a write since the check) is not read again.
        checked = replace(effect, state=claim.effect.state, attempts=claim.effect.attempts)
        done = await self.effects.perform(
            ctx, call_id, tool, parsed, checked, _with_total(decision, claim.spent)
        )
        return await asyncio.to_thread(self.approvals.get, approval_id), done

    async def _check_held(self, effect: Effect, *, by: str, source: str) -> None:
        """Refuse, audited, a held call whose row is not the one sealed when it was asked for, or one the audit
        log shows was decided already (a decided row set back to ``held`` keeps an intact seal)."""
        seal = self.effects.ledger.seal
        check = (
            Check(SealState.UNCHECKABLE, "no master key is loaded here, so its seal cannot be checked")
            if seal is None
            else seal.check(effect.held(), effect.seal, effect.seal_kv)
        )
        if not check.intact:
            fix = {
                SealState.BROKEN: "reject it and ask for the call again; check who can write the database",
                SealState.UNSEALED: "reject it and ask for the call again (calls held before approvals were "
                "sealed carry no seal)",
                SealState.UNCHECKABLE: "restart this process after a master-key rotation; otherwise restore the "
                "master key that has that version",
            }[check.state]
            await self._refuse(effect, by, source, check.state.value, check.why, fix)
        decided = await asyncio.to_thread(self._decision_of, effect)
        if decided is not None:
            why = (
                f"the audit log records it {_DECIDED[decided.event]} by {decided.user} "
                f"(record {decided.seq}), yet its row says pending: it was set back in the database"
            )
            await self._refuse(effect, by, source, "decided", why, "check who can write the database")

    def _decision_of(self, effect: Effect) -> AuditRecord | None:
        """The audit log's decision on this approval since it was last asked for, if any (the seal binds the
        conversation; a call held again after a definite failure was asked for again, and audited so)."""
        events = (Event.APPROVAL_REQUESTED, Event.APPROVAL_GRANTED, Event.APPROVAL_REJECTED)
        records = [
            record
            for event in events
            for record in self.audit.query(AuditFilter(event=event, conversation_id=effect.conversation_id))
            if record.payload.get("approval_id") == effect.id
        ]
        last = max(records, key=lambda r: r.seq, default=None)
        return None if last is None or last.event == Event.APPROVAL_REQUESTED else last

    async def _refuse(self, effect: Effect, by: str, source: str, state: str, why: str, fix: str) -> None:
        # Not through a CallContext: a tampered row may name a persona the configuration does not have.
        await self.audit.append(AuditEvent(
            event=Event.APPROVAL_REFUSED, source=source, user=by, persona=effect.persona,
            conversation_id=effect.conversation_id, tool=effect.tool, decision="refused", reason=why,
            payload={"approval_id": effect.id, "effect_id": effect.id, "seal": state, "asked_by": effect.user_id,
                     "arguments": effect.arguments},
        ))  # fmt: skip
        log.warning("approval_refused", approval_id=effect.id, seal=state, by=by)
        raise Conflict(f"approval {effect.id} cannot be approved: {why}; nothing was executed (fix: {fix})")

    async def reject(
        self, approval_id: str, *, by: str, note: str | None = None, source: str = Source.CLI
    ) -> Approval:
        await asyncio.to_thread(self.approvals.effect, approval_id)
        effect = await asyncio.to_thread(self.effects.ledger.reject, approval_id, by=by, note=note)
        ctx = CallContext(
            effect.persona,
            self.settings.persona(effect.persona),
            effect.user_id,
            effect.conversation_id,
            source,
        )
        await self._audit(
            replace(ctx, user=by), Event.APPROVAL_REJECTED, effect.tool, decision="rejected", reason=note or "rejected",
            payload={"approval_id": effect.id, "effect_id": effect.id, "rejected_by": by,
                     "tool_call_id": effect.model_call_id},
        )  # fmt: skip
        return self.approvals.view(effect)


_DECIDED: dict[str, str] = {Event.APPROVAL_GRANTED: "approved", Event.APPROVAL_REJECTED: "rejected"}


def _short(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:8]


def _with_total(decision: PolicyDecision, spent_before: Any) -> PolicyDecision:
    if decision.amount is None:
        return decision
    total = (spent_before + decision.amount).quantize(CENT)
    return replace(decision, reason=f"{decision.reason}; today's total {total} {decision.currency}")
