"""One module per orchestration adapter; each exposes ``async def build(cfg) -> Conversation``.

Kept free of imports: each adapter runs in its own interpreter and its import time is measured.
"""

ADAPTERS = (
    ("raw_httpx", "hand loop, raw httpx"),
    ("raw_openai", "hand loop, openai client"),
    ("persona_loop", "persona run_turn (audit+policy, SQLite)"),
    ("persona_loop_default_gc", "persona run_turn, default GC (no settle_heap)"),
    ("openai_agents_sdk", "openai-agents"),
    ("pydanticai_agent", "PydanticAI"),
    ("langgraph_react", "LangGraph"),
)
BASELINE = "raw_openai"
