"""``persona refunds`` and ``persona churn``: run the flows by hand and read what they stored.

Thin: parse, call :mod:`persona.flows.refunds` / :mod:`persona.flows.churn`, print. Text that came
from outside (reasons, explanations, summaries) is printed without Rich markup, so it cannot style
or hide anything on the terminal. Lists and shows take ``--json`` (lists also ``--jsonl``) and print
tables through :mod:`persona.cli.output`; a decision or report id may be given by a unique prefix.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import typer

from persona.cli.output import AsJson, AsJsonl

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


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)  # never wrapped: a pipe gets whole lines


def _plain(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _when(moment: datetime) -> str:
    from persona.jsonutil import rfc3339

    return rfc3339(moment, precise=False)


def _fact(value: Any) -> Any:
    """A stored fact as the text shows it: an ISO time (stored as ``+00:00``) in the one format, RFC 3339 ``Z``."""
    if isinstance(value, str) and len(value) >= 19 and value[4:5] == "-" and "T" in value:
        try:
            return _when(datetime.fromisoformat(value))
        except ValueError:
            return value
    return value


def _money(amount: Decimal | None, currency: str | None) -> str:
    return "-" if amount is None else f"{amount} {currency or ''}".strip()


# -- refunds ---------------------------------------------------------------------------------------


@refunds_app.command("triage")
def triage(
    invoice: Annotated[str, Opt("--invoice", "-i", help="The Plisio invoice id (txn_id).")],
    reason: Annotated[str, Opt("--reason", "-r", help="Why the customer wants a refund.")],
    by: Annotated[str, Opt("--by", help="Who asks: a user's email (recorded in the audit log).")],
    as_json: AsJson = False,
) -> None:
    """Decide a refund request by the policy; the persona explains it and estimates the sending cost."""
    from persona.app import Runtime
    from persona.cli.identity import resolve_actor
    from persona.cli.runtime import with_runtime
    from persona.flows.refunds import triage as run_triage

    async def work(rt: Runtime) -> RefundOutcome:
        actor = resolve_actor(rt, by)
        return await run_triage(rt.flows, txn_id=invoice, reason=reason, requested_by=actor, trigger="cli")

    outcome = with_runtime(work)
    if as_json:
        from persona.cli.output import print_json

        print_json(_outcome_json(outcome))
        return
    _print_outcome(_console(), outcome)


@refunds_app.command("list")
def list_refunds(limit: Limit = 50, as_json: AsJson = False, as_jsonl: AsJsonl = False) -> None:
    """List refund decisions, newest first."""
    from persona.app import Runtime
    from persona.cli.output import emit_list
    from persona.cli.runtime import with_runtime
    from persona.flows.refunds import list_decisions

    async def work(rt: Runtime) -> list[RefundOutcome]:
        return list_decisions(rt.flows, limit)

    rows = with_runtime(work)
    columns = ("id", "created", "invoice", "decision", "clause", "refund", "value", "asked by", "explained by",
               "flags")  # fmt: skip
    emit_list(
        f"{len(rows)} refund decision(s)",
        columns,
        [
            (
                o.id,
                o.created_at,
                o.txn_id,
                o.decision,
                o.clause.removeprefix("flows.refunds."),
                _money(o.refund_amount, o.refund_currency),
                _money(o.refund_value, o.value_currency),
                o.requested_by,
                o.explained_by,
                ", ".join(o.flags),
            )
            for o in rows
        ],
        [_outcome_json(o) for o in rows],
        as_json=as_json,
        as_jsonl=as_jsonl,
    )


@refunds_app.command("show")
def show_refund(
    decision_id: Annotated[str, typer.Argument(help="The decision id, or its first characters.")],
    as_json: AsJson = False,
) -> None:
    """Show one refund decision: the clause, the facts it used, the cost estimate, the explanation."""
    from persona.app import Runtime
    from persona.cli.options import resolve_id
    from persona.cli.runtime import with_runtime
    from persona.flows.refunds import get_decision, ids_starting

    async def work(rt: Runtime) -> RefundOutcome:
        found = resolve_id(
            decision_id, lambda prefix, limit: ids_starting(rt.flows, prefix, limit), "refund decision"
        )
        return get_decision(rt.flows, found)

    outcome = with_runtime(work)
    if as_json:
        from persona.cli.output import print_json

        print_json(_outcome_json(outcome))
        return
    console = _console()
    _print_outcome(console, outcome)
    invoice = (outcome.facts or {}).get("invoice", {})
    if invoice:
        console.print("\n[bold]facts used[/]")
        for key in ("order_number", "status", "psys_cid", "expected", "received", "fiat_amount", "fiat_currency",
                    "paid_at", "wallet_hash"):  # fmt: skip
            _plain(console, f"  {key:<13} {_fact(invoice.get(key))}")
    review = (outcome.facts or {}).get("review", {})
    if review.get("model_explanation"):
        console.print("\n[bold yellow]model's explanation (not used, kept for review)[/]")
        _plain(console, review["model_explanation"])


def _print_outcome(console: Console, o: RefundOutcome) -> None:
    from rich.markup import escape

    colour = {"approve": "green", "deny": "red", "escalate": "yellow"}.get(o.decision, "white")
    console.print(f"refund decision {escape(o.id)}: [bold {colour}]{escape(o.decision.upper())}[/]")
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
        ("decided at", _when(o.created_at)),
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
        total = com.get("total_cost")
        parts.append(
            f"commission {com.get('commission')}, "
            + (f"total {total}" if total else str(com.get("total_cost_note")))
        )
    return "; ".join(parts)


def _outcome_json(o: RefundOutcome) -> dict[str, Any]:
    """A decision in full, JSON-ready (times RFC 3339 ``Z``, amounts as strings)."""
    from persona.jsonutil import jsonable as plain

    data: dict[str, Any] = plain(o)
    return data


# -- churn -----------------------------------------------------------------------------------------


@churn_app.command("scan")
def scan(
    scheduled: Annotated[
        bool,
        Opt("--scheduled", help="Run the current slot of flows.churn.schedule (once per slot, for cron)."),
    ] = False,
    slot: Annotated[str | None, Opt("--slot", help="Run this slot (ISO 8601, UTC); once per slot.")] = None,
    by: Annotated[
        str | None,
        Opt(
            "--by",
            help="Who runs it: a user's email (recorded in the audit log); without it, the run is recorded as cli.",
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Scan the invoice history for churn signals and store a report."""
    from persona.app import Runtime
    from persona.cli.identity import resolve_actor
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
        # Without --by the run names no one: recorded as "cli" (not an email, so never taken for a user).
        actor = "cli" if by is None else resolve_actor(rt, by)
        return await run_scan(rt.flows, trigger=trigger, slot=when, requested_by=actor)

    report = with_runtime(work)
    if as_json:
        from persona.cli.output import print_json

        print_json(_report_json(report))
        return
    _print_report(_console(), report)


