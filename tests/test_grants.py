"""Grants: a persona without one cannot call Plisio; a grant narrows tools and tightens caps.

While the vault holds no connection, none of this applies (the single-user PLISIO_API_KEY path).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from persona.app import Runtime
from persona.errors import Conflict, Forbidden, NotConfigured, NotFound, VaultError
from persona.masterkey import MasterKeySource
from persona.store.engine import Store
from persona.vault import service_key_source
from tests.harness import repo_settings
from tests.test_vault import ADMIN, KEY, Kit, connect_key, dispatch, error_of, grant, make_kit

pytestmark = pytest.mark.anyio

INVOICE = {"order_name": "ACME retainer", "source_currency": "USD"}


@pytest.fixture
def kit(store: Store, tmp_path: Path) -> Iterator[Kit]:
    made = make_kit(store, tmp_path)
    yield made
    made.rt.audit.close()


async def test_a_persona_without_a_grant_cannot_call_plisio_and_says_so(kit: Kit) -> None:
    await connect_key(kit)
    done = await dispatch(kit, "finance", "plisio_get_balance", {"psys_cid": "BTC"})
    assert done.outcome.value == "denied"
    error = error_of(done)
    assert error["type"] == "no_plisio_access" and error["clause"] == "grants"
    assert error["message"] == (
        "persona finance has no active grant for Plisio: it was never granted a connection"
        " (fix: persona grants add --persona finance --connection <name>)"
    )
    assert kit.paths() == ["/api/v1/shops"], "only the key check at connect time reached Plisio"
    [denied] = kit.events("tool_call_denied")
    assert denied.payload["kind"] == "grant" and denied.payload["clause"] == "grants"


async def test_a_grant_narrows_the_personas_tools(kit: Kit) -> None:
    await connect_key(kit)
    added = grant(kit, "finance", tools=["@read"])
    assert added.tools == ("@read",)
    ok = await dispatch(kit, "finance", "plisio_get_balance", {"psys_cid": "BTC"})
    assert ok.outcome.value == "succeeded"
    refused = await dispatch(kit, "finance", "plisio_create_invoice", {**INVOICE, "source_amount": "10"})
    assert refused.outcome.value == "denied"
    error = error_of(refused)
    assert error["type"] == "grant_denied" and error["clause"] == "grants.shop-main.tools"
    assert (
        "plisio_create_invoice is outside the grant of persona finance on connection shop-main"
        in error["message"]
    )
    assert "/api/v1/invoices/new" not in kit.paths()


async def test_a_grant_cannot_widen_the_personas_scope(kit: Kit) -> None:
    await connect_key(kit)
    with pytest.raises(Forbidden, match="plisio_create_invoice is not among the tools of persona growth"):
        grant(kit, "growth", tools=["plisio_create_invoice"])
    with pytest.raises(NotFound, match="no persona named 'nobody'"):
        grant(kit, "nobody")
    assert kit.rt.grants.list() == [] and kit.events("grant_added") == []


async def test_grant_caps_are_stricter_than_the_personas(kit: Kit) -> None:
    await connect_key(kit)
    grant(kit, "finance", max_amount="50", daily_total="80")  # persona: 1000 per invoice, 5000 a day
    over = await dispatch(kit, "finance", "plisio_create_invoice", {**INVOICE, "source_amount": "60"})
    assert error_of(over)["clause"] == "grants.shop-main.max_amount"
    assert "above the per-invoice cap of 50" in error_of(over)["message"]
    first = await dispatch(kit, "finance", "plisio_create_invoice", {**INVOICE, "source_amount": "45"})
    assert first.outcome.value == "succeeded"
    second = await dispatch(kit, "finance", "plisio_create_invoice", {**INVOICE, "source_amount": "40"})
    assert error_of(second)["clause"] == "grants.shop-main.daily_total"
    assert kit.paths().count("/api/v1/invoices/new") == 1


async def test_a_looser_grant_cap_leaves_the_personas_cap_in_force(kit: Kit) -> None:
    await connect_key(kit)
    grant(kit, "finance", max_amount="5000")
    over = await dispatch(kit, "finance", "plisio_create_invoice", {**INVOICE, "source_amount": "1500"})
    assert error_of(over)["clause"] == "personas.finance.invoice_policy.max_amount"


async def test_one_grant_per_persona_and_removing_it_stops_the_next_call(kit: Kit) -> None:
    await connect_key(kit)
    grant(kit, "finance")
    with pytest.raises(Conflict, match="already holds a grant on connection shop-main"):
        grant(kit, "finance")
    assert (
        await dispatch(kit, "finance", "plisio_get_balance", {"psys_cid": "BTC"})
    ).outcome.value == "succeeded"
    removed = kit.rt.grants.remove(persona="finance", connection="shop-main", actor=ADMIN)
    assert [b.persona for b in kit.blobs()] == ["*"], "the persona's ciphertext is gone with its grant"
    done = await dispatch(kit, "finance", "plisio_get_balance", {"psys_cid": "LTC"})
    assert "its grant on connection shop-main was removed" in error_of(done)["message"]
    assert "/api/v1/balances/LTC" not in kit.paths()
    [listed] = kit.rt.grants.list(all=True)
    assert (listed.id, listed.status, listed.revoked_by) == (removed.id, "revoked", "admin@example.com")
    with pytest.raises(NotFound):
        kit.rt.grants.remove(persona="finance", connection="shop-main", actor=ADMIN)
    added, gone = kit.events("grant_added"), kit.events("grant_removed")
    assert [e.payload["persona"] for e in added + gone] == ["finance", "finance"]
    assert all(e.source == "cli" and e.user == "admin@example.com" for e in added + gone)


async def test_an_approval_cannot_outlive_its_grant(kit: Kit) -> None:
    await connect_key(kit)
    grant(kit, "finance")
    held = await dispatch(kit, "finance", "plisio_create_invoice", {**INVOICE, "source_amount": "400"})
    assert held.outcome.value == "pending_approval" and held.approval_id
    kit.rt.grants.remove(persona="finance", connection="shop-main", actor=ADMIN)
    approval, done = await kit.rt.dispatcher.approve(held.approval_id, by="bob@example.com")
    assert done.outcome.value == "denied" and error_of(done)["type"] == "no_plisio_access"
    assert kit.rt.approvals.get(approval.id).status == "failed"
    assert "/api/v1/invoices/new" not in kit.paths()


# -- the single-user path ------------------------------------------------------------------------


async def test_env_only_path_keeps_working_with_an_empty_vault(kit: Kit) -> None:
    assert kit.rt.vault.is_empty()
    done = await dispatch(kit, "finance", "plisio_get_balance", {"psys_cid": "BTC"})
    assert done.outcome.value == "succeeded"
    assert await kit.rt.access("finance") is kit.rt.plisio.client
    assert kit.rt.vault.blob_versions() == {}, "no credential stored: the key file only keys the audit log"
    # As soon as one connection exists, every persona needs a grant.
    await connect_key(kit)
    denied = await dispatch(kit, "growth", "plisio_get_balance", {"psys_cid": "BTC"})
    assert error_of(denied)["type"] == "no_plisio_access"
    assert (
        "persona growth has no active grant for Plisio: it was never granted a connection"
        in error_of(denied)["message"]
    )


async def test_live_mode_needs_no_plisio_api_key_once_the_vault_holds_a_connection(
    kit: Kit, store: Store
) -> None:
    base = repo_settings()
    live = base.model_copy(update={"plisio": base.plisio.model_copy(update={"mode": "live"})})
    with pytest.raises(NotConfigured, match="persona connect plisio"):
        Runtime.build(live, store=store, master_keys=MasterKeySource(path=kit.key_file))
    await connect_key(kit)
    rt = Runtime.build(live, store=store, master_keys=MasterKeySource(path=kit.key_file), now=kit.clock)
    try:
        assert rt.plisio.mode == "live"
        assert await service_key_source(rt.vault)() == KEY  # the service's own reads: the vault's key
        rt.vault.revoke("shop-main", ADMIN)
        with pytest.raises(VaultError, match="every Plisio connection is revoked"):
            await service_key_source(rt.vault)()
    finally:
        await rt.aclose()
