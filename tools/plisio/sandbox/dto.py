"""How sandbox records look on the wire: Plisio's DTOs, field names and string formats.

Field names and order follow OAS/Ruby ``attribute_map`` and the docs' examples (plisio-api.md §2);
money is a fixed-precision string per coin, fiat amounts have two decimals, times are unix seconds.
"""

from __future__ import annotations

import json
from decimal import ROUND_DOWN, Decimal
from typing import Any, Final

from tools.plisio.callbacks import sign_json
from tools.plisio.sandbox import identifiers
from tools.plisio.sandbox.catalog import COINS, currency_entry, fmt, plain
from tools.plisio.sandbox.invoicing import price
from tools.plisio.sandbox.records import Operation, Shop

INVOICE_URL: Final = "https://plisio.net/invoice/{id}"
TX_DETAILS_URL: Final = "https://plisio.net/account/transactions/{id}"


def invoice_url(op: Operation) -> str:
    return INVOICE_URL.format(id=op.id)


def _fiat(value: Decimal | None) -> str | None:
    return None if value is None else fmt(value, 2)


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _params(op: Operation) -> dict[str, Any]:
    coin = op.coin
    if op.type == "cash_in":
        return {"value": coin.fmt(op.amount), "currency": coin.currency}
    if op.type in ("cash_out", "mass_cash_out"):
        fee_coin = COINS[coin.fee_coin]
        return {
            "fee": {
                "conf_target": 3,
                "plan": op.fee_plan or "normal",
                "value": fee_coin.fmt(op.fee or Decimal(0)),
            }
        }
    return _drop_none(
        {
            "order_number": op.order_number,
            "order_name": op.order_name,
            "description": op.description,
            "email": op.email,
            "source_amount": _fiat(op.source_amount),
            "source_currency": op.source_currency,
            "source_rate": None if op.source_rate is None else coin.fmt(op.source_rate),
            "currency": coin.currency,
            "psys_cid": op.psys_cid,
            "amount": coin.fmt(op.amount),
            "plugin": op.plugin,
            "version": op.version,
            "language": op.language,
        }
    )


def _tx_items(op: Operation) -> list[dict[str, Any]]:
    coin = op.coin
    return [
        {
            "txid": tx.txid,
            "value": coin.fmt(tx.value),
            "block": tx.block,
            "processed": tx.processed,
            "confirmations": tx.confirmations,
            "url": coin.tx_url(tx.txid),
            "wallet_hash": op.wallet_hash,
        }
        for tx in op.txs
    ]


def operation(op: Operation, shop: Shop) -> dict[str, Any]:
    """One ``OperationDto`` (list and detail share the shape; detail-only fields are included)."""
    coin = op.coin
    fee_coin = COINS[coin.fee_coin]
    invoice = op.is_invoice
    commission = op.invoice_commission if invoice else op.commission
    actual_commission = commission
    if invoice:
        actual_commission = (
            coin.q(commission * op.received / op.amount, ROUND_DOWN) if op.amount else commission
        )
    return {
        "user_id": shop.user_id,
        "shop_id": op.shop_id,
        "type": op.type,
        "status": op.status,
        "pending_sum": coin.fmt(op.remaining if invoice and not op.is_terminal else Decimal(0)),
        "psys_cid": op.psys_cid,
        "currency": coin.currency,
        "source_currency": op.source_currency,
        "source_rate": None if op.source_rate is None else coin.fmt(op.source_rate),
        "fee": None if op.fee is None else fee_coin.fmt(op.fee),
        "wallet_hash": op.wallet_hash,
        "sendmany": None if op.sendmany is None else {a: coin.fmt(v) for a, v in op.sendmany.items()},
        "params": _params(op),
        "expire_at_utc": op.expire_at,
        "created_at_utc": op.created_at,
        "finished_at_utc": op.finished_at,
        "amount": coin.fmt(op.amount),
        "commission": coin.fmt(commission),
        "tx_url": op.tx_urls,
        "tx_id": [tx.txid for tx in op.txs],
        "id": op.id,
        "actual_sum": coin.fmt(op.received if invoice else op.amount),
        "actual_commission": coin.fmt(actual_commission),
        "actual_fee": fee_coin.fmt(op.fee or Decimal(0)),
        "actual_invoice_sum": coin.fmt(abs(op.credited) if invoice else op.amount),
        "tx": _tx_items(op),
        "confirmations": op.confirmations,
        "parent_id": None,
        "commissionPayment": shop.commission_payment,
        "commis_percent": plain(coin.commission_pct) if invoice else None,
        "commis_sum": coin.fmt(commission),
        "memo": None,
    }


def _invoice_core(op: Operation) -> dict[str, Any]:
    coin = op.coin
    return {
        "amount": coin.fmt(op.amount),
        "pending_amount": coin.fmt(op.remaining),
        "wallet_hash": op.wallet_hash,
        "psys_cid": op.psys_cid,
        "currency": coin.currency,
        "status": op.status,
        "source_currency": op.source_currency,
        "source_rate": None if op.source_rate is None else coin.fmt(op.source_rate),
        "expire_utc": op.expire_at,
        "expected_confirmations": str(coin.expected_confirmations),
        "qr_code": identifiers.qr_code(f"{coin.currency}:{op.wallet_hash}?amount={coin.fmt(op.amount)}"),
    }


