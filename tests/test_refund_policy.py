"""The refund policy evaluator, pure: every clause, both sides of every boundary, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from persona.flows.refund_policy import (
    Clause,
    PriorDecision,
    RefundDecision,
    RefundFacts,
    contradicts,
    evaluate,
    facts_from_operation,
    policy_explanation,
    rule_text,
)
from persona.settings import RefundPolicy
from tools.plisio.models import Operation

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
TXN = "6b02d94077d5759d69cd2483"
POLICY = RefundPolicy()  # the defaults, identical to config.yaml: 14 days, 100 / 2000 USD, ...
ALL_CLAUSES = {v for k, v in vars(Clause).items() if k.isupper()}


def facts(**changes: Any) -> RefundFacts:
    base = RefundFacts(
        txn_id=TXN, status="completed", psys_cid="BTC", expected=Decimal("0.00100000"),
        received=Decimal("0.00100000"), fiat_amount=Decimal("50.00"), fiat_currency="USD",
        paid_at=NOW - timedelta(days=2), reason="changed my mind", requested_by="alice@example.com",
        order_number="20261", wallet_hash="bc1qexampleexampleexampleexample",
    )  # fmt: skip
    return replace(base, **changes)


def decide(f: RefundFacts, *, prior: list[PriorDecision] | None = None, **policy: Any) -> RefundDecision:
    decision = evaluate(POLICY.model_copy(update=policy), f, now=NOW, prior=prior or [])
    assert decision.clause in ALL_CLAUSES
    assert decision.rule_text == rule_text(POLICY.model_copy(update=policy), decision.clause)
    return decision


# -- auto_approve_up_to and max_amount ------------------------------------------------------------


def test_at_the_auto_approve_limit_is_approved_with_the_amounts() -> None:
    d = decide(facts(fiat_amount=Decimal("100.00")))
    assert (d.verdict, d.clause) == ("approve", Clause.AUTO_APPROVE_UP_TO)
    assert d.refund_amount == Decimal("0.00100000") and d.refund_currency == "BTC"
    assert d.refund_value == Decimal("100.00") and d.value_currency == "USD"
    assert d.refund_fiat == Decimal("100.00") and d.refund_fiat_currency == "USD"
    assert "100 USD" in d.rule_text and "approved automatically" in d.rule_text


def test_a_cent_above_the_auto_approve_limit_goes_to_a_person() -> None:
    d = decide(facts(fiat_amount=Decimal("100.01")))
    assert (d.verdict, d.clause) == ("escalate", Clause.AUTO_APPROVE_UP_TO)
    assert d.refund_value == Decimal("100.01") and d.refund_amount == Decimal("0.00100000")


def test_max_amount_is_inclusive_and_above_it_is_denied() -> None:
    at = decide(facts(fiat_amount=Decimal("2000.00")))
    assert (at.verdict, at.clause) == ("escalate", Clause.AUTO_APPROVE_UP_TO)
    above = decide(facts(fiat_amount=Decimal("2000.01")))
    assert (above.verdict, above.clause) == ("deny", Clause.MAX_AMOUNT)
    assert above.refund_amount is None and above.refund_value is None
    assert "2000.01 USD" in above.detail and "2000 USD" in above.rule_text


def test_configured_limits_are_used() -> None:
    d = decide(facts(fiat_amount=Decimal("30")), auto_approve_up_to=Decimal("25"), max_amount=Decimal("29"))
    assert (d.verdict, d.clause) == ("deny", Clause.MAX_AMOUNT)
    d = decide(facts(fiat_amount=Decimal("0.5")), auto_approve_up_to=Decimal("0"))
    assert (d.verdict, d.clause) == ("escalate", Clause.AUTO_APPROVE_UP_TO)


# -- window_days ------------------------------------------------------------------------------------


def test_exactly_window_days_old_is_inside_the_window() -> None:
    d = decide(facts(paid_at=NOW - timedelta(days=14)))
    assert (d.verdict, d.clause) == ("approve", Clause.AUTO_APPROVE_UP_TO)


def test_a_second_past_the_window_is_denied() -> None:
    d = decide(facts(paid_at=NOW - timedelta(days=14, seconds=1)))
    assert (d.verdict, d.clause) == ("deny", Clause.WINDOW_DAYS)
    assert "14.0 days" in d.detail and "within the last 14 days" in d.rule_text
    assert d.refund_amount is None


def test_window_follows_the_configuration_and_an_unknown_payment_time_escalates() -> None:
    d = decide(facts(paid_at=NOW - timedelta(days=20)), window_days=30)
    assert d.verdict == "approve"
    d = decide(facts(paid_at=NOW - timedelta(hours=1)), window_days=0)
    assert (d.verdict, d.clause) == ("deny", Clause.WINDOW_DAYS)
    d = decide(facts(paid_at=None))
    assert (d.verdict, d.clause) == ("escalate", Clause.WINDOW_DAYS)


# -- eligible_statuses and underpaid ----------------------------------------------------------------


@pytest.mark.parametrize(
    "status", ["new", "pending", "pending internal", "cancelled", "error", "cancelled duplicate", "expired"]
)
def test_statuses_without_money_kept_are_not_refundable(status: str) -> None:
    d = decide(facts(status=status, received=Decimal(0)))
    assert (d.verdict, d.clause) == ("deny", Clause.ELIGIBLE_STATUSES)
    assert repr(status) in d.detail and "completed or mismatch" in d.rule_text


def test_eligible_statuses_come_from_the_configuration() -> None:
    d = decide(facts(status="mismatch", received=Decimal("0.0012")), eligible_statuses=("completed",))
    assert (d.verdict, d.clause) == ("deny", Clause.ELIGIBLE_STATUSES)
    d = decide(
        facts(status="pending", received=Decimal("0.0004")), eligible_statuses=("completed", "pending")
    )
    assert d.verdict == "approve"
    d = decide(facts(received=Decimal(0)))
    assert (d.verdict, d.clause) == ("deny", Clause.ELIGIBLE_STATUSES)
    assert "nothing was received" in d.detail


def underpaid(**changes: Any) -> RefundFacts:
    base = {"status": "expired", "expected": Decimal("0.002"), "received": Decimal("0.0015"),
            "fiat_amount": Decimal("120.00")}  # fmt: skip
    return facts(**(base | changes))


def test_underpaid_escalates_by_default() -> None:
    d = decide(underpaid())
    assert (d.verdict, d.clause) == ("escalate", Clause.UNDERPAID)
    assert "0.0015 of 0.002 BTC received" in d.detail and "go to a person" in d.rule_text


def test_underpaid_deny_mode() -> None:
    d = decide(underpaid(), underpaid="deny")
    assert (d.verdict, d.clause) == ("deny", Clause.UNDERPAID)
    assert "are not refunded" in d.rule_text and d.refund_amount is None


def test_underpaid_refund_received_mode_refunds_what_arrived_valued_pro_rata() -> None:
    d = decide(underpaid(), underpaid="refund_received")
    assert (d.verdict, d.clause) == ("approve", Clause.AUTO_APPROVE_UP_TO)
    assert d.refund_amount == Decimal("0.0015") and d.refund_value == Decimal("90.00")
    big = decide(underpaid(fiat_amount=Decimal("400")), underpaid="refund_received")
    assert (big.verdict, big.clause, big.refund_value) == (
        "escalate",
        Clause.AUTO_APPROVE_UP_TO,
        Decimal("300.00"),
    )
    old = decide(underpaid(paid_at=NOW - timedelta(days=15)), underpaid="refund_received")
    assert (old.verdict, old.clause) == ("deny", Clause.WINDOW_DAYS)


def test_underpaid_rule_is_checked_before_the_window() -> None:
    d = decide(underpaid(paid_at=NOW - timedelta(days=60)))
    assert (d.verdict, d.clause) == ("escalate", Clause.UNDERPAID)


# -- mismatch (overpaid) -------------------------------------------------------------------------


def overpaid(**changes: Any) -> RefundFacts:
    base = {"status": "mismatch", "expected": Decimal("0.00100000"), "received": Decimal("0.00125000"),
            "fiat_amount": Decimal("80.00")}  # fmt: skip
    return facts(**(base | changes))


def test_mismatch_overpayment_only_refunds_the_overpaid_part() -> None:
    d = decide(overpaid())
    assert (d.verdict, d.clause) == ("approve", Clause.AUTO_APPROVE_UP_TO)
    assert d.refund_amount == Decimal("0.00025000") and d.refund_value == Decimal("20.00")
    assert "only the overpaid 0.00025000 BTC" in d.detail


def test_mismatch_full_refunds_everything_received() -> None:
    d = decide(overpaid(), mismatch="full")
    assert d.refund_amount == Decimal("0.00125000") and d.refund_value == Decimal("100.00")
    assert (d.verdict, d.clause) == ("approve", Clause.AUTO_APPROVE_UP_TO)
    above = decide(overpaid(fiat_amount=Decimal("81")), mismatch="full")
    assert above.verdict == "escalate" and above.refund_value == Decimal("101.25")


def test_mismatch_escalate_mode() -> None:
    d = decide(overpaid(), mismatch="escalate")
    assert (d.verdict, d.clause) == ("escalate", Clause.MISMATCH)
    assert "overpaid by 0.00025000 BTC" in d.detail and "go to a person" in d.rule_text


def test_mismatch_with_nothing_overpaid_is_denied() -> None:
    d = decide(overpaid(received=Decimal("0.00100000")))
    assert (d.verdict, d.clause) == ("deny", Clause.MISMATCH)


def test_mismatch_too_old_is_denied_by_the_window_first() -> None:
    d = decide(overpaid(paid_at=NOW - timedelta(days=30)), mismatch="escalate")
    assert (d.verdict, d.clause) == ("deny", Clause.WINDOW_DAYS)


# -- escalate_reasons --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "word"),
    [("This was FRAUD", "fraud"), ("Bank chargeback filed", "chargeback"), ("my card was Stolen!", "stolen"),
     ("I will call my lawyer", "lawyer"), ("a DISPUTED charge", "dispute")],
)  # fmt: skip
def test_escalate_reasons_match_case_insensitively(reason: str, word: str) -> None:
    d = decide(facts(reason=reason))
    assert (d.verdict, d.clause) == ("escalate", Clause.ESCALATE_REASONS)
    assert repr(word) in d.detail


def test_escalate_reasons_beat_later_clauses_and_follow_the_configuration() -> None:
    d = decide(facts(reason="fraud", paid_at=NOW - timedelta(days=90), fiat_amount=Decimal("5000")))
    assert (d.verdict, d.clause) == ("escalate", Clause.ESCALATE_REASONS)
    d = decide(facts(reason="wrong size"), escalate_reasons=("Wrong Size",))
    assert d.clause == Clause.ESCALATE_REASONS
    d = decide(facts(reason="fraud"), escalate_reasons=())
    assert d.verdict == "approve"


# -- one_per_invoice ---------------------------------------------------------------------------------


def test_an_earlier_approved_or_escalated_request_denies_a_second_one() -> None:
    for earlier in ("approve", "escalate"):
        prior = [PriorDecision("d1", TXN, earlier, Clause.AUTO_APPROVE_UP_TO)]
        d = decide(facts(reason="fraud"), prior=prior)
        assert (d.verdict, d.clause) == ("deny", Clause.ONE_PER_INVOICE)
        assert "d1" in d.detail and earlier in d.detail


def test_an_earlier_denial_or_another_invoice_does_not_block() -> None:
    prior = [
        PriorDecision("d1", TXN, "deny", Clause.WINDOW_DAYS),
        PriorDecision("d2", "other", "approve", "x"),
    ]
    d = decide(facts(), prior=prior)
    assert d.verdict == "approve"


# -- currency conversion -------------------------------------------------------------------------


def test_other_fiat_is_converted_with_the_rate() -> None:
    eur = facts(fiat_amount=Decimal("90.00"), fiat_currency="EUR", rates={"EUR": Decimal("1.0852")})
    d = decide(eur)
    assert (d.verdict, d.refund_value, d.value_currency) == ("approve", Decimal("97.67"), "USD")
    assert d.refund_fiat == Decimal("90.00") and d.refund_fiat_currency == "EUR"
    assert "90.00 EUR = 97.67 USD" in d.detail
    d = decide(replace(eur, fiat_amount=Decimal("95.00")))
    assert (d.verdict, d.refund_value) == ("escalate", Decimal("103.09"))


def test_a_missing_rate_escalates_and_names_the_currency_clause() -> None:
    d = decide(facts(fiat_amount=Decimal("10"), fiat_currency="PLN", rates={"EUR": Decimal("1.08")}))
    assert (d.verdict, d.clause) == ("escalate", Clause.CURRENCY)
    assert "no PLN->USD rate" in d.detail and d.refund_amount == Decimal("0.00100000")
    assert d.refund_value is None and "valued in USD" in d.rule_text


def test_a_crypto_priced_invoice_is_valued_with_the_coin_rate() -> None:
    crypto = facts(fiat_amount=None, fiat_currency=None, rates={"BTC": Decimal("60000")})
    d = decide(crypto)
    assert (d.verdict, d.refund_value, d.refund_fiat_currency) == ("approve", Decimal("60.00"), "BTC")
    d = decide(replace(crypto, rates={}))
    assert (d.verdict, d.clause) == ("escalate", Clause.CURRENCY)


def test_policy_in_another_currency() -> None:
    d = decide(facts(fiat_amount=Decimal("90"), fiat_currency="EUR"), currency="EUR")
    assert (d.refund_value, d.value_currency, d.verdict) == (Decimal("90.00"), "EUR", "approve")


# -- reading facts, explanations -------------------------------------------------------------------


def op(**fields: Any) -> Operation:
    base: dict[str, Any] = {
        "id": TXN, "type": "invoice", "status": "completed", "psys_cid": "BTC", "amount": "0.001",
        "actual_sum": "0.001", "created_at_utc": int((NOW - timedelta(days=3)).timestamp()),
        "finished_at_utc": int((NOW - timedelta(days=2)).timestamp()), "wallet_hash": "bc1qexample",
        "params": {"order_number": "20261", "order_name": "Font", "email": "a@example.com",
                   "source_amount": "49.00", "source_currency": "EUR"},
    }  # fmt: skip
    return Operation.model_validate(base | fields)


def test_facts_are_read_from_the_operation() -> None:
    f = facts_from_operation(op(), reason="r", requested_by="u", rates={"EUR": Decimal("1.1")})
    assert (f.fiat_amount, f.fiat_currency, f.pricing_currency) == (Decimal("49.00"), "EUR", "EUR")
    assert f.paid_at == NOW - timedelta(days=2) and f.received == Decimal("0.001")
    assert (f.order_number, f.email, f.wallet_hash) == ("20261", "a@example.com", "bc1qexample")
    no_finish = facts_from_operation(op(finished_at_utc=None), reason="r", requested_by="u")
    assert no_finish.paid_at == NOW - timedelta(days=3)
    mismatch = facts_from_operation(op(status="mismatch", actual_sum="0.0013"), reason="r", requested_by="u")
    assert mismatch.overpaid == Decimal("0.0003") and mismatch.to_dict()["overpaid"] == "0.0003"
    under = facts_from_operation(op(status="expired", actual_sum="0.0004"), reason="r", requested_by="u")
    assert under.underpaid and not mismatch.underpaid
    blank = facts_from_operation(op(actual_sum=None), reason="r", requested_by="u")
    assert blank.received == Decimal("0.001"), "a completed invoice without actual_sum received its amount"
    unpaid = facts_from_operation(op(status="expired", actual_sum=None), reason="r", requested_by="u")
    assert unpaid.received == 0 and not unpaid.underpaid


def test_policy_explanation_names_decision_rule_and_amount() -> None:
    text = policy_explanation(decide(facts()))
    assert text.startswith("Approved under flows.refunds.auto_approve_up_to:")
    assert "0.00100000 BTC (about 50.00 USD)" in text
    assert policy_explanation(decide(facts(reason="fraud"))).startswith("Escalated to a person")


@pytest.mark.parametrize(
    ("text", "verdict", "claimed"),
    [
        ("Good news: your refund has been approved and will be sent today.", "deny", "approve"),
        ("The refund is approved.", "escalate", "approve"),
        ("This refund was denied: the invoice is too old.", "approve", "deny"),
        ("Escalated to a person for review.", "approve", "escalate"),
        ("Denied: paid 20 days ago. It would be approved if it were within 14 days.", "deny", None),
        ("Denied. The refund is not approved because the window has passed.", "deny", None),
        ("Escalated to a person: refunds are approved automatically up to 100 USD.", "escalate", None),
        ("Approved under the policy; it did not need to be escalated.", "approve", None),
        ("The request cannot be approved automatically, so it is escalated to a person.", "escalate", None),
    ],
)
def test_contradicting_explanations_are_detected(text: str, verdict: str, claimed: str | None) -> None:
    assert contradicts(text, verdict) == claimed


def test_every_clause_decides_in_its_order() -> None:
    """One case per clause, each only just triggering it: together they name every clause."""
    prior = [PriorDecision("d0", TXN, "approve", Clause.AUTO_APPROVE_UP_TO)]
    cases: list[tuple[RefundFacts, dict[str, Any], list[PriorDecision], str, str]] = [
        (facts(reason="fraud"), {}, prior, "deny", Clause.ONE_PER_INVOICE),
        (facts(reason="fraud"), {}, [], "escalate", Clause.ESCALATE_REASONS),
        (underpaid(paid_at=NOW - timedelta(days=99)), {}, [], "escalate", Clause.UNDERPAID),
        (facts(status="cancelled", received=Decimal(0)), {}, [], "deny", Clause.ELIGIBLE_STATUSES),
        (
            overpaid(paid_at=NOW - timedelta(days=15)),
            {"mismatch": "escalate"},
            [],
            "deny",
            Clause.WINDOW_DAYS,
        ),
        (overpaid(fiat_currency="PLN"), {"mismatch": "escalate"}, [], "escalate", Clause.MISMATCH),
        (facts(fiat_amount=Decimal("5000"), fiat_currency="PLN"), {}, [], "escalate", Clause.CURRENCY),
        (facts(fiat_amount=Decimal("5000")), {}, [], "deny", Clause.MAX_AMOUNT),
        (facts(fiat_amount=Decimal("500")), {}, [], "escalate", Clause.AUTO_APPROVE_UP_TO),
        (facts(), {}, [], "approve", Clause.AUTO_APPROVE_UP_TO),
    ]
    named = set()
    for f, policy, earlier, verdict, clause in cases:
        d = decide(f, prior=earlier, **policy)
        assert (d.verdict, d.clause) == (verdict, clause), (f, policy)
        named.add(d.clause)
    assert named == ALL_CLAUSES
