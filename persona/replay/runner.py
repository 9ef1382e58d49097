"""Running a scenario through the real loop, dispatcher, policy, audit log and sandbox.

Each scenario gets a fresh world: a temporary SQLite store, an in-process sandbox seeded at
the scenario's instant, and the configured personas and policies (a replay is only useful if
a change of prompt, policy or code can change its outcome). Only the model is scripted.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona.app import Runtime, connect_plisio
from persona.audit import AuditFilter
from persona.calls import call_context
from persona.deps import ChatDeps, OperatorDeps
from persona.drafts import DraftStore
from persona.errors import PersonaError, ScenarioError, ScriptExhausted
from persona.events import Source
from persona.loop import run_turn
from persona.replay.checks import Observed, calls_from, check
from persona.replay.scenario import Scenario
from persona.replay.script import Scripts
from persona.replay.triggers import REPLAY_CALLBACK_URL, callback, churn_scan, refund_request
from persona.settings import PlisioMode, PlisioSettings, Settings
from persona.store.engine import Store
from tools.plisio.sandbox import Sandbox


@dataclass
class Result:
    name: str
    path: str
    ok: bool
    steps: int = 0
    tool_calls: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def replay_settings(settings: Settings) -> Settings:
    """The configured personas and policies, against the in-process sandbox."""
    plisio = PlisioSettings(mode=PlisioMode.SANDBOX, callback_url=REPLAY_CALLBACK_URL)
    return settings.model_copy(update={"plisio": plisio})


async def run_scenario(scenario: Scenario, settings: Settings) -> Result:
    started = time.perf_counter()
    result = Result(name=scenario.name, path=scenario.source, ok=False)
    with tempfile.TemporaryDirectory(prefix="persona-replay-") as tmp:
        store = Store.open(f"sqlite:///{Path(tmp) / 'replay.sqlite3'}")
        now: Callable[[], Any] = lambda: scenario.now  # noqa: E731 - a fixed clock
        sandbox = Sandbox(seed=scenario.seed, now=now)
        cfg = replay_settings(settings)
        rt = Runtime.build(cfg, store=store, plisio=connect_plisio(cfg, sandbox=sandbox), now=now)
        scripts = Scripts(scenario)
        rt.model_factory = scripts.factory
        seen = Observed()
        try:
            await _drive(rt, scenario, scripts, sandbox, seen)
        except PersonaError as exc:
            result.failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            _observe(rt.operator, sandbox, seen)
            await rt.aclose()
        result.failures += scripts.leftovers()
        result.failures += check(scenario.expect, seen)
        result.steps, result.tool_calls = seen.steps, len(seen.calls)
    result.ok = not result.failures
    result.seconds = time.perf_counter() - started
    return result


async def _drive(rt: Runtime, scenario: Scenario, scripts: Scripts, sandbox: Sandbox, seen: Observed) -> None:
    kind = scenario.trigger.kind
    if kind == "chat":
        await _chat(rt.chat, scenario, scripts, seen)
    elif kind == "callback":
        from persona.server import create_app

        await callback(rt.worker, create_app(rt, start_worker=False), scenario, scripts, sandbox)
    elif kind == "refund_request":
        seen.refund = await refund_request(rt.flows, scenario, scripts)
    else:
        seen.churn_signals = await churn_scan(rt.flows, scenario)


async def _chat(deps: ChatDeps, scenario: Scenario, scripts: Scripts, seen: Observed) -> None:
    ctx = call_context(deps.settings, scenario.persona, scenario.user, source=Source.REPLAY)
    system = deps.prompts.for_call(ctx, today=deps.now().date())
    history: list[dict[str, Any]] = []
    for index, turn in enumerate(scenario.turns):
        model = scripts.for_turn(index)
        outcome = await run_turn(
            model=model, dispatcher=deps.dispatcher, ctx=ctx, system_prompt=system, history=history,
            user_message=turn.user,
        )  # fmt: skip
        if isinstance(outcome.error, ScriptExhausted):
            raise ScenarioError(f"turn {index + 1}: missing model step: {outcome.error}")
        history.extend(outcome.messages)
        seen.flags += len(outcome.flags)


def _observe(deps: OperatorDeps, sandbox: Sandbox, seen: Observed) -> None:
    records = deps.audit.query(AuditFilter())
    seen.calls = calls_from(records)
    seen.steps = sum(1 for r in records if r.event == "model_response")
    ended = [r for r in records if r.event == "turn_ended"]
    if ended:
        seen.final_text = str(ended[-1].payload.get("text") or "")
    seen.stops = [
        (str(r.reason), str(r.payload.get("text") or "")[:160]) for r in records if r.event == "limit_reached"
    ]
    seen.plisio_paths = [r.path for r in sandbox.requests]
    seen.approvals_pending = len(deps.dispatcher.approvals.find("pending"))
    seen.drafts = list(reversed(DraftStore(deps.store).find(None)))
