"""``persona_loop`` without ``settle_heap()``: the same loop with Python's default garbage collection,
so the table shows what freezing the start-up heap is worth (and the comparison with peers, which run
with the default, can be read both ways)."""

from __future__ import annotations

from typing import Any

from bench.adapters.persona_loop import PersonaLoop
from bench.adapters.persona_loop import build as _build


async def build(cfg: dict[str, Any]) -> PersonaLoop:
    return await _build(cfg, settle=False)
