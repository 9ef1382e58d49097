"""``/operations/commission``: ``commission`` is Plisio's cut, ``fee`` the network fee, apart; the total is
their sum only when both are in one coin. Through the real client against the sandbox, and the documented
example response through the view."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from tools.plisio.client import PlisioClient
from tools.plisio.models import Commission
from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox
from tools.plisio.views import commission

pytestmark = pytest.mark.anyio


async def estimate(psys_cid: str, address: str, amount: str) -> tuple[Commission, dict[str, object]]:
    sandbox = Sandbox(seed=7)
    async with PlisioClient(api_key=SANDBOX_API_KEY, transport=sandbox.transport()) as client:
        com = await client.estimate_commission(psys_cid, addresses=[address], amounts=[Decimal(amount)])
    return com, commission(com, psys_cid)


async def test_a_coin_that_pays_its_own_fee_adds_up_once() -> None:
    com, view = await estimate("BTC", "bc1qexampleexampleexampleexample", "0.002")
    assert com.commission == Decimal("0.00001") and com.fee is not None and com.fee_unit == "BTC"
    assert Decimal(str(view["total_cost"])) == com.commission + com.fee, (
        "commission + fee, the fee counted once"
    )
    assert view["network_fee_coin"] == "BTC" and "total_cost_note" not in view


async def test_a_token_has_no_single_total() -> None:
    com, view = await estimate("USDT_TRX", "TXexampleexampleexampleexample12", "79")
    assert com.fee_unit == "TRX" and com.commission == Decimal("0.395")
    assert "total_cost" not in view and view["network_fee_coin"] == "TRX"
    assert view["total_cost_note"] == "no single total: the commission is in USDT_TRX, the network fee in TRX"


def test_the_documented_example_reads_as_commission_plus_fee() -> None:
    """DOC-COM's example (plisio-api.md §2.4): 0.00301071 commission + 0.001071 fee. It names no fee coin
    (no feeUnit), so no total is given; named, the total is their sum."""
    data = {"commission": "0.003010710000000000", "fee": "0.001071000000000000", "plan": "priority",
            "useWallet": "false", "useWalletBalance": "null",
            "plans": {"normal": {"gasLimit": "21000", "gasPrice": "44000000000", "value": "0.000924000000000000"},
                      "priority": {"gasLimit": "21000", "gasPrice": "44000000000", "value": "0.000924000000000000"}}}  # fmt: skip
    view = commission(Commission.model_validate(data), "ETH")
    assert (view["commission"], view["network_fee"]) == ("0.00301071", "0.001071")
    assert "total_cost" not in view and "did not say which coin" in view["total_cost_note"]
    named = commission(Commission.model_validate({**data, "feeUnit": "ETH"}), "ETH")
    assert named["total_cost"] == "0.00408171"
    older = {"commission": "0.00000000", "fee": "0.00001020", "plan": "normal", "feeUnit": "BTC"}
    assert commission(Commission.model_validate(older), "BTC")["total_cost"] == "0.0000102", (
        "no commission beside a fee: the fee is not inside the commission"
    )


async def test_the_client_reads_the_fee_unit_over_http() -> None:
    body = {
        "status": "success",
        "data": {"commission": "1.5", "fee": "2", "feeUnit": "TRX", "plan": "normal"},
    }
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    async with PlisioClient(api_key=SANDBOX_API_KEY, transport=transport) as client:
        com = await client.estimate_commission("USDT_TRX", addresses=["T1"], amounts=[Decimal("300")])
    assert com.fee_unit == "TRX" and "total_cost" not in commission(com, "USDT_TRX")
