"""The orchestration section's figures: each adapter's outcome per round, rows over the rounds, the table.

Apart from :mod:`bench.orchestration` (which runs the servers and the adapters) so that what is shown can be
tested without running anything (tests/test_bench_repeats.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench import scenario
from bench.adapters import ADAPTERS, BASELINE
from bench.repeats import Spread, cell
from bench.report import Table

IN_FLIGHT = 32


@dataclass(frozen=True)
class Plan:
    warmup: int
    sequential: int
    concurrent: int
    in_flight: int = IN_FLIGHT


FULL = Plan(warmup=5, sequential=200, concurrent=320)
QUICK = Plan(warmup=2, sequential=25, concurrent=64)


@dataclass
class Outcome:
    adapter: str
    label: str
    stream: bool
    round: int = 0
    ok: bool = False
    problem: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    log_tail: str = ""
    """The end of the adapter's stderr when it failed (the scratch directory is removed afterwards)."""

    def figure(self, key: str) -> float | None:
        value = self.metrics.get(key)
        return float(value) if isinstance(value, int | float) else None


@dataclass
class Row:
    """One adapter in one mode over every round: what the table shows, medians for the ratios."""

    adapter: str
    label: str
    stream: bool
    rounds: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.rounds) and all(o.ok for o in self.rounds)

    @property
    def failure(self) -> Outcome | None:
        """The round that did not complete (a failure in round 3 is no less one; later rounds are skipped)."""
        return next((o for o in self.rounds if not o.ok), None)

    def spread(self, key: str) -> Spread | None:
        return Spread.of([v for o in self.rounds if (v := o.figure(key)) is not None])

    def figure(self, key: str) -> float | None:
        """The median over the rounds (what targets and ratios use)."""
        s = self.spread(key)
        return s.median if s is not None else None


def rows_of(outcomes: list[Outcome]) -> list[Row]:
    """Outcomes grouped by (mode, adapter), plain first, adapters in the order of ``ADAPTERS``."""
    grouped: dict[tuple[bool, str], Row] = {}
    order = {a: i for i, (a, _) in enumerate(ADAPTERS)}
    for o in sorted(outcomes, key=lambda o: (o.stream, order.get(o.adapter, len(order)), o.round)):
        grouped.setdefault((o.stream, o.adapter), Row(o.adapter, o.label, o.stream)).rounds.append(o)
    return list(grouped.values())


def table(outcomes: list[Outcome], plan: Plan, tools: list[dict[str, Any]], repeats: int = 1) -> Table:
    t = Table(
        section="orchestration",
        title="Orchestration overhead (one scripted conversation: 5 model requests, 5 tool calls)",
        columns=[
            "adapter", "mode", "p50 ms", "p95 ms", "client CPU ms/conv", "of which kernel", "CPU ms/conv @32",
            f"conv/s @{plan.in_flight}", "import ms", "peak RSS MB", "verified",
        ],
    )  # fmt: skip
    rows = rows_of(outcomes)
    for stream in (False, True):
        mode = "stream" if stream else "plain"
        same_mode = [r for r in rows if r.stream == stream]
        base = next((r for r in same_mode if r.adapter == BASELINE and r.ok), None)

        def b(key: str, base: Row | None = base) -> Spread | None:
            return base.spread(key) if base is not None else None

        for row in same_mode:
            failure = row.failure
            if failure is not None:
                where = f" in round {failure.round + 1} of {repeats}" if repeats > 1 else ""
                t.rows.append(
                    [row.label, mode, *["—"] * 8, f"**did not complete**{where}: {failure.problem}"]
                )
                continue
            served = sum(o.metrics["conversations"] for o in row.rounds)
            rounds = len(row.rounds)
            t.rows.append(
                [
                    row.label,
                    mode,
                    cell(row.spread("p50_s"), b("p50_s"), scale=1000.0),
                    cell(row.spread("p95_s"), b("p95_s"), scale=1000.0),
                    cell(row.spread("cpu_s"), b("cpu_s"), scale=1000.0, digits=2),
                    cell(row.spread("sys_s"), None, scale=1000.0, digits=2),
                    cell(row.spread("conc_cpu_s"), b("conc_cpu_s"), scale=1000.0, digits=2),
                    cell(row.spread("throughput"), b("throughput")),
                    cell(row.spread("import_s"), b("import_s"), scale=1000.0, digits=0),
                    cell(row.spread("rss_mb"), b("rss_mb")),
                    f"{served} conv, {served * scenario.TOOL_CALLS} tool calls"
                    + (f" over {rounds} rounds" if rounds > 1 else ""),
                ]
            )
    t.notes += _targets(rows)
    t.notes += [
        _rounds_note(repeats, len({r.adapter for r in rows})),
        "Scenario (bench/scenario.py): 4 model steps that call tools (1, a parallel pair, 1, 1: shop info, "
        "balance + fee plans, last 3 completed invoices, create a 20 USD invoice) and the final text: 5 "
        "chat-completion requests, 5 tool calls, each a real HTTP request to the sandbox.",
        "Ratios in round brackets are to the hand loop on the `openai` client, same mode, same run"
        + (", median to median. " if repeats > 1 else ". ")
        + f"Each run: sequential phase {plan.sequential} conversations one at a time after {plan.warmup} warm-up; "
        f"concurrent phase {plan.concurrent} conversations, {plan.in_flight} in flight.",
        "Client CPU = `time.process_time()` of the adapter's own process (all its threads: for persona that "
        "includes the audit writer and the SQLite thread pool); the fake model and the sandbox run in two "
        "other processes. Import ms = importing the adapter module in a fresh interpreter (its framework "
        "and httpx); peak RSS = that process's high-water mark at the end (`VmHWM`; `ru_maxrss` would report the parent's, as Linux keeps it across `exec`).",
        f"Every adapter offers the same {len(tools)} strict tool definitions and the same system prompt "
        "(the finance persona's); peers call the sandbox through hand-wired `httpx` tools that return the "
        "API's data (lists projected to the fields our views keep). Verified = the servers counted every "
        "model request, served tool call, tool result and sandbox request of every conversation.",
    ]
    for o in outcomes:
        if not o.ok and o.log_tail:
            tail = o.log_tail.replace("`", "'").replace("\n", " ⏎ ")
            t.notes.append(
                f"{o.label} ({'stream' if o.stream else 'plain'}, round {o.round + 1}) stderr, last lines: "
                f"`{tail[-600:]}`"
            )
    for row in rows:
        extras = [o.metrics.get("extra") or {} for o in row.rounds if o.ok]
        if any(extras):
            records = sorted({str(e.get("audit_records")) for e in extras})
            t.notes.append(
                f"{row.label} ({'stream' if row.stream else 'plain'}): audit log {' / '.join(records)} records"
                + (" in each round" if len(extras) > 1 else "")
                + f", chain verified: {all(e.get('audit_ok') for e in extras)}."
            )
    t.data = {
        "plan": plan.__dict__,
        "repeats": repeats,
        "outcomes": [
            {
                "adapter": o.adapter,
                "stream": o.stream,
                "round": o.round,
                "ok": o.ok,
                "problem": o.problem,
                "metrics": o.metrics,
                "log_tail": o.log_tail,
            }
            for o in outcomes
        ],
    }
    return t


