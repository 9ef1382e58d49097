"""Nothing leaks: the Plisio key, the master key and API tokens appear in no output at all.

One run exercises everything (connect with a wrong and a right key, grants, chat over HTTP with a
scripted model, approvals by role, callbacks, a tampered row, key rotation, master-key rotation,
revoke) while capturing every log line (stdlib at DEBUG and structlog), stdout/stderr, every HTTP
response (body and headers), every exception message, every message sent to the model, the audit
table and every other table, and on SQLite the database files themselves; then searches them all.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import replace
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from sqlalchemy import select, text, update

from persona import log as persona_log
from persona.errors import VaultError
from persona.llm import ScriptedChatModel
from persona.models import Models as RuntimeModels
from persona.server import create_app
from persona.store.engine import Store
from persona.store.metadata import metadata
from persona.store.vault_tables import credential_blobs
from persona.vault import rotate
from tests.harness import bearer, call, say, step
from tests.test_vault import ADMIN, Kit, connect_key, dispatch, grant, make_kit, post_callback

pytestmark = pytest.mark.anyio


class Models:
    def __init__(self, *scripts: list[Any]) -> None:
        self.scripts, self.made = list(scripts), list[ScriptedChatModel]()

    def __call__(self, flow: str, persona: str, facts: Mapping[str, Any]) -> ScriptedChatModel:
        model = ScriptedChatModel(self.scripts.pop(0), name="scripted-test")
        self.made.append(model)
        return model


def dump_tables(store: Store) -> str:
    out = []
    with store.read("dump") as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                out.append(repr(tuple(row)))
    return "\n".join(out)


async def test_no_key_master_key_or_token_appears_in_any_output(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    saved = structlog.get_config()
    logs = StringIO()
    persona_log.configure("debug", "json", stream=logs)
    plisio_key = "sk_live_" + secrets.token_hex(20)
    new_key = "sk_live_" + secrets.token_hex(20)
    kit = make_kit(store, tmp_path, key=plisio_key)
    outputs: list[str] = []
    tokens: list[str] = []
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        masters = await _exercise_everything(kit, plisio_key, new_key, outputs, tokens)
    finally:
        kit.rt.audit.close()
        structlog.configure(**saved)
        root.setLevel(level)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
    masters += json.loads(kit.key_file.read_text())["keys"].values()
    assert len(set(masters)) == 2, "the master key before and after its rotation"
    secret_texts = [plisio_key, new_key, *tokens, *(m.rstrip("=") for m in masters)]
    secret_bytes = [s.encode() for s in (plisio_key, new_key, *tokens)]
    secret_bytes += [base64.urlsafe_b64decode(m) for m in masters]
    captured = capsys.readouterr()
    texts = {
        "caplog": caplog.text, "stdout": captured.out, "stderr": captured.err, "structlog": logs.getvalue(),
        "outputs": "\n".join(outputs), "tables": dump_tables(kit.rt.store),
    }  # fmt: skip
    assert "http_auth_refused" in texts["structlog"] and "vault_master_key_created" in texts["structlog"]
    assert len(texts["outputs"]) > 10_000, "the exercise produced real output"
    for where, haystack in texts.items():
        for secret in secret_texts:
            assert secret not in haystack, f"a secret appears in {where}"
    if store.dialect == "sqlite":
        database = Path(str(store.engine.url.database))
        for path in database.parent.glob(database.name + "*"):
            raw = path.read_bytes()
            for secret_b in secret_bytes:
                assert secret_b not in raw, f"a secret appears in {path.name}"


async def _exercise_everything(
    kit: Kit, key: str, new_key: str, outputs: list[str], tokens: list[str]
) -> list[str]:
    """Connect, grant, chat over HTTP, approve, callbacks, tamper, rotate, rekey, revoke: keep every output.

    Returns the master key as it was before its rotation."""
    rt = kit.rt
    with pytest.raises(VaultError) as refused:
        await connect_key(kit, key="sk_live_" + "0" * 40)
    errors = [str(refused.value)]
    await connect_key(kit, key=key)
    masters = list(json.loads(kit.key_file.read_text())["keys"].values())
    grant(kit, "finance")
    grant(kit, "growth", tools=["@read"])
    headers = {role: bearer(rt, f"{role}@example.com", role) for role in ("admin", "operator", "viewer")}
    tokens += [h["Authorization"].removeprefix("Bearer ") for h in headers.values()]
    models = Models(
        [step(call("plisio_get_balance", {"psys_cid": "BTC"}), call("plisio_create_invoice", {
            "order_name": "ACME", "source_amount": "400", "source_currency": "USD"})), say("Held for approval.")],
        [step(call("plisio_get_shop_info", {})), say("Shop read.")],
    )  # fmt: skip
    app = create_app(replace(rt, models=RuntimeModels(rt.settings, models)), start_worker=False)
    responses: list[httpx.Response] = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        chat = await http.post("/v1/chat", json={"persona": "finance", "message": "bill ACME"},
                               headers=headers["operator"])  # fmt: skip
        approval_id = next(c["approval_id"] for c in chat.json()["tool_calls"] if c["approval_id"])
        responses += [chat, await http.get("/v1/chat"), await http.post("/v1/chat", json={"persona": "x"})]
        responses.append(await http.post(f"/v1/approvals/{approval_id}/approve", headers=headers["viewer"]))
        responses.append(await http.post(f"/v1/approvals/{approval_id}/approve", headers=headers["admin"]))
        responses.append(await http.get("/v1/audit", headers={"Authorization": "Bearer pp_" + "x" * 43}))
        responses.append(await http.post("/v1/chat", json={"persona": "growth", "message": "shop?"},
                                         headers=headers["operator"]))  # fmt: skip
        responses.append(await post_callback(http, key, "6a1b2c3d4e5f60718293a4b5"))
        responses.append(await post_callback(http, "sk_live_" + "1" * 40, "6a1b2c3d4e5f60718293a4b6"))
        # Tamper with growth's row, then call: denied, audited.
        rows = {(b.persona, b.slot): b for b in kit.blobs()}
        with rt.store.begin("tamper") as conn:
            conn.execute(update(credential_blobs).where(credential_blobs.c.id == rows["growth", "current"].id)
                         .values(ciphertext=rows["finance", "current"].ciphertext))  # fmt: skip
        tampered = await dispatch(kit, "growth", "plisio_get_balance", {"psys_cid": "BTC"})
        outputs.append(tampered.content)
        kit.sandbox.api_key = new_key
        assert rt.plisio.client_for is not None
        await rotate(rt.vault, "shop-main", new_key, rt.plisio.client_for, ADMIN, 72)
        rt.vault.rekey(ADMIN)
        responses.append(
            await post_callback(http, key, "6a1b2c3d4e5f60718293a4b7")
        )  # previous key, in window
        rt.vault.revoke("shop-main", ADMIN)
        denied = await dispatch(kit, "finance", "plisio_get_balance", {"psys_cid": "BTC"})
        outputs.append(denied.content)
        responses.append(await http.get("/v1/audit", params={"limit": 1000}, headers=headers["viewer"]))
        responses.append(await http.get("/openapi.json"))
    for response in responses:
        outputs.append(f"{response.status_code} {dict(response.headers)} {response.text}")
    assert [r.status_code for r in responses[3:9]] == [403, 200, 401, 200, 200, 401]
    assert json.loads(tampered.content)["error"]["type"] == "credential_unavailable"
    for model in models.made:
        outputs.append(json.dumps([[c.messages, c.tools] for c in model.calls], default=str))
    outputs += errors
    with rt.store.read("audit text") as conn:
        outputs.append("\n".join(repr(tuple(r)) for r in conn.execute(text("SELECT * FROM audit_log"))))
    return masters
