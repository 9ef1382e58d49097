"""The persona loop: model <-> tools within limits; every call through the dispatcher.

``turn`` drives a turn; each step is planned (``planning``: ids, call numbers, budget, loop guard),
executed (``execution``: reads together, writes one at a time, none cut off) and resolved
(``resolution``: messages in call order, stop text, claim check).
"""

from persona.loop.turn import LoopEvent, OnEvent, TurnResult, run_turn

__all__ = ["LoopEvent", "OnEvent", "TurnResult", "run_turn"]