def _sums(op: Operation) -> dict[str, str]:
    coin = op.coin
    return {
        "invoice_commission": coin.fmt(op.invoice_commission),
        "invoice_sum": coin.fmt(op.invoice_sum),
        "invoice_total_sum": coin.fmt(op.amount),
    }


def created(op: Operation, shop: Shop, secret: str) -> dict[str, Any]:
    """``/invoices/new`` data: three fields for a standard shop, the extended set for white-label."""
    if not shop.white_label:
        return {"txn_id": op.id, "invoice_url": invoice_url(op), "invoice_total_sum": op.coin.fmt(op.amount)}
    data: dict[str, Any] = {"txn_id": op.id, "invoice_url": invoice_url(op), **_invoice_core(op)}
    data["verify_hash"] = ""
    data.update(_sums(op))
    data["verify_hash"] = sign_json({k: v for k, v in data.items() if k != "verify_hash"}, secret)
    return data


def invoice(op: Operation) -> dict[str, Any]:
    """``InvoiceExtendedResponseDto``: the ``invoice`` member of ``/invoices/{id}``."""
    coin = op.coin
    return {
        "id": op.id,
        "txn_id": op.id,
        "invoice_url": invoice_url(op),
        **_invoice_core(op),
        "received_amount": coin.fmt(op.received),
        "remaining_amount": coin.fmt(op.remaining),
        "source_amount": _fiat(op.source_amount),
        "confirmations": str(op.confirmations),
        **_sums(op),
        "email": op.email,
        "email_already_set": op.email is not None,
        "tx_url": op.tx_urls,
        "tx_id": [tx.txid for tx in op.txs],
        "switch_id": op.switch_id,
        "paid_id": None,
        "params": _params(op),
        "view_key": op.view_key,
        "created_at_utc": op.created_at,
        "finished_at_utc": op.finished_at,
    }


def _paysys(coin_cid: str, op: Operation, shop: Shop) -> dict[str, Any]:
    coin = COINS[coin_cid]
    fiat = op.source_currency or "USD"
    entry = currency_entry(coin, fiat)
    if coin_cid == op.psys_cid:
        amount = op.amount
    else:
        amount = price(coin, shop, crypto=None, fiat=fiat, fiat_amount=op.source_amount or Decimal(0)).amount
    entry["amount"] = coin.fmt(amount)
    return entry


def invoice_details(op: Operation, shop: Shop) -> dict[str, Any]:
    """``InvoiceDetailsApiResponseDto.data`` (plisio-api.md §2.8)."""
    return {
        "invoice": invoice(op),
        "active_invoice_id": op.switch_id or op.id,
        "shop": {
            "name": shop.name,
            "link": shop.link,
            "logo": shop.logo,
            "successUrl": op.success_invoice_url or shop.success_url,
            "failedUrl": op.fail_invoice_url or shop.failed_url,
            "allow_renew": True,
        },
        "paysys": _paysys(op.psys_cid, op, shop),
        "allowed_psys_cids": [_paysys(cid, op, shop) for cid in op.allowed_psys_cids],
    }


def shop_info(shop: Shop) -> dict[str, Any]:
    return {
        "name": shop.name,
        "link": shop.link,
        "logo": shop.logo,
        "commission_payment": shop.commission_payment,
        "white_label": shop.white_label,
        "extra_commission": shop.extra_commission,
        "verified": shop.verified,
    }


def callback_fields(op: Operation, shop: Shop) -> dict[str, str | int]:
    """The IPN fields of §4.2, keys sorted, every value a string except ``expire_utc``."""
    coin = op.coin
    fields: dict[str, str | int | None] = {
        "amount": coin.fmt(op.amount),
        "comment": f"Invoice details: {TX_DETAILS_URL.format(id=op.id)}",
        "confirmations": str(op.confirmations),
        "currency": coin.currency,
        "email": op.email,
        "expire_utc": op.expire_at,
        **_sums(op),
        "ipn_type": "invoice",
        "merchant": shop.name,
        "merchant_id": shop.id,
        "order_name": op.order_name,
        "order_number": op.order_number,
        "psys_cid": op.psys_cid,
        "source_amount": _fiat(op.source_amount),
        "source_currency": op.source_currency,
        "source_rate": None if op.source_rate is None else coin.fmt(op.source_rate),
        "status": op.status,
        "tx_urls": json.dumps(op.tx_urls, separators=(",", ":")) if op.txs else "null",
        "txn_id": op.id,
    }
    if shop.white_label:
        fields["pending_amount"] = coin.fmt(op.remaining)
        fields["wallet_hash"] = op.wallet_hash
        fields["expected_confirmations"] = str(coin.expected_confirmations)
    return {k: v for k, v in sorted(fields.items()) if v is not None}
