"""What the sandbox shop can be paid in: coins, fiat rates and per-chain fee plans.

Fixed numbers (no market feed) so that every test and demo sees the same prices. Money is
``Decimal`` throughout and leaves the sandbox as fixed-precision strings (``Coin.fmt``), the way
Plisio prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, ROUND_UP, Decimal
from typing import Any, Final, Literal

Chain = Literal["btc", "eth", "trx", "ton", "xmr", "sol"]
PLAN_NAMES: Final = ("economy", "normal", "priority")


def quantum(places: int) -> Decimal:
    """``Decimal('0.00000001')`` for 8 places."""
    return Decimal(1).scaleb(-places)


def fmt(value: Decimal, places: int, rounding: str = ROUND_HALF_UP) -> str:
    """Fixed-point text with exactly ``places`` decimals, never an exponent."""
    return format(value.quantize(quantum(places), rounding=rounding), "f")


def plain(value: Decimal) -> str:
    """Shortest fixed-point text (rates and prices, which Plisio prints without padding)."""
    return format(value.normalize(), "f")


@dataclass(frozen=True)
class Coin:
    """One Plisio payment system (``psys_cid``). ``contract_of`` names the chain a token pays fees in."""

    cid: str
    currency: str
    name: str
    precision: int
    output_precision: int
    price_usd: Decimal
    min_sum_in: Decimal
    commission_pct: Decimal
    chain: Chain
    explorer: str
    expected_confirmations: int
    hidden: int = 0
    maintenance: bool = False
    contract_of: str | None = None
    contract_standard: str | None = None

    def fmt(self, value: Decimal) -> str:
        return fmt(value, self.precision)

    def q(self, value: Decimal, rounding: str = ROUND_HALF_UP) -> Decimal:
        """Round to what this coin can represent on chain."""
        return value.quantize(quantum(self.precision), rounding=rounding)

    def price_in(self, fiat: str) -> Decimal:
        return self.price_usd * FIATS[fiat]

    def coins_per_fiat(self, fiat: str) -> Decimal:
        """Plisio's ``source_rate``: coins for one unit of the fiat (DOC-TX ``0.00010216`` BTC/USD)."""
        return self.q(Decimal(1) / self.price_in(fiat))

    def fiat_to_coin(self, fiat_amount: Decimal, fiat: str) -> Decimal:
        return self.q(fiat_amount / self.price_in(fiat), ROUND_UP)

    def coin_to_fiat(self, amount: Decimal, fiat: str) -> Decimal:
        return (amount * self.price_in(fiat)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)

    def tx_url(self, txid: str) -> str:
        return self.explorer.format(txid=txid)

    @property
    def fee_coin(self) -> str:
        return self.contract_of or self.cid


