"""The review queue for customer messages, and the outbound channel approved ones go to.

Nothing reaches a customer unapproved: a draft is created ``pending_review``; a person
approves it (pending_review -> approved in one conditional UPDATE, so two reviewers cannot
both send it), and only then is it POSTed to ``outbound.webhook_url``, signed, with the
draft id as an idempotency key for the receiver. A failed delivery stays visible and can be
re-sent; it is never silently dropped.

A delivery claims its draft first (approved or send_failed -> ``sending``, one conditional UPDATE), so two
"send again" clicks, or a send racing "mark sent by hand", deliver once; its outcome is recorded only while
that claim holds. A ``sending`` left by a process that died mid-delivery may be claimed again once it is
older than :attr:`Outbound.stale_after` (the receiver dedupes on the draft id it is sent with).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import select, update

from persona.audit import AuditEvent, AuditLog
from persona.errors import Conflict, NotConfigured, NotFound
from persona.events import ReviewEvent
from persona.jsonutil import rfc3339
from persona.settings import Settings
from persona.store.engine import Store
from persona.store.flow_tables import drafts
from persona.webhook_signature import DELIVERY_HEADER, SIGNATURE_HEADER, sign
from tools.redaction import scrub

log = structlog.get_logger(__name__)

__all__ = ["DELIVERY_HEADER", "SIGNATURE_HEADER", "Draft", "DraftStore", "Outbound", "ReviewQueue", "sign"]


DRAFT_STATUSES = ("pending_review", "approved", "sending", "sent", "send_failed", "rejected", "obsolete")
"""Every status a draft can have, in the order of its life."""


@dataclass(frozen=True)
class Draft:
    id: str
    flow_key: str
    status: str
    txn_id: str
    order_number: str | None
    customer_email: str | None
    subject: str
    body: str
    payment_link: str | None
    new_txn_id: str | None
    context: dict[str, Any]
    drafted_by: str
    conversation_id: str | None
    created_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    note: str | None
    delivery: dict[str, Any] | None


@dataclass(frozen=True)
class Terms:
    """What an invoice asks: an amount in a currency (fiat price, or crypto), billed to an email."""

    amount: str | None
    currency: str | None
    email: str | None


def original_terms(draft: Draft) -> Terms:
    """The failed invoice's debt: the remainder of an underpaid one (in its coin), else its price."""
    facts = draft.context
    if facts.get("underpaid") and facts.get("amount_still_due"):
        return Terms(facts["amount_still_due"], facts.get("psys_cid"), facts.get("customer_email"))
    if facts.get("price"):
        return Terms(facts["price"], facts.get("price_currency"), facts.get("customer_email"))
    return Terms(facts.get("amount_due"), facts.get("psys_cid"), facts.get("customer_email"))


def _draft(row: Any) -> Draft:
    values = {k: getattr(row, k) for k in Draft.__dataclass_fields__}
    values["context"] = json.loads(values["context"])
    values["delivery"] = json.loads(values["delivery"]) if values["delivery"] else None
    return Draft(**values)


def outbound_payload(draft: Draft) -> dict[str, Any]:
    """What an approved message looks like on the wire (documented in the README): the failed invoice's
    figures travel with the link, which was made for exactly what is owed."""
    owed = original_terms(draft)
    return {
        "type": "recovery_message",
        "draft_id": draft.id,
        "to": draft.customer_email,
        "subject": draft.subject,
        "body": draft.body,
        "payment_link": draft.payment_link,
        "invoice": {
            "txn_id": draft.txn_id,
            "order_number": draft.order_number,
            "status": draft.context.get("status"),
            "amount": draft.context.get("price") or draft.context.get("amount_due"),
            "currency": draft.context.get("price_currency")
            if draft.context.get("price")
            else draft.context.get("psys_cid"),
            "email": draft.context.get("customer_email"),
            "owed": {"amount": owed.amount, "currency": owed.currency},
        },
        "payment_link_invoice": draft.new_txn_id,
        "approved_by": draft.decided_by,
        "approved_at": rfc3339(draft.decided_at, precise=False) if draft.decided_at else None,
    }


class DraftStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    def create(
        self,
        *,
        flow_key: str,
        txn_id: str,
        order_number: str | None,
        customer_email: str | None,
        subject: str,
        body: str,
        payment_link: str | None,
        new_txn_id: str | None,
        context: dict[str, Any],
        drafted_by: str,
        conversation_id: str | None,
        now: datetime,
    ) -> tuple[Draft, bool]:
        """Insert a draft unless one exists for ``flow_key``; returns (draft, created)."""
        existing = self.by_key(flow_key)
        if existing is not None:
            return existing, False
        draft_id = uuid.uuid4().hex[:12]
        try:
            with self._store.begin("store a draft") as conn:
                conn.execute(
                    drafts.insert().values(
                        id=draft_id, flow_key=flow_key, status="pending_review", txn_id=txn_id,
                        order_number=order_number, customer_email=customer_email, subject=subject, body=body,
                        payment_link=payment_link, new_txn_id=new_txn_id,
                        context=json.dumps(context, ensure_ascii=False, default=str), drafted_by=drafted_by,
                        conversation_id=conversation_id, created_at=now,
                    )
                )  # fmt: skip
        except Exception:
            raced = self.by_key(flow_key)
            if raced is None:
                raise
            return raced, False
        return self.get(draft_id), True

    def get(self, draft_id: str) -> Draft:
        with self._store.read("read drafts") as conn:
            row = conn.execute(select(drafts).where(drafts.c.id == draft_id)).first()
        if row is None:
            raise NotFound(f"no draft with id {draft_id!r}; `persona drafts list` shows them")
        return _draft(row)

    def ids_starting(self, prefix: str, limit: int) -> list[str]:
        """Ids of drafts that start with ``prefix`` (taken literally), in order, at most ``limit``."""
        return self._store.starting(drafts.c.id, prefix, limit, "read drafts")

    def by_key(self, flow_key: str) -> Draft | None:
        with self._store.read("read drafts") as conn:
            row = conn.execute(select(drafts).where(drafts.c.flow_key == flow_key)).first()
        return None if row is None else _draft(row)

    def for_invoice(self, txn_id: str) -> list[Draft]:
        with self._store.read("read drafts") as conn:
            return [_draft(r) for r in conn.execute(select(drafts).where(drafts.c.txn_id == txn_id))]

    def find(self, status: str | None = None, limit: int = 100) -> list[Draft]:
        query = select(drafts).order_by(drafts.c.created_at.desc()).limit(limit)
        if status:
            query = query.where(drafts.c.status == status)
        with self._store.read("read drafts") as conn:
            return [_draft(r) for r in conn.execute(query)]

    def transition(
        self,
        draft_id: str,
        *,
        from_: tuple[str, ...],
        to: str,
        by: str | None,
        note: str | None,
        now: datetime,
    ) -> Draft:
        """Move a draft between states exactly once; a lost race raises Conflict."""
        current = self.get(draft_id)
        values: dict[str, Any] = {"status": to}
        if by is not None:
            values.update(decided_by=by, decided_at=now, note=note)
        elif note is not None:
            values["note"] = note
        with self._store.begin("update a draft") as conn:
            changed = conn.execute(
                update(drafts).where(drafts.c.id == draft_id, drafts.c.status.in_(from_)).values(**values)
            ).rowcount
        if changed != 1:
            latest = self.get(draft_id)
            raise Conflict(
                f"draft {draft_id} is {latest.status}"
                + (f" (decided by {latest.decided_by})" if latest.decided_by else "")
                + f"; it must be {' or '.join(from_)} for this (it was {current.status})"
            )
        return self.get(draft_id)

    def claim_delivery(self, draft_id: str, *, now: datetime, stale_after: timedelta) -> Draft:
        """approved | send_failed (or a stale ``sending``) -> ``sending``; :class:`Conflict` if it is not
        deliverable, being delivered right now, or changed meanwhile (compare-and-set on its delivery text)."""
        with self._store.begin("claim a draft for delivery") as conn:
            row = conn.execute(
                select(drafts.c.status, drafts.c.delivery).where(drafts.c.id == draft_id)
            ).first()
            if row is None:
                raise NotFound(f"no draft with id {draft_id!r}; `persona drafts list` shows them")
            delivery = json.loads(row.delivery) if row.delivery else {}
            if row.status == "sending":
                since = datetime.fromisoformat(
                    str((delivery.get("sending") or {}).get("at", now.isoformat()))
                )
                if now - since < stale_after:
                    raise Conflict(
                        f"draft {draft_id} is being delivered right now (since {since.isoformat()}); wait for "
                        "the outcome, then reload it"
                    )
            elif row.status not in ("approved", "send_failed"):
                raise Conflict(f"draft {draft_id} is {row.status}; only approved drafts are sent")
            same = drafts.c.delivery.is_(None) if row.delivery is None else drafts.c.delivery == row.delivery
            claimed = conn.execute(
                update(drafts)
                .where(drafts.c.id == draft_id, drafts.c.status == row.status, same)
                .values(
                    status="sending", delivery=json.dumps({**delivery, "sending": {"at": now.isoformat()}})
                )
            ).rowcount
        if claimed != 1:
            raise Conflict(f"draft {draft_id} changed while it was being claimed for delivery; reload it")
        return self.get(draft_id)

    def record_delivery(
        self, draft_id: str, *, ok: bool, attempt: dict[str, Any], expect: str
    ) -> Draft | None:
        """Append ``attempt`` and set sent / send_failed, if the draft is still ``expect``; None if it is not
        (a stale claim was taken over: the later delivery records its own outcome)."""
        with self._store.begin("record a delivery") as conn:
            row = conn.execute(
                select(drafts.c.status, drafts.c.delivery).where(drafts.c.id == draft_id)
            ).first()
            if row is None or row.status != expect:
                return None
            delivery = json.loads(row.delivery) if row.delivery else {}
            delivery.pop("sending", None)
            delivery["attempts"] = [*delivery.get("attempts", []), attempt]
            conn.execute(
                update(drafts)
                .where(drafts.c.id == draft_id, drafts.c.status == expect)
                .values(status="sent" if ok else "send_failed", delivery=json.dumps(delivery, default=str))
            )
        return self.get(draft_id)


