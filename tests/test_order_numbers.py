"""Order numbers: decimal digits, one per effect, the same for every attempt of it, and what the sandbox
(like Plisio's docs: "Must be an unique number in your store") refuses otherwise."""

from __future__ import annotations

from decimal import Decimal

import pytest

from persona.effects import EffectKey, is_order_number, order_number
from tools.errors import PlisioApiError
from tools.plisio.client import PlisioClient
from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox

pytestmark = pytest.mark.anyio


def test_an_order_number_is_16_digits_stable_per_effect_and_apart_between_effects() -> None:
    keys = [EffectKey(f"chat:conv_{n}", str(seq)) for n in range(300) for seq in range(4)]
    numbers = [order_number(k) for k in keys]
    assert all(is_order_number(n) and int(n) < 2**53 for n in numbers), "exact in a double, and in a bigint"
    assert len(set(numbers)) == len(keys), "no two effects share one"
    assert order_number(EffectKey("recovery:t1", "fresh_link")) == order_number(
        EffectKey("recovery:t1", "fresh_link")
    )


@pytest.mark.parametrize(
    "text",
    [
        "pp-7489d308f7c4b6de18f7",
        "012345678901234567",
        "0123456789012345",
        "9123456789012345",
        "1234",
        "１２３４５６７８９０１２３４５６",
        "123456789012345678",
        "",
    ],
)
def test_is_order_number_knows_only_its_own_shape(text: str) -> None:
    assert not is_order_number(text)


async def test_the_sandbox_refuses_an_order_number_that_is_not_a_number() -> None:
    sandbox = Sandbox(seed=7)
    async with PlisioClient(api_key=SANDBOX_API_KEY, transport=sandbox.transport()) as client:
        with pytest.raises(PlisioApiError) as refused:
            await client.create_invoice(
                order_number="pp-7489d308f7c4b6de18f7", order_name="Pro plan", source_currency="USD",
                source_amount=Decimal("49.90"),
            )  # fmt: skip
        assert "order_number: Order Number must be an integer." in str(refused.value)
        assert refused.value.http_status == 422 and refused.value.code == 100
        assert refused.value.field_errors == {"order_number": "Order Number must be an integer."}
        number = order_number(EffectKey("chat:conv_1", "0"))
        created = await client.create_invoice(
            order_number=number, order_name="Pro plan", source_currency="USD", source_amount=Decimal("49.90")
        )
        assert sandbox.state.operations[created.txn_id].order_number == number
