"""Compact projections of Plisio answers for a model's context.

A model pays for every token it reads and is distracted by noise, so results keep the
facts a finance or growth persona reasons with (status, amounts, coin, order, customer,
times) and drop the rest (QR-code base64, icons, HATEOAS links, internal ids).
Timestamps become ISO-8601 UTC strings; money stays an exact decimal string.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any

from tools.plisio.models import (
    Balance,
    Commission,
    Currency,
    FeeEstimate,
    FeePlan,
    InvoiceCreated,
    InvoiceDetails,
    Operation,
    OperationsPage,
    Shop,
)


def iso(ts: int | None) -> str | None:
    if not ts:
        return None
    # Plisio's DTO notes say timestamps "may need to be divided by 1000": accept both.
    seconds = ts / 1000 if ts > 10_000_000_000 else ts
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


def money(value: Decimal | None) -> str | None:
    if value is None:
        return None
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and v != [] and v != {}}


def _tx_urls(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    urls = [value] if isinstance(value, str) else list(value)
    return [u for u in urls if u] or None


def operation(op: Operation) -> dict[str, Any]:
    params = op.params
    return _clean(
        {
            "id": op.id,
            "type": op.type,
            "status": op.status,
            "psys_cid": op.psys_cid,
            "amount": money(op.amount),
            "pending_sum": money(op.pending_sum) if op.pending_sum else None,
            "actual_sum": money(op.actual_sum),
            "source_amount": money(params.source_amount) if params else None,
            "source_currency": (params.source_currency if params else None) or op.source_currency,
            "order_number": params.order_number if params else None,
            "order_name": params.order_name if params else None,
            "email": params.email if params else None,
            "fee": money(op.fee),
            "commission": money(op.commission),
            "confirmations": op.confirmations,
            "created_at": iso(op.created_at_utc),
            "expire_at": iso(op.expire_at_utc),
            "finished_at": iso(op.finished_at_utc),
            "tx_urls": _tx_urls(op.tx_url),
        }
    )


def operations_page(page: OperationsPage) -> dict[str, Any]:
    meta = page.meta
    return {
        "operations": [operation(op) for op in page.operations],
        "page": meta.current_page,
        "page_count": meta.page_count,
        "total_count": meta.total_count,
        "per_page": meta.per_page,
        **(
            {"skipped": {"count": len(page.skipped), "ids": [r.id for r in page.skipped],
                         "note": "rows Plisio sent that could not be read; the rest of the page is complete"}}
            if page.skipped else {}
        ),
    }  # fmt: skip


def invoice_created(inv: InvoiceCreated, order_number: str) -> dict[str, Any]:
    """A white-label shop's answer also has the payment details; the deposit address and the QR image
    are left out (the payer gets them from the invoice page; a model has no use for them)."""
    return _clean(
        {
            "txn_id": inv.txn_id,
            "invoice_url": inv.invoice_url,
            "order_number": order_number,
            "status": inv.status or "new",
            "invoice_total_sum": money(inv.invoice_total_sum),
            "amount": money(inv.amount),
            "pending_amount": money(inv.pending_amount),
            "psys_cid": inv.psys_cid,
            "source_currency": inv.source_currency,
            "commission": money(inv.invoice_commission),
            "invoice_sum": money(inv.invoice_sum),
            "expire_at": iso(inv.expire_utc),
        }
    )


def invoice_details(details: InvoiceDetails) -> dict[str, Any]:
    inv = details.invoice
    params = inv.params or {}
    return _clean(
        {
            "txn_id": inv.txn_id or inv.id,
            "status": inv.status,
            "psys_cid": inv.psys_cid or inv.currency,
            "amount": money(inv.amount),
            "received_amount": money(inv.received_amount),
            "pending_amount": money(inv.pending_amount),
            "remaining_amount": money(inv.remaining_amount),
            "source_amount": money(inv.source_amount) or params.get("source_amount"),
            "source_currency": inv.source_currency,
            "source_rate": money(inv.source_rate),
            "invoice_total_sum": money(inv.invoice_total_sum),
            "order_number": params.get("order_number"),
            "order_name": params.get("order_name"),
            "email": inv.email or params.get("email"),
            "expire_at": iso(inv.expire_utc),
            "invoice_url": inv.invoice_url,
            "tx_urls": _tx_urls(inv.tx_url),
            "active_invoice_id": details.active_invoice_id
            if details.active_invoice_id not in {None, inv.txn_id, inv.id}
            else None,
            "shop": details.shop.name if details.shop else None,
            "allowed_psys_cids": [c.cid for c in details.allowed_psys_cids] or None,
        }
    )


def _price(coins_per_fiat: Decimal | None) -> str | None:
    """One coin in the fiat: cents from 1 up, else 8 significant digits (``1 / fiat_rate``)."""
    if not coins_per_fiat or not coins_per_fiat.is_finite() or coins_per_fiat <= 0:
        return None
    if not -20 <= coins_per_fiat.adjusted() <= 20:  # an absurd rate: no price, not a failed listing
        return None
    with localcontext() as ctx:
        ctx.prec = 28
        price = Decimal(1) / coins_per_fiat
        rounded = price.quantize(Decimal("0.01")) if price >= 1 else Decimal(f"{price:.8g}")
    return format(rounded, "f")


def currency(cur: Currency) -> dict[str, Any]:
    return _clean(
        {
            "cid": cur.cid,
            "name": cur.name,
            "currency": cur.currency,
            "fiat": cur.fiat,
            # Plisio's fiat_rate is coins per one fiat unit; the model is told both ways, named plainly.
            "coins_per_fiat": money(cur.fiat_rate),
            "price_in_fiat": _price(cur.fiat_rate),
            "min_sum_in": money(cur.min_sum_in),
            "commission_pct": money(cur.invoice_commission_percentage),
            "maintenance": cur.maintenance or None,
            "hidden": bool(cur.hidden) or None,
        }
    )


def fee_estimate(fee: FeeEstimate) -> dict[str, Any]:
    return _clean({"psys_cid": fee.psys_cid, "fee": money(fee.fee), "plan": fee.plan})


def commission(com: Commission, psys_cid: str) -> dict[str, Any]:
    """Plisio's commission and the network fee, and their sum when both are known to be in one coin: a
    token's fee is paid in its chain's coin (``feeUnit``, OAS), amounts of two coins do not add up, and
    without ``feeUnit`` nothing says which coin the fee is in."""
    fee_coin = com.fee_unit.upper() if com.fee_unit else None
    one_coin = com.fee is None or fee_coin == psys_cid.upper()
    return _clean(
        {
            "psys_cid": psys_cid,
            "plan": com.plan,
            "commission": money(com.commission),
            "network_fee": money(com.fee),
            "network_fee_coin": None if com.fee is None else fee_coin,
            "total_cost": money(com.commission + (com.fee or Decimal(0))) if one_coin else None,
            "total_cost_note": None if one_coin else (
                f"no single total: the commission is in {psys_cid}, the network fee in {fee_coin}" if fee_coin
                else "no single total: Plisio did not say which coin the network fee is in (a token pays it "
                     "in its chain's coin)"
            ),
            "max_amount": money(com.max_amount),
        }
    )  # fmt: skip


def fee_plan_summary(plan: FeePlan, psys_cid: str) -> dict[str, Any]:
    """One plan as ``{fee, unit}`` whatever the chain: the value, else the fee rate."""
    if plan.value is not None:
        return _clean(
            {"fee": money(plan.value), "unit": plan.fee_unit or psys_cid, "conf_target": plan.conf_target}
        )
    if plan.fee_rate is not None:
        return _clean(
            {
                "fee": money(plan.fee_rate),
                "unit": plan.fee_rate_unit or "sat/byte",
                "conf_target": plan.conf_target,
            }
        )
    return {"fee": None, "unit": None}


def fee_plan_details(plan: FeePlan) -> dict[str, Any]:
    """Every chain-specific field, Plisio's names, unknown ones included."""
    raw = plan.model_dump(by_alias=True, exclude_none=True)
    return {k: money(v) if isinstance(v, Decimal) else v for k, v in raw.items()}


def balance(bal: Balance, psys_cid: str) -> dict[str, Any]:
    return _clean(
        {
            "psys_cid": bal.psys_cid or psys_cid,
            "balance": money(bal.balance),
            "locked_balance": money(bal.locked_balance),
        }
    )


def shop(s: Shop) -> dict[str, Any]:
    return _clean(
        {
            "name": s.name,
            "link": s.link,
            "white_label": s.white_label,
            "verified": s.verified,
            "commission_payment": s.commission_payment,
            "extra_commission": money(s.extra_commission),
        }
    )