class Outbound:
    """POSTs approved messages to the configured webhook, signed with HMAC-SHA256."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        now: Callable[[], datetime],
    ) -> None:
        self._settings, self._transport, self._now = settings, transport, now

    @property
    def stale_after(self) -> timedelta:
        """How old a ``sending`` claim must be before another delivery may take it over (a crashed process)."""
        return timedelta(seconds=self._settings.outbound.timeout_s * 3 + 30)

    @property
    def configured(self) -> bool:
        return self._settings.outbound.webhook_url is not None

    def require(self) -> str:
        url = self._settings.outbound.webhook_url
        if url is None:
            raise NotConfigured(
                "no outbound channel is configured, so an approved message could not go anywhere: set "
                "outbound.webhook_url in config.yaml (and PERSONA_OUTBOUND_SECRET to sign deliveries)"
            )
        return url

    async def deliver(self, draft: Draft) -> tuple[bool, dict[str, Any]]:
        url = self.require()
        body = json.dumps(outbound_payload(draft), ensure_ascii=False, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: draft.id}
        secret = self._settings.outbound_secret
        if secret is not None:
            headers[SIGNATURE_HEADER] = sign(body, secret.get_secret_value())
        attempt: dict[str, Any] = {"url": scrub(url), "at": self._now().isoformat()}
        try:
            async with httpx.AsyncClient(
                transport=self._transport, timeout=self._settings.outbound.timeout_s
            ) as client:
                response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            attempt["error"] = scrub(f"{type(exc).__name__}: {exc}") or type(exc).__name__
            return False, attempt
        attempt["status_code"] = response.status_code
        ok = 200 <= response.status_code < 300
        if not ok:
            attempt["error"] = scrub(response.text[:200])
        return ok, attempt


class ReviewQueue:
    """Approve, reject and (re)send drafts, auditing every decision and delivery."""

    def __init__(
        self, store: DraftStore, outbound: Outbound, audit: AuditLog, now: Callable[[], datetime]
    ) -> None:
        self.drafts, self.outbound, self._audit, self._now = store, outbound, audit, now

    async def _record(self, event: str, draft: Draft, by: str | None, source: str, **fields: Any) -> None:
        await self._audit.append(
            AuditEvent(
                event=event, source=source, user=by, persona=None, conversation_id=draft.conversation_id,
                payload={"draft_id": draft.id, "txn_id": draft.txn_id, "status": draft.status, **fields},
            )
        )  # fmt: skip

    async def approve(self, draft_id: str, *, by: str, note: str | None = None, source: str = "cli") -> Draft:
        await asyncio.to_thread(
            self.drafts.get, draft_id
        )  # an unknown draft is NotFound, whatever else is amiss
        self.outbound.require()  # refuse before approving: an approval must be able to go somewhere
        draft = await asyncio.to_thread(
            self.drafts.transition, draft_id, from_=("pending_review",), to="approved", by=by, note=note,
            now=self._now(),
        )  # fmt: skip
        await self._record(ReviewEvent.APPROVED, draft, by, source, note=note)
        return await self.send(draft_id, by=by, source=source)

    async def send(self, draft_id: str, *, by: str, source: str = "cli") -> Draft:
        """Deliver an approved draft (again, after a failed delivery): once, however many ask at the same time."""
        current = await asyncio.to_thread(self.drafts.get, draft_id)
        if current.status not in {"approved", "send_failed", "sending"}:  # the state first, then the channel
            raise Conflict(f"draft {draft_id} is {current.status}; only approved drafts are sent")
        self.outbound.require()
        draft = await asyncio.to_thread(
            self.drafts.claim_delivery, draft_id, now=self._now(), stale_after=self.outbound.stale_after
        )
        ok, attempt = await self.outbound.deliver(draft)
        recorded = await asyncio.to_thread(
            self.drafts.record_delivery, draft_id, ok=ok, attempt=attempt, expect="sending"
        )
        if recorded is None:  # our claim went stale and another delivery took the draft over
            log.warning("draft_delivery_outcome_late", draft_id=draft_id, ok=ok)
            recorded = await asyncio.to_thread(self.drafts.get, draft_id)
        await self._record(
            ReviewEvent.SENT if ok else ReviewEvent.SEND_FAILED, recorded, by, source, delivery=attempt
        )
        return recorded

    async def mark_sent(
        self, draft_id: str, *, by: str, note: str | None = None, source: str = "cli"
    ) -> Draft:
        """A person sent the message themselves (no outbound channel, or another one): the draft is done.

        A draft still waiting for review is approved by the same person first (both are audited); one that
        was approved, or whose delivery failed, keeps who approved it. The delivery attempt says "by hand"."""
        draft = await asyncio.to_thread(self.drafts.get, draft_id)
        if draft.status == "sending":
            raise Conflict(
                f"draft {draft_id} is being delivered right now; wait for the outcome (mark it sent by hand "
                "only if that delivery failed)"
            )
        if draft.status not in {"pending_review", "approved", "send_failed"}:
            raise Conflict(
                f"draft {draft_id} is {draft.status}; only a draft waiting for review or delivery is sent"
            )
        now = self._now()
        if draft.status == "pending_review":
            draft = await asyncio.to_thread(
                self.drafts.transition, draft_id, from_=("pending_review",), to="approved", by=by, note=note,
                now=now,
            )  # fmt: skip
            await self._record(ReviewEvent.APPROVED, draft, by, source, note=note)
        await asyncio.to_thread(
            self.drafts.transition, draft_id, from_=("approved", "send_failed"), to="sent", by=None, note=None, now=now
        )  # fmt: skip
        attempt = {"by_hand": True, "by": by, "at": now.isoformat(), "note": note}
        recorded = await asyncio.to_thread(
            self.drafts.record_delivery, draft_id, ok=True, attempt=attempt, expect="sent"
        )
        draft = recorded if recorded is not None else await asyncio.to_thread(self.drafts.get, draft_id)
        await self._record(ReviewEvent.MARKED_SENT, draft, by, source, delivery=attempt)
        return draft

    async def reject(self, draft_id: str, *, by: str, note: str | None = None, source: str = "cli") -> Draft:
        draft = await asyncio.to_thread(
            self.drafts.transition, draft_id, from_=("pending_review",), to="rejected", by=by, note=note,
            now=self._now(),
        )  # fmt: skip
        await self._record(ReviewEvent.REJECTED, draft, by, source, note=note)
        return draft
