"""The one fixed conversation every orchestration adapter runs, and how the servers check it.

A finance user asks for a small job; the scripted model answers in five chat-completion requests:

1. ``plisio_get_shop_info``
2. ``plisio_get_balance`` and ``plisio_get_fee_plans`` together (the parallel pair)
3. ``plisio_list_transactions`` (the last 3 completed invoices)
4. ``plisio_create_invoice`` (20 USD: below every cap, so policy allows it and reserves spend)
5. the final text

That is 4 model steps that call tools, 5 tool calls (one parallel pair), and the final text. Every
tool call is a real HTTP request to the Plisio sandbox. The fake model checks each request: the 13
tool definitions are offered, and the previous step's tool results came back bound to their call ids
with the content a working tool returns. It answers a broken conversation with HTTP 400, so an
adapter that skips or fakes a tool fails loudly instead of looking fast.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MODEL = "bench-model"
USER = "bench-user"
PERSONA = "finance"
USER_MESSAGE = (
    "Quick check before the board call: which shop is this, how much BTC do we hold and what do BTC "
    "fees look like, show the last 3 completed invoices, then create a 20 USD invoice for "
    "'Pro plan, March' and give me the link."
)

_NULL_INVOICE = {
    "amount": None,
    "currency": None,
    "allowed_psys_cids": None,
    "description": None,
    "email": None,
    "expire_min": None,
}
STEPS: tuple[tuple[tuple[str, dict[str, Any]], ...], ...] = (
    (("plisio_get_shop_info", {}),),
    (("plisio_get_balance", {"psys_cid": "BTC"}), ("plisio_get_fee_plans", {"psys_cid": "BTC"})),
    (
        (
            "plisio_list_transactions",
            {
                "type": "invoice",
                "status": "completed",
                "currency": None,
                "search": None,
                "page": None,
                "limit": 3,
            },
        ),
    ),
    (
        (
            "plisio_create_invoice",
            {
                "order_name": "Pro plan, March",
                "source_amount": "20",
                "source_currency": "USD",
                **_NULL_INVOICE,
            },
        ),
    ),
)
FINAL_TEXT = (
    "Shop: Northwind Digital (verified). BTC balance: 0.24174428 BTC. Network fees for BTC: economy 4, "
    "normal 9, priority 18 sat/vB. The last 3 completed invoices are listed above, all paid in full. "
    "I created the invoice for 'Pro plan, March' at 20 USD; the payer can choose the coin on the "
    "payment page, and the link is in the tool result above. Anything else before the call?"
)
MODEL_REQUESTS = len(STEPS) + 1
TOOL_CALLS = sum(len(step) for step in STEPS)
# What a working tool's result must contain (true of our views and of the raw Plisio data alike).
MARKERS = {
    "plisio_get_shop_info": "Northwind Digital",
    "plisio_get_balance": "0.24174428",
    "plisio_get_fee_plans": "sat/vB",
    "plisio_list_transactions": "completed",
    "plisio_create_invoice": "invoice_url",
}
SANDBOX_PATHS = Counter(
    {
        "/api/v1/shops": 1,
        "/api/v1/balances/BTC": 1,
        "/api/v1/operations/fee-plan/BTC": 1,
        "/api/v1/operations": 1,
        "/api/v1/invoices/new": 1,
    }
)
TOOL_COUNT = 13


@dataclass(frozen=True)
class Reply:
    """What the fake model answers: tool calls (name, JSON arguments, id), or the final text."""

    tool_calls: tuple[tuple[str, str, str], ...] = ()
    text: str | None = None
    error: str | None = None
    final: bool = False


def _content(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text", "")) if isinstance(p, Mapping) else str(p) for p in content)
    return "" if content is None else str(content)


def next_reply(body: Mapping[str, Any]) -> Reply:
    """The scripted model: the step is the number of assistant messages so far; check, then answer."""
    messages: Sequence[Mapping[str, Any]] = body.get("messages") or []
    tools = body.get("tools") or []
    if len(tools) != TOOL_COUNT:
        return Reply(error=f"expected the {TOOL_COUNT} tool definitions, got {len(tools)}")
    if not any(m.get("role") == "user" and USER_MESSAGE in _content(m) for m in messages):
        return Reply(error="the user's message is missing")
    assistants = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    step = len(assistants)
    if step > len(STEPS):
        return Reply(error=f"the script has {len(STEPS)} tool steps; this is request {step + 1}")
    if step:
        last = assistants[-1]
        calls = messages[last].get("tool_calls") or []
        names = {c.get("id"): (c.get("function") or {}).get("name") for c in calls}
        answers = {
            m.get("tool_call_id"): _content(m) for m in messages[last + 1 :] if m.get("role") == "tool"
        }
        wanted = [name for name, _ in STEPS[step - 1]]
        if sorted(n for n in names.values() if n) != sorted(wanted):
            return Reply(error=f"step {step}: the assistant message does not carry the calls {wanted}")
        if set(answers) != set(names):
            return Reply(error=f"step {step}: tool results do not answer the call ids {sorted(names)}")
        for call_id, name in names.items():
            if MARKERS[str(name)] not in answers[call_id]:
                return Reply(error=f"step {step}: the result of {name} is not a working tool's result")
    if step == len(STEPS):
        return Reply(text=FINAL_TEXT, final=True)
    return Reply(
        tool_calls=tuple(
            (name, json.dumps(args), f"call_{secrets.token_hex(8)}") for name, args in STEPS[step]
        )
    )
