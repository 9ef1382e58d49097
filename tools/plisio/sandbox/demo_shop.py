"""Who the demo shop is, what it sells and who buys: the fixed cast of the seeded data.

Fixed on purpose (not drawn from the seed): the churn-signal tests assert against named customers,
so the customers, their segments and their coins must not change when the seed does.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from tools.plisio.sandbox.records import Customer, Shop

SHOP_NAME: Final = "Northwind Digital"
SHOP_ID: Final = "65f2c0de9a1b4e7d3c2a1f08"
USER_ID: Final = 48213


def make_shop(*, white_label: bool, status_url: str | None) -> Shop:
    return Shop(
        id=SHOP_ID,
        user_id=USER_ID,
        name=SHOP_NAME,
        link="https://northwind-digital.example",
        logo="https://northwind-digital.example/static/logo.png",
        white_label=white_label,
        commission_payment=1,
        extra_commission=Decimal(0),
        verified=True,
        success_url="https://northwind-digital.example/checkout/thanks",
        failed_url="https://northwind-digital.example/checkout/failed",
        status_url=status_url,
    )


# (order_name, price in USD). Non-ASCII on purpose: callbacks must sign UTF-8 text correctly.
PRODUCTS: Final[tuple[tuple[str, Decimal], ...]] = (
    ("Northwind Studio — monthly", Decimal("19.00")),
    ("Northwind Studio — annual", Decimal("190.00")),
    ("Team seat pack (5 seats)", Decimal("79.00")),
    ("Font bundle: Grotesk Pro", Decimal("49.00")),
    ("Icon set: Line 2.0", Decimal("24.00")),
    ("Stock photo credits ×100", Decimal("35.00")),
    ("Priority support add-on", Decimal("15.00")),
    ("Plugin: Export Suite", Decimal("59.00")),
    ("Café Sans webfont licence", Decimal("29.00")),
)

# email, name, fiat, segment, primary coin, secondary coin. Background customers ("regular",
# "one_off") only ever pay with their two coins, so they can never look like coin switchers.
_CAST: Final[tuple[tuple[str, str, str, str, str, str], ...]] = (
    ("olivia.hart@example.com", "Olivia Hart", "USD", "churned_repeat", "BTC", "LTC"),
    ("marcus.bell@example.com", "Marcus Bell", "USD", "churned_repeat", "ETH", "USDT"),
    ("zoe.angstrom@example.com", "Zoë Ångström", "EUR", "churned_repeat", "USDT_TRX", "TRX"),
    ("jonas.weber@example.com", "Jonas Weber", "EUR", "churned_repeat", "BTC", "BTC"),
    ("priya.nair@example.com", "Priya Nair", "GBP", "repeat_underpayer", "USDT_TRX", "USDT_TRX"),
    ("diego.alvarez@example.com", "Diego Álvarez", "EUR", "repeat_underpayer", "BTC", "BTC"),
    ("mei.tanaka@example.com", "Mei Tanaka", "USD", "repeat_underpayer", "ETH", "USDT"),
    ("sam.okafor@example.com", "Sam Okafor", "GBP", "coin_switcher", "BTC", "ETH"),
    ("lena.fischer@example.com", "Lena Fischer", "EUR", "coin_switcher", "LTC", "DOGE"),
    ("raj.patel@example.com", "Raj Patel", "USD", "coin_switcher", "BTC", "ETH"),
    ("liam.osei@example.com", "Liam Osei", "GBP", "near_miss", "BTC", "LTC"),
    ("nora.quinn@example.com", "Nora Quinn", "USD", "near_miss", "BTC", "ETH"),
    ("ava.brooks@example.com", "Ava Brooks", "USD", "regular", "BTC", "ETH"),
    ("noah.kim@example.com", "Noah Kim", "USD", "regular", "USDT_TRX", "TRX"),
    ("sofia.rossi@example.com", "Sofia Rossi", "EUR", "regular", "ETH", "USDT"),
    ("ethan.murphy@example.com", "Ethan Murphy", "USD", "regular", "BTC", "USDT_TRX"),
    ("chloe.martin@example.com", "Chloé Martin", "EUR", "regular", "USDT_TRX", "BTC"),
    ("lucas.silva@example.com", "Lucas Silva", "USD", "regular", "LTC", "BTC"),
    ("amelia.clark@example.com", "Amelia Clark", "GBP", "regular", "BTC", "ETH"),
    ("mateo.garcia@example.com", "Mateo García", "EUR", "regular", "USDT_TRX", "USDT"),
    ("isla.campbell@example.com", "Isla Campbell", "GBP", "regular", "ETH", "BTC"),
    ("yusuf.demir@example.com", "Yusuf Demir", "EUR", "regular", "USDT", "ETH"),
    ("grace.lee@example.com", "Grace Lee", "USD", "regular", "SOL", "USDT_TRX"),
    ("oliver.smith@example.com", "Oliver Smith", "GBP", "regular", "BTC", "LTC"),
    ("emma.johansson@example.com", "Emma Johansson", "EUR", "regular", "TON", "USDT_TRX"),
    ("kai.nakamura@example.com", "Kai Nakamura", "USD", "regular", "DOGE", "BTC"),
    ("maya.cohen@example.com", "Maya Cohen", "USD", "regular", "ETH", "SOL"),
    ("leo.dubois@example.com", "Léo Dubois", "EUR", "regular", "BTC", "BCH"),
    ("ruby.evans@example.com", "Ruby Evans", "GBP", "regular", "USDT_TRX", "LTC"),
    ("arjun.mehta@example.com", "Arjun Mehta", "USD", "regular", "TRX", "USDT_TRX"),
    ("freya.larsen@example.com", "Freya Larsen", "EUR", "regular", "LTC", "DOGE"),
    ("ben.carter@example.com", "Ben Carter", "USD", "one_off", "BTC", "ETH"),
    ("ines.costa@example.com", "Inês Costa", "EUR", "one_off", "USDT_TRX", "ETH"),
    ("tom.walsh@example.com", "Tom Walsh", "GBP", "one_off", "LTC", "BTC"),
    ("anya.petrova@example.com", "Anya Petrova", "EUR", "one_off", "USDT", "USDT_TRX"),
    ("felix.wagner@example.com", "Felix Wagner", "EUR", "one_off", "ETH", "BTC"),
    ("lily.tran@example.com", "Lily Tran", "USD", "one_off", "SOL", "TON"),
    ("omar.haddad@example.com", "Omar Haddad", "USD", "one_off", "USDT_TRX", "TRX"),
    ("ella.novak@example.com", "Ella Novák", "EUR", "one_off", "BCH", "BTC"),
    ("jack.turner@example.com", "Jack Turner", "GBP", "one_off", "DOGE", "LTC"),
)

CUSTOMERS: Final = tuple(Customer(email, name, fiat, segment) for email, name, fiat, segment, _, _ in _CAST)
COINS_OF: Final = {email: (primary, secondary) for email, _, _, _, primary, secondary in _CAST}
BACKGROUND: Final = tuple(c for c in CUSTOMERS if c.segment in {"regular", "one_off"})

# Balances the shop held before the 90 seeded days (its older history is not listed).
OPENING_BALANCES: Final = {
    "BTC": Decimal("0.35"),
    "ETH": Decimal("4.2"),
    "LTC": Decimal("25"),
    "DOGE": Decimal("3000"),
    "BCH": Decimal("1.2"),
    "TRX": Decimal("5000"),
    "USDT_TRX": Decimal("4200"),
    "USDT": Decimal("1800"),
    "TON": Decimal("300"),
    "SOL": Decimal("12"),
    "XMR": Decimal("0.8"),
}
