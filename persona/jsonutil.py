"""Values as JSON, once: what we show and send (``jsonable``), and the bytes a hash covers (``canonical_json``).

``jsonable`` is the one form of the CLI (``--json``), the API and the console: every time RFC 3339 in UTC
with ``Z``, money as a decimal string (never a float), dataclasses and pydantic models as objects, text
any database stores, a float that is not finite as its text (JSON has no NaN), raw bytes only by size.

``canonical_json`` is what the audit chain hashes, the effects ledger digests and the dispatcher stores:
sorted keys, compact, UTF-8 as is, no NaN. Its form is frozen: a record written years ago must give the
same bytes when it is verified today, so times keep the ``isoformat()`` text (``+00:00``) and models
pydantic's JSON mode, as they were when the first record was hashed. That is the one place the two forms
differ; a property test holds them equal everywhere else.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from persona.clock import as_utc

__all__ = ["canonical_json", "clean_text", "hashable", "jsonable", "rfc3339"]


def rfc3339(moment: datetime, *, precise: bool = True) -> str:
    """UTC, ``Z``; microseconds when ``precise`` (JSON), whole seconds in tables. A naive time is UTC."""
    text = as_utc(moment).astimezone(UTC).isoformat(timespec="microseconds" if precise else "seconds")
    return text.removesuffix("+00:00") + "Z"


def clean_text(text: str) -> str:
    """Text any database stores: no NUL (PostgreSQL refuses it), no lone surrogates."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def jsonable(value: Any) -> Any:
    """JSON-native data as we show and send it (see the module docstring)."""
    return _walk(value, _shown_time, "python")


def hashable(value: Any) -> Any:
    """JSON-native data in the hashed form (the audit log scrubs it, then hashes its canonical JSON)."""
    return _walk(value, _hashed_time, "json")


def canonical_json(value: Any) -> str:
    """The hashed form: sorted keys, compact separators, UTF-8 as is, no NaN (see the module docstring)."""
    return json.dumps(
        hashable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _shown_time(moment: datetime | date | time) -> str:
    return rfc3339(moment) if isinstance(moment, datetime) else moment.isoformat()


def _hashed_time(moment: datetime | date | time) -> str:
    return moment.isoformat()


def _walk(value: Any, when: Callable[[datetime | date | time], str], models: str) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {clean_text(str(k)): _walk(v, when, models) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, when, models) for v in value]
    if isinstance(value, set | frozenset):
        items = (_walk(v, when, models) for v in value)
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date | time):
        return when(value)
    if isinstance(value, enum.Enum):
        return _walk(value.value, when, models)
    if isinstance(value, BaseModel):
        return _walk(value.model_dump(mode=models), when, models)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _walk(getattr(value, f.name), when, models) for f in dataclasses.fields(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"  # raw bytes cannot be scrubbed: keep only their size
    return clean_text(str(value))