def _rounds_note(repeats: int, adapters: int) -> str:
    if repeats == 1:
        return (
            "One round: every figure, and so every ratio, is from one run of each adapter (`--quick` runs "
            "one round unless given `--repeats N`; a full run, 3, shown as median [min–max])."
        )
    return (
        f"Each figure is the median [min–max] over {repeats} rounds. A round runs every adapter once per mode, "
        f"in the order listed above rotated by one per round (round r, counted from 0, starts at adapter "
        f"r mod {adapters}), so no adapter always runs first or always after the same neighbour. Ratios and "
        "targets are computed from the medians. A row that did not complete in one round is not run again "
        "(the raw figures of its earlier rounds stay in `latest.json`)."
    )


def _targets(all_rows: list[Row]) -> list[str]:
    """The CPU targets, on medians over the rounds (one run's noise must not meet or miss them)."""
    notes = []
    peers = {"openai_agents_sdk", "pydanticai_agent", "langgraph_react"}
    for stream in (False, True):
        mode = "stream" if stream else "plain"
        rows = {r.adapter: r for r in all_rows if r.stream == stream and r.ok}
        ours, base = rows.get("persona_loop"), rows.get(BASELINE)
        if ours is None or base is None:
            continue
        cpu, base_cpu = ours.figure("cpu_s") or 0.0, base.figure("cpu_s") or 1.0
        peer_cpu = [rows[p].figure("cpu_s") or 0.0 for p in peers if p in rows]
        median = ", medians" if len(ours.rounds) > 1 else ""
        line = (
            f"Target ({mode}{median}): persona CPU ≤ 1.0× the `openai` hand loop: {cpu / base_cpu:.2f}× — "
            + ("met" if cpu <= base_cpu else "**not met**")
        )
        if peer_cpu:
            fastest = min(peer_cpu)
            line += f"; ≤ 0.6× the fastest peer framework: {cpu / fastest:.2f}× — " + (
                "met" if cpu <= 0.6 * fastest else "**not met**"
            )
        default_gc = rows.get("persona_loop_default_gc")
        if default_gc is not None:
            gc_cpu = default_gc.figure("cpu_s") or 0.0
            line += (
                f". Without `settle_heap()` (default GC, as the peers run): {gc_cpu / base_cpu:.2f}× the `openai` loop"
                + (f", {gc_cpu / min(peer_cpu):.2f}× the fastest peer" if peer_cpu else "")
            )
        notes.append(line + ".")
    return notes
