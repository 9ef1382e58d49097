"""Approvals keyed: a held call's row is sealed with an HMAC from the master key, so whoever can write the
database but not read the master key cannot change what an approver executes. Each edit an attacker with
SQL access would make is refused at approval, audited, and nothing reaches Plisio; an intact call still
executes, after a master-key rotation too. SQLite, and PostgreSQL when PERSONA_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from persona.app import Runtime
from persona.audit import AuditFilter
from persona.audit_keys import MacKeys
from persona.calls import call_context
from persona.clock import utcnow
from persona.effects import is_order_number
from persona.effects.keys import EffectKey, arguments_hash, normalised
from persona.effects.seal import Held, Seal
from persona.errors import Conflict
from persona.events import Event
from persona.masterkey import Keyring
from persona.server import create_app
from persona.store.engine import Store
from persona.store.schema import upgrade
from persona.store.tables import effects
from persona.users import Users
from tests.conftest import NOW
from tests.fixtures_store import as_before_migrations
from tests.harness import bearer, build_runtime, call
from tests.test_audit import raw
from tests.test_console import sign_in
from tests.test_vault import ADMIN, make_kit
from tools.plisio.sandbox import Sandbox

INVOICE = {"order_name": "ACME retainer", "source_amount": "400", "source_currency": "USD",
           "email": "billing@acme.example"}  # fmt: skip
ASKER, APPROVER = "bob@example.com", "carol@example.com"

pytestmark = pytest.mark.anyio


@pytest.fixture
def rt(store: Store, sandbox: Sandbox) -> Iterator[Runtime]:
    runtime = build_runtime(store, sandbox)
    yield runtime
    runtime.audit.close()


async def held(rt: Runtime, args: dict[str, Any] = INVOICE, user: str = ASKER) -> str:
    done = await rt.dispatcher.dispatch(
        call("plisio_create_invoice", args), call_context(rt.settings, "finance", user)
    )
    assert done.outcome.value == "pending_approval" and done.approval_id, done.content
    return done.approval_id


def invoices(sandbox: Sandbox) -> list[Any]:
    """Invoices this service created (the seeded shop has its own history)."""
    return [op for op in sandbox.state.operations.values() if is_order_number(op.order_number or "")]


def edit_arguments(store: Store, approval_id: str, **changes: str) -> None:
    """What an attacker with SQL access does: new arguments, and their digest recomputed to match."""
    ((arguments,),) = raw(store, "SELECT arguments FROM effects WHERE id = :i", i=approval_id)
    edited = {**json.loads(arguments), **changes}
    raw(store, "UPDATE effects SET arguments = :a, arguments_hash = :h WHERE id = :i",
        a=json.dumps(edited, sort_keys=True, separators=(",", ":")), h=arguments_hash(edited), i=approval_id)  # fmt: skip


def seal_events(rt: Runtime) -> list[Any]:
    rt.audit.flush_sync()
    return rt.audit.query(AuditFilter(event=Event.APPROVAL_REFUSED))


# -- the seal itself -----------------------------------------------------------------------------------


HELD = Held("e1", EffectKey("chat:conv_1", "0"), "100000000000000001", "plisio_create_invoice", "finance", ASKER, "conv_1",
            "call_1", "ab" * 32, Decimal("400"), "USD", "400.00 USD is above 250 USD")  # fmt: skip


def test_the_seal_binds_every_field_the_approver_decides_on() -> None:
    seal = Seal.of(MacKeys.of(Keyring(1, {1: b"m" * 32}), []))
    mac, version = seal.sign(HELD)
    assert version == 1 and seal.check(HELD, mac, 1).intact
    assert seal.check(replace(HELD, amount=Decimal("400.00")), mac, 1).intact, "240 and 240.00 are one amount"
    edits = {
        "id": "e2", "key": EffectKey("chat:conv_1", "1"), "order_number": "100000000000000002", "tool": "plisio_other",
        "persona": "growth", "user": APPROVER, "conversation_id": "conv_2", "model_call_id": "call_2",
        "arguments_hash": "cd" * 32, "amount": Decimal("4000"), "currency": "EUR", "reason": "within caps",
    }  # fmt: skip
    assert set(edits) == set(Held.__dataclass_fields__), "a new field of Held needs a case here"
    for name, value in edits.items():
        check = seal.check(replace(HELD, **{name: value}), mac, 1)
        assert check.state.value == "broken", name
    other = Seal.of(MacKeys.of(Keyring(1, {1: b"x" * 32}), []))
    assert other.check(HELD, mac, 1).state.value == "broken", "another master key cannot make a valid seal"
    assert seal.check(HELD, None, None).state.value == "unsealed"
    newer = seal.check(HELD, mac, 9)
    assert newer.state.value == "uncheckable" and "newer than this process's 1" in newer.why
    older = Seal.of(MacKeys.of(Keyring(3, {3: b"m" * 32}), [])).check(HELD, mac, 1)
    assert older.state.value == "uncheckable" and "version 1 is not in this master keyring" in older.why


def test_the_seal_key_is_not_the_audit_mac_key() -> None:
    macs = MacKeys.of(Keyring(1, {1: b"m" * 32}), [])
    assert Seal.of(macs).keys[1] != macs.keys[1], "a MAC of an audit record never doubles as a seal"
    assert normalised(Decimal("1E+2")) == "100"


# -- edits of a held row, refused at approval -----------------------------------------------------------


async def test_an_intact_approval_executes_exactly_the_held_call(rt: Runtime, sandbox: Sandbox) -> None:
    approval_id = await held(rt)
    ((seal, version),) = raw(rt.store, "SELECT seal, seal_kv FROM effects WHERE id = :i", i=approval_id)
    assert len(seal) == 64 and version == 1
    _, done = await rt.dispatcher.approve(approval_id, by=APPROVER)
    assert done.outcome.value == "succeeded", done.content
    (invoice,) = invoices(sandbox)
    assert (invoice.source_amount, invoice.email) == (Decimal("400"), INVOICE["email"])


EDITS: dict[str, tuple[str, dict[str, Any]]] = {
    "amount and email, digest recomputed": (
        "args",
        {"source_amount": "9000", "email": "mallory@evil.example"},
    ),
    "asker set to someone else (the asker then approves their own call)": ("sql", {"user_id": APPROVER}),
    "persona set to one with higher caps": ("sql", {"persona": "growth"}),
    "order number changed": ("sql", {"order_number": "100000000000000000"}),
    "shown amount lowered": ("sql", {"amount": "4"}),
    "reason shown to the approver rewritten": ("sql", {"reason": "within caps"}),
    "seal removed": ("sql", {"seal": None, "seal_kv": None}),
    "seal copied from another held call": ("copy", {}),
    "another held call moved onto this row whole": ("move", {}),
}


@pytest.mark.parametrize("edit", list(EDITS))
async def test_an_edited_held_call_is_refused_audited_and_never_sent(
    rt: Runtime, sandbox: Sandbox, edit: str
) -> None:
    approval_id = await held(rt)
    how, changes = EDITS[edit]
    if how == "args":
        edit_arguments(rt.store, approval_id, **changes)
    elif how == "sql":
        sets = ", ".join(f"{column} = :{column}" for column in changes)
        raw(rt.store, f"UPDATE effects SET {sets} WHERE id = :i", i=approval_id, **changes)  # noqa: S608
    else:
        # Another held call's arguments with its valid seal, moved onto this row (the seal binds the key), or
        # every column of it but the id, the other row deleted first (the seal binds the id too).
        other = await held(rt, {**INVOICE, "source_amount": "900", "email": "mallory@evil.example"})
        columns = ["arguments", "arguments_hash", "amount", "seal", "seal_kv"]
        if how == "move":
            columns = [c.name for c in effects.columns if c.name != "id"]
            rows = raw(rt.store, "SELECT * FROM effects WHERE id = :o", o=other)
            raw(rt.store, "DELETE FROM effects WHERE id = :o", o=other)
            values = dict(zip(rows[0]._fields, rows[0], strict=True))
            sets = ", ".join(f"{c} = :{c}" for c in columns)
            raw(rt.store, f"UPDATE effects SET {sets} WHERE id = :i", i=approval_id,  # noqa: S608
                **{c: values[c] for c in columns})  # fmt: skip
        else:
            copied = ", ".join(f"{c} = (SELECT {c} FROM effects WHERE id = :o)" for c in columns)  # noqa: S608
            raw(rt.store, f"UPDATE effects SET {copied} WHERE id = :i", o=other, i=approval_id)  # noqa: S608
    with capture_logs() as logs, pytest.raises(Conflict) as refused:
        await rt.dispatcher.approve(approval_id, by=APPROVER)
    message = str(refused.value)
    assert f"approval {approval_id} cannot be approved" in message and "nothing was executed" in message
    assert "fix:" in message
    assert ("carries no seal" if "removed" in edit else "does not match its seal") in message
    assert invoices(sandbox) == [], "nothing reached Plisio"
    assert rt.approvals.get(approval_id).status == "pending", "left for a person to reject"
    (record,) = seal_events(rt)
    assert (record.user, record.decision, record.payload["approval_id"]) == (APPROVER, "refused", approval_id)
    assert record.payload["seal"] == ("unsealed" if "removed" in edit else "broken")
    assert [e for e in logs if e["event"] == "approval_refused"], logs
    assert not rt.audit.query(AuditFilter(event=Event.APPROVAL_GRANTED))
    assert rt.audit.verify().ok


async def test_a_tampered_approval_can_still_be_rejected(rt: Runtime, sandbox: Sandbox) -> None:
    approval_id = await held(rt)
    edit_arguments(rt.store, approval_id, source_amount="9000")
    assert (await rt.dispatcher.reject(approval_id, by=APPROVER, note="tampered")).status == "rejected"
    assert invoices(sandbox) == []


async def test_a_row_changed_between_the_check_and_the_approval_is_not_approved(rt: Runtime) -> None:
    approval_id = await held(rt)
    checked = rt.dispatcher.effects.ledger.get(approval_id)
    raw(rt.store, "UPDATE effects SET user_id = :u WHERE id = :i", u=APPROVER, i=approval_id)
    with pytest.raises(Conflict, match="its row changed"):
        rt.dispatcher.effects.ledger.approve(
            approval_id, by=APPROVER, note=None, reason="ok", amount=Decimal(400), currency="USD",
            day="2026-11-24", cap=None, checked=checked,
        )  # fmt: skip
    assert rt.approvals.get(approval_id).status == "pending"


async def test_a_held_row_from_before_seals_is_refused_after_the_upgrade(rt: Runtime, store: Store) -> None:
    approval_id = await held(rt)
    raw(store, "UPDATE effects SET seal = NULL, seal_kv = NULL WHERE id = :i", i=approval_id)
    for column in ("seal", "seal_kv"):  # the table as an older release created it
        raw(store, f"ALTER TABLE effects DROP COLUMN {column}")
    as_before_migrations(store)
    upgrade(store, now=utcnow)  # the baseline adopts it: columns added, triggers back
    assert raw(store, "SELECT seal, seal_kv FROM effects WHERE id = :i", i=approval_id) == [(None, None)]
    with pytest.raises(Conflict, match="carries no seal"):
        await rt.dispatcher.approve(approval_id, by=APPROVER)
    fresh = await held(rt, {**INVOICE, "order_name": "after the upgrade"})
    _, done = await rt.dispatcher.approve(fresh, by=APPROVER)
    assert done.outcome.value == "succeeded"


# -- over HTTP, and across a master-key rotation -------------------------------------------------------


@pytest.fixture
async def http(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(rt, start_worker=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://persona.test") as c:
        yield c


async def test_over_http_an_edited_approval_is_a_409_naming_the_edit(
    rt: Runtime, sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    approval_id = await held(rt)
    edit_arguments(rt.store, approval_id, email="mallory@evil.example")
    answer = await http.post(f"/v1/approvals/{approval_id}/approve", headers=bearer(rt, APPROVER, "admin"))
    assert answer.status_code == 409, answer.text
    assert "does not match its seal" in answer.json()["error"]["message"]
    assert invoices(sandbox) == [] and len(seal_events(rt)) == 1


async def test_a_call_held_before_a_rekey_is_approved_after_it(store: Store, tmp_path: Path) -> None:
    kit = make_kit(store, tmp_path)
    try:
        before = await held(kit.rt)
        kit.rt.vault.rekey(ADMIN)  # master version 1 is dropped from the key file
    finally:
        kit.rt.audit.close()
    after = make_kit(store, tmp_path)  # a process started after the rotation
    try:
        new = await held(after.rt, {**INVOICE, "order_name": "after the rekey"})
        versions = dict(raw(store, "SELECT id, seal_kv FROM effects"))
        assert (versions[before], versions[new]) == (1, 2)
        for approval_id in (before, new):
            _, done = await after.rt.dispatcher.approve(approval_id, by=APPROVER)
            assert done.outcome.value == "succeeded", done.content
        assert len(invoices(after.sandbox)) == 2
    finally:
        after.rt.audit.close()


async def test_the_reviewer_sees_a_broken_seal_before_deciding(rt: Runtime, http: httpx.AsyncClient) -> None:
    intact, edited = await held(rt), await held(rt, {**INVOICE, "order_name": "edited later"})
    edit_arguments(rt.store, edited, source_amount="999")
    listed = await http.get("/v1/approvals", headers=bearer(rt, APPROVER, "admin"))
    assert {a["id"]: a["seal"] for a in listed.json()["approvals"]} == {intact: "intact", edited: "broken"}
    users = Users(rt.store, rt.audit, rt.now)
    users.add("ada@example.com", "admin", ADMIN)
    token = users.issue_token("ada@example.com", ADMIN)
    app = create_app(rt, start_worker=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://console.test") as c:
        assert (await sign_in(c, token)).status_code == 303
        page = (await c.get("/approvals")).text
    cards = {card.split('"', 1)[0]: card for card in page.split('aria-label="Approval ')[1:]}
    assert "Seal broken" in cards[edited] and "Approve and execute" not in cards[edited]
    assert "Seal" not in cards[intact] and "Approve and execute" in cards[intact]


# -- a decided call set back to pending -------------------------------------------------------------------


@pytest.mark.parametrize("decision", ["approved", "rejected"])
async def test_a_decided_call_set_back_to_pending_is_refused(
    rt: Runtime, sandbox: Sandbox, decision: str
) -> None:
    """Its seal is intact (the state is not sealed): the audit log's decision is what refuses it."""
    approval_id = await held(rt)
    ((amount,),) = raw(rt.store, "SELECT amount FROM effects WHERE id = :i", i=approval_id)
    if decision == "approved":
        await rt.dispatcher.approve(approval_id, by=APPROVER)
    else:
        await rt.dispatcher.reject(approval_id, by=APPROVER)
    before = len(invoices(sandbox))
    sent = len([r for r in sandbox.requests if r.path.endswith("/invoices/new")])
    # Everything the seal binds put back as it was when held (the reason is in the audit log for anyone).
    raw(rt.store, "UPDATE effects SET state = 'held', amount = :a, reason = :r, decided_by = NULL WHERE id = :i",
        a=amount, r="400.00 USD is above 250 USD: a person must approve it", i=approval_id)  # fmt: skip
    assert rt.approvals.get(approval_id).seal == "intact"
    with pytest.raises(Conflict, match=f"records it {decision} by {APPROVER}"):
        await rt.dispatcher.approve(approval_id, by="dave@example.com")
    assert len(invoices(sandbox)) == before
    assert len([r for r in sandbox.requests if r.path.endswith("/invoices/new")]) == sent, "not even re-sent"
    assert seal_events(rt)[-1].payload["seal"] == "decided"


