"""``fiat_rate`` is coins per one unit of the fiat: Plisio's own plugins price an order as
``crypto = total * fiat_rate`` (OpenCart plugin ``catalog/controller/extension/payment/plisio.php``, the
WooCommerce plugin's ``templates/invoice.php``), and ``source_rate`` on an invoice the same way
(``fiat = amount / source_rate`` in react-invoice and vue-invoice). Pinned here through the real client,
the policy's valuation and the sandbox's own pricing, which must agree."""

from __future__ import annotations

from decimal import Decimal

import pytest

from persona.policy import PlisioPrices
from tools.plisio.client import PlisioClient
from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox
from tools.plisio.views import currency

pytestmark = pytest.mark.anyio


async def test_fiat_rate_is_coins_per_fiat_as_plisios_plugins_read_it() -> None:
    sandbox = Sandbox(seed=7)
    async with PlisioClient(api_key=SANDBOX_API_KEY, transport=sandbox.transport()) as client:
        btc = next(c for c in await client.get_currencies("USD") if c.cid == "BTC")
        created = await client.create_invoice(
            order_number="424242", order_name="Pro plan", source_amount=Decimal("49.90"), source_currency="USD",
            currency="BTC",
        )  # fmt: skip
        price = await PlisioPrices(client).price("BTC", "USD")
    invoice = sandbox.state.operations[created.txn_id]
    assert btc.fiat_rate is not None and btc.fiat_rate < 1, "a dollar buys a small part of a bitcoin"
    plugin_amount = Decimal("49.90") * btc.fiat_rate  # the plugins' crypto = total * fiat_rate
    assert plugin_amount == pytest.approx(invoice.invoice_sum, rel=Decimal("0.001")), "before the commission"
    assert invoice.source_rate == pytest.approx(btc.fiat_rate, rel=Decimal("0.001")), (
        "source_rate: the same way"
    )
    assert price == pytest.approx(Decimal(1) / btc.fiat_rate) and price > 1000, "one BTC costs 1 / fiat_rate"
    view = currency(btc)
    assert view["coins_per_fiat"] == format(btc.fiat_rate.normalize(), "f")
    assert Decimal(str(view["price_in_fiat"])) == (Decimal(1) / btc.fiat_rate).quantize(Decimal("0.01"))


def test_the_readme_lists_every_sandbox_assumption() -> None:
    from pathlib import Path

    from tools.plisio.sandbox.envelope import ASSUMPTIONS

    readme = (Path(__file__).parent.parent / "tools" / "plisio" / "README.md").read_text(encoding="utf-8")
    rows = [f"| {b.replace('|', '&#124;')} | {w.replace('|', '&#124;')} |" for b, w in ASSUMPTIONS]
    assert "\n".join(rows) in readme