_EXPLORERS: Final = {
    "BTC": "https://www.blockchain.com/explorer/transactions/btc/{txid}",
    "ETH": "https://etherscan.io/tx/{txid}",
    "LTC": "https://blockchair.com/litecoin/transaction/{txid}",
    "DOGE": "https://blockchair.com/dogecoin/transaction/{txid}",
    "BCH": "https://blockchair.com/bitcoin-cash/transaction/{txid}",
    "TRX": "https://tronscan.org/#/transaction/{txid}",
    "USDT_TRX": "https://tronscan.org/#/transaction/{txid}",
    "USDT": "https://etherscan.io/tx/{txid}",
    "TON": "https://tonviewer.com/transaction/{txid}",
    "SOL": "https://solscan.io/tx/{txid}",
    "XMR": "https://xmrchain.net/tx/{txid}",
}
_TOKENS: Final = {"USDT_TRX": ("TRX", "TRC-20"), "USDT": ("ETH", "ERC-20")}
_HIDDEN: Final = frozenset({"XMR"})  # listed with hidden=1, like a coin the shop has switched off
_ROWS: Final[tuple[tuple[str, str, str, int, int, str, str, Chain, int], ...]] = (
    # cid, ticker, name, precision, output_precision, price_usd, min_sum_in, chain, confirmations
    ("BTC", "BTC", "Bitcoin", 8, 5, "64250.00", "0.0001", "btc", 1),
    ("ETH", "ETH", "Ethereum", 8, 5, "3120.00", "0.002", "eth", 12),
    ("LTC", "LTC", "Litecoin", 8, 4, "82.40", "0.01", "btc", 2),
    ("DOGE", "DOGE", "Dogecoin", 8, 2, "0.1584", "5", "btc", 3),
    ("BCH", "BCH", "Bitcoin Cash", 8, 4, "455.10", "0.001", "btc", 2),
    ("TRX", "TRX", "Tron", 6, 2, "0.1236", "10", "trx", 20),
    ("USDT_TRX", "USDT", "Tether USD (TRC-20)", 6, 2, "1.0001", "1", "trx", 20),
    ("USDT", "USDT", "Tether USD (ERC-20)", 6, 2, "0.9998", "5", "eth", 12),
    ("TON", "TON", "Toncoin", 9, 3, "5.42", "0.5", "ton", 1),
    ("SOL", "SOL", "Solana", 9, 4, "148.30", "0.01", "sol", 1),
    ("XMR", "XMR", "Monero", 12, 4, "162.70", "0.01", "xmr", 10),
)
COINS: Final[dict[str, Coin]] = {
    cid: Coin(
        cid=cid,
        currency=ticker,
        name=name,
        precision=precision,
        output_precision=out,
        price_usd=Decimal(price),
        min_sum_in=Decimal(min_in),
        commission_pct=Decimal("0.5"),
        chain=chain,
        explorer=_EXPLORERS[cid],
        expected_confirmations=confirmations,
        hidden=1 if cid in _HIDDEN else 0,
        contract_of=_TOKENS[cid][0] if cid in _TOKENS else None,
        contract_standard=_TOKENS[cid][1] if cid in _TOKENS else None,
    )
    for cid, ticker, name, precision, out, price, min_in, chain, confirmations in _ROWS
}

ACTIVE_COINS: Final = tuple(c.cid for c in COINS.values() if not c.hidden and not c.maintenance)

# Units of each fiat per 1 USD. Plisio supports ~167 fiats; a handful is enough to exercise conversion.
FIATS: Final[dict[str, Decimal]] = {
    "USD": Decimal("1"),
    "EUR": Decimal("0.9215"),
    "GBP": Decimal("0.7893"),
    "CAD": Decimal("1.3642"),
    "AUD": Decimal("1.5190"),
    "JPY": Decimal("151.62"),
    "CHF": Decimal("0.8817"),
    "PLN": Decimal("3.9801"),
    "BRL": Decimal("5.0712"),
    "INR": Decimal("83.31"),
}

ICON_URL: Final = "https://plisio.net/img/psys-icon/{cid}.svg"


def currency_entry(coin: Coin, fiat: str) -> dict[str, Any]:
    """One element of ``/currencies/{fiat}`` (NODE ``CurrencyDto`` / OAS ``PaysysDto`` field order)."""
    return {
        "name": coin.name,
        "cid": coin.cid,
        "currency": coin.currency,
        "icon": ICON_URL.format(cid=coin.cid),
        "rate_usd": coin.fmt(Decimal(1) / coin.price_usd),
        "price_usd": plain(coin.price_usd),
        "precision": str(coin.precision),
        "output_precision": str(coin.output_precision),
        "fiat": fiat,
        # Coins per one unit of the fiat, like rate_usd (Plisio's plugins: crypto = total * fiat_rate).
        "fiat_rate": coin.fmt(Decimal(1) / coin.price_in(fiat)),
        "min_sum_in": coin.fmt(coin.min_sum_in),
        "invoice_commission_percentage": plain(coin.commission_pct),
        "hidden": coin.hidden,
        "maintenance": coin.maintenance,
        "contractOf": coin.contract_of,
        "contractStandard": coin.contract_standard,
    }


