"""A conversation's audit records as a readable transcript: lines for ``persona audit show CONVERSATION``,
entries for the console's conversation page (one reading of the records, two renderings)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from persona.audit import AuditRecord
from persona.events import Event


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Entry:
    """One meaningful event of a conversation. ``kind``: user, answer, call, result, denied, approval,
    alert or event."""

    seq: int
    ts: datetime
    kind: str
    who: str
    text: str
    outcome: str = ""
    """For ``result``: succeeded, failed or replayed."""
    tool: str = ""
    model: str = ""
    tokens: int = 0


def entries(records: Iterable[AuditRecord]) -> list[Entry]:
    found: list[Entry] = []
    for r in records:
        p = r.payload
        persona = r.persona or ""
        match r.event:
            case Event.TURN_STARTED:
                if p.get("user_message") is not None:
                    found.append(Entry(r.seq, r.ts, "user", r.user or "", _short(p["user_message"], 400)))
            case Event.MODEL_RESPONSE:
                tokens = (r.usage or {}).get("total_tokens", 0)
                for call in p.get("tool_calls") or []:
                    found.append(Entry(r.seq, r.ts, "call", persona, _short(call.get("arguments")),
                                       tool=str(call.get("name"))))  # fmt: skip
                if p.get("text"):
                    found.append(Entry(r.seq, r.ts, "answer", persona, _short(p["text"], 400),
                                       model=r.model or "", tokens=tokens))  # fmt: skip
            case Event.TOOL_CALL_SUCCEEDED | Event.TOOL_CALL_FAILED | Event.TOOL_CALL_REPLAYED:
                shown = (
                    p.get("result", {}).get("error") if r.event == Event.TOOL_CALL_FAILED else p.get("result")
                )
                found.append(Entry(r.seq, r.ts, "result", persona, _short(shown or p.get("error") or ""),
                                   outcome=r.event.removeprefix("tool_call_"), tool=r.tool or ""))  # fmt: skip
            case Event.TOOL_CALL_DENIED:
                found.append(Entry(r.seq, r.ts, "denied", persona, r.reason or "", tool=r.tool or ""))
            case Event.APPROVAL_REQUESTED | Event.APPROVAL_GRANTED | Event.APPROVAL_REJECTED:
                text = f"{r.event.replace('_', ' ')} ({p.get('approval_id')}): {r.reason}"
                found.append(Entry(r.seq, r.ts, "approval", r.user or "", text))
            case Event.LIMIT_REACHED | Event.CLAIM_UNVERIFIED | Event.TOOL_CALL_IN_TEXT | Event.MODEL_FAILED:
                found.append(Entry(r.seq, r.ts, "alert", persona, f"{r.event}: {_short(r.reason or p)}"))
            case _:
                if r.event not in {Event.MODEL_REQUEST, Event.TOOL_CALL_ATTEMPTED, Event.TURN_ENDED}:
                    found.append(
                        Entry(r.seq, r.ts, "event", r.user or "", f"{r.event}: {_short(r.reason or p)}")
                    )
    return found


def transcript(records: Iterable[AuditRecord]) -> list[str]:
    """One line per meaningful event, prefixed with its seq so a reader can ``audit show SEQ``."""
    lines: list[str] = []
    for e in entries(records):
        head = f"#{e.seq:<6} {e.ts:%H:%M:%S}"
        match e.kind:
            case "user":
                lines.append(f"{head} {e.who} > {e.text}")
            case "call":
                lines.append(f"{head}   {e.who} calls {e.tool} {e.text}")
            case "answer":
                lines.append(f"{head} {e.who} ({e.model}, {e.tokens} tok) > {e.text}")
            case "result":
                lines.append(f"{head}     {e.tool} {e.outcome}: {e.text}")
            case "denied":
                lines.append(f"{head}     {e.tool} DENIED: {e.text}")
            case "approval":
                lines.append(f"{head}     {e.text}")
            case "alert":
                lines.append(f"{head}   ! {e.text}")
            case _:
                lines.append(f"{head}   {e.text}")
    return lines
