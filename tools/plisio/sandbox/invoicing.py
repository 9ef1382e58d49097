"""``/invoices/new``: validate the query like Plisio does, price the invoice, store it.

Pricing follows plisio-api.md §2.1: the payer's ``amount`` is ``invoice_total_sum``; when the client
pays the commission it is added on top (``invoice_sum`` = the shop's price), otherwise it is taken
out of it. ``source_rate`` is coins per fiat unit, at the coin's precision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_UP, Decimal

from tools.plisio.sandbox import identifiers
from tools.plisio.sandbox.catalog import ACTIVE_COINS, Coin
from tools.plisio.sandbox.envelope import CODE_DUPLICATE_ORDER, validation_error
from tools.plisio.sandbox.records import Operation, Shop
from tools.plisio.sandbox.state import ShopState
from tools.plisio.sandbox.validation import FieldErrors, coin_or_105, fiat_or_105, flag


@dataclass(frozen=True)
class Pricing:
    amount: Decimal  # = invoice_total_sum, what the payer sends
    invoice_sum: Decimal
    commission: Decimal
    source_currency: str
    source_amount: Decimal
    source_rate: Decimal


def price(
    coin: Coin, shop: Shop, *, crypto: Decimal | None, fiat: str, fiat_amount: Decimal | None
) -> Pricing:
    """Crypto amount (wins when given) or fiat amount -> Plisio's amount/sum/commission triple."""
    if crypto is not None:
        base = coin.q(crypto)
        fiat_amount = coin.coin_to_fiat(base, fiat)
    else:
        assert fiat_amount is not None
        fiat_amount = fiat_amount.quantize(Decimal("0.01"))
        base = coin.fiat_to_coin(fiat_amount, fiat)
    commission = coin.q(base * (coin.commission_pct + shop.extra_commission) / 100, ROUND_UP)
    if shop.commission_payment == 1:
        total, invoice_sum = base + commission, base
    else:
        total, invoice_sum = base, base - commission
    return Pricing(total, invoice_sum, commission, fiat, fiat_amount, coin.coins_per_fiat(fiat))


def _allowed(errors: FieldErrors) -> tuple[str, ...]:
    cids = errors.csv("allowed_psys_cids")
    for cid in cids:
        coin_or_105(cid, "allowed_psys_cids", invoiceable=True)
    return tuple(dict.fromkeys(cids))


def create_invoice(state: ShopState, query: Mapping[str, str], now: int) -> tuple[Operation, bool]:
    """Returns ``(invoice, created)``; ``created`` is False when ``return_existing`` found one."""
    errors = FieldErrors(query)
    order_number = errors.text("order_number", required=True)
    if order_number is not None and not errors.is_integer(order_number):
        # [sandbox assumption] Plisio's docs: "Must be an unique number in your store"; the PY SDK types it int.
        errors.add("order_number", "{attribute} must be an integer.")
        order_number = None  # reported with every other field error below
    if order_number is not None and flag(query, "return_existing"):
        existing = state.by_order_number(order_number)
        if existing is not None:  # a retry of the same order: nothing else is checked again
            return existing, False
    order_name = errors.text("order_name", required=True)
    crypto = errors.decimal("amount")
    fiat_amount = errors.decimal("source_amount")
    if crypto is None and fiat_amount is None and not {"amount", "source_amount"} & errors.errors.keys():
        errors.add("amount", "{attribute} cannot be blank.")
    email = errors.email()
    callback_url = errors.url("callback_url")
    success_callback_url = errors.url("success_callback_url")
    fail_callback_url = errors.url("fail_callback_url")
    success_invoice_url = errors.url("success_invoice_url")
    fail_invoice_url = errors.url("fail_invoice_url")
    expire_min = errors.integer("expire_min", minimum=1)
    errors.raise_if_any()
    assert order_number is not None
    assert order_name is not None

    allowed = _allowed(errors)
    cid = errors.text("currency") or (allowed[0] if allowed else ACTIVE_COINS[0])
    coin = coin_or_105(cid, "currency", invoiceable=True)
    fiat = fiat_or_105(errors.text("source_currency") or "USD", "source_currency")

    with state.lock:
        if state.by_order_number(order_number) is not None:
            message = f'Order Number "{order_number}" has already been taken.'
            raise validation_error({"order_number": message}, CODE_DUPLICATE_ORDER)

        pricing = price(coin, state.shop, crypto=crypto, fiat=fiat, fiat_amount=fiat_amount)
        if pricing.amount < coin.min_sum_in:
            minimum = coin.fmt(coin.min_sum_in)
            raise validation_error({"amount": f"Amount must be no less than {minimum} {coin.currency}."})
        invoice = Operation(
            id=state.new_id(now),
            type="invoice",
            status="new",
            psys_cid=coin.cid,
            created_at=now,
            amount=pricing.amount,
            shop_id=state.shop.id,
            wallet_hash=identifiers.address(state.rng, coin.cid),
            source_currency=pricing.source_currency,
            source_amount=pricing.source_amount,
            source_rate=pricing.source_rate,
            invoice_sum=pricing.invoice_sum,
            invoice_commission=pricing.commission,
            expire_at=now + 60 * (expire_min or state.shop.default_expire_min),
            order_number=order_number,
            order_name=order_name,
            description=errors.text("description"),
            email=email,
            allowed_psys_cids=allowed or ACTIVE_COINS,
            plugin=errors.text("plugin"),
            version=errors.text("version"),
            language=errors.text("language"),
            view_key=identifiers.token(state.rng),
            callback_url=callback_url,
            success_callback_url=success_callback_url,
            fail_callback_url=fail_callback_url,
            success_invoice_url=success_invoice_url,
            fail_invoice_url=fail_invoice_url,
        )
        if coin.cid not in invoice.allowed_psys_cids:
            invoice.allowed_psys_cids = (coin.cid, *invoice.allowed_psys_cids)
        state.add(invoice)
    return invoice, True
