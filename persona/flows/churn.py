"""Churn scan: signals computed in code from invoice history, summarised by the growth persona.

A scan reads ``/operations?type=invoice`` newest first, 50 a page, until it passes the lookback
window, computes the signals (:mod:`persona.flows.signals`), and asks the configured persona to turn
them into a report a growth person can act on; without a model the report is a template. Each
scan is a flow run: a scheduled slot has the key ``churn_scan:<slot>``, so two schedulers firing
the same slot (or a retried one) produce one report; a manual scan gets a fresh key.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from persona.audit import AuditEvent
from persona.clock import as_utc
from persona.deps import FlowDeps
from persona.errors import Conflict, NotFound
from persona.events import FlowEvent
from persona.flows.refunds import audit_source, model_name
from persona.flows.runs import FlowRun, FlowRuns
from persona.flows.signals import ChurnSignals, CustomerEvidence, compute
from persona.flows.turn import clean_text, conversation_id_for, persona_turn
from persona.store.flow_tables import churn_reports
from tools.errors import PlisioDeadlineExceeded, PlisioTransportError
from tools.plisio.models import Operation, OperationType

FLOW = "churn_scan"
TEMPLATE = "churn.md.j2"
PAGE_SIZE = 50
MAX_PAGES = 400
"""A bound on one scan (20,000 invoices); a shop beyond it needs a narrower lookback."""
SUMMARIZED_BY_TEMPLATE = "template"


@dataclass(frozen=True)
class ChurnReport:
    id: str
    run_key: str
    trigger: str
    window_start: datetime
    window_end: datetime
    operations_scanned: int
    signals: dict[str, Any]
    summary: str
    summarized_by: str
    conversation_id: str | None
    created_at: datetime


def run_key(slot: datetime | None) -> str:
    if slot is None:
        return f"{FLOW}:manual:{uuid.uuid4().hex}"
    return f"{FLOW}:{as_utc(slot).astimezone(UTC).isoformat()}"


def due_slot(schedule: str, now: datetime) -> datetime:
    """The latest cron slot at or before ``now`` (UTC): what a scheduler firing now should run."""
    from croniter import croniter

    base = now.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    slot: datetime = croniter(schedule, base).get_prev(datetime)
    return slot.astimezone(UTC)


def next_slot(schedule: str, now: datetime) -> datetime:
    from croniter import croniter

    slot: datetime = croniter(schedule, now.astimezone(UTC)).get_next(datetime)
    return slot.astimezone(UTC)


async def scan_due(deps: FlowDeps, *, requested_by: str = "scheduler") -> ChurnReport | None:
    """Run the scan for the current cron slot (once per slot, whoever calls); None when unscheduled."""
    schedule = deps.settings.flows.churn.schedule
    if not schedule:
        return None
    return await scan(
        deps, trigger="schedule", slot=due_slot(schedule, deps.now()), requested_by=requested_by
    )


async def scan(
    deps: FlowDeps, *, trigger: str, slot: datetime | None = None, requested_by: str | None = None
) -> ChurnReport:
    """Scan, summarise, store and audit one churn report; a slot already done returns its report."""
    source = audit_source(trigger)
    key = run_key(slot)
    runs = FlowRuns(deps.store, deps.now)
    run, mine = runs.start(FLOW, key, trigger)
    if not mine:
        return _existing(deps, run)
    try:
        report = await _scan(deps, key=key, trigger=trigger, source=source, user=requested_by or trigger)
    except BaseException as exc:
        runs.finish(key, state="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    if report.conversation_id:
        runs.attach(key, report.conversation_id)
    runs.finish(key, state="done", summary=f"report {report.id}: {headline(report.signals)}")
    return report


def _existing(deps: FlowDeps, run: FlowRun) -> ChurnReport:
    with deps.store.read("read churn reports") as conn:
        row = conn.execute(select(churn_reports).where(churn_reports.c.run_key == run.key)).first()
    if row is not None:
        return _report(row)
    if run.state == "running":
        raise Conflict(
            f"the churn scan {run.key} is running elsewhere (since {run.started_at:%Y-%m-%d %H:%M})"
        )
    raise Conflict(f"the churn scan {run.key} ended {run.state} without a report: {run.error or 'no detail'}")


async def fetch_invoices(deps: FlowDeps, *, since: datetime) -> list[Operation]:
    """Invoices newest first until one is older than ``since`` (or the pages end)."""
    found: list[Operation] = []
    cutoff = int(since.timestamp())
    for page in range(1, MAX_PAGES + 1):
        try:
            batch = await deps.plisio.list_operations(page=page, limit=PAGE_SIZE, type=OperationType.INVOICE)
        except (PlisioTransportError, PlisioDeadlineExceeded) as exc:
            raise PlisioTransportError(
                f"cannot scan for churn: Plisio is unreachable ({exc.message}); no report was stored",
                route=exc.route,
            ) from None
        found += batch.operations
        oldest = min((op.created_at_utc or 0 for op in batch.operations), default=0)
        if not (batch.operations or batch.skipped) or oldest <= cutoff or page >= batch.meta.page_count:
            break
    return found


async def _scan(deps: FlowDeps, *, key: str, trigger: str, source: str, user: str) -> ChurnReport:
    settings = deps.settings.flows.churn
    now = deps.now()
    operations = await fetch_invoices(deps, since=now - timedelta(days=settings.lookback_days))
    signals = compute(operations, now=now, settings=settings)
    facts = signals.to_dict()
    result = await persona_turn(
        deps, flow=FLOW, persona=settings.persona, key=key, source=source, template=TEMPLATE,
        instruction="Summarise these churn signals into a report a growth person can act on this week.",
        facts=_projection(facts), user=user, extra={"churn": settings, "invoices": signals.invoices},
    )  # fmt: skip
    summary, summarized_by, conversation_id = template_summary(signals), SUMMARIZED_BY_TEMPLATE, None
    flags: list[str] = []
    if result is not None:
        conversation_id = conversation_id_for(FLOW, key)
        text = clean_text(result.text, 8000) or ""
        flags += result.flags
        if result.stopped_by is None and text:
            summary, summarized_by = text, model_name(deps, conversation_id, settings.persona)
            strangers = _unknown_emails(text, signals)
            if strangers:
                flags.append("summary_names_customers_not_in_signals:" + ",".join(sorted(strangers)))
        else:
            flags.append(f"model_unfinished:{result.stopped_by or 'empty'}")
    facts["review"] = {"flags": flags}
    report_id = uuid.uuid4().hex[:12]
    created = deps.now()
    with deps.store.begin("store a churn report") as conn:
        conn.execute(
            churn_reports.insert().values(
                id=report_id, run_key=key, trigger=trigger, window_start=signals.window_start, window_end=now,
                operations_scanned=len(operations), signals=json.dumps(facts, sort_keys=True), summary=summary,
                summarized_by=summarized_by, conversation_id=conversation_id, created_at=created,
            )
        )  # fmt: skip
    report = ChurnReport(
        report_id, key, trigger, signals.window_start, now, len(operations), facts, summary, summarized_by,
        conversation_id, created,
    )  # fmt: skip
    share = facts["expired_share"]
    await deps.audit.append(
        AuditEvent(
            event=FlowEvent.CHURN_REPORT_CREATED, source=source, user=user, persona=settings.persona,
            conversation_id=conversation_id, decision=None, reason=headline(facts),
            payload={"report_id": report_id, "run_key": key, "operations_scanned": len(operations),
                     "churned": [c["email"] for c in facts["churned_repeat_customers"]],
                     "underpayers": [c["email"] for c in facts["repeat_underpayers"]],
                     "switchers": [c["email"] for c in facts["coin_switchers"]],
                     "expired_share": {k: share[k] for k in ("recent_share", "previous_share", "rising")},
                     "summarized_by": summarized_by, "flags": flags},
        )
    )  # fmt: skip
    return report


def _projection(facts: dict[str, Any]) -> dict[str, Any]:
    """The signals without the per-invoice ids the summary does not need (keeps the prompt small)."""
    slim: dict[str, Any] = json.loads(json.dumps(facts))
    for signal in ("churned_repeat_customers", "repeat_underpayers", "coin_switchers"):
        for person in slim[signal]:
            person["evidence"] = [
                {
                    k: e[k]
                    for k in (
                        "order_number",
                        "status",
                        "psys_cid",
                        "created_at",
                        "fiat_amount",
                        "fiat_currency",
                    )
                }
                | ({"amount": e["amount"], "received": e["received"]} if e["status"] == "expired" else {})
                for e in person["evidence"][:10]
            ]
    return slim


def _unknown_emails(text: str, signals: ChurnSignals) -> set[str]:
    known = {c.email for rows in (signals.churned, signals.underpayers, signals.switchers) for c in rows}
    mentioned = {m.casefold() for m in re.findall(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", text)}
    return mentioned - known


def headline(facts: dict[str, Any]) -> str:
    share = facts["expired_share"]
    trend = "rising" if share["rising"] else "not rising"
    return (
        f"{len(facts['churned_repeat_customers'])} churned repeat customer(s), "
        f"{len(facts['repeat_underpayers'])} repeat underpayer(s), {len(facts['coin_switchers'])} coin switcher(s); "
        f"expired share {share['recent_percent'] or 'n/a'} vs {share['previous_percent'] or 'n/a'} ({trend})"
    )


def template_summary(signals: ChurnSignals) -> str:
    """The report without a model: the same numbers, plain Markdown, standard actions."""
    s, share = signals.settings, signals.expired_share
    facts = signals.to_dict()
    lines = [
        f"# Churn signals, {signals.window_start:%Y-%m-%d} to {signals.now:%Y-%m-%d}",
        "",
        f"**Headline**: {headline(facts)}. From {signals.invoices} invoices of {signals.customers} customers.",
        "",
        f"## Churned repeat customers ({len(signals.churned)})",
        f"{s.min_completed}+ completed invoices, nothing in the last {s.quiet_days} days.",
        *[_line(c, signals.now) for c in signals.churned],
        "",
        f"## Expired share: {'rising' if share.rising else 'not rising'}",
        f"Last {s.recent_days} days: {share.recent_expired}/{share.recent_total} expired "
        f"({facts['expired_share']['recent_percent'] or 'n/a'}); the {s.lookback_days - s.recent_days} days "
        f"before: {share.previous_expired}/{share.previous_total} "
        f"({facts['expired_share']['previous_percent'] or 'n/a'}).",
        "",
        f"## Repeat underpayers ({len(signals.underpayers)})",
        f"{s.underpaid_min}+ invoices expired with part of the amount received.",
        *[_line(c, signals.now) for c in signals.underpayers],
        "",
        f"## Coin switchers ({len(signals.switchers)})",
        f"Paid in {s.coin_switch_min}+ different coins.",
        *[_line(c, signals.now) for c in signals.switchers],
        "",
        "## Actions",
        "- Churned customers: a win-back email from a person, referring to what they last bought.",
        "- Underpayers: remind them of the amount still due and check the coin's network fees they pay.",
        "- Coin switchers: keep all their coins enabled; ask which coin they prefer.",
    ]
    if share.rising:
        lines.append("- Expired share rising: check invoice expiry time and which coins expire most.")
    return "\n".join(lines)


def _line(c: CustomerEvidence, now: datetime) -> str:
    paid = ", ".join(f"{total} {cur}" for cur, total in c.paid_by_currency) or "nothing"
    last = c.last_paid_at.strftime("%Y-%m-%d") if c.last_paid_at else "never"
    return (
        f"- {c.email}: {c.completed} completed, {c.underpaid} underpaid, {c.invoices} invoices; last paid {last}; "
        f"last invoice {(now - c.last_invoice_at).days} days ago; coins {', '.join(c.coins_paid) or '-'}; paid {paid}"
    )


# -- reading ---------------------------------------------------------------------------------------


def list_reports(deps: FlowDeps, limit: int = 20) -> list[ChurnReport]:
    """Newest first."""
    query = (
        select(churn_reports)
        .order_by(churn_reports.c.created_at.desc(), churn_reports.c.id.desc())
        .limit(max(1, min(limit, 1000)))
    )
    with deps.store.read("read churn reports") as conn:
        return [_report(r) for r in conn.execute(query)]


def ids_starting(deps: FlowDeps, prefix: str, limit: int) -> list[str]:
    """Report ids that start with ``prefix`` (an id given by its first characters), in id order."""
    return deps.store.starting(churn_reports.c.id, prefix, limit, "find a churn report")


def get_report(deps: FlowDeps, report_id: str) -> ChurnReport:
    with deps.store.read("read a churn report") as conn:
        row = conn.execute(select(churn_reports).where(churn_reports.c.id == report_id)).first()
    if row is None:
        raise NotFound(f"no churn report {report_id!r}; `persona churn reports` lists them")
    return _report(row)


def scan_runs(deps: FlowDeps, limit: int = 20) -> list[FlowRun]:
    """The scan history (scheduled and manual), newest first."""
    return FlowRuns(deps.store, deps.now).recent(FLOW, limit)


def _report(row: Any) -> ChurnReport:
    return ChurnReport(
        id=row.id, run_key=row.run_key, trigger=row.trigger, window_start=as_utc(row.window_start),
        window_end=as_utc(row.window_end), operations_scanned=row.operations_scanned, signals=json.loads(row.signals),
        summary=row.summary, summarized_by=row.summarized_by, conversation_id=row.conversation_id,
        created_at=as_utc(row.created_at),
    )  # fmt: skip
