"""``persona refunds`` and ``persona churn``: run the flows by hand and read what they stored.

Thin: parse, call :mod:`persona.flows.refunds` / :mod:`persona.flows.churn`, print. Text that came
from outside (reasons, explanations, summaries) is printed without Rich markup, so it cannot style
or hide anything on the terminal.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from persona.flows.churn import ChurnReport
    from persona.flows.refunds import RefundOutcome

refunds_app = typer.Typer(
    rich_markup_mode=None, help="Refund requests decided by the written refund policy.", no_args_is_help=True
)
churn_app = typer.Typer(
    rich_markup_mode=None,
    help="Churn signals from payment history, summarised for growth.",
    no_args_is_help=True,
)

Opt = typer.Option
Limit = Annotated[int, Opt("--limit", "-n", help="At most this many (newest first).")]
AsJson = Annotated[bool, Opt("--json", help="Print JSON instead of text.")]


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def _plain(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _money(amount: Decimal | None, currency: str | None) -> str:
    return "-" if amount is None else f"{amount} {currency or ''}".strip()


# -- refunds ---------------------------------------------------------------------------------------


@refunds_app.command("triage")
def triage(
    invoice: Annotated[str, Opt("--invoice", "-i", help="The Plisio invoice id (txn_id).")],
    reason: Annotated[str, Opt("--reason", "-r", help="Why the customer wants a refund.")],
    by: Annotated[str, Opt("--by", help="Who asks (recorded in the audit log).")],
    as_json: AsJson = False,
) -> None:
    """Decide a refund request by the policy; the persona explains it and estimates the sending cost."""
    from persona.app import Runtime
    from persona.cli.runtime import with_runtime
    from persona.flows.refunds import triage as run_triage

    async def work(rt: Runtime) -> RefundOutcome:
        return await run_triage(rt, txn_id=invoice, reason=reason, requested_by=by, trigger="cli")

    outcome = with_runtime(work)
    if as_json:
        print(json.dumps(_outcome_json(outcome), indent=1, sort_keys=True))
        return
    _print_outcome(_console(), outcome)


@refunds_app.command("list")
def list_refunds(limit: Limit = 50) -> None:
    """List refund decisions, newest first."""
    from rich.table import Table

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime
    from persona.flows.refunds import list_decisions

    async def work(rt: Runtime) -> list[RefundOutcome]:
        return list_decisions(rt, limit)

    rows = with_runtime(work)
    table = Table(title=f"{len(rows)} refund decision(s)", title_justify="left")
    for col in (
        "id",
        "created (UTC)",
        "invoice",
        "decision",
        "clause",
        "refund",
        "value",
        "asked by",
        "explained by",
    ):
        table.add_column(col, no_wrap=True)
    table.add_column("flags")
    for o in rows:
        table.add_row(
            o.id, _when(o.created_at), o.txn_id, o.decision, o.clause.removeprefix("flows.refunds."),
            _money(o.refund_amount, o.refund_currency), _money(o.refund_value, o.value_currency),
            o.requested_by, o.explained_by, ", ".join(o.flags),
        )  # fmt: skip
    _console().print(table)


@refunds_app.command("show")
def show_refund(decision_id: str, as_json: AsJson = False) -> None:
    """Show one refund decision: the clause, the facts it used, the cost estimate, the explanation."""
    from persona.app import Runtime
    from persona.cli.runtime import with_runtime
    from persona.flows.refunds import get_decision

    async def work(rt: Runtime) -> RefundOutcome:
        return get_decision(rt, decision_id)

    outcome = with_runtime(work)
    if as_json:
        print(json.dumps(_outcome_json(outcome), indent=1, sort_keys=True))
        return
    console = _console()
    _print_outcome(console, outcome)
    invoice = (outcome.facts or {}).get("invoice", {})
    if invoice:
        console.print("\n[bold]facts used[/]")
        for key in ("order_number", "status", "psys_cid", "expected", "received", "fiat_amount", "fiat_currency",
                    "paid_at", "wallet_hash"):  # fmt: skip
            _plain(console, f"  {key:<13} {invoice.get(key)}")
    review = (outcome.facts or {}).get("review", {})
    if review.get("model_explanation"):
        console.print("\n[bold yellow]model's explanation (not used, kept for review)[/]")
        _plain(console, review["model_explanation"])


def _print_outcome(console: Console, o: RefundOutcome) -> None:
    colour = {"approve": "green", "deny": "red", "escalate": "yellow"}.get(o.decision, "white")
    console.print(f"refund decision {o.id}: [bold {colour}]{o.decision.upper()}[/]")
    rows = [
        ("invoice", o.txn_id),
        ("asked by", o.requested_by),
        ("reason", o.reason),
        ("clause", o.clause),
        ("rule", o.rule_text),
        ("detail", o.detail),
        ("refund", _money(o.refund_amount, o.refund_currency)),
        ("value", _money(o.refund_value, o.value_currency)),
        ("cost", _cost(o.cost_estimate)),
        ("explained by", o.explained_by),
        ("conversation", o.conversation_id or "-"),
        ("decided at", _when(o.created_at) + " UTC"),
    ]
    if o.flags:
        rows.append(("FLAGS", ", ".join(o.flags)))
    for label, value in rows:
        _plain(console, f"  {label:<13} {value}")
    console.print()
    _plain(console, o.explanation)


def _cost(estimate: dict[str, Any] | None) -> str:
    if not estimate:
        return "- (no estimate)"
    parts = []
    if "fee" in estimate:
        fee = estimate["fee"]
        parts.append(f"network fee {fee.get('fee')} ({fee.get('plan') or 'normal'})")
    if "commission" in estimate:
        com = estimate["commission"]
        parts.append(f"commission {com.get('commission')}, total {com.get('total_cost')}")
    return "; ".join(parts)


def _outcome_json(o: RefundOutcome) -> dict[str, Any]:
    return {
        "id": o.id, "txn_id": o.txn_id, "decision": o.decision, "clause": o.clause, "rule_text": o.rule_text,
        "detail": o.detail, "refund_amount": None if o.refund_amount is None else str(o.refund_amount),
        "refund_currency": o.refund_currency, "refund_value": None if o.refund_value is None else str(o.refund_value),
        "value_currency": o.value_currency, "explanation": o.explanation, "explained_by": o.explained_by,
        "cost_estimate": o.cost_estimate, "created_at": o.created_at.isoformat(), "conversation_id": o.conversation_id,
        "requested_by": o.requested_by, "reason": o.reason, "flags": list(o.flags), "facts": o.facts,
    }  # fmt: skip


# -- churn -----------------------------------------------------------------------------------------


@churn_app.command("scan")
def scan(
    scheduled: Annotated[
        bool,
        Opt("--scheduled", help="Run the current slot of flows.churn.schedule (once per slot, for cron)."),
    ] = False,
    slot: Annotated[str | None, Opt("--slot", help="Run this slot (ISO 8601, UTC); once per slot.")] = None,
    by: Annotated[str, Opt("--by", help="Who runs it (recorded in the audit log).")] = "cli",
    as_json: AsJson = False,
) -> None:
    """Scan the invoice history for churn signals and store a report."""
    from persona.app import Runtime
    from persona.cli.runtime import with_runtime
    from persona.errors import ConfigError, NotConfigured
    from persona.flows.churn import due_slot
    from persona.flows.churn import scan as run_scan

    chosen: datetime | None = None
    if slot is not None:
        try:
            chosen = datetime.fromisoformat(slot)
        except ValueError:
            raise ConfigError(
                f"{slot!r} is not a date/time", key="--slot", fix="use ISO 8601, e.g. 2026-11-23T06:00"
            ) from None
        chosen = chosen if chosen.tzinfo else chosen.replace(tzinfo=UTC)

    async def work(rt: Runtime) -> ChurnReport:
        when = chosen
        if scheduled and when is None:
            schedule = rt.settings.flows.churn.schedule
            if not schedule:
                raise NotConfigured(
                    "flows.churn.schedule is null: set a cron expression, or run `churn scan` without --scheduled"
                )
            when = due_slot(schedule, rt.now())
        trigger = "schedule" if scheduled else "cli"
        return await run_scan(rt, trigger=trigger, slot=when, requested_by=by)

    report = with_runtime(work)
    if as_json:
        print(json.dumps(_report_json(report), indent=1, sort_keys=True))
        return
    _print_report(_console(), report)


@churn_app.command("reports")
def reports(limit: Limit = 20) -> None:
    """List churn reports, newest first."""
    from rich.table import Table

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime
    from persona.flows.churn import headline, list_reports

    async def work(rt: Runtime) -> list[ChurnReport]:
        return list_reports(rt, limit)

    rows = with_runtime(work)
    table = Table(title=f"{len(rows)} churn report(s)", title_justify="left")
    for col in ("id", "created (UTC)", "trigger", "scanned", "by"):
        table.add_column(col, no_wrap=True)
    table.add_column("headline")
    for r in rows:
        table.add_row(
            r.id,
            _when(r.created_at),
            r.trigger,
            str(r.operations_scanned),
            r.summarized_by,
            headline(r.signals),
        )
    _console().print(table)


@churn_app.command("show")
def show_report(report_id: str, as_json: AsJson = False) -> None:
    """Show one churn report: its summary and the signals behind it."""
    from persona.app import Runtime
    from persona.cli.runtime import with_runtime
    from persona.flows.churn import get_report

    async def work(rt: Runtime) -> ChurnReport:
        return get_report(rt, report_id)

    report = with_runtime(work)
    if as_json:
        print(json.dumps(_report_json(report), indent=1, sort_keys=True))
        return
    _print_report(_console(), report)


@churn_app.command("runs")
def runs(limit: Limit = 20) -> None:
    """The schedule and the history of scans (scheduled and manual)."""
    from rich.table import Table

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime
    from persona.flows.churn import due_slot, next_slot, run_key, scan_runs
    from persona.flows.runs import FlowRun, FlowRuns

    async def work(rt: Runtime) -> tuple[str | None, str, list[FlowRun]]:
        schedule = rt.settings.flows.churn.schedule
        line = "schedule: none (flows.churn.schedule is null); scans run by hand only"
        if schedule:
            now = rt.now()
            due = due_slot(schedule, now)
            done = FlowRuns(rt.store, rt.now).get(run_key(due))
            state = done.state if done else "not run yet"
            line = f"schedule: {schedule} (UTC); current slot {_when(due)} ({state}); next {_when(next_slot(schedule, now))}"
        return schedule, line, scan_runs(rt, limit)

    _, line, history = with_runtime(work)
    console = _console()
    _plain(console, line)
    table = Table(title=f"{len(history)} churn scan run(s)", title_justify="left")
    for col in ("started (UTC)", "finished", "state", "trigger", "key"):
        table.add_column(col, no_wrap=True)
    table.add_column("summary / error")
    for r in history:
        finished = _when(r.finished_at) if r.finished_at else "-"
        table.add_row(_when(r.started_at), finished, r.state, r.trigger, r.key, r.summary or r.error or "")
    console.print(table)


def _print_report(console: Console, r: ChurnReport) -> None:
    from persona.flows.churn import headline

    console.print(f"churn report [bold]{r.id}[/] ({r.trigger}, {r.operations_scanned} invoices scanned)")
    _plain(console, f"  window       {_when(r.window_start)} .. {_when(r.window_end)} UTC")
    _plain(console, f"  run key      {r.run_key}")
    _plain(console, f"  headline     {headline(r.signals)}")
    _plain(console, f"  written by   {r.summarized_by}")
    flags = r.signals.get("review", {}).get("flags", [])
    if flags:
        _plain(console, f"  FLAGS        {', '.join(flags)}")
    console.print()
    _plain(console, r.summary)


def _report_json(r: ChurnReport) -> dict[str, Any]:
    return {
        "id": r.id, "run_key": r.run_key, "trigger": r.trigger, "window_start": r.window_start.isoformat(),
        "window_end": r.window_end.isoformat(), "operations_scanned": r.operations_scanned, "signals": r.signals,
        "summary": r.summary, "summarized_by": r.summarized_by, "conversation_id": r.conversation_id,
        "created_at": r.created_at.isoformat(),
    }  # fmt: skip
