"""A white-label shop: its invoice answers carry the payment details. Through the tools the model gets
the amounts and the commission, never the deposit address or the QR image; ``persona sandbox
--white-label`` serves such a shop over loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tools.plisio.args import CreateInvoiceArgs
from tools.plisio.client import PlisioClient
from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox
from tools.plisio.tools import PlisioContext, create_invoice

pytestmark = pytest.mark.anyio
ARGS = CreateInvoiceArgs(
    order_name="Pro plan", source_amount=Decimal("49.90"), source_currency="USD", currency="BTC"
)  # type: ignore[call-arg]


async def test_the_model_gets_the_amounts_not_the_address_or_the_qr_code() -> None:
    sandbox = Sandbox(seed=7, white_label=True)
    async with PlisioClient(api_key=SANDBOX_API_KEY, transport=sandbox.transport()) as client:
        raw = await client.create_invoice(order_number="5501", **ARGS.model_dump(exclude_none=True))
        result = await create_invoice(ARGS, PlisioContext(client=client, order_number="5502"))
    assert raw.wallet_hash and raw.qr_code and raw.pending_amount, "the white-label answer has them all"
    invoice = sandbox.state.operations[result["txn_id"]]
    assert "wallet_hash" not in result and "qr_code" not in result
    assert Decimal(result["pending_amount"]) == invoice.amount == Decimal(result["amount"])
    assert Decimal(result["commission"]) == invoice.invoice_commission and invoice.invoice_commission > 0
    assert Decimal(result["invoice_sum"]) == invoice.invoice_sum
    assert invoice.wallet_hash not in str(result)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_persona_sandbox_white_label_serves_a_white_label_shop(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "persona", "sandbox", "--white-label", "--port", str(port)], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}/api/v1"
        deadline = time.monotonic() + 30
        while True:
            try:
                shop = httpx.get(f"{base}/shops", params={"api_key": SANDBOX_API_KEY}, timeout=2).json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "the sandbox did not start"
                time.sleep(0.1)
        assert shop["data"]["white_label"] is True
        made = httpx.get(f"{base}/invoices/new", params={"api_key": SANDBOX_API_KEY, "order_number": "5503",
                         "order_name": "Pro plan", "source_amount": "10", "currency": "BTC"}, timeout=5).json()  # fmt: skip
        assert made["data"]["wallet_hash"] and made["data"]["qr_code"].startswith("data:image/png;base64,")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert "Plisio sandbox (white-label shop) on http://127.0.0.1:" in err
