"""Tool calls a model wrote as text instead of calling: found so the loop can ask it to retry."""

from __future__ import annotations

import re
from collections.abc import Collection

_KEYS = "name|function|function_name|tool|tool_name|recipient_name"
_NAMED = re.compile(  # JSON keys ("name": "x") or keyword arguments (name='x'), never prose
    rf"""(?:["'](?:{_KEYS})["']\s*:|\b(?:{_KEYS})\s*=)\s*["'](?:functions\.)?([A-Za-z_][\w.-]*)["']"""
)
_TAG = re.compile(r"<function=(?:functions\.)?([A-Za-z_][\w.-]*)>")
_CALL_LINE = re.compile(r"^[ \t>`\[]*(?:functions\.)?([A-Za-z_]\w*)\((.*)\)[`\];.\s]*$", re.MULTILINE)
_CALL_OBJECT = re.compile(r"\b(?:functions\.)?([A-Za-z_]\w*)\s*\(\s*\{")
_CALL_LIST = re.compile(r"[\[,]\s*(?:functions\.)?([A-Za-z_]\w*)\(")


def embedded_tool_calls(text: str | None, tool_names: Collection[str]) -> list[str]:
    """Names of offered tools the model apparently tried to call inside its text, in order of appearance.

    Catches JSON-ish calls (``<tool_call>{"name": ...}``, bare or fenced objects with ``"name"`` /
    ``"function"``), ``<function=name>`` tags, a line that is just ``name(...)`` and ``name({...})``;
    a name merely mentioned in prose does not count. Only names in ``tool_names`` are reported.
    """
    if not text:
        return []
    names = set(tool_names)
    found: list[tuple[int, str]] = []
    for pattern in (_NAMED, _TAG, _CALL_LINE, _CALL_OBJECT, _CALL_LIST):
        found.extend((m.start(), m.group(1)) for m in pattern.finditer(text) if m.group(1) in names)
    return list(dict.fromkeys(name for _, name in sorted(found)))
