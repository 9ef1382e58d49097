"""The credentials vault: connect, encryption at rest, tamper detection, master key, rotation, revoke.

Every test runs on SQLite, and on PostgreSQL too when ``PERSONA_TEST_POSTGRES_URL`` is set. The
Plisio side is the in-process sandbox, built with the test's own secret key (it accepts only that).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from persona.app import Runtime, connect_plisio
from persona.audit import AuditFilter
from persona.calls import call_context
from persona.dispatcher import Dispatched
from persona.errors import Conflict, Forbidden, VaultError
from persona.llm import ModelReply, ScriptedChatModel
from persona.loop import run_turn
from persona.masterkey import MasterKeySource, encode_key, parse_keyring
from persona.server import create_app
from persona.store.engine import Store
from persona.store.vault_tables import connections, credential_blobs
from persona.vault import Actor, Vault, callback_secrets, connect, fingerprint, rotate, service_key
from tests.conftest import NOW
from tests.harness import call, repo_settings, say, step
from tests.test_webhooks import callback_fields
from tools.plisio.callbacks import encode_form_callback
from tools.plisio.sandbox import Sandbox

pytestmark = pytest.mark.anyio

KEY = "sk_live_" + "7e3a" * 8
OTHER_KEY = "sk_live_" + "51c0" * 8
ADMIN = Actor("cli", "admin@example.com")


@dataclass
class Clock:
    """An adjustable clock for the runtime: ``clock.at += timedelta(hours=73)``."""

    at: datetime = NOW

    def __call__(self) -> datetime:
        return self.at


@dataclass
class Kit:
    rt: Runtime
    sandbox: Sandbox
    clock: Clock
    key_file: Path
    seen: list[str] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [r.path for r in self.sandbox.requests]

    def blobs(self) -> list[Any]:
        with self.rt.store.read("test") as conn:
            return list(conn.execute(select(credential_blobs).order_by(credential_blobs.c.id)))

    def events(self, name: str) -> list[Any]:
        self.rt.audit.flush_sync()  # records queued by the receiver or the loop are committed first
        return self.rt.audit.query(AuditFilter(event=name))


def make_kit(store: Store, tmp_path: Path, *, key: str = KEY, master: MasterKeySource | None = None) -> Kit:
    sandbox = Sandbox(seed=7, now=lambda: NOW, api_key=key)
    clock = Clock()
    settings = repo_settings()
    key_file = tmp_path / "keys" / "master.key"
    rt = Runtime.build(
        settings, store=store, plisio=connect_plisio(settings, sandbox=sandbox, key=key), now=clock,
        master_keys=master or MasterKeySource(path=key_file),
    )  # fmt: skip
    return Kit(rt, sandbox, clock, key_file)


@pytest.fixture
def kit(store: Store, tmp_path: Path) -> Iterator[Kit]:
    made = make_kit(store, tmp_path)
    yield made
    made.rt.audit.close()


async def connect_key(kit: Kit, name: str = "shop-main", key: str = KEY) -> Any:
    assert kit.rt.plisio.client_for is not None
    return await connect(kit.rt.vault, name, key, kit.rt.plisio.client_for, ADMIN)


def grant(kit: Kit, persona: str, connection: str = "shop-main", **kw: Any) -> Any:
    kw.setdefault("tools", None)
    kw.setdefault("max_amount", None)
    kw.setdefault("daily_total", None)
    return kit.rt.grants.add(persona=persona, connection=connection, actor=ADMIN, **kw)


async def dispatch(kit: Kit, persona: str, tool: str, args: dict[str, Any]) -> Dispatched:
    ctx = call_context(kit.rt.settings, persona, "alice@example.com")
    done = await kit.rt.dispatcher.dispatch(call(tool, args), ctx)
    await kit.rt.audit.flush()  # outside a turn, nothing flushes the queued records for us
    return done


def error_of(done: Dispatched) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(done.content)["error"]
    return body


# -- connect -------------------------------------------------------------------------------------


async def test_connect_verifies_with_shops_and_a_wrong_key_stores_nothing(kit: Kit) -> None:
    with pytest.raises(VaultError, match="Plisio refused the key") as refused:
        await connect_key(kit, key=OTHER_KEY)
    assert OTHER_KEY not in str(refused.value)
    assert kit.rt.vault.is_empty() and kit.blobs() == []  # (the master key exists: it keys the audit log)
    assert kit.paths() == ["/api/v1/shops"]

    info = await connect_key(kit)
    assert kit.paths() == ["/api/v1/shops", "/api/v1/shops"]
    assert (info.name, info.status, info.fingerprint) == ("shop-main", "active", fingerprint(KEY))
    [blob] = kit.blobs()
    assert (blob.slot, blob.persona, blob.key_version) == ("current", "*", 1)
    assert KEY.encode() not in bytes(blob.ciphertext)
    [created] = kit.events("connection_created")
    assert created.user == "admin@example.com" and created.payload["fingerprint"] == info.fingerprint
    with pytest.raises(Conflict, match="exists"):
        await connect_key(kit)


async def test_key_file_is_created_0600_on_first_use_and_refused_when_others_can_read_it(kit: Kit) -> None:
    assert kit.key_file.stat().st_mode & 0o777 == 0o600  # first use: the runtime keys the audit log with it
    await connect_key(kit)
    grant(kit, "finance")
    assert kit.key_file.stat().st_mode & 0o777 == 0o600
    keyring = parse_keyring(kit.key_file.read_text(), "test")
    assert keyring.current == 1 and set(keyring.keys) == {1}
    assert (
        await dispatch(kit, "finance", "plisio_get_balance", {"psys_cid": "BTC"})
    ).outcome.value == "succeeded"

    os.chmod(kit.key_file, 0o640)
    done = await dispatch(kit, "finance", "plisio_get_balance", {"psys_cid": "LTC"})
    assert done.outcome.value == "denied" and error_of(done)["type"] == "credential_unavailable"
    message = error_of(done)["message"]
    assert "mode 0640" in message and f"chmod 600 {kit.key_file}" in message
    assert "/api/v1/balances/LTC" not in kit.paths()


async def test_missing_master_key_fails_closed_and_never_makes_a_new_one(kit: Kit) -> None:
    await connect_key(kit)
    grant(kit, "finance")
    kit.key_file.unlink()
    done = await dispatch(kit, "finance", "plisio_get_balance", {"psys_cid": "BTC"})
    assert done.outcome.value == "denied"
    message = error_of(done)["message"]
    assert "there is no master key" in message and "holds 2 encrypted credential(s)" in message
    assert "fix: restore the key file" in message
    assert not kit.key_file.exists(), "a new key would not decrypt anything: never created while rows exist"
    assert "/api/v1/balances/BTC" not in kit.paths()
    assert callback_secrets(kit.rt.vault) == []  # callbacks get 503: Plisio retries later
    with pytest.raises(VaultError, match="there is no master key"):
        service_key(kit.rt.vault, ADMIN)
    with pytest.raises(VaultError, match="there is no master key"):
        await connect_key(kit, "shop-two")
    assert not kit.key_file.exists()


async def test_wrong_master_key_fails_closed_and_is_not_called_tampering(
    store: Store, tmp_path: Path, kit: Kit
) -> None:
    await connect_key(kit)
    grant(kit, "finance")
    # A runtime does not even start with another key: its audit records would be keyed with it.
    with pytest.raises(VaultError, match=r"not the one the vault was encrypted with.*PERSONA_MASTER_KEY"):
        make_kit(store, tmp_path, master=MasterKeySource(env=encode_key(secrets.token_bytes(32))))
    # The key file swapped under a running one: every use fails closed, and it is not called tampering.
    kit.key_file.write_text(encode_key(secrets.token_bytes(32)))
    done = await dispatch(kit, "finance", "plisio_get_balance", {"psys_cid": "BTC"})
    message = error_of(done)["message"]
    assert "is not the one the vault was encrypted with" in message and str(kit.key_file) in message
    assert "/api/v1/balances/BTC" not in kit.paths()
    assert kit.events("credential_tamper_detected") == []
    with pytest.raises(VaultError, match="not the one the vault was encrypted with"):
        await connect_key(kit, "shop-two")


def test_master_key_forms_and_bad_values() -> None:
    key = secrets.token_bytes(32)
    single = parse_keyring(encode_key(key), "PERSONA_MASTER_KEY")
    assert single.current == 1 and single.keys[1] == key
    ring = parse_keyring(
        json.dumps({"current": 2, "keys": {"1": encode_key(key), "2": encode_key(key[::-1])}}), "x"
    )
    assert ring.current == 2 and ring.keys[2] == key[::-1]
    for bad in ("not-a-key", base64.urlsafe_b64encode(b"short").decode(), '{"current": 3, "keys": {}}'):
        with pytest.raises(VaultError) as err:
            parse_keyring(bad, "PERSONA_MASTER_KEY")
        assert "PERSONA_MASTER_KEY" in str(err.value) and bad not in str(err.value).replace(
            "PERSONA_MASTER_KEY", ""
        )
    with pytest.raises(VaultError, match="cannot change"):
        MasterKeySource(env=encode_key(key)).save(single)


# -- tamper detection ----------------------------------------------------------------------------


async def test_ciphertext_copied_to_another_personas_row_fails_and_is_audited(kit: Kit) -> None:
    await connect_key(kit)
    grant(kit, "finance")
    grant(kit, "growth")
    rows = {(b.persona, b.slot): b for b in kit.blobs()}
    growth = rows["growth", "current"]
    with kit.rt.store.begin("tamper") as conn:
        conn.execute(
            update(credential_blobs)
            .where(credential_blobs.c.id == rows["finance", "current"].id)
            .values(nonce=growth.nonce, ciphertext=growth.ciphertext)
        )
    done = await dispatch(kit, "finance", "plisio_get_balance", {"psys_cid": "BTC"})
    assert done.outcome.value == "denied"
    error = error_of(done)
    assert error["type"] == "credential_unavailable" and "failed its integrity check" in error["message"]
    assert "/api/v1/balances/BTC" not in kit.paths(), "no request left with a key it could not vouch for"
    [tamper] = kit.events("credential_tamper_detected")
    assert tamper.persona == "finance" and tamper.user == "alice@example.com" and tamper.source == "chat"
    assert tamper.payload["row_persona"] == "finance" and tamper.payload["connection"] == "shop-main"
    # The row it was copied from still works for its own persona.
    assert (
        await dispatch(kit, "growth", "plisio_get_balance", {"psys_cid": "BTC"})
    ).outcome.value == "succeeded"


@pytest.mark.parametrize("target", ["another connection", "another slot"])
async def test_ciphertext_copied_to_another_connection_or_slot_fails_and_is_audited(
    kit: Kit, target: str
) -> None:
    await connect_key(kit)
    kit.sandbox.api_key = OTHER_KEY
    await connect_key(kit, "shop-two", OTHER_KEY)
    blobs = kit.blobs()
    source = blobs[0]  # shop-main, persona "*", slot current
    with kit.rt.store.begin("tamper") as conn:
        if target == "another connection":
            victim = next(b for b in blobs if b.connection_id != source.connection_id)
            conn.execute(update(credential_blobs).where(credential_blobs.c.id == victim.id)
                         .values(nonce=source.nonce, ciphertext=source.ciphertext))  # fmt: skip
        else:
            conn.execute(credential_blobs.insert().values(
                connection_id=source.connection_id, slot="previous", persona="*", nonce=source.nonce,
                ciphertext=source.ciphertext, key_version=source.key_version, created_at=NOW))  # fmt: skip
            conn.execute(update(connections).where(connections.c.id == source.connection_id)
                         .values(previous_valid_until=NOW + timedelta(hours=1)))  # fmt: skip
    keys = callback_secrets(kit.rt.vault)  # the tampered row is left out, the others still verify
    assert sorted(keys) == sorted([KEY] if target == "another connection" else [KEY, OTHER_KEY])
    [tamper] = kit.events("credential_tamper_detected")
    assert tamper.payload["slot"] == ("current" if target == "another connection" else "previous")
    if target == "another connection":
        with pytest.raises(VaultError, match="failed its integrity check"):
            grant(kit, "finance", "shop-two")
        assert kit.rt.grants.list(persona="finance") == [], "nothing half-written"


# -- master-key rotation -------------------------------------------------------------------------


async def test_master_key_rotation_rewraps_every_row(kit: Kit) -> None:
    await connect_key(kit)
    grant(kit, "finance")
    grant(kit, "growth")
    kit.sandbox.api_key = OTHER_KEY
    assert kit.rt.plisio.client_for is not None
    await rotate(kit.rt.vault, "shop-main", OTHER_KEY, kit.rt.plisio.client_for, ADMIN, 72)  # adds "previous"
    before = {b.id: (b.key_version, bytes(b.ciphertext)) for b in kit.blobs()}
    assert len(before) == 4 and {v for v, _ in before.values()} == {1}
    old_text = kit.key_file.read_text()

    report = kit.rt.vault.rekey(ADMIN)
    assert (report.from_versions, report.to_version, report.rows, report.dropped) == ((1,), 2, 4, (1,))
    after = {b.id: (b.key_version, bytes(b.ciphertext)) for b in kit.blobs()}
    assert set(after) == set(before)
    assert all(after[i][0] == 2 and after[i][1] != before[i][1] for i in after), "every row re-wrapped"
    keyring = parse_keyring(kit.key_file.read_text(), "test")
    assert keyring.current == 2 and set(keyring.keys) == {2}
    assert kit.key_file.stat().st_mode & 0o777 == 0o600
    # Everything still decrypts with the new key...
    assert callback_secrets(kit.rt.vault) == [OTHER_KEY, KEY]
    for persona in ("finance", "growth"):
        assert kit.rt.vault.persona_key(persona, ADMIN) == OTHER_KEY
    assert (
        await dispatch(kit, "finance", "plisio_get_balance", {"psys_cid": "BTC"})
    ).outcome.value == "succeeded"
    # ...and the old key alone no longer does.
    old = Vault(kit.rt.store, MasterKeySource(env=old_text), kit.rt.audit, kit.clock)
    with pytest.raises(VaultError, match="master key version 2 is needed"):
        old.persona_key("finance", ADMIN)
    [rotated] = kit.events("master_key_rotated")
    assert rotated.payload["rows"] == 4 and rotated.payload["to_version"] == 2


# -- key rotation and callbacks ------------------------------------------------------------------


async def post_callback(http: httpx.AsyncClient, key: str, txn: str) -> httpx.Response:
    body = encode_form_callback(callback_fields(txn, "expired"), key)
    return await http.post(
        "/webhooks/plisio", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )


async def test_rotate_keeps_the_previous_key_for_callbacks_inside_the_grace_window_only(kit: Kit) -> None:
    await connect_key(kit)
    grant(kit, "finance")
    kit.sandbox.api_key = OTHER_KEY  # the shop's key was changed at Plisio
    assert kit.rt.plisio.client_for is not None
    grace = kit.rt.settings.webhooks.previous_key_grace_hours
    info = await rotate(kit.rt.vault, "shop-main", OTHER_KEY, kit.rt.plisio.client_for, ADMIN, grace)
    assert info.fingerprint == fingerprint(OTHER_KEY) and info.previous_valid_until == NOW + timedelta(
        hours=grace
    )
    assert kit.rt.vault.persona_key("finance", ADMIN) == OTHER_KEY, "grants re-wrapped with the new key"
    [rotated] = kit.events("connection_rotated")
    assert rotated.payload["old_fingerprint"] == fingerprint(KEY) and rotated.payload["grants_rewrapped"] == 1

    app = create_app(kit.rt, start_worker=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        kit.clock.at = NOW + timedelta(hours=1)
        assert (await post_callback(http, OTHER_KEY, "6a1b2c3d4e5f60718293a4b1")).status_code == 200
        assert (await post_callback(http, KEY, "6a1b2c3d4e5f60718293a4b2")).status_code == 200
        kit.clock.at = NOW + timedelta(hours=grace + 1)
        assert (await post_callback(http, KEY, "6a1b2c3d4e5f60718293a4b3")).status_code == 401
        assert (await post_callback(http, OTHER_KEY, "6a1b2c3d4e5f60718293a4b4")).status_code == 200
    keys = [e.payload["key"] for e in kit.events("webhook_received")]
    assert keys == ["current", "previous", "current"]


async def test_rotate_with_a_refused_key_keeps_the_current_one(kit: Kit) -> None:
    await connect_key(kit)
    grant(kit, "finance")
    assert kit.rt.plisio.client_for is not None
    with pytest.raises(VaultError, match="Plisio refused the key"):
        await rotate(kit.rt.vault, "shop-main", OTHER_KEY, kit.rt.plisio.client_for, ADMIN, 72)
    assert [(b.slot, b.persona) for b in kit.blobs()] == [("current", "*"), ("current", "finance")]
    assert kit.rt.vault.connection("shop-main").fingerprint == fingerprint(KEY)
    assert kit.events("connection_rotated") == []


# -- revoke --------------------------------------------------------------------------------------


class RevokeBetweenSteps:
    """A model that revokes the connection after its first step, as an admin would mid-conversation."""

    def __init__(self, inner: ScriptedChatModel, kit: Kit) -> None:
        self.inner, self.kit = inner, kit

    @property
    def name(self) -> str:
        return self.inner.name

    async def complete(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]], **kw: Any
    ) -> ModelReply:
        if len(self.inner.calls) == 1:
            await asyncio.to_thread(self.kit.rt.vault.revoke, "shop-main", ADMIN)
        return await self.inner.complete(messages, tools, **kw)


async def test_revoke_between_two_tool_calls_of_one_conversation_stops_the_second(kit: Kit) -> None:
    await connect_key(kit)
    grant(kit, "finance")
    script = ScriptedChatModel([
        step(call("plisio_get_balance", {"psys_cid": "BTC"})),
        step(call("plisio_get_balance", {"psys_cid": "LTC"})),
        say("Done."),
    ])  # fmt: skip
    ctx = call_context(kit.rt.settings, "finance", "alice@example.com")
    result = await run_turn(
        model=RevokeBetweenSteps(script, kit), dispatcher=kit.rt.dispatcher, ctx=ctx,
        system_prompt="test", user_message="balances please",
    )  # fmt: skip
    first, second = result.calls
    assert first.outcome.value == "succeeded"
    assert second.outcome.value == "denied"
    error = error_of(second)
    assert error["type"] == "no_plisio_access"
    assert (
        "persona finance has no active grant for Plisio: connection shop-main was revoked" in error["message"]
    )
    assert "fix: persona grants add --persona finance" in error["message"]
    assert "/api/v1/balances/BTC" in kit.paths() and "/api/v1/balances/LTC" not in kit.paths()
    assert kit.blobs() == [], "a revoked connection leaves no ciphertext behind"
    [revoked] = kit.events("connection_revoked")
    assert revoked.payload["grants_revoked"] == 1 and revoked.user == "admin@example.com"


async def test_revoke_mid_call_stops_the_next_request(kit: Kit) -> None:
    """The key is decrypted per request: a client handed out before the revoke cannot use it after."""
    await connect_key(kit)
    grant(kit, "finance")
    client = await kit.rt.access("finance")
    await client.get_balance("BTC")
    kit.rt.vault.revoke("shop-main", ADMIN)
    with pytest.raises(Forbidden, match="has no active grant"):
        await client.get_balance("LTC")
    assert "/api/v1/balances/LTC" not in kit.paths()


def test_master_key_settings_and_environment(tmp_path: Path) -> None:
    from persona.config import load_settings

    cfg = tmp_path / "config.yaml"
    cfg.write_text("store:\n  url: sqlite:///db/persona.sqlite3\n", encoding="utf-8")
    assert load_settings(cfg, env={}).master_key_path() == (tmp_path / "db" / "master.key").resolve()
    cfg.write_text("vault:\n  master_key_file: secrets/master.key\n", encoding="utf-8")
    settings = load_settings(cfg, env={})
    assert settings.master_key_path() == (tmp_path / "secrets" / "master.key").resolve()
    assert not MasterKeySource.from_settings(settings).from_env
    master = encode_key(secrets.token_bytes(32))
    from_env = load_settings(cfg, env={"PERSONA_MASTER_KEY": master})
    source = MasterKeySource.from_settings(from_env)
    assert source.from_env and source.where == "PERSONA_MASTER_KEY" and source.load() is not None
    assert master not in repr(from_env) and master not in from_env.model_dump_json()
