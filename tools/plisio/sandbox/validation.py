"""Yii2-style parameter checks: one first error per field, Yii's messages, raised as one 422.

Plisio reads everything from the query string, so every value arrives as text; these helpers turn
text into ``Decimal``/``int`` the way Yii's validators would accept it, or record why not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Final
from urllib.parse import urlsplit

from tools.plisio.sandbox.catalog import COINS, FIATS, Coin
from tools.plisio.sandbox.envelope import field_label, unsupported_currency, validation_error

# Yii NumberValidator / EmailValidator patterns.
_NUMBER: Final = re.compile(r"^\s*[-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?\s*$")
_INTEGER: Final = re.compile(r"[ \t\n\r]*[+-]?[0-9]+[ \t\n\r]*")  # Yii's integerPattern, ASCII digits
_EMAIL: Final = re.compile(
    r"^[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]+)*@"
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?\.)+[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?$"
)
TRUE_WORDS: Final = frozenset({"1", "true"})


class FieldErrors:
    """Collects ``{attribute: first message}`` like Yii's ``Model::getFirstErrors()``."""

    def __init__(self, query: Mapping[str, str]) -> None:
        self.query = query
        self.errors: dict[str, str] = {}

    def add(self, attribute: str, message: str) -> None:
        self.errors.setdefault(attribute, message.replace("{attribute}", field_label(attribute)))

    def text(self, attribute: str, *, required: bool = False) -> str | None:
        value = self.query.get(attribute)
        value = value.strip() if value is not None else None
        if not value:
            if required:
                self.add(attribute, "{attribute} cannot be blank.")
            return None
        return value

    def decimal(self, attribute: str, *, required: bool = False) -> Decimal | None:
        raw = self.text(attribute, required=required)
        if raw is None:
            return None
        if not _NUMBER.match(raw):
            self.add(attribute, "{attribute} must be a number.")
            return None
        try:
            value = Decimal(raw.strip())
        except InvalidOperation:
            self.add(attribute, "{attribute} must be a number.")
            return None
        if value <= 0:
            self.add(attribute, '{attribute} must be greater than "0".')
            return None
        return value

    @staticmethod
    def is_integer(raw: str) -> bool:
        """Yii's integer validator: optional sign, digits, surrounding blanks."""
        return bool(_INTEGER.fullmatch(raw))

    def integer(self, attribute: str, *, minimum: int) -> int | None:
        raw = self.text(attribute)
        if raw is None:
            return None
        if not _INTEGER.fullmatch(raw):
            self.add(attribute, "{attribute} must be an integer.")
            return None
        value = int(raw)
        if value < minimum:
            self.add(attribute, f"{{attribute}} must be no less than {minimum}.")
            return None
        return value

    def email(self, attribute: str = "email", *, required: bool = False) -> str | None:
        value = self.text(attribute, required=required)
        if value is not None and not _EMAIL.match(value):
            self.add(attribute, "{attribute} is not a valid email address.")
            return None
        return value

    def url(self, attribute: str) -> str | None:
        """Lenient on purpose: loopback callback URLs (no dot in the host) must work in tests."""
        value = self.text(attribute)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            self.add(attribute, "{attribute} is not a valid URL.")
            return None
        return value

    def choice(self, attribute: str, allowed: tuple[str, ...], default: str | None = None) -> str | None:
        value = self.query.get(attribute)
        if value is None or value == "":
            return default
        if value not in allowed:
            self.add(attribute, "{attribute} is invalid.")
            return None
        return value

    def csv(self, attribute: str) -> list[str]:
        raw = self.text(attribute)
        return [] if raw is None else [part.strip() for part in raw.split(",") if part.strip()]

    def raise_if_any(self) -> None:
        if self.errors:
            raise validation_error(self.errors)


def flag(query: Mapping[str, str], name: str) -> bool:
    return query.get(name, "").strip().lower() in TRUE_WORDS


def coin_or_105(cid: str | None, attribute: str = "currency", *, invoiceable: bool = False) -> Coin:
    """The coin for a ``psys_cid``; unknown (or, for invoices, switched-off) coins are Plisio's 105."""
    coin = COINS.get(cid or "")
    if coin is None or (invoiceable and (coin.hidden or coin.maintenance)):
        raise unsupported_currency(attribute, cid or "")
    return coin


def fiat_or_105(code: str, attribute: str = "fiat") -> str:
    fiat = code.upper()
    if fiat not in FIATS:
        raise unsupported_currency(attribute, code)
    return fiat


def amounts_for(errors: FieldErrors, *, required: bool) -> tuple[list[str], list[Decimal]]:
    """``addresses`` + ``amounts`` CSV pair of the fee/commission routes, same length, amounts > 0."""
    addresses = errors.csv("addresses")
    raw_amounts = errors.csv("amounts")
    if required and not addresses:
        errors.add("addresses", "{attribute} cannot be blank.")
    if required and not raw_amounts:
        errors.add("amounts", "{attribute} cannot be blank.")
    amounts: list[Decimal] = []
    for raw in raw_amounts:
        try:
            value = Decimal(raw) if _NUMBER.match(raw) else None
        except InvalidOperation:
            value = None
        if value is None or value <= 0:
            errors.add("amounts", "{attribute} must be a list of positive numbers.")
            return addresses, []
        amounts.append(value)
    if addresses and amounts and len(addresses) != len(amounts):
        errors.add("amounts", "{attribute} must have as many values as Addresses.")
    return addresses, amounts
