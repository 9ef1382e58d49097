"""One JSON module: the shown form and the hashed form agree except on times and models, and the hashed
form gives the bytes the audit chain and the effects ledger have always stored."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from persona.effects.keys import arguments_hash, normalised
from persona.jsonutil import canonical_json, hashable, jsonable, rfc3339

TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), TEXT,
    st.decimals(allow_nan=False, allow_infinity=False, places=4),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=20,
)


class Colour(StrEnum):
    RED = "red"


@dataclass(frozen=True)
class Point:
    x: int
    at: date


@given(VALUES)
def test_the_shown_and_the_hashed_form_agree_without_times(value: Any) -> None:
    assert jsonable(value) == hashable(value)
    json.dumps(jsonable(value), allow_nan=False)  # always valid JSON: no NaN, no Infinity


def test_they_differ_only_in_how_a_time_is_written() -> None:
    moment = datetime(2026, 12, 2, 9, 30, 0, 120, tzinfo=UTC)
    assert jsonable({"at": moment}) == {"at": "2026-12-02T09:30:00.000120Z"}
    assert hashable({"at": moment}) == {"at": "2026-12-02T09:30:00.000120+00:00"}
    assert rfc3339(datetime(2026, 12, 2, 9, 30)) == "2026-12-02T09:30:00.000000Z"  # naive is UTC


def test_the_hashed_form_is_frozen() -> None:
    """The bytes a record written before this module existed was hashed with (audit_tables.canonical_json)."""
    value = {
        "b": [Decimal("10.50"), 1.5, math.inf, None, True], "a": "é\x00", "c": Colour.RED, "d": {3, 1, 2},
        "p": Point(1, date(2026, 1, 2)), "raw": b"\x00\x01",
    }  # fmt: skip
    assert canonical_json(value) == (
        '{"a":"é\ufffd","b":["10.50",1.5,"inf",null,true],"c":"red","d":[1,2,3],'
        '"p":{"at":"2026-01-02","x":1},"raw":"<2 bytes>"}'
    )


@given(
    st.dictionaries(
        st.sampled_from(["amount", "currency", "email", "order_name", "expire_min", "allowed_psys_cids"]),
        st.one_of(
            st.decimals(allow_nan=False, allow_infinity=False, places=8),
            st.integers(),
            st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00")),
            st.lists(st.sampled_from(["BTC", "ETH", "USDT_TRX"]), max_size=3),
            st.none(),
            st.booleans(),
        ),
    )
)
def test_argument_digests_did_not_change(arguments: dict[str, Any]) -> None:
    """The ledger compares the digest of stored arguments with the one an effect was written with: the
    canonical form must give every digest the dispatcher's own serialisation gave before."""
    before = json.dumps(
        normalised(arguments), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    assert arguments_hash(arguments) == hashlib.sha256(before.encode()).hexdigest()
