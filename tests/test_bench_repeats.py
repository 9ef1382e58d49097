"""The bench's repeated rounds: the rotation, the median [min–max] cells and the ``--repeats`` argument.

Pure functions only (no timing, no servers): a wrong rotation would silently let one adapter always run
first, and a wrong cell would compare a single round's figure while the note claims medians.
"""

from __future__ import annotations

import pytest

from bench import repeats
from bench.orchestration_table import Outcome, rows_of
from bench.repeats import Spread, cell, rotated
from bench.run import arguments


def test_round_r_starts_at_item_r_mod_len() -> None:
    items = ["a", "b", "c"]
    assert rotated(items, 0) == ["a", "b", "c"]
    assert rotated(items, 1) == ["b", "c", "a"]
    assert rotated(items, 2) == ["c", "a", "b"]
    assert rotated(items, 3) == ["a", "b", "c"]
    assert rotated(items, 7) == ["b", "c", "a"]
    assert rotated([], 2) == []
    assert items == ["a", "b", "c"]  # not rotated in place


def test_over_n_rounds_every_item_leads_once_and_keeps_its_neighbours() -> None:
    items = list(range(5))
    orders = [rotated(items, r) for r in range(len(items))]
    assert sorted(order[0] for order in orders) == items
    for order in orders:
        assert sorted(order) == items
        # a rotation, not a shuffle: each item is followed by the same one, cyclically
        assert all(order[(i + 1) % 5] == (order[i] + 1) % 5 for i in range(5))


def test_spread_is_median_min_max() -> None:
    s = Spread.of([0.0310, 0.0250, 0.0412])
    assert s == Spread(median=0.0310, low=0.0250, high=0.0412, rounds=3)
    assert Spread.of([3.0, 1.0, 2.0, 10.0]) == Spread(2.5, 1.0, 10.0, 4)  # an even count: the middle two
    assert Spread.of([]) is None


def test_cell_formats_median_range_and_ratio_of_medians() -> None:
    ours = Spread.of([0.0206, 0.0198, 0.0221])
    base = Spread.of([0.0313, 0.0290, 0.0350])
    assert cell(ours, base, scale=1000.0, digits=2) == "20.60 [19.80–22.10] (0.66×)"
    assert cell(ours, None, scale=1000.0) == "20.6 [19.8–22.1]"
    assert cell(Spread.of([10_891.4, 9_020.0, 11_204.9]), digits=0, thousands=True) == "10,891 [9,020–11,205]"
    assert cell(None, base) == "—"
    assert cell(Spread.of([0.5]), Spread.of([0.25]), digits=2) == "0.50 (2.00×)"  # one round: no bracket
    assert cell(ours, Spread.of([0.0])) == "0.0 [0.0–0.0]"  # no ratio to a zero baseline


def test_rows_group_rounds_and_use_the_median_for_targets() -> None:
    def outcome(adapter: str, stream: bool, r: int, cpu: float, ok: bool = True) -> Outcome:
        return Outcome(adapter, adapter, stream, r, ok=ok, metrics={"cpu_s": cpu} if ok else {})

    rows = rows_of(
        [
            outcome("persona_loop", False, 1, 0.030),
            outcome("raw_openai", False, 0, 0.031),
            outcome("persona_loop", False, 0, 0.020),
            outcome("persona_loop", False, 2, 0.021),
            outcome("raw_openai", True, 0, 0.040, ok=False),
        ]
    )
    assert [(r.adapter, r.stream, [o.round for o in r.rounds]) for r in rows] == [
        ("raw_openai", False, [0]),
        ("persona_loop", False, [0, 1, 2]),
        ("raw_openai", True, [0]),
    ]
    persona = rows[1]
    assert persona.ok
    assert persona.figure("cpu_s") == 0.021
    assert persona.spread("cpu_s") == Spread(0.021, 0.020, 0.030, 3)
    assert not rows[2].ok
    assert rows[2].failure is rows[2].rounds[0]


def test_repeats_default_three_one_under_quick_unless_given() -> None:
    assert arguments().parse_args([]).repeats is None  # so --quick can tell "not given" from "3"
    assert arguments().parse_args(["--repeats", "4"]).repeats == 4
    assert repeats.rounds_for(quick=False, given=None) == 3
    assert repeats.rounds_for(quick=True, given=None) == 1
    assert repeats.rounds_for(quick=True, given=2) == 2
    assert repeats.rounds_for(quick=False, given=5) == 5


@pytest.mark.parametrize(("value", "message"), [("0", "must be 1 or more"), ("-2", "must be 1 or more"),
                                                ("two", "whole number")])  # fmt: skip
def test_repeats_below_one_is_a_usage_error(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        arguments().parse_args(["--repeats", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--repeats" in err
    assert message in err
    assert "Traceback" not in err


def test_table_shows_medians_and_names_the_round_that_failed() -> None:
    from bench.orchestration_table import QUICK, table

    def done(adapter: str, r: int, cpu: float) -> Outcome:
        metrics = {"p50_s": cpu, "p95_s": cpu, "cpu_s": cpu, "sys_s": 0.0, "conc_cpu_s": cpu,
                   "throughput": 1 / cpu, "import_s": 0.5, "rss_mb": 60.0, "conversations": 91}  # fmt: skip
        return Outcome(adapter, adapter, False, r, ok=True, metrics=metrics)

    outcomes = [done("raw_openai", r, cpu) for r, cpu in enumerate([0.040, 0.030, 0.050])]
    outcomes += [done("persona_loop", 0, 0.020), done("persona_loop", 1, 0.024)]
    outcomes.append(
        Outcome("persona_loop", "persona_loop", False, 2, problem="timed run: 3 of 91 conversations")
    )
    t = table(outcomes, QUICK, tools=[], repeats=3)
    base, ours = t.rows
    assert base[4] == "40.00 [30.00–50.00] (1.00×)"
    assert base[-1] == "273 conv, 1365 tool calls over 3 rounds"
    assert ours[2:10] == ["—"] * 8
    assert ours[-1] == "**did not complete** in round 3 of 3: timed run: 3 of 91 conversations"
    assert any("median [min–max] over 3 rounds" in note for note in t.notes)
