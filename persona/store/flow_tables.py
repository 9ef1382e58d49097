"""Tables of the flows: runs (idempotency and history), drafts, refund decisions, churn reports.

``flow_runs.key`` is unique: a flow that is started twice for the same thing (a callback
delivered twice, a worker killed mid-flow and its row picked up again, two schedulers firing
the same slot) finds the existing run instead of doing the work again.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, Numeric, String, Table, Text, UniqueConstraint

from persona.store.metadata import metadata

flow_runs = Table(
    "flow_runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("flow", String(32), nullable=False),  # recovery | refund_triage | churn_scan
    Column("key", String(200), nullable=False),  # e.g. recovery:<txn_id>, churn_scan:<slot>
    Column("state", String(16), nullable=False),  # running | done | failed | skipped
    Column("trigger", String(32), nullable=False),  # webhook | reconciler | schedule | cli | http | replay
    Column("conversation_id", String(64)),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("summary", Text),
    Column("error", Text),
    UniqueConstraint("key", name="uq_flow_runs_key"),
)
Index("ix_flow_runs_flow_started", flow_runs.c.flow, flow_runs.c.started_at)

drafts = Table(
    "drafts",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("flow_key", String(200), nullable=False),
    Column(
        "status", String(20), nullable=False
    ),  # pending_review | approved | rejected | sent | send_failed | obsolete
    Column("txn_id", String(64), nullable=False),
    Column("order_number", String(128)),
    Column("customer_email", String(254)),
    Column("subject", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("payment_link", Text),
    Column("new_txn_id", String(64)),
    Column("context", Text, nullable=False),  # JSON: the facts the draft was written from
    Column("drafted_by", String(64), nullable=False),  # model name, or "template"
    Column("conversation_id", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("decided_by", String(254)),
    Column("decided_at", DateTime(timezone=True)),
    Column("note", Text),
    Column("delivery", Text),  # JSON: url, status code, error, attempts
    UniqueConstraint("flow_key", name="uq_drafts_flow_key"),
)
Index("ix_drafts_status", drafts.c.status)

refund_decisions = Table(
    "refund_decisions",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("txn_id", String(64), nullable=False),
    Column("requested_by", String(254), nullable=False),
    Column("reason", Text, nullable=False),
    Column("decision", String(16), nullable=False),  # approve | deny | escalate
    Column("clause", String(128), nullable=False),
    Column("rule_text", Text, nullable=False),
    Column("refund_amount", Numeric(38, 18)),
    Column("refund_currency", String(16)),
    Column("facts", Text, nullable=False),  # JSON
    Column("cost_estimate", Text),  # JSON, from the persona's tool calls
    Column("explanation", Text, nullable=False),
    Column("explained_by", String(64), nullable=False),
    Column("conversation_id", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("ix_refund_decisions_txn", refund_decisions.c.txn_id)

churn_reports = Table(
    "churn_reports",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("run_key", String(200), nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("operations_scanned", Integer, nullable=False),
    Column("signals", Text, nullable=False),  # JSON
    Column("summary", Text, nullable=False),
    Column("summarized_by", String(64), nullable=False),
    Column("conversation_id", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("run_key", name="uq_churn_reports_run"),
)

schedule_runs = Table(
    "schedule_runs",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("slot", DateTime(timezone=True), primary_key=True),  # the cron time this run is for
    Column("state", String(16), nullable=False),  # running | done | failed
    Column("owner", String(64), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("result", Text),
)

__all__ = ["churn_reports", "drafts", "flow_runs", "refund_decisions", "schedule_runs"]
