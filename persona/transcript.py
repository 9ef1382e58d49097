"""A conversation's audit records as a readable transcript (``persona audit show CONVERSATION``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from persona.audit import AuditRecord
from persona.events import Event


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def transcript(records: Iterable[AuditRecord]) -> list[str]:
    """One line per meaningful event, prefixed with its seq so a reader can ``audit show SEQ``."""
    lines: list[str] = []
    for r in records:
        p = r.payload
        head = f"#{r.seq:<6} {r.ts:%H:%M:%S}"
        match r.event:
            case Event.TURN_STARTED:
                if p.get("user_message") is not None:
                    lines.append(f"{head} {r.user} > {_short(p['user_message'], 400)}")
            case Event.MODEL_RESPONSE:
                tokens = (r.usage or {}).get("total_tokens", 0)
                for call in p.get("tool_calls") or []:
                    lines.append(
                        f"{head}   {r.persona} calls {call.get('name')} {_short(call.get('arguments'))}"
                    )
                if p.get("text"):
                    lines.append(f"{head} {r.persona} ({r.model}, {tokens} tok) > {_short(p['text'], 400)}")
            case Event.TOOL_CALL_SUCCEEDED | Event.TOOL_CALL_FAILED | Event.TOOL_CALL_REPLAYED:
                outcome = r.event.removeprefix("tool_call_")
                shown = (
                    p.get("result", {}).get("error") if r.event == Event.TOOL_CALL_FAILED else p.get("result")
                )
                lines.append(f"{head}     {r.tool} {outcome}: {_short(shown or p.get('error') or '')}")
            case Event.TOOL_CALL_DENIED:
                lines.append(f"{head}     {r.tool} DENIED: {r.reason}")
            case Event.APPROVAL_REQUESTED | Event.APPROVAL_GRANTED | Event.APPROVAL_REJECTED:
                lines.append(f"{head}     {r.event.replace('_', ' ')} ({p.get('approval_id')}): {r.reason}")
            case Event.LIMIT_REACHED | Event.CLAIM_UNVERIFIED | Event.TOOL_CALL_IN_TEXT | Event.MODEL_FAILED:
                lines.append(f"{head}   ! {r.event}: {_short(r.reason or p)}")
            case _:
                if r.event not in {Event.MODEL_REQUEST, Event.TOOL_CALL_ATTEMPTED, Event.TURN_ENDED}:
                    lines.append(f"{head}   {r.event}: {_short(r.reason or p)}")
    return lines