@churn_app.command("reports")
def reports(limit: Limit = 20, as_json: AsJson = False, as_jsonl: AsJsonl = False) -> None:
    """List churn reports, newest first."""
    from persona.app import Runtime
    from persona.cli.output import emit_list
    from persona.cli.runtime import with_runtime
    from persona.flows.churn import headline, list_reports

    async def work(rt: Runtime) -> list[ChurnReport]:
        return list_reports(rt.flows, limit)

    rows = with_runtime(work)
    emit_list(
        f"{len(rows)} churn report(s)",
        ("id", "created", "trigger", "scanned", "by", "headline"),
        [
            (r.id, r.created_at, r.trigger, r.operations_scanned, r.summarized_by, headline(r.signals))
            for r in rows
        ],
        [_report_json(r) for r in rows],
        as_json=as_json,
        as_jsonl=as_jsonl,
    )


@churn_app.command("show")
def show_report(
    report_id: Annotated[str, typer.Argument(help="The report id, or its first characters.")],
    as_json: AsJson = False,
) -> None:
    """Show one churn report: its summary and the signals behind it."""
    from persona.app import Runtime
    from persona.cli.options import resolve_id
    from persona.cli.runtime import with_runtime
    from persona.flows.churn import get_report, ids_starting

    async def work(rt: Runtime) -> ChurnReport:
        found = resolve_id(
            report_id, lambda prefix, limit: ids_starting(rt.flows, prefix, limit), "churn report"
        )
        return get_report(rt.flows, found)

    report = with_runtime(work)
    if as_json:
        from persona.cli.output import print_json

        print_json(_report_json(report))
        return
    _print_report(_console(), report)


@churn_app.command("runs")
def runs(limit: Limit = 20, as_json: AsJson = False, as_jsonl: AsJsonl = False) -> None:
    """The schedule and the history of scans (scheduled and manual); as JSON, the runs alone."""
    from persona.app import Runtime
    from persona.cli.output import emit_list
    from persona.cli.runtime import with_runtime
    from persona.flows.churn import due_slot, next_slot, run_key, scan_runs
    from persona.flows.runs import FlowRun, FlowRuns
    from persona.jsonutil import jsonable as plain

    async def work(rt: Runtime) -> tuple[str | None, str, list[FlowRun]]:
        schedule = rt.settings.flows.churn.schedule
        line = "schedule: none (flows.churn.schedule is null); scans run by hand only"
        if schedule:
            now = rt.now()
            due = due_slot(schedule, now)
            done = FlowRuns(rt.store, rt.now).get(run_key(due))
            state = done.state if done else "not run yet"
            line = f"schedule: {schedule} (UTC); current slot {_when(due)} ({state}); next {_when(next_slot(schedule, now))}"
        return schedule, line, scan_runs(rt.flows, limit)

    _, line, history = with_runtime(work)
    if not (as_json or as_jsonl):
        typer.echo(line)
    emit_list(
        f"{len(history)} churn scan run(s)",
        ("started", "finished", "state", "trigger", "key", "summary / error"),
        [
            (r.started_at, r.finished_at or "-", r.state, r.trigger, r.key, r.summary or r.error or "")
            for r in history
        ],
        [plain(r) for r in history],
        as_json=as_json,
        as_jsonl=as_jsonl,
    )


def _print_report(console: Console, r: ChurnReport) -> None:
    from rich.markup import escape

    from persona.flows.churn import headline

    console.print(
        f"churn report [bold]{escape(r.id)}[/] ({escape(r.trigger)}, {r.operations_scanned} invoices scanned)"
    )
    _plain(console, f"  window       {_when(r.window_start)} .. {_when(r.window_end)}")
    _plain(console, f"  run key      {r.run_key}")
    _plain(console, f"  headline     {headline(r.signals)}")
    _plain(console, f"  written by   {r.summarized_by}")
    flags = r.signals.get("review", {}).get("flags", [])
    if flags:
        _plain(console, f"  FLAGS        {', '.join(flags)}")
    console.print()
    _plain(console, r.summary)


def _report_json(r: ChurnReport) -> dict[str, Any]:
    """A report in full, JSON-ready, with the headline the tables show."""
    from persona.flows.churn import headline
    from persona.jsonutil import jsonable as plain

    data: dict[str, Any] = plain(r)
    data["headline"] = headline(r.signals)
    return data
