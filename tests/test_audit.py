"""The audit log: group-committed appends, a chain that names the first bad record, redaction.

Every test runs on SQLite and, when ``PERSONA_TEST_POSTGRES_URL`` is set, on PostgreSQL. Tamper
tests act as an attacker with database access: drop the triggers, then change rows with raw SQL.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from persona.audit import AuditEvent, AuditFilter, AuditLog, AuditRecord
from persona.errors import AuditIntegrityError, StoreError
from persona.jsonutil import canonical_json
from persona.store import Store
from persona.store.audit_tables import GENESIS_HASH, canonical_record, record_hash
from tools.redaction import register_secret

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


class Clock:
    """Each call is one second after the previous one: ts order is seq order, filters are exact."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.calls += 1
            return T0 + timedelta(seconds=self.calls, microseconds=123)


@pytest.fixture
def audit(store: Store) -> Iterator[AuditLog]:
    log = AuditLog(store, now=Clock())
    yield log
    log.close()


def event(i: int, **overrides: Any) -> AuditEvent:
    """An event with every field set, so flipping any column of its record is a real change."""
    fields: dict[str, Any] = {
        "event": "tool_call_succeeded",
        "source": "chat",
        "user": f"user-{i % 3}",
        "persona": "finance",
        "conversation_id": f"conv-{i % 4}",
        "tool": "plisio_get_balance",
        "payload": {"arguments": {"currency": "BTC", "n": i}, "result": {"balance": Decimal("0.10")}},
        "decision": "allow",
        "reason": "in scope",
        "model": "gpt-test",
        "usage": {"prompt_tokens": 100 + i, "completion_tokens": 7},
        "latency_ms": 12.5 + i,
    }
    fields.update(overrides)
    return AuditEvent(**fields)


def fill(log: AuditLog, n: int) -> list[AuditRecord]:
    return [log.append_sync(event(i)) for i in range(n)]


def raw(store: Store, sql: str, **params: Any) -> list[Any]:
    """Raw SQL outside the AuditLog API, as someone with database access would run it."""
    with store.engine.begin() as conn:
        result = conn.execute(text(sql), params)
        return list(result) if result.returns_rows else []


