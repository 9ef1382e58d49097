"""The 13 Plisio tools, each declared once: name, description for the model, args, handler, flags.

The two fee-plan tools call the same route (``/operations/fee-plan/{psys_cid}``): one gives a
normalised summary (plan -> fee and unit) for comparing coins, the other the chain-specific
configuration. There is deliberately no withdrawal tool.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tools.errors import PlisioError, PlisioExistingInvoice, PlisioProtocolError, ToolDefinitionError
from tools.plisio import views
from tools.plisio.args import (
    CoinArgs,
    CreateInvoiceArgs,
    EstimateCommissionArgs,
    EstimateFeeArgs,
    FiatArgs,
    InvoiceArgs,
    InvoiceByEmailArgs,
    ListTransactionsArgs,
    NoArgs,
    SupportedCurrenciesArgs,
    TransactionArgs,
)
from tools.plisio.existing import InvoiceAsk, Unverifiable
from tools.plisio.models import WithdrawalType
from tools.registry import ContextFactory, Money, Registry, Tool

if TYPE_CHECKING:  # the handlers only call methods on it; listing the tools needs no HTTP client
    from tools.plisio.client import PlisioClient


@dataclass(frozen=True)
class PlisioContext:
    """What a Plisio tool call runs with. Built per call by whoever dispatches it.

    ``order_number`` comes from the caller's effects ledger (derived from the effect's key, never
    from model text): every attempt of one effect sends the same order number, and with
    ``return_existing=1`` Plisio answers a repeat with the invoice it already made.
    """

    client: PlisioClient
    order_number: str | None = None
    callback_url: str | None = None


def plisio_contexts(
    client_for: Callable[[str], Awaitable[PlisioClient]], callback_url: str | None
) -> ContextFactory[PlisioContext]:
    """The gate's :class:`~tools.registry.ContextFactory` for Plisio tools: ``client_for(persona)`` gives the
    client that persona may use right now (it raises when it may use none)."""

    async def context(persona: str, order_number: str | None = None) -> PlisioContext:
        return PlisioContext(
            client=await client_for(persona), order_number=order_number, callback_url=callback_url
        )

    return context


def _order_number(ctx: PlisioContext) -> str:
    if not ctx.order_number:
        raise ToolDefinitionError("plisio_create_invoice needs an order number from the effects ledger")
    return ctx.order_number


def invoice_amount(args: CreateInvoiceArgs) -> Money:
    """The price the policy caps: the fiat price, or the amount of the coin."""
    if args.source_amount is not None and args.source_currency is not None:
        return Money(args.source_amount, args.source_currency, fiat=True)
    assert args.amount is not None
    assert args.currency is not None
    return Money(args.amount, args.currency, fiat=False)


async def create_invoice(args: CreateInvoiceArgs, ctx: PlisioContext) -> dict[str, Any]:
    order_number = _order_number(ctx)
    created = await ctx.client.create_invoice(
        order_number=order_number,
        order_name=args.order_name,
        currency=args.currency,
        amount=args.amount,
        source_currency=args.source_currency,
        source_amount=args.source_amount,
        allowed_psys_cids=args.allowed_psys_cids,
        description=args.description,
        callback_url=ctx.callback_url,
        email=args.email,
        expire_min=args.expire_min,
    )
    return views.invoice_created(created, order_number)


def _ask(args: CreateInvoiceArgs, order_number: str) -> InvoiceAsk:
    return InvoiceAsk(
        order_number, args.amount, args.currency, args.source_amount, args.source_currency, args.email
    )


async def find_invoice(args: CreateInvoiceArgs, ctx: PlisioContext) -> dict[str, Any] | None:
    """The invoice an unanswered create made, found by its order number; None if Plisio has none.

    A failed search raises (PlisioError): "could not look" is not "not there"; so does a page with a row
    that could not be read (it may be the one), and an invoice whose record cannot be checked. One found
    that is not the one asked for (expired, another price) raises PlisioExistingInvoice."""
    order_number = _order_number(ctx)
    page = await ctx.client.list_operations(search=order_number, limit=5)
    found = [op for op in page.operations if op.params is not None and op.params.order_number == order_number]
    found.sort(key=lambda op: op.status == "cancelled duplicate")  # the live one first after a coin switch
    if not found and page.skipped:
        raise PlisioProtocolError(
            f"{len(page.skipped)} row(s) of the search for order number {order_number} could not be read",
            route="/operations",
        )
    if not found:
        return None
    op = found[0]
    try:
        differences = _ask(args, order_number).against(op)
    except Unverifiable as exc:
        raise PlisioProtocolError(str(exc), route="/operations") from None
    if differences:  # the order number's invoice, but not this one (expired, another price)
        raise PlisioExistingInvoice(
            f"invoice {op.id} has order number {order_number} but is not the one asked for: "
            f"{'; '.join(differences)}", route="/operations", txn_id=op.id, differences=differences,
        )  # fmt: skip
    result = {**views.operation(op), "txn_id": op.id, "order_number": order_number,
              "recovered": "the answer was lost; the invoice was found by its order number"}  # fmt: skip
    # The payment link, as the create would have answered it (a read: safe to retry). If the read
    # fails, the invoice is applied all the same; plisio_get_invoice gives the link later.
    with contextlib.suppress(PlisioError):
        result["invoice_url"] = (await ctx.client.get_invoice(op.id)).invoice.invoice_url
    return result


async def estimate_fee(args: EstimateFeeArgs, ctx: PlisioContext) -> dict[str, Any]:
    fee = await ctx.client.estimate_fee(
        args.psys_cid, addresses=args.addresses, amounts=args.amounts, fee_plan=args.fee_plan
    )
    return views.fee_estimate(fee)


async def get_balance(args: CoinArgs, ctx: PlisioContext) -> dict[str, Any]:
    return views.balance(await ctx.client.get_balance(args.psys_cid), args.psys_cid)


async def estimate_commission(args: EstimateCommissionArgs, ctx: PlisioContext) -> dict[str, Any]:
    kind = args.type or (
        WithdrawalType.CASH_OUT if len(args.addresses) == 1 else WithdrawalType.MASS_CASH_OUT
    )
    com = await ctx.client.estimate_commission(
        args.psys_cid, addresses=args.addresses, amounts=args.amounts, type=kind, fee_plan=args.fee_plan
    )
    return views.commission(com, args.psys_cid)


async def get_currencies_by_fiat(args: FiatArgs, ctx: PlisioContext) -> dict[str, Any]:
    currencies = await ctx.client.get_currencies(args.fiat)
    return {"fiat": args.fiat, "currencies": [views.currency(c) for c in currencies if not c.hidden]}


async def get_fee_plans(args: CoinArgs, ctx: PlisioContext) -> dict[str, Any]:
    plans = await ctx.client.get_fee_plans(args.psys_cid)
    return {
        "psys_cid": args.psys_cid,
        "plans": {name: views.fee_plan_summary(plan, args.psys_cid) for name, plan in plans.items()},
    }


async def get_fee_plan_details(args: CoinArgs, ctx: PlisioContext) -> dict[str, Any]:
    plans = await ctx.client.get_fee_plans(args.psys_cid)
    return {
        "psys_cid": args.psys_cid,
        "plans": {name: views.fee_plan_details(p) for name, p in plans.items()},
    }


async def get_invoice(args: InvoiceArgs, ctx: PlisioContext) -> dict[str, Any]:
    return views.invoice_details(await ctx.client.get_invoice(args.invoice_id))


async def get_invoice_by_email(args: InvoiceByEmailArgs, ctx: PlisioContext) -> dict[str, Any]:
    return views.invoice_details(await ctx.client.get_invoice_by_email(args.invoice_id, args.email))


async def get_shop_info(args: NoArgs, ctx: PlisioContext) -> dict[str, Any]:
    return views.shop(await ctx.client.get_shop())


async def list_transactions(args: ListTransactionsArgs, ctx: PlisioContext) -> dict[str, Any]:
    page = await ctx.client.list_operations(
        page=args.page,
        limit=args.limit,
        type=args.type,
        status=args.status,
        currency=args.currency,
        search=args.search,
    )
    return views.operations_page(page)


async def get_supported_currencies(args: SupportedCurrenciesArgs, ctx: PlisioContext) -> dict[str, Any]:
    currencies = await ctx.client.get_currencies()
    shown = [c for c in currencies if args.include_hidden or not c.hidden]
    return {"currencies": [views.currency(c) for c in shown]}


async def get_transaction(args: TransactionArgs, ctx: PlisioContext) -> dict[str, Any]:
    return views.operation(await ctx.client.get_operation(args.operation_id))


PLISIO_TOOLS: tuple[Tool[Any, PlisioContext], ...] = (
    Tool(
        name="plisio_create_invoice",
        description=(
            "Create a payment invoice (a link the customer pays) for order_name, priced in a fiat (source_amount + "
            "source_currency) or a coin (amount + currency). Returns txn_id, invoice_url, status. Capped; may be held "
            "for a person's approval."
        ),
        args_model=CreateInvoiceArgs,
        handler=create_invoice,
        read_only=False,
        side_effect="creates_invoice",
        idempotency="order_number derived from the effect key; return_existing=1",
        amount=invoice_amount,
        lookup=find_invoice,
    ),
    Tool(
        name="plisio_estimate_fee",
        description=(
            "Network (miner) fee to send amounts of a coin to addresses, per fee plan. For Plisio's own charge on "
            "a payout too, use plisio_estimate_commission."
        ),
        args_model=EstimateFeeArgs,
        handler=estimate_fee,
    ),
    Tool(
        name="plisio_get_balance",
        description=(
            "The shop's balance in one coin. For rates of every coin use plisio_get_currencies_by_fiat."
        ),
        args_model=CoinArgs,
        handler=get_balance,
    ),
    Tool(
        name="plisio_estimate_commission",
        description=(
            "What sending amounts of a coin out of the shop costs: Plisio's commission and the network fee. For "
            "the network fee alone use plisio_estimate_fee."
        ),
        args_model=EstimateCommissionArgs,
        handler=estimate_commission,
    ),
    Tool(
        name="plisio_get_currencies_by_fiat",
        description=(
            "The shop's enabled coins with their rates in one fiat (e.g. EUR) and minimums: for converting between "
            "that fiat and a coin."
        ),
        args_model=FiatArgs,
        handler=get_currencies_by_fiat,
    ),
    Tool(
        name="plisio_get_fee_plans",
        description=(
            "A coin's fee plans (e.g. normal, priority) with each plan's fee and unit: a summary to choose a plan "
            "by. The chain settings behind them: plisio_get_fee_plan_details."
        ),
        args_model=CoinArgs,
        handler=get_fee_plans,
    ),
    Tool(
        name="plisio_get_fee_plan_details",
        description=(
            "The chain-specific settings behind each fee plan of a coin (e.g. gas price and limit, fee rate). A "
            "plain fee per plan: plisio_get_fee_plans."
        ),
        args_model=CoinArgs,
        handler=get_fee_plan_details,
    ),
    Tool(
        name="plisio_get_invoice",
        description=(
            "One invoice by txn_id as its payment page has it: status, amount, received, remaining, payer email, "
            "expiry, link. For its ledger record (fee, commission, confirmations) use plisio_get_transaction."
        ),
        args_model=InvoiceArgs,
        handler=get_invoice,
    ),
    Tool(
        name="plisio_get_invoice_by_email",
        description=(
            "Like plisio_get_invoice, but only if the payer's email matches: for a customer asking about their own "
            "invoice."
        ),
        args_model=InvoiceByEmailArgs,
        handler=get_invoice_by_email,
    ),
    Tool(
        name="plisio_get_shop_info",
        description=(
            "The shop itself: name, link, verified, white-label, who pays the commission and any extra commission."
        ),
        args_model=NoArgs,
        handler=get_shop_info,
    ),
    Tool(
        name="plisio_list_transactions",
        description=(
            "The shop's operations (invoices, deposits, withdrawals), newest first, one page at a time, filtered by "
            "type, status, coin or search (txid, order number, email); says the page and the total count."
        ),
        args_model=ListTransactionsArgs,
        handler=list_transactions,
    ),
    Tool(
        name="plisio_get_supported_currencies",
        description=(
            "The coins the shop accepts, each with its USD rate and minimum amount (include_hidden: disabled ones "
            "too)."
        ),
        args_model=SupportedCurrenciesArgs,
        handler=get_supported_currencies,
    ),
    Tool(
        name="plisio_get_transaction",
        description=(
            "One operation (invoice, deposit or withdrawal) by id as Plisio's ledger holds it: status, amounts, "
            "fee, commission, confirmations, blockchain links."
        ),
        args_model=TransactionArgs,
        handler=get_transaction,
    ),
)


def plisio_registry() -> Registry[PlisioContext]:
    return Registry(PLISIO_TOOLS)
