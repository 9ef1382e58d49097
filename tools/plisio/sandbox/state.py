"""The live ledger of one sandbox shop: operations, balances, and the invoice state machine.

A real Plisio invoice moves ``new -> pending -> completed|mismatch`` or ends ``expired``,
``cancelled`` or ``error``; a terminal invoice never moves again. Mutations hold a lock because the
sandbox may be served by uvicorn in one thread while a test drives it from another.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from tools.plisio.sandbox import identifiers
from tools.plisio.sandbox.catalog import COINS
from tools.plisio.sandbox.records import CREDITED, Customer, Operation, Shop, Tx


class SandboxStateError(Exception):
    """A control action the sandbox refuses (maps to a 4xx on the control endpoints)."""

    status = 400


class UnknownInvoiceError(SandboxStateError):
    status = 404


class InvoiceFinalError(SandboxStateError):
    """The invoice is already terminal: Plisio never moves a finished invoice again."""

    status = 409


class ControlInputError(SandboxStateError):
    status = 422


@dataclass(frozen=True)
class OperationFilter:
    type: str | None = None
    status: str | None = None
    currency: str | None = None
    shop_id: str | None = None
    search: str | None = None

    def matches(self, op: Operation) -> bool:
        if self.type is not None and op.type != self.type:
            return False
        if self.status is not None and op.status != self.status:
            return False
        if self.currency is not None and op.psys_cid != self.currency:
            return False
        if self.shop_id is not None and op.shop_id != self.shop_id:
            return False
        if self.search:
            needle = self.search.casefold()
            haystack = [op.id, op.order_number or "", op.email or "", *(tx.txid for tx in op.txs)]
            return any(needle in text.casefold() for text in haystack)
        return True


def credit_for(op: Operation) -> Decimal:
    """What a finished invoice adds to the balance: the received coins minus their commission share."""
    if op.amount <= 0 or op.received <= 0:
        return Decimal(0)
    return op.coin.q(op.received * op.invoice_sum / op.amount, ROUND_DOWN)


class ShopState:
    """Operations by id (insertion order), balances by psys_cid, customers, and the id source."""

    def __init__(self, shop: Shop, customers: Iterable[Customer], runtime_seed: str) -> None:
        self.shop = shop
        self.customers = list(customers)
        self.operations: dict[str, Operation] = {}
        self.balances: dict[str, Decimal] = {cid: Decimal(0) for cid in COINS}
        self.rng = random.Random(runtime_seed)
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ reading

    def add(self, op: Operation) -> None:
        with self.lock:
            self.operations[op.id] = op

    def get(self, op_id: str) -> Operation | None:
        return self.operations.get(op_id)

    def invoice(self, txn_id: str) -> Operation:
        op = self.operations.get(txn_id)
        if op is None or not op.is_invoice:
            raise UnknownInvoiceError(f"no invoice {txn_id!r}")
        return op

    def by_order_number(self, order_number: str) -> Operation | None:
        """The live invoice for an order: the newest one that was not superseded by a coin switch."""
        with self.lock:
            found = [
                op
                for op in self.operations.values()
                if op.is_invoice and op.order_number == order_number and op.status != "cancelled duplicate"
            ]
        return max(found, key=lambda op: (op.created_at, op.id), default=None)

    def newest_first(self, flt: OperationFilter) -> list[Operation]:
        with self.lock:
            ops = [op for op in self.operations.values() if flt.matches(op)]
        return sorted(ops, key=lambda op: (op.created_at, op.id), reverse=True)

    def new_id(self, created_at: int) -> str:
        with self.lock:
            while True:
                candidate = identifiers.object_id(self.rng, created_at)
                if candidate not in self.operations:
                    return candidate

    # --------------------------------------------------------------- lifecycle

    def _movable(self, txn_id: str) -> Operation:
        op = self.invoice(txn_id)
        if op.is_terminal:
            raise InvoiceFinalError(f"invoice {txn_id} is already {op.status!r}; Plisio never moves it again")
        return op

    def _finish(self, op: Operation, status: str, now: int) -> None:
        op.status = status
        op.finished_at = now
        if status in CREDITED:
            op.credited = credit_for(op)
            self.balances[op.psys_cid] += op.credited

    def pay(self, txn_id: str, amount: Decimal | None, now: int) -> Operation:
        """Receive coins: the rest of the amount (None), part of it (pending), or too much (mismatch)."""
        with self.lock:
            op = self._movable(txn_id)
            coin = op.coin
            paid = op.remaining if amount is None else coin.q(amount)
            if amount is not None and paid <= 0:
                raise ControlInputError(f"amount must be positive at {coin.precision} decimals, got {amount}")
            if paid > 0:
                op.txs.append(
                    Tx(
                        txid=identifiers.txid(self.rng, op.psys_cid),
                        value=paid,
                        block=now // 60,
                        created_at=now,
                        confirmations=coin.expected_confirmations,
                    )
                )
                op.received += paid
            if op.received < op.amount:
                op.status = "pending"
            else:
                self._finish(op, "completed" if op.received == op.amount else "mismatch", now)
            return op

    def expire(self, txn_id: str, now: int) -> Operation:
        """Time ran out; with some coins received this is Plisio's 'underpaid' expiry."""
        with self.lock:
            op = self._movable(txn_id)
            self._finish(op, "expired", now)
            return op

    def cancel(self, txn_id: str, now: int) -> Operation:
        with self.lock:
            op = self._movable(txn_id)
            self._finish(op, "cancelled", now)
            return op

    def fail(self, txn_id: str, now: int) -> Operation:
        with self.lock:
            op = self._movable(txn_id)
            self._finish(op, "error", now)
            return op

    def due_for_expiry(self, now: int) -> list[str]:
        """Open invoices whose expiry has passed, oldest first."""
        with self.lock:
            due = [
                op
                for op in self.operations.values()
                if op.is_invoice and not op.is_terminal and op.expire_at is not None and op.expire_at <= now
            ]
        return [op.id for op in sorted(due, key=lambda op: (op.expire_at or 0, op.id))]
