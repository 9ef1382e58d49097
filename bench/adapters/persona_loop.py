"""Our loop: ``persona.loop.run_turn`` with the real dispatcher, policy and audit on durable SQLite.

Built as ``persona serve`` runs it (``Runtime.build`` from a config file, its chat bundle and pooled model, then
``settle_heap()``: the start-up heap frozen out of the garbage collector's scans, as ``serve`` and
``worker`` do before serving; ``persona_loop_default_gc`` is the same loop without it):
the Plisio client talks to the loopback sandbox, the model client to the fake endpoint, the store is
a SQLite file (WAL, ``synchronous=FULL``). Every conversation is a fresh ``conversation_id`` on the
``finance`` persona, whose invoice policy evaluates and reserves spend for the invoice it creates.
"""

from __future__ import annotations

import asyncio
from typing import Any

from persona import log
from persona.app import Runtime, settle_heap
from persona.calls import call_context
from persona.config import load_settings
from persona.dispatcher import Outcome
from persona.loop import run_turn

PERSONA = "finance"
USER = "bench-user"


class PersonaLoop:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        settings = load_settings(cfg["persona_config"], env={"OPENAI_API_KEY": cfg["api_key"]})
        log.configure(settings.log.level, settings.log.format)
        self.rt = Runtime.build(settings)
        self.deps = self.rt.chat
        self.model = self.deps.models(PERSONA, USER)

    async def run(self) -> str:
        deps = self.deps
        ctx = call_context(deps.settings, PERSONA, USER)
        result = await run_turn(
            model=self.model,
            dispatcher=deps.dispatcher,
            ctx=ctx,
            system_prompt=deps.prompts.for_call(ctx, today=deps.now().date()),
            user_message=self.cfg["user_message"],
        )
        if result.stopped_by is not None:
            raise RuntimeError(f"the turn stopped early ({result.stopped_by}): {result.text[:300]}")
        failed = [c for c in result.calls if c.outcome is not Outcome.SUCCEEDED]
        if failed:
            raise RuntimeError(f"tool calls did not succeed: {[(c.tool, c.outcome.value) for c in failed]}")
        return result.text

    async def finish(self) -> dict[str, Any]:
        """After timing: prove the audit log was written and its chain verifies."""
        report = await asyncio.to_thread(self.rt.audit.verify)
        return {"audit_records": report.records, "audit_ok": report.ok}

    async def aclose(self) -> None:
        await self.rt.aclose()  # the model is the runtime's: closed with it


async def build(cfg: dict[str, Any], *, settle: bool = True) -> PersonaLoop:
    loop = PersonaLoop(cfg)
    if settle:
        settle_heap()
    return loop
