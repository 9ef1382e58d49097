"""Repeated rounds: the order each round runs in, and a figure as median [min–max] over the rounds.

One run of a side-by-side comparison says as much about the machine's mood during that minute as
about the code: a neighbour's burst lands on whichever row happened to be running. So the sections
that compare rows with each other run every row once per round, each round starting one row later
(so no row always goes first, or always follows the same neighbour), and report the median with the
range beside it. Ratios are taken between medians, never between single rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

DEFAULT = 3
"""Rounds of a full run (``--repeats``): the fewest with a median that is not an average of two."""
QUICK = 1
"""Rounds under ``--quick`` when ``--repeats`` is not given: quick stays as short as it was."""


def rounds_for(*, quick: bool, given: int | None) -> int:
    """What the user asked for wins; otherwise 3, or 1 under ``--quick`` (a development run)."""
    if given is not None:
        return given
    return QUICK if quick else DEFAULT


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """``items`` starting at ``round_index mod len(items)``: round 0 as listed, round 1 one later, ..."""
    if not items:
        return []
    start = round_index % len(items)
    return [*items[start:], *items[:start]]


@dataclass(frozen=True)
class Spread:
    """One figure over the rounds: the median is what is compared, min and max show the noise."""

    median: float
    low: float
    high: float
    rounds: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        """None when no round produced the figure (an em dash in the table, not a zero)."""
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values), len(values))

    def text(self, scale: float = 1.0, digits: int = 1, thousands: bool = False) -> str:
        """``20.6 [19.8–22.1]``; a single round is just ``20.6``, as a bracket of one says nothing."""
        fmt = f"{{:{',' if thousands else ''}.{digits}f}}"
        middle = fmt.format(self.median * scale)
        if self.rounds == 1:
            return middle
        return f"{middle} [{fmt.format(self.low * scale)}–{fmt.format(self.high * scale)}]"


def cell(
    value: Spread | None,
    base: Spread | None = None,
    *,
    scale: float = 1.0,
    digits: int = 1,
    thousands: bool = False,
) -> str:
    """A table cell: median [min–max], and the ratio of the medians to ``base`` in brackets."""
    if value is None:
        return "—"
    text = value.text(scale, digits, thousands)
    if base is None or base.median <= 0:
        return text
    return f"{text} ({value.median / base.median:.2f}×)"
