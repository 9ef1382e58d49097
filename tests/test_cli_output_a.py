"""Scripts and people alike, at 80 columns and piped (as ``| cat``): `drafts`, `approvals`, `effects`,
`users` and `tools` list and show commands never cut a value, `--json` / `--jsonl` parse and hold the full
values, ids are accepted by a unique prefix (an ambiguous one lists its matches), bad filters name the
valid values."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from persona.audit_keys import MacKeys
from persona.clock import utcnow
from persona.drafts import DraftStore
from persona.effects.keys import EffectKey
from persona.effects.ledger import EffectLedger, Intent
from persona.effects.seal import Seal
from persona.masterkey import Keyring
from persona.store.engine import Store
from persona.store.schema import prepare
from tests.harness import run_cli, write_config

NARROW = {"COLUMNS": "80"}
ROWS = 17  # more rows than hex digits: two ids surely share their first character
WHEN = datetime(2026, 11, 24, 12, 0, 5, 123456, tzinfo=UTC)
EMAIL = "accounts.payable.department.of.a.long.company.name@billing.example-corporation.com"
ASKER = "finance.operations.lead.with.a.long.name@treasury.example-corporation.com"
SUBJECT = "Your payment for the ACME consulting retainer did not go through: here is a fresh link to pay"
BODY_LINE = (
    "Hello, the invoice for the ACME consulting retainer failed at the network; here is a new one to pay."
)
LINK = "https://plisio.net/invoice/0123456789abcdef0123456789abcdef?with=a-long-query-string-to-be-cut"
REASON = "create_invoice of 1234.5678 USD is over the persona's per-call cap of 500 USD: a person decides"
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
JSON_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def flat(text: str) -> str:
    return " ".join(text.split())


def seed(tmp_path: Path) -> tuple[list[str], list[str]]:
    """ROWS drafts and ROWS held calls (approvals, effects), with values longer than 80 columns."""
    store = Store.open(f"sqlite:///{tmp_path / 'persona.sqlite3'}")
    try:
        prepare(store, now=utcnow)
        drafts = DraftStore(store)
        draft_ids = [
            drafts.create(
                flow_key=f"recovery:txn_{n:04d}", txn_id=f"txn_{n:04d}_{'f' * 24}", order_number=f"order-{n}",
                customer_email=EMAIL, subject=f"{SUBJECT} #{n}", body=f"{BODY_LINE}\n\nDraft {n}.",
                payment_link=LINK, new_txn_id=f"new_{n:04d}", context={"status": "expired"},
                drafted_by="persona:recovery", conversation_id=f"conv_{n:016x}", now=WHEN,
            )[0].id
            for n in range(ROWS)
        ]  # fmt: skip
        ledger = EffectLedger(store, lambda: WHEN, Seal.of(MacKeys.of(Keyring(1, {1: b"k" * 32}), [])))
        effect_ids = [
            ledger.hold(
                Intent(
                    key=EffectKey(f"chat:conv_{n:016x}", str(n)), tool="plisio_create_invoice",
                    persona="finance", user=ASKER, conversation_id=f"conv_{n:016x}", source="cli",
                    model_call_id=f"call_{n}", arguments_json=json.dumps({"order_name": f"ACME {n}"}),
                    arguments_hash=f"{n:064x}", reason=REASON, amount=Decimal("1234.5678"), currency="USD",
                )
            )[0].id
            for n in range(ROWS)
        ]  # fmt: skip
    finally:
        store.close()
    return draft_ids, effect_ids


def ambiguous(ids: Sequence[str]) -> tuple[str, list[str]]:
    """A prefix two or more of ``ids`` share, and the ids it matches."""
    first = sorted(ids)
    a, b = next((a, b) for a, b in itertools.pairwise(first) if a[0] == b[0])
    prefix = a[: next(n for n in range(len(a)) if a[n] != b[n])]
    return prefix, [i for i in ids if i.startswith(prefix)]


def unique(ids: Sequence[str], target: str) -> str:
    """The shortest prefix (of at least 3 characters) of ``target`` no other id starts with."""
    return next(
        target[:n]
        for n in range(3, len(target) + 1)
        if [i for i in ids if i.startswith(target[:n])] == [target]
    )


def lines_with(text: str, *values: str) -> list[str]:
    return [line for line in text.splitlines() if all(v in line for v in values)]


@pytest.mark.slow
def test_list_and_show_at_80_columns_piped(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    # A first start (master key, tables) and a user with a long email.
    run_cli(cfg, "users", "add", EMAIL, "--role", "operator", "--by", "admin@example.com", env=NARROW)
    draft_ids, effect_ids = seed(tmp_path)
    d_amb, d_matches = ambiguous(draft_ids)
    e_amb, e_matches = ambiguous(effect_ids)
    d_one, e_one = draft_ids[3], effect_ids[5]

    commands: dict[str, tuple[tuple[str, ...], int]] = {
        "users": (("users", "list"), 0),
        "users.json": (("users", "list", "--json"), 0),
        "users.jsonl": (("users", "list", "--jsonl"), 0),
        "drafts": (("drafts", "list"), 0),
        "drafts.json": (("drafts", "list", "--json"), 0),
        "drafts.jsonl": (("drafts", "list", "--status", "all", "--jsonl"), 0),
        "drafts.bogus": (("drafts", "list", "--status", "bogus"), 2),
        "draft": (("drafts", "show", unique(draft_ids, d_one)), 0),
        "draft.json": (("drafts", "show", d_one, "--json"), 0),
        "draft.ambiguous": (("drafts", "show", d_amb), 2),
        "draft.unknown": (("drafts", "show", "zzzz"), 1),
        "approvals": (("approvals", "list"), 0),
        "approvals.json": (("approvals", "list", "--json"), 0),
        "approvals.jsonl": (("approvals", "list", "--jsonl"), 0),
        "approvals.bogus": (("approvals", "list", "--status", "bogus"), 2),
        "approval.ambiguous": (("approvals", "reject", e_amb, "--by", EMAIL), 2),
        "effects": (("effects", "list"), 0),
        "effects.json": (("effects", "list", "--json"), 0),
        "effects.jsonl": (("effects", "list", "--state", "held", "--jsonl"), 0),
        "effects.bogus": (("effects", "list", "--state", "bogus"), 2),
        "effect": (("effects", "show", unique(effect_ids, e_one)), 0),
        "effect.json": (("effects", "show", e_one, "--json"), 0),
        "effect.ambiguous": (("effects", "show", e_amb), 2),
        "effect.unknown": (("effects", "show", "zzzz"), 1),
        "tools": (("tools", "list"), 0),
        "tools.json": (("tools", "list", "--json"), 0),
        "tools.jsonl": (("tools", "list", "--jsonl"), 0),
    }

    def run(item: tuple[str, tuple[tuple[str, ...], int]]) -> tuple[str, subprocess.CompletedProcess[str]]:
        name, (args, code) = item
        return name, run_cli(cfg, *args, check=code, env=NARROW)

    with ThreadPoolExecutor(max_workers=6) as pool:  # read-only commands: they may run side by side
        out = dict(pool.map(run, commands.items()))

    def no_cut(name: str) -> str:
        text = out[name].stdout
        assert "…" not in text and "│" not in text, text
        assert all(len(line) == len(line.rstrip()) for line in text.splitlines()), text
        return text

    def as_jsonl(name: str) -> list[dict[str, object]]:
        return [json.loads(line) for line in out[name].stdout.splitlines()]

    # users
    table = no_cut("users")
    [row] = lines_with(table, EMAIL, "operator", "active", "admin@example.com")
    assert STAMP.search(row)
    [user] = json.loads(out["users.json"].stdout)
    assert user["email"] == EMAIL and user["role"] == "operator" and user["tokens"] == 0
    assert JSON_STAMP.fullmatch(str(user["created_at"])) and user["last_used_at"] is None
    assert as_jsonl("users.jsonl") == [user]

    # drafts
    table = no_cut("drafts")
    assert table.startswith(f"{ROWS} draft(s) · pending_review\n")
    for n, draft_id in enumerate(draft_ids):
        [row] = lines_with(
            table, draft_id, "pending_review", EMAIL, f"{SUBJECT} #{n}", f"txn_{n:04d}_{'f' * 24}"
        )
        assert "2026-11-24T12:00:05Z" in row
    listed = json.loads(out["drafts.json"].stdout)
    assert sorted(d["id"] for d in listed) == sorted(draft_ids)
    assert {d["customer_email"] for d in listed} == {EMAIL} and {d["payment_link"] for d in listed} == {LINK}
    assert {d["created_at"] for d in listed} == {"2026-11-24T12:00:05.123456Z"}
    assert as_jsonl("drafts.jsonl") == listed
    bogus = flat(out["drafts.bogus"].stderr)
    assert "'bogus'" in bogus and all(
        s in bogus for s in ("pending_review", "send_failed", "obsolete", "all")
    )

    shown = no_cut("draft")
    assert f"draft {d_one} · pending_review" in shown and f"To: {EMAIL}" in shown
    assert BODY_LINE.rstrip() in shown.splitlines() and f"Payment link: {LINK}" in shown
    draft = json.loads(out["draft.json"].stdout)
    assert (
        draft["id"] == d_one
        and draft["body"].startswith(BODY_LINE)
        and draft["context"] == {"status": "expired"}
    )
    assert draft["created_at"] == "2026-11-24T12:00:05.123456Z" and draft["decided_at"] is None
    amb = flat(out["draft.ambiguous"].stderr)
    assert f"{d_amb!r} is the start of {len(d_matches)} draft ids" in amb
    assert all(m in amb for m in d_matches), amb
    assert "no draft 'zzzz'" in flat(out["draft.unknown"].stderr)

    # approvals
    table = no_cut("approvals")
    assert table.startswith(f"{ROWS} approval(s) · pending\n")
    for approval_id in effect_ids:
        [row] = lines_with(
            table, approval_id, "pending", "finance", ASKER, "create_invoice", "1234.57", REASON
        )
        assert STAMP.search(row)
    listed = json.loads(out["approvals.json"].stdout)
    assert sorted(a["id"] for a in listed) == sorted(effect_ids)
    assert {(a["user_id"], Decimal(a["amount"]), a["tool"], a["reason"]) for a in listed} == {
        (ASKER, Decimal("1234.5678"), "plisio_create_invoice", REASON)
    }
    assert as_jsonl("approvals.jsonl") == listed
    bogus = flat(out["approvals.bogus"].stderr)
    assert "'bogus'" in bogus and all(
        s in bogus for s in ("pending", "executed", "unknown", "rejected", "all")
    )
    amb = flat(out["approval.ambiguous"].stderr)
    assert "approval ids" in amb and all(m in amb for m in e_matches), amb

    # effects
    table = no_cut("effects")
    for n, effect_id in enumerate(effect_ids):
        assert lines_with(table, effect_id, "held", "finance", "1234.57 USD", f"chat:conv_{n:016x}#{n}")
    listed = json.loads(out["effects.json"].stdout)
    assert sorted(e["id"] for e in listed) == sorted(effect_ids)
    assert {(e["state"], Decimal(e["amount"]), e["user_id"]) for e in listed} == {
        ("held", Decimal("1234.5678"), ASKER)
    }
    assert {e["key"] for e in listed} == {f"chat:conv_{n:016x}#{n}" for n in range(ROWS)}
    assert as_jsonl("effects.jsonl") == listed
    bogus = flat(out["effects.bogus"].stderr)
    assert "'bogus'" in bogus and all(s in bogus for s in ("held", "claimed", "applied", "unresolved", "all"))
    shown = no_cut("effect")
    assert f"effect {e_one}: held" in shown and ASKER in shown and REASON in shown
    assert "updated       2026-11-24T12:00:05Z" in shown
    effect = json.loads(out["effect.json"].stdout)
    assert effect["id"] == e_one and effect["arguments"] == {"order_name": "ACME 5"}
    assert effect["updated_at"] == "2026-11-24T12:00:05.123456Z" and Decimal(effect["amount"]) == Decimal(
        "1234.5678"
    )
    amb = flat(out["effect.ambiguous"].stderr)
    assert f"{e_amb!r} is the start of" in amb and all(m in amb for m in e_matches), amb
    assert "no effect 'zzzz'" in flat(out["effect.unknown"].stderr)

    # tools
    table = no_cut("tools")
    tools = json.loads(out["tools.json"].stdout)
    assert table.startswith(f"{len(tools)} Plisio tools\n") and len(tools) == 13
    for tool in tools:
        assert set(tool) == {"name", "kind", "read_only", "side_effect", "description"}
        assert lines_with(table, str(tool["name"]), str(tool["kind"]), str(tool["description"]))
    assert any(len(str(t["description"])) > 50 for t in tools)
    assert as_jsonl("tools.jsonl") == tools

    # A unique prefix works on the commands that change things too.
    rejected = run_cli(cfg, "approvals", "reject", unique(effect_ids, e_one), "--by", EMAIL, env=NARROW)
    assert f"approval {e_one}: rejected by {EMAIL}" in rejected.stdout.replace("\n", "")  # a user decides
