"""``fiat_rate`` is coins per one unit of the fiat: Plisio's own plugins price an order as
``crypto = total * fiat_rate`` (OpenCart plugin ``catalog/controller/extension/payment/plisio.php``, the
WooCommerce plugin's ``templates/invoice.php``), and ``source_rate`` on an invoice the same way
(``fiat = amount / source_rate`` in react-invoice and vue-invoice). Pinned here through the real client,
the policy's valuation and the sandbox's own pricing, which must agree."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
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


async def test_a_coarse_rate_is_refused_and_a_cross_rate_takes_the_finest_coin() -> None:
    """One yen is 0.0000001 BTC at BTC's 8 decimals: one digit, +2.6% off. That rate is refused; 100 JPY in
    USD goes through the coin rated with the most digits in both, within 0.1% of the sandbox's own rate."""
    from tools.plisio.sandbox.catalog import FIATS

    sandbox = Sandbox(seed=7)
    async with PlisioClient(api_key=SANDBOX_API_KEY, transport=sandbox.transport()) as client:
        prices = PlisioPrices(client)
        with pytest.raises(LookupError, match="too few digits"):
            await prices.price("BTC", "JPY")
        n, d = await prices.cross("JPY", "USD")
    in_usd = Decimal(100) * n / d
    assert in_usd == pytest.approx(Decimal(100) / FIATS["JPY"], rel=Decimal("0.001"))


class HostileRates(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, rate: str) -> None:
        self.inner, self.rate = inner, rate

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if "/currencies" not in request.url.path:
            return response
        body = json.loads(await response.aread())
        for coin in body["data"]:
            coin["fiat_rate"] = self.rate
        return httpx.Response(response.status_code, json=body)


@pytest.mark.parametrize(
    "rate", ["0", "-0.00001667", "1e-2000000", "1e999999"]
)  # NaN: the page is a protocol error
async def test_a_rate_that_means_nothing_values_nothing(rate: str) -> None:
    sandbox = Sandbox(seed=7)
    async with PlisioClient(
        api_key=SANDBOX_API_KEY, transport=HostileRates(sandbox.transport(), rate)
    ) as client:
        prices = PlisioPrices(client)
        with pytest.raises(LookupError, match="no usable USD rate"):
            await prices.price("BTC", "USD")
        with pytest.raises(LookupError, match="no coin rated in both"):
            await prices.cross("EUR", "USD")
        view = currency(next(c for c in await client.get_currencies("USD") if c.cid == "BTC"))
    assert "price_in_fiat" not in view