def drop_triggers(store: Store) -> None:
    """What an attacker does first: find the triggers in the catalog and drop them."""
    if store.dialect == "sqlite":
        for (name,) in raw(store, "SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            raw(store, f'DROP TRIGGER "{name}"')
        return
    rows = raw(
        store,
        "SELECT tgname, tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal"
        " AND tgrelid IN ('audit_log'::regclass, 'audit_head'::regclass, 'audit_pruned'::regclass)",
    )
    assert rows
    for name, table in rows:
        raw(store, f'DROP TRIGGER "{name}" ON {table}')


def hash_of(store: Store, seq: int) -> str:
    return str(raw(store, "SELECT hash FROM audit_log WHERE seq = :s", s=seq)[0][0])


# -- appending -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_appends_form_one_gap_free_chain(store: Store) -> None:
    log = AuditLog(store, now=Clock())
    try:
        records = await asyncio.gather(*(log.append(event(i)) for i in range(1000)))
    finally:
        await log.aclose()
    assert sorted(r.seq for r in records) == list(range(1, 1001))
    report = log.verify()
    assert report.ok, report
    assert report.records == 1000
    last = max(records, key=lambda r: r.seq)
    assert log.head() == (1000, last.hash) == (1000, report.head_hash)
    assert log.get(last.seq) == last
    first = log.get(1)
    assert first is not None
    assert first.prev_hash == GENESIS_HASH


def test_hash_is_sha256_of_the_canonical_json_of_every_other_field(audit: AuditLog) -> None:
    tricky = 'a "quote" \\ back\nline\t\x01 ünï 🙂 \u2028'
    record = audit.append_sync(
        event(1, payload={"amount": Decimal("1.50"), "note": "naïve €"}, reason=tricky)
    )
    assert record.reason == tricky
    fields = record.model_dump(mode="json", exclude={"hash"})
    fields["ts"] = record.ts.isoformat(timespec="microseconds")
    assert fields["payload"] == {"amount": "1.50", "note": "naïve €"}  # Decimal as string
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert record_hash(canonical) == record.hash
    assert record.ts == T0 + timedelta(seconds=1, microseconds=123)


def test_append_sync_and_empty_log(audit: AuditLog) -> None:
    assert audit.head() == (0, None)
    empty = audit.verify()
    assert empty.ok
    assert empty.records == 0
    assert empty.head_hash is None
    assert [r.seq for r in fill(audit, 3)] == [1, 2, 3]
    assert audit.verify().records == 3


@pytest.mark.anyio
async def test_closed_log_refuses_appends_after_writing_what_was_queued(store: Store) -> None:
    log = AuditLog(store, now=Clock())
    pending = [asyncio.ensure_future(log.append(event(i))) for i in range(50)]
    await asyncio.sleep(0)
    await log.aclose()
    assert len(await asyncio.gather(*pending)) == 50
    with pytest.raises(StoreError, match="closed"):
        await log.append(event(0))
    assert log.verify().records == 50


@pytest.mark.anyio
async def test_flush_waits_for_every_kept_record_and_raises_a_failed_batch(store: Store) -> None:
    clock = Clock()
    naive = False
    log = AuditLog(store, now=lambda: clock().replace(tzinfo=None) if naive else clock())
    try:
        kept = [log.record(event(i)) for i in range(5)]
        await log.flush()
        assert all(f.done() and f.exception() is None for f in kept)
        assert log.head()[0] == 5
        await log.flush()  # nothing kept: returns at once
        naive = True
        log.record(event(5))
        with pytest.raises(ValueError, match="timezone-aware"):
            await log.flush()
        naive = False
        log.record(event(6))
        await log.flush()
        assert log.head()[0] == 6 and log.verify().ok
    finally:
        await log.aclose()


def test_a_naive_clock_fails_the_append_not_the_chain(store: Store) -> None:
    log = AuditLog(store, now=lambda: datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        log.append_sync(event(0))
    log.close()
    assert AuditLog(store).head() == (0, None)


@pytest.mark.anyio
async def test_two_instances_on_one_database_keep_one_chain(store_url: str, store: Store) -> None:
    other = Store.open(store_url)
    first, second = AuditLog(store, now=Clock()), AuditLog(other, now=Clock())
    try:
        results = await asyncio.gather(
            *(
                log.append(event(i, user=name))
                for i in range(300)
                for name, log in (("a", first), ("b", second))
            )
        )
    finally:
        await first.aclose()
        await second.aclose()
        other.close()
    assert sorted(r.seq for r in results) == list(range(1, 601))
    report = first.verify()
    assert report.ok, report
    assert report.records == 600


def test_separate_processes_keep_one_chain(store_url: str, store: Store) -> None:
    script = (
        "import asyncio, sys\n"
        "from persona.audit import AuditEvent, AuditLog\n"
        "from persona.store import Store\n"
        "async def main():\n"
        "    log = AuditLog(Store.open(sys.argv[1]))\n"
        "    await asyncio.gather(*(log.append(AuditEvent(event='flow.step', source='worker', tool=str(i)))"
        " for i in range(150)))\n"
        "    await log.aclose()\n"
        "asyncio.run(main())\n"
    )
    root = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen([sys.executable, "-c", script, store_url], cwd=root, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    report = AuditLog(store).verify()
    assert report.ok, report
    assert report.records == 450


# -- tampering -----------------------------------------------------------------------------------

FLIPS: dict[str, Any] = {
    "seq": 10_000,
    "ts": "2026-11-24T12:00:04.000124+00:00",
    "user_id": "mallory",
    "persona": "growth",
    "conversation_id": "conv-x",
    "source": "webhook",
    "event": "tool_call_denied",
    "tool": "plisio_withdraw",
    "payload": '{"arguments":{"currency":"BTC","n":4},"result":{"balance":"999"}}',
    "decision": "deny",
    "reason": "out of scope",
    "model": "gpt-other",
    "usage": '{"completion_tokens":7,"prompt_tokens":1}',
    "latency_ms": 1.25,
    "prev_hash": "f" * 64,
    "hash": "e" * 64,
}


@pytest.mark.parametrize("column", sorted(FLIPS))
def test_a_changed_value_in_any_field_names_its_record(audit: AuditLog, store: Store, column: str) -> None:
    fill(audit, 8)
    assert audit.verify().ok
    drop_triggers(store)
    raw(store, f"UPDATE audit_log SET {column} = :v WHERE seq = 5", v=FLIPS[column])  # noqa: S608
    report = audit.verify()
    assert not report.ok
    assert report.first_bad_seq == 5, report
    assert report.records == 4
    assert report.problem


def test_reformatted_payload_json_is_a_change(audit: AuditLog, store: Store) -> None:
    fill(audit, 6)
    drop_triggers(store)
    (payload,) = raw(store, "SELECT payload FROM audit_log WHERE seq = 3")[0]
    raw(store, "UPDATE audit_log SET payload = :v WHERE seq = 3", v=json.dumps(json.loads(payload), indent=1))
    assert audit.verify().first_bad_seq == 3


@pytest.mark.parametrize("renumber", [False, True])
def test_a_deleted_record_is_named(audit: AuditLog, store: Store, renumber: bool) -> None:
    fill(audit, 8)
    drop_triggers(store)
    raw(store, "DELETE FROM audit_log WHERE seq = 5")
    if renumber:  # close the gap so seq alone does not give it away
        for seq in range(6, 9):
            raw(store, "UPDATE audit_log SET seq = :n WHERE seq = :o", n=seq - 1, o=seq)
        raw(store, "UPDATE audit_head SET seq = 7, hash = :h", h=hash_of(store, 7))
    report = audit.verify()
    assert report.first_bad_seq == 5, report
    assert "missing" in str(report.problem) or "prev_hash" in str(report.problem)


def forge(store: Store, seq: int, prev_hash: str, **values: Any) -> str:
    """Insert a record with a correct hash, as an attacker who knows the algorithm would."""
    row: dict[str, Any] = {
        "seq": seq, "ts": "2026-11-24T12:00:04.500000+00:00", "user_id": "mallory", "persona": "finance",
        "conversation_id": "conv-1", "source": "chat", "event": "tool_call_succeeded", "tool": "plisio_withdraw",
        "payload": canonical_json({"amount": "5"}), "decision": "allow", "reason": "ok", "model": "gpt-test",
        "usage": None, "latency_ms": 1.0, "prev_hash": prev_hash,
    }  # fmt: skip
    row.update(values)
    row["hash"] = record_hash(
        canonical_record(*(row[k] for k in ("seq", "ts", "user_id", "persona", "conversation_id", "source",
                                             "event", "tool", "payload", "decision", "reason", "model", "usage",
                                             "latency_ms", "prev_hash")))
    )  # fmt: skip
    columns = ", ".join(row)
    placeholders = ", ".join(":" + k for k in row)
    raw(store, f"INSERT INTO audit_log ({columns}) VALUES ({placeholders})", **row)  # noqa: S608
    return str(row["hash"])


def test_an_inserted_record_is_named(audit: AuditLog, store: Store) -> None:
    fill(audit, 8)
    drop_triggers(store)
    for seq in range(8, 4, -1):  # make room at seq 5
        raw(store, "UPDATE audit_log SET seq = :n WHERE seq = :o", n=seq + 1, o=seq)
    forge(store, 5, hash_of(store, 4))
    raw(store, "UPDATE audit_head SET seq = 9, hash = :h", h=hash_of(store, 9))
    report = audit.verify()
    assert report.first_bad_seq == 5, report
    assert "inserted" in str(report.problem)


def test_a_record_appended_behind_the_logs_back_is_named(audit: AuditLog, store: Store) -> None:
    fill(audit, 8)
    forge(store, 9, hash_of(store, 8))  # INSERT is allowed; the head does not move
    report = audit.verify()
    assert report.first_bad_seq == 9, report
    assert "beyond the audit head" in str(report.problem)


def test_a_record_rewritten_with_a_recomputed_hash_is_named(audit: AuditLog, store: Store) -> None:
    fill(audit, 8)
    drop_triggers(store)
    raw(store, "DELETE FROM audit_log WHERE seq = 5")
    forge(store, 5, hash_of(store, 4), reason="approved by nobody")
    report = audit.verify()
    assert report.first_bad_seq == 5, report
    assert "rewritten" in str(report.problem)


def test_two_swapped_records_are_named(audit: AuditLog, store: Store) -> None:
    fill(audit, 8)
    drop_triggers(store)
    raw(store, "UPDATE audit_log SET seq = -1 WHERE seq = 4")
    raw(store, "UPDATE audit_log SET seq = 4 WHERE seq = 5")
    raw(store, "UPDATE audit_log SET seq = 5 WHERE seq = -1")
    assert audit.verify().first_bad_seq == 4


def test_a_truncated_tail_is_named(audit: AuditLog, store: Store) -> None:
    fill(audit, 8)
    drop_triggers(store)
    raw(store, "DELETE FROM audit_log WHERE seq >= 7")
    report = audit.verify()
    assert report.first_bad_seq == 7, report
    assert "truncated" in str(report.problem)


def test_a_truncated_tail_with_a_rewritten_head_fails_the_expected_head(
    audit: AuditLog, store: Store
) -> None:
    fill(audit, 8)
    anchor = audit.head()[1]
    assert audit.verify(expect_head=anchor).ok
    fill(audit, 2)  # the log grew after the anchor was written down: still fine
    assert audit.verify(expect_head=anchor).ok
    drop_triggers(store)
    raw(store, "DELETE FROM audit_log WHERE seq >= 7")
    raw(store, "UPDATE audit_head SET seq = 6, hash = :h", h=hash_of(store, 6))
    assert audit.verify().ok  # consistent on its own: only an anchor kept elsewhere tells
    report = audit.verify(expect_head=anchor)
    assert not report.ok
    assert report.first_bad_seq == 7, report
    assert "expected head" in str(report.problem)


def test_a_head_hash_mismatch_is_named(audit: AuditLog, store: Store) -> None:
    fill(audit, 4)
    drop_triggers(store)
    raw(store, "UPDATE audit_head SET hash = :h", h="a" * 64)
    assert audit.verify().first_bad_seq == 4


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE audit_log SET reason = 'edited' WHERE seq = 2", "append-only"),
        ("DELETE FROM audit_log WHERE seq = 2", "append-only"),
        ("UPDATE audit_head SET seq = 1", "only moves forward"),
        ("DELETE FROM audit_head", "only moves forward"),
    ],
)
def test_triggers_refuse_update_and_delete(audit: AuditLog, store: Store, sql: str, message: str) -> None:
    fill(audit, 3)
    with pytest.raises(StoreError, match=message), store.begin() as conn:
        conn.execute(text(sql))
    assert audit.verify().ok
    second = audit.get(2)
    assert second is not None
    assert second.reason == "in scope"


def test_truncate_is_refused_on_postgres(audit: AuditLog, store: Store) -> None:
    fill(audit, 2)
    if store.dialect == "postgresql":
        with pytest.raises(StoreError, match="append-only"), store.begin() as conn:
            conn.execute(text("TRUNCATE audit_log"))
    assert audit.verify().records == 2


# -- secrets -------------------------------------------------------------------------------------

SECRET = "sk_live_Zq8fH2kP0wLm4TnR"
URL_KEY = "urlkey-77a1c9e5b3"


def test_secrets_never_reach_the_database(store_url: str, store: Store) -> None:
    register_secret(SECRET)
    log = AuditLog(store, redact=lambda v: _replace(v, "alice@example.com", "<email>"))
    log.append_sync(
        event(
            1,
            payload={
                "url": f"https://api.plisio.net/api/v1/operations?api_key={URL_KEY}&page=2",
                "nested": [{"note": f"key was {SECRET}"}, Decimal("1.5")],
                "marker": "visible-marker-42",
                "email": "alice@example.com",
            },
            reason=f"Plisio said: bad key {SECRET}",
        )
    )
    log.close()
    stored = _stored_bytes(store, store_url)
    assert b"visible-marker-42" in stored  # the check below looks at the right bytes
    for secret in (SECRET, URL_KEY, "alice@example.com"):
        assert secret.encode() not in stored
    record = log.get(1)
    assert record is not None
    assert "api_key=***" in record.payload["url"]
    assert log.verify().ok


def _replace(value: Any, old: str, new: str) -> Any:
    return json.loads(json.dumps(value).replace(old, new))


def _stored_bytes(store: Store, store_url: str) -> bytes:
    if store.dialect == "sqlite":
        path = Path(store_url.removeprefix("sqlite:///"))
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    rows = raw(store, "SELECT a::text FROM audit_log a")
    return "\n".join(str(r[0]) for r in rows).encode()


# -- reading -------------------------------------------------------------------------------------


def test_query_filters(audit: AuditLog) -> None:
    fill(audit, 12)
    audit.append_sync(event(12, event="webhook_received", source="webhook", tool=None))
    assert [r.seq for r in audit.query(AuditFilter(user="user-1"))] == [2, 5, 8, 11]
    assert [r.seq for r in audit.conversation("conv-2")] == [3, 7, 11]
    assert [r.seq for r in audit.query(AuditFilter(event="webhook_received"))] == [13]
    assert [r.seq for r in audit.query(AuditFilter(source="webhook"))] == [13]
    assert len(audit.query(AuditFilter(tool="plisio_get_balance"))) == 12
    assert audit.query(AuditFilter(persona="growth")) == []
    window = AuditFilter(
        since=T0 + timedelta(seconds=3), until=(T0 + timedelta(seconds=6)).replace(tzinfo=None)
    )
    assert [r.seq for r in audit.query(window)] == [3, 4, 5]  # since inclusive, until exclusive, naive = UTC
    assert [r.seq for r in audit.query(AuditFilter(after_seq=10, limit=2))] == [11, 12]
    assert [r.seq for r in audit.query(AuditFilter(user="user-0", conversation_id="conv-0"))] == [1, 13]
    assert audit.get(99) is None


def test_export_json_lines_verify_without_this_code(audit: AuditLog) -> None:
    fill(audit, 9)
    out = io.StringIO()
    assert audit.export_jsonl(out, AuditFilter(persona="finance", limit=5)) == 5
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    for line in lines:
        data = json.loads(line)
        assert line == json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        stored_hash = data.pop("hash")
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert record_hash(canonical) == stored_hash
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3, 4, 5]


def test_export_of_nothing(audit: AuditLog) -> None:
    out = io.StringIO()
    assert audit.export_jsonl(out, AuditFilter(user="nobody")) == 0
    assert out.getvalue() == ""


def test_verify_and_export_page_through_the_log(audit: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("persona.audit._PAGE", 3)
    fill(audit, 10)
    assert audit.verify().records == 10
    out = io.StringIO()
    assert audit.export_jsonl(out, AuditFilter(after_seq=1, limit=7)) == 7
    assert [json.loads(line)["seq"] for line in out.getvalue().splitlines()] == list(range(2, 9))
    assert audit.export_jsonl(io.StringIO(), AuditFilter()) == 10


def test_an_unreadable_record_is_an_integrity_error_not_a_crash(audit: AuditLog, store: Store) -> None:
    fill(audit, 3)
    drop_triggers(store)
    raw(store, "UPDATE audit_log SET payload = 'not json' WHERE seq = 2")
    with pytest.raises(AuditIntegrityError, match="record 2") as info:
        audit.query(AuditFilter())
    assert info.value.seq == 2
    assert audit.verify().first_bad_seq == 2