async def test_a_call_held_again_after_a_definite_failure_is_approved_again(
    store: Store, sandbox: Sandbox
) -> None:
    """Over the daily total at approval it fails; asked again under the same key the next day, it is held
    again (a new ``approval_requested``) and approving it is not mistaken for a replay."""
    today = [NOW]
    rt = build_runtime(store, sandbox, now=lambda: today[0])
    try:
        ctx = call_context(rt.settings, "finance", ASKER)
        first = await rt.dispatcher.dispatch(call("plisio_create_invoice", INVOICE, call_id="c1"), ctx, seq=0)
        assert first.approval_id
        for n in range(19):  # 19 x 249 = 4731 of the 5000 USD daily total: 400 more does not fit
            small = {**INVOICE, "order_name": f"small {n}", "source_amount": "249"}
            done = await rt.dispatcher.dispatch(
                call("plisio_create_invoice", small), call_context(rt.settings, "finance", ASKER)
            )
            assert done.outcome.value == "succeeded", done.content
        _, refused = await rt.dispatcher.approve(first.approval_id, by=APPROVER)
        assert refused.outcome.value == "denied" and rt.approvals.get(first.approval_id).status == "failed"
        today[0] = NOW + timedelta(days=1)
        again = await rt.dispatcher.dispatch(call("plisio_create_invoice", INVOICE, call_id="c1"), ctx, seq=0)
        assert again.approval_id == first.approval_id, "the same effect, held again"
        _, done = await rt.dispatcher.approve(first.approval_id, by=APPROVER)
        assert done.outcome.value == "succeeded", done.content
    finally:
        rt.audit.close()


async def test_a_seal_newer_than_the_process_says_restart(rt: Runtime) -> None:
    approval_id = await held(rt)
    raw(
        rt.store, "UPDATE effects SET seal_kv = 2 WHERE id = :i", i=approval_id
    )  # sealed by a rekeyed process
    with pytest.raises(Conflict, match=r"newer than this process's 1.*restart this process"):
        await rt.dispatcher.approve(approval_id, by=APPROVER)