# --------------------------------------------------------------------------- fee plans
# Per-plan knobs, per coin. BTC-like: (conf_target, sat/vB). ETH-like: gas price in wei (gasLimit per
# coin). TRX/TON/SOL: flat fee per transfer. XMR: (conf_target, fee per transfer).
_BTC_RATES: Final[dict[str, tuple[tuple[int, int], ...]]] = {
    "BTC": ((24, 4), (6, 9), (2, 18)),
    "LTC": ((12, 2), (6, 5), (2, 10)),
    "DOGE": ((12, 500), (6, 1000), (2, 2000)),
    "BCH": ((12, 1), (6, 1), (2, 2)),
}
_GWEI: Final = Decimal(10) ** 9
_ETH_GAS_PRICE_GWEI: Final = (Decimal(6), Decimal(9), Decimal(15))
_ETH_GAS_LIMIT: Final = {"ETH": 21000, "USDT": 65000}
_FLAT_FEES: Final[dict[str, tuple[str, str, str]]] = {
    "TRX": ("1.1", "1.1", "1.1"),
    "USDT_TRX": ("13.4", "13.7", "27.4"),
    "TON": ("0.0055", "0.006", "0.008"),
    "SOL": ("0.000005", "0.000005", "0.000105"),
}
_XMR: Final = ((20, Decimal("0.000061")), (10, Decimal("0.000222")), (2, Decimal("0.000444")))


def _btc_vbytes(outputs: int) -> int:
    """P2WPKH size estimate: one input, ``outputs`` payees plus change."""
    return 11 + 68 + 31 * (outputs + 1)


def fee_for(coin: Coin, plan: str, outputs: int) -> Decimal:
    """Network fee for a transfer to ``outputs`` addresses, in the fee coin (``coin.fee_coin``)."""
    index = PLAN_NAMES.index(plan)
    fee_coin = COINS[coin.fee_coin]
    if coin.chain == "btc":
        _, rate = _BTC_RATES[coin.cid][index]
        return fee_coin.q(Decimal(rate * _btc_vbytes(outputs)) / Decimal(10) ** 8, ROUND_UP)
    if coin.chain == "eth":
        wei = _ETH_GAS_LIMIT[coin.cid] * _ETH_GAS_PRICE_GWEI[index] * _GWEI * outputs
        return fee_coin.q(wei / Decimal(10) ** 18, ROUND_UP)
    if coin.chain == "xmr":
        value = _XMR[index][1]
        return fee_coin.q(value + value * Decimal("0.5") * (outputs - 1), ROUND_UP)
    return fee_coin.q(Decimal(_FLAT_FEES[coin.cid][index]) * outputs, ROUND_UP)


def fee_plan(coin: Coin, plan: str) -> dict[str, Any]:
    """One plan of ``/operations/fee-plan/{cid}`` in the chain's shape (plisio-api.md §2.6).

    Strings everywhere except ``conf_target`` (an int) and XMR's ``value``: the only numbers
    the docs' examples show.
    """
    index = PLAN_NAMES.index(plan)
    fee_coin = COINS[coin.fee_coin]
    if coin.chain == "btc":
        conf_target, rate = _BTC_RATES[coin.cid][index]
        unit = "sat/vB" if coin.cid != "DOGE" else "koinu/vB"
        return {"conf_target": conf_target, "feeRate": str(rate), "feeRateUnit": unit}
    if coin.chain == "eth":
        gas_price = _ETH_GAS_PRICE_GWEI[index] * _GWEI
        return {
            "gasLimit": str(_ETH_GAS_LIMIT[coin.cid]),
            "gasPrice": format(gas_price.normalize(), "f"),
            "value": fee_coin.fmt(fee_for(coin, plan, 1)),
            "feeUnit": fee_coin.currency,
        }
    if coin.chain == "xmr":
        conf_target, value = _XMR[index]
        return {"conf_target": conf_target, "value": value, "feeUnit": "XMR"}
    value_text = fee_coin.fmt(fee_for(coin, plan, 1))
    if coin.chain == "trx":
        return {"value": value_text}
    return {"value": value_text, "feeUnit": fee_coin.currency}


WITHDRAW_COMMISSION_PCT: Final = Decimal("0.5")


def withdraw_commission(coin: Coin, total: Decimal) -> Decimal:
    """Plisio's own cut on a withdrawal, apart from the network fee (``/operations/commission``)."""
    return coin.q(total * WITHDRAW_COMMISSION_PCT / 100, ROUND_DOWN)
