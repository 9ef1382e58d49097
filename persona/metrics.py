"""Prometheus metrics: what an operator graphs and alerts on, read off what the service already records.

Counters follow the audit log (each event the log is handed is observed once, by :meth:`Metrics.observe`,
so a number on a dashboard and a record in the log cannot disagree about what happened), plus the two things
the log deliberately does not record one by one: refused callbacks (tallied per address and minute there)
and worker batches. Gauges (inbox depth and oldest age by state, approvals and drafts waiting with the
oldest age, effects by state, ``unknown`` above all) are read from the store at scrape time by a custom
collector (prometheus-client's documented pattern for values that live elsewhere), so every instance on a
store reports the same truth. Each runtime has its own :class:`~prometheus_client.CollectorRegistry`:
nothing global, and a test reads exactly what it caused. Labels are bounded by the configuration (persona,
model, tool) or by the code (outcome, verdict, kind, state).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from persona.audit_records import AuditEvent
from persona.clock import as_utc
from persona.events import Event, WebhookEvent, WorkerEvent
from persona.inbox import Inbox
from persona.store.engine import Store
from persona.store.flow_tables import drafts
from persona.store.tables import effects

log = structlog.get_logger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TOOL_OUTCOMES = {
    Event.TOOL_CALL_SUCCEEDED: "succeeded", Event.TOOL_CALL_FAILED: "failed", Event.TOOL_CALL_DENIED: "denied",
    Event.TOOL_CALL_UNKNOWN: "unknown", Event.TOOL_CALL_REPLAYED: "replayed", Event.APPROVAL_REQUESTED: "held",
}  # fmt: skip
_CALLBACKS = {
    WebhookEvent.RECEIVED: "received",
    WebhookEvent.DUPLICATE: "duplicate",
    WebhookEvent.POISON: "poison",
}
_ROWS = {WorkerEvent.PROCESSED: "done", WorkerEvent.RETRY: "retry", WorkerEvent.FAILED: "failed",
         WorkerEvent.POISON: "poison"}  # fmt: skip
_VERDICTS = {"allow", "deny", "approval_required"}
WAITING_DRAFT = "pending_review"


class Metrics:
    """The service's metrics on a registry of its own (``registry.collect()`` or :meth:`render` to read)."""

    def __init__(self, store: Store, now: Callable[[], datetime]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.callbacks = Counter("persona_callbacks", "Verified callbacks by result.", ["result"], registry=r)
        self.rejected = Counter(
            "persona_callbacks_rejected", "Refused callbacks (forged, malformed, too large) by kind.", ["kind"],
            registry=r,
        )  # fmt: skip
        self.batches = Counter("persona_worker_batches", "Inbox batches a worker claimed.", registry=r)
        self.rows = Counter(
            "persona_worker_rows", "Inbox rows a worker finished, by outcome.", ["outcome"], registry=r
        )
        self.iterations_failed = Counter(
            "persona_worker_iteration_failures", "Worker loop iterations that failed (the store down, a bug).",
            registry=r,
        )  # fmt: skip
        self.model_requests = Counter(
            "persona_model_requests", "Model requests by persona, model and outcome.", ["persona", "model", "outcome"],
            registry=r,
        )  # fmt: skip
        self.model_latency = Histogram(
            "persona_model_latency_seconds", "Model request latency.", ["persona", "model"], registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
        )  # fmt: skip
        self.model_tokens = Counter(
            "persona_model_tokens", "Tokens by persona, model and kind (prompt, completion).",
            ["persona", "model", "kind"], registry=r,
        )  # fmt: skip
        self.tool_calls = Counter(
            "persona_tool_calls", "Tool calls by tool and outcome.", ["tool", "outcome"], registry=r
        )
        self.decisions = Counter(
            "persona_policy_decisions", "Policy decisions by verdict.", ["verdict"], registry=r
        )
        r.register(_StoreGauges(store, now))

    def observe(self, event: AuditEvent) -> None:
        """Count what one audit event says (the audit log calls this for every event it is handed)."""
        name = event.event
        if name in _TOOL_OUTCOMES:
            self.tool_calls.labels(event.tool or "-", _TOOL_OUTCOMES[name]).inc()  # type: ignore[index]
            if event.decision in _VERDICTS:
                self.decisions.labels(event.decision).inc()
        elif name == Event.MODEL_RESPONSE:
            persona, model = event.persona or "-", event.model or "-"
            self.model_requests.labels(persona, model, "ok").inc()
            if event.latency_ms is not None:
                self.model_latency.labels(persona, model).observe(event.latency_ms / 1000)
            usage = event.usage or {}
            for kind in ("prompt", "completion"):
                self.model_tokens.labels(persona, model, kind).inc(
                    max(int(usage.get(f"{kind}_tokens", 0)), 0)
                )
        elif name == Event.MODEL_FAILED:
            self.model_requests.labels(event.persona or "-", event.model or "-", "failed").inc()
        elif name in _CALLBACKS:
            self.callbacks.labels(_CALLBACKS[name]).inc()  # type: ignore[index]
        elif name in _ROWS:
            self.rows.labels(_ROWS[name]).inc()  # type: ignore[index]

    def render(self) -> bytes:
        """The text exposition format, for ``GET /metrics``."""
        return generate_latest(self.registry)


class _StoreGauges(Collector):
    """The gauges that are facts of the store, read when scraped (a failed read is logged, the rest served)."""

    def __init__(self, store: Store, now: Callable[[], datetime]) -> None:
        self.store, self.now = store, now

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # read at collect time only: registering must not touch the store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            yield from self._read(self.now())
        except Exception as exc:  # the store down must not break the scrape of the counters
            log.warning("metrics_store_unavailable", error=str(exc))

    def _read(self, now: datetime) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("persona_inbox_rows", "Inbox rows by state.", labels=["state"])
        oldest = GaugeMetricFamily(
            "persona_inbox_oldest_age_seconds", "Age of the oldest inbox row, by state.", labels=["state"]
        )
        for state, (count, first) in sorted(Inbox(self.store).depth().items()):
            depth.add_metric([state], count)
            oldest.add_metric([state], max((now - first).total_seconds(), 0.0))
        yield depth
        yield oldest
        by_state = GaugeMetricFamily("persona_effects", "Side effects by state (unknown: outcome not known yet).",
                                     labels=["state"])  # fmt: skip
        with self.store.read("read the metrics") as conn:
            for state, count in conn.execute(select(effects.c.state, func.count()).group_by(effects.c.state)):
                by_state.add_metric([str(state)], int(count))
            held = conn.execute(
                select(func.count(), func.min(effects.c.created_at)).where(effects.c.state == "held")
            ).one()
            waiting = conn.execute(
                select(func.count(), func.min(drafts.c.created_at)).where(drafts.c.status == WAITING_DRAFT)
            ).one()
        yield by_state
        for name, what, (count, first) in (("approvals", "Approvals", held), ("drafts", "Drafts", waiting)):
            yield GaugeMetricFamily(
                f"persona_{name}_pending", f"{what} waiting for a person.", value=int(count)
            )
            age = 0.0 if first is None else max((now - as_utc(first)).total_seconds(), 0.0)
            yield GaugeMetricFamily(
                f"persona_{name}_oldest_age_seconds", "Age of the oldest of them.", value=age
            )


__all__ = ["CONTENT_TYPE", "WAITING_DRAFT", "Metrics"]
