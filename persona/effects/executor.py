"""Carrying out a claimed effect, answering a repeat of one, and resolving those whose answer was lost.

Execution is one unit, run as its own task and shielded from the caller's cancellation: the handler
(bounded by the persona's ``tool_timeout_s``), an inline lookup when the answer was lost (bounded too),
the ledger mark and the audit record of the outcome finish together, and only then does a cancelled
caller see its ``CancelledError``. What "not seen to
finish" means is fixed here, once: a timeout, a cancellation, a dropped connection, a gateway's 5xx or
an unreadable answer after the request may have left is ``unknown``, never ``failed``; it keeps its
reservation and is looked up by order number, inline at once and by the sweep later. Only the service's
own refusal, or a request that provably never left, is ``failed``. The integration says which is which by
the class it raises (``tools.errors``: ``OutcomeUnknown``, ``EffectDiffers``, any other ``ServiceError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import structlog

from persona.audit import AuditEvent, AuditLog
from persona.calls import (
    CallContext,
    Dispatched,
    Outcome,
    call_event,
    current_call,
    error_content,
    record_call,
)
from persona.effects.ledger import UNRESOLVED, Effect, EffectLedger, State
from persona.errors import Forbidden, VaultError
from persona.events import Event, Source
from persona.policy import PolicyDecision
from tools.errors import EffectDiffers, OutcomeUnknown, ServiceError
from tools.redaction import scrub
from tools.registry import ContextFactory, Registry, Tool, ToolFailure, ToolResult, bounded_json, to_jsonable

log = structlog.get_logger(__name__)

T = TypeVar("T")
C = TypeVar("C")
"""The context the tools run with (the integration's: ``PlisioContext`` for Plisio)."""


async def finish_shielded(unit: asyncio.Future[T]) -> T:
    """Wait for ``unit`` to the end even if the waiter is cancelled meanwhile; then re-raise the cancel.

    ``asyncio.shield`` alone would let the waiter go at once and leave the unit's outcome unobserved;
    here the waiter stays until the outcome is recorded (as openai-agents' ``run_internal`` waits out
    in-flight tool tasks before it propagates a cancellation)."""
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(unit)
            break
        except asyncio.CancelledError:
            if unit.cancelled():
                raise
            cancelled = True
        except BaseException as exc:
            if not cancelled:
                raise
            # The caller asked to be cancelled: that is what it must see (a TaskGroup or timeout counts on
            # it); the unit's own error goes to the log, its effect was marked unknown.
            log.error("effect_unit_failed_after_cancel", error=scrub(f"{type(exc).__name__}: {exc}"))
            break
    if cancelled:
        raise asyncio.CancelledError("cancelled while a side effect was in flight; its outcome is recorded")
    return result


def unknown_content(effect: Effect, why: str) -> str:
    return bounded_json(
        {
            "ok": False,
            "status": "outcome_unknown",
            "effect_id": effect.id,
            "order_number": effect.order_number,
            "message": f"Sent to Plisio, but its outcome is not known yet ({why}). It may have been created. "
            f"Do not call it again: it is recorded as effect {effect.id} and is looked up by its order number. "
            "Tell the user the outcome is not confirmed yet.",
        }
    )


def pending_content(approval_id: str, reason: str) -> str:
    return bounded_json(
        {
            "ok": False,
            "status": "pending_approval",
            "approval_id": approval_id,
            "message": f"Not executed yet: {reason}. It is queued as approval {approval_id}. "
            "Tell the user it awaits approval; do not call it again.",
        }
    )


def _with_notices(content: str, notices: Sequence[str]) -> str:
    if not notices:
        return content
    try:
        payload = json.loads(content)
    except ValueError:
        return content
    if not isinstance(payload, dict):
        return content
    payload["notices"] = [*payload.get("notices", ()), *notices]
    return bounded_json(payload)


class EffectExecutor(Generic[C]):
    def __init__(
        self,
        *,
        ledger: EffectLedger,
        audit: AuditLog,
        registry: Registry[C],
        contexts: ContextFactory[C],
        now: Callable[[], datetime],
        resolve_after_s: float,
        lookup_timeout_s: float = 30.0,
    ) -> None:
        self.ledger, self._audit, self._registry, self._contexts = ledger, audit, registry, contexts
        self._now = now
        self.resolve_after_s, self._lookup_timeout_s = resolve_after_s, lookup_timeout_s

    # -- answering a repeat ------------------------------------------------------------------

    async def answer(
        self,
        ctx: CallContext,
        call_id: str,
        tool: Tool[Any, C],
        effect: Effect,
        notices: Sequence[str],
    ) -> Dispatched:
        """The same intent again (a retried call, a re-run flow, the template after the model): answered from
        the effect, never done a second time. An unresolved one is looked up first."""
        if effect.state in UNRESOLVED:
            effect = await self.resolve(effect, final=False, source=ctx.source)
        notice = f"this call is effect {effect.id} ({effect.state.value}), made before; it is not repeated"
        all_notices = [*notices, notice]
        base = {"tool_call_id": call_id, "effect_id": effect.id, "state": effect.state.value}
        if effect.state is State.APPLIED:
            content, outcome = (
                _with_notices(effect.result or bounded_json({"ok": True}), all_notices),
                Outcome.REPLAYED,
            )
        elif effect.state is State.HELD:
            content, outcome = (
                pending_content(effect.id, effect.reason or "it needs approval"),
                Outcome.PENDING_APPROVAL,
            )
        elif effect.state is State.REJECTED:
            who = effect.decided_by or "a person"
            content = error_content(
                "rejected", f"{who} rejected this exact call (approval {effect.id}); it is not executed"
            )
            outcome = Outcome.DENIED
        else:
            content, outcome = unknown_content(effect, "an earlier attempt got no answer"), Outcome.UNKNOWN
        await self._record(ctx, Event.TOOL_CALL_REPLAYED, tool.name, durable=False, payload=base)
        return Dispatched(
            call_id, tool.name, outcome, content, read_only=False, notices=tuple(all_notices), effect_id=effect.id,
            approval_id=effect.id if effect.needs_approval else None,
        )  # fmt: skip

    # -- carrying one out --------------------------------------------------------------------

    async def perform(
        self,
        ctx: CallContext,
        call_id: str,
        tool: Tool[Any, C],
        args: Any,
        effect: Effect,
        decision: PolicyDecision,
        notices: Sequence[str] = (),
    ) -> Dispatched:
        await self._audit.flush()  # write-ahead: the attempt is durable before anything leaves
        unit = asyncio.ensure_future(self._apply(ctx, call_id, tool, args, effect, decision, notices))
        return await finish_shielded(unit)

    async def _apply(
        self,
        ctx: CallContext,
        call_id: str,
        tool: Tool[Any, C],
        args: Any,
        effect: Effect,
        decision: PolicyDecision,
        notices: Sequence[str],
    ) -> Dispatched:
        loop = asyncio.get_running_loop()
        started = loop.time()
        timeout = ctx.persona.limits.tool_timeout_s
        token = current_call.set(ctx)
        failure: ToolFailure | None = None
        unknown: str | None = None
        data: Any = None
        try:
            tool_ctx = await self._contexts(ctx.persona_name, effect.order_number)
            async with asyncio.timeout(timeout):
                data = await tool.handler(args, tool_ctx)
        except (Forbidden, VaultError) as exc:  # the key is read before anything is sent: never left
            return await self._refused(ctx, call_id, tool, effect, exc)
        except TimeoutError:
            unknown = f"no answer within {timeout:g}s"
        except OutcomeUnknown as exc:
            unknown = exc.message
        except ServiceError as exc:
            failure = _failure(exc)
        except BaseException as exc:  # cancelled at shutdown, or a bug: the request may have left
            self._cut_off(ctx, tool, call_id, effect, f"{type(exc).__name__} while the request was in flight")
            raise
        finally:
            current_call.reset(token)
        latency = round((loop.time() - started) * 1000, 2)
        payload = {"tool_call_id": call_id, "effect_id": effect.id, "order_number": effect.order_number,
                   "arguments": to_jsonable(args.model_dump(mode="python"))}  # fmt: skip
        fields: dict[str, Any] = {
            "decision": decision.verdict.value,
            "reason": decision.reason,
            "latency_ms": latency,
        }
        if unknown is not None:
            await asyncio.to_thread(
                self.ledger.mark, effect.id, State.UNKNOWN, reason=unknown, only_from=(State.CLAIMED,)
            )
            log.warning("effect_outcome_unknown", effect_id=effect.id, tool=tool.name, reason=scrub(unknown))
            try:
                found = await self._lookup(tool, args, effect, persona=ctx.persona_name)
            except _LookupFailed:
                found = None
            except _FoundOther as other:  # its order number holds an invoice that is not this one
                found, failure = None, _failure(other.error)
            if found is None and failure is None:
                content = _with_notices(unknown_content(effect, unknown), notices)
                await self._record(
                    ctx, Event.TOOL_CALL_UNKNOWN, tool.name, payload={**payload, "why": unknown}, **fields
                )
                return Dispatched(
                    call_id, tool.name, Outcome.UNKNOWN, content, decision=decision, read_only=False,
                    notices=tuple(notices), effect_id=effect.id,
                )  # fmt: skip
            data = found
        result = (
            ToolResult.failure(tool.name, failure)
            if failure is not None
            else ToolResult.success(tool.name, data)
        )
        content = _with_notices(result.to_content(), notices)
        state = State.APPLIED if result.ok else State.FAILED
        reason = None if failure is None else failure.message
        # An invoice that exists is applied whatever was concluded meanwhile (a sweep that gave up on it).
        only_from = (*UNRESOLVED, State.FAILED) if result.ok else UNRESOLVED
        marked = await asyncio.to_thread(
            self.ledger.mark, effect.id, state, result=content, reason=reason, only_from=only_from
        )
        if not marked:
            log.error("effect_mark_refused", effect_id=effect.id, wanted=state.value)
        event = Event.TOOL_CALL_SUCCEEDED if result.ok else Event.TOOL_CALL_FAILED
        await self._record(
            ctx, event, tool.name, payload={**payload, "result": json.loads(content)}, **fields
        )
        outcome = Outcome.SUCCEEDED if result.ok else Outcome.FAILED
        return Dispatched(
            call_id, tool.name, outcome, content, result, decision, read_only=False, notices=tuple(notices),
            effect_id=effect.id,
        )  # fmt: skip

    async def _refused(
        self, ctx: CallContext, call_id: str, tool: Tool[Any, C], effect: Effect, exc: Exception
    ) -> Dispatched:
        grant = isinstance(exc, Forbidden)
        kind = "no_plisio_access" if grant else "credential_unavailable"
        content = error_content(kind, str(exc))
        await asyncio.to_thread(self.ledger.mark, effect.id, State.FAILED, result=content, reason=str(exc))
        await self._record(
            ctx, Event.TOOL_CALL_DENIED, tool.name, decision="deny", reason=str(exc),
            payload={"tool_call_id": call_id, "effect_id": effect.id, "kind": "grant" if grant else "vault"},
        )  # fmt: skip
        return Dispatched(call_id, tool.name, Outcome.DENIED, content, read_only=False, effect_id=effect.id)

    def _cut_off(self, ctx: CallContext, tool: Tool[Any, C], call_id: str, effect: Effect, why: str) -> None:
        """Synchronously, for a unit cancelled by the loop shutting down: the effect is ``unknown``, not lost."""
        self.ledger.mark(effect.id, State.UNKNOWN, reason=why, only_from=(State.CLAIMED,))
        self._audit.record(call_event(ctx, Event.TOOL_CALL_UNKNOWN, tool.name,
                                       payload={"tool_call_id": call_id, "effect_id": effect.id, "why": why}))  # fmt: skip
        self._audit.send()

    # -- resolution --------------------------------------------------------------------------

    async def _lookup(self, tool: Tool[Any, C], args: Any, effect: Effect, *, persona: str) -> Any | None:
        """The lookup's result data, or None when it is not there or the lookup itself failed."""
        assert tool.lookup is not None  # a side-effect tool declares one (Tool.__post_init__)
        try:
            tool_ctx = await self._contexts(persona, effect.order_number)
            async with asyncio.timeout(self._lookup_timeout_s):
                return await tool.lookup(args, tool_ctx)
        except EffectDiffers as exc:
            raise _FoundOther(exc) from None
        except (ServiceError, TimeoutError, Forbidden, VaultError) as exc:
            log.warning(
                "effect_lookup_failed", effect_id=effect.id, error=scrub(f"{type(exc).__name__}: {exc}")
            )
            raise _LookupFailed from None

    async def resolve(self, effect: Effect, *, final: bool, source: str = Source.WORKER) -> Effect:
        """Look an unresolved effect up by its order number: found -> ``applied``; not found and ``final``
        (the sweep, past ``resolve_after_s``) -> ``failed``, its reservation released; else unchanged."""
        tool = self._registry.get(effect.tool)
        args = None if tool is None else tool.parse(effect.arguments)
        if tool is None or isinstance(args, ToolFailure):
            log.error("effect_unresolvable", effect_id=effect.id, tool=effect.tool)
            return effect
        try:
            found = await self._lookup(tool, args, effect, persona=effect.persona)
        except _LookupFailed:
            await asyncio.to_thread(self.ledger.touch, effect.id)  # to the back of the sweep's queue
            return await asyncio.to_thread(self.ledger.get, effect.id)
        except _FoundOther as other:  # found by its order number, and not what was asked: not applied
            why = str(other.error)
            content = error_content(other.error.kind, why)
            if await asyncio.to_thread(self.ledger.mark, effect.id, State.FAILED, result=content, reason=why):
                await self._resolved(effect, State.FAILED, why, source)
            return await asyncio.to_thread(self.ledger.get, effect.id)
        if found is not None:
            content = bounded_json({"ok": True, "result": found})
            why = f"found at Plisio by order number {effect.order_number}"
            if await asyncio.to_thread(
                self.ledger.mark, effect.id, State.APPLIED, result=content, reason=why
            ):
                await self._resolved(effect, State.APPLIED, why, source)
        elif final:
            why = f"not found at Plisio by order number {effect.order_number} after {self.resolve_after_s:g}s"
            content = error_content("not_applied", f"the request never took effect at Plisio ({why})")
            if await asyncio.to_thread(self.ledger.mark, effect.id, State.FAILED, result=content, reason=why):
                await self._resolved(effect, State.FAILED, why, source)
        return await asyncio.to_thread(self.ledger.get, effect.id)

    async def sweep(self, *, source: str = Source.WORKER, limit: int = 100) -> list[Effect]:
        """Resolve every effect left ``claimed`` or ``unknown`` for longer than ``resolve_after_s``."""
        cutoff = self._now() - timedelta(seconds=self.resolve_after_s)
        due = await asyncio.to_thread(self.ledger.unresolved, updated_before=cutoff, limit=limit)
        done = []
        for effect in due:
            try:
                done.append(await self.resolve(effect, final=True, source=source))
            except Exception as exc:  # one effect's trouble (a store hiccup, a bug) must not stall the rest
                log.error(
                    "effect_resolve_failed", effect_id=effect.id, error=scrub(f"{type(exc).__name__}: {exc}")
                )
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.ledger.touch, effect.id)
        return done

    async def _resolved(self, effect: Effect, state: State, why: str, source: str) -> None:
        log.info("effect_resolved", effect_id=effect.id, state=state.value, order_number=effect.order_number)
        await self._audit.append(
            AuditEvent(
                event=Event.EFFECT_RESOLVED, source=source, user=effect.user_id, persona=effect.persona,
                conversation_id=effect.conversation_id, tool=effect.tool, decision=state.value, reason=why,
                payload={"effect_id": effect.id, "state": state.value, "was": effect.state.value,
                         "order_number": effect.order_number,
                         "approval_id": effect.id if effect.needs_approval else None},
            )
        )  # fmt: skip

    # -- audit -------------------------------------------------------------------------------

    async def _record(
        self, ctx: CallContext, event: Event, tool: str, *, durable: bool = True, **fields: Any
    ) -> None:
        await record_call(self._audit, ctx, event, tool, durable=durable, **fields)


class _FoundOther(Exception):
    """The lookup found an invoice under the effect's order number that is not the one asked for."""

    def __init__(self, error: EffectDiffers) -> None:
        super().__init__(str(error))
        self.error = error


def _failure(exc: ServiceError) -> ToolFailure:
    return ToolFailure(exc.kind, str(exc), details=exc.to_dict())


class _LookupFailed(Exception):
    """The lookup could not be made (Plisio unreachable, no key): the outcome stays as it was."""
