"""`persona audit` as an operator runs it, in real processes: verify with keyed records, consistency proofs
between two checkpoints, prune (and what verify, prove and an offline export say after it), and the
errors a mistyped command gets."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from persona.audit import AuditLog
from persona.audit_keys import MacKeys
from persona.checkpoints import merkle
from persona.masterkey import parse_keyring
from persona.store.engine import Store
from tests.harness import run_cli, write_config
from tests.test_audit import Clock, drop_triggers, fill, raw
from tests.test_audit_checkpoints import rechain


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.slow
def test_consistency_prune_and_verify_on_the_command_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    run_cli(cfg, "audit", "checkpoint")  # a first start: the master key and the signing key are created
    keys = MacKeys.of(parse_keyring((tmp_path / "master.key").read_text(), "test"), [])
    store = Store.open(f"sqlite:///{tmp_path / 'persona.sqlite3'}")
    log = AuditLog(store, now=Clock())  # records stamped T0 + n seconds
    log.use_keys(keys)
    try:
        fill(log, 8)
        log.flush_sync()
        run_cli(cfg, "audit", "checkpoint")
        fill(log, 4)
        log.flush_sync()
        run_cli(cfg, "audit", "checkpoint")
        ok = flat(run_cli(cfg, "audit", "verify").stdout)
        assert "✓ every record's MAC verifies: 12 keyed with the master key" in ok
        assert "✓ consistent with checkpoint 000000000012.checkpoint" in ok

        old = tmp_path / "checkpoints" / "000000000008.checkpoint"
        proof = json.loads(run_cli(cfg, "audit", "consistency", str(old)).stdout)
        assert (proof["size1"], proof["size2"]) == (8, 12)
        merkle.verify_consistency(8, 12, [bytes.fromhex(p) for p in proof["proof"]],
                                  bytes.fromhex(proof["root1"]), bytes.fromhex(proof["root2"]))  # fmt: skip
        swapped = run_cli(cfg, "audit", "consistency", str(tmp_path / "checkpoints" / "000000000012.checkpoint"),
                          str(old), check=2)  # fmt: skip
        assert (
            "is newer than 000000000008.checkpoint" in flat(swapped.stderr) and "swap them" in swapped.stderr
        )

        bad_date = run_cli(
            cfg, "audit", "prune", "--before", "last tuesday", "--by", "ops@x", "--yes", check=2
        )
        assert "'last tuesday' is not a date/time" in flat(bad_date.stderr) and "--before" in bad_date.stderr
        pruned = flat(run_cli(cfg, "audit", "prune", "--before", "2026-11-24T12:00:05.5+00:00", "--by",
                              "ops@example.com", "--yes").stdout)  # fmt: skip
        assert "pruned records 1..5 (5 deleted)" in pruned and "checkpoint of 12 records" in pruned
        after = flat(run_cli(cfg, "audit", "verify").stdout)
        assert (
            "✓ records 1..5 were pruned" in after and "vouched for by the checkpoint of 12 records" in after
        )
        assert "✓ consistent with checkpoint 000000000012.checkpoint" in after
        gone = run_cli(cfg, "audit", "prove", "3", check=1)
        assert "record 3 was pruned" in flat(gone.stdout + gone.stderr)
        assert json.loads(run_cli(cfg, "audit", "prove", "7").stdout)["tree_size"] == 12

        export = tmp_path / "audit.jsonl"
        run_cli(cfg, "audit", "export", "--out", str(export))
        vkey = run_cli(cfg, "audit", "pubkey").stdout.strip()
        run_cli(cfg, "audit", "checkpoint")  # the prune's own record (13) gets its checkpoint too
        latest = tmp_path / "checkpoints" / "000000000013.checkpoint"
        offline = flat(run_cli(tmp_path / "none.yaml", "audit", "verify", "--export", str(export), "--checkpoint",
                               str(latest), "--pubkey", vkey).stdout)  # fmt: skip
        assert "✓ export verified offline: 8 records chained" in offline

        drop_triggers(store)
        raw(store, "UPDATE audit_log SET reason = 'approved by the CFO' WHERE seq = 9")
        rechain(store, 9)
    finally:
        log.close()
        store.close()
    broken = flat(run_cli(cfg, "audit", "verify", check=1).stdout)
    assert "✗ audit chain broken at record 9: record 9: its MAC does not verify (key version 1)" in broken
    assert "✗ checkpoint 000000000013.checkpoint does not match the log" in broken


@pytest.mark.slow
def test_the_checkpoint_command_also_posts_to_the_configured_webhook(tmp_path: Path) -> None:
    got: list[tuple[str, dict[str, str], bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.path, dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = write_config(tmp_path)
        url = f"http://127.0.0.1:{server.server_port}/witness?token=t0ps3cret"
        cfg.write_text(
            cfg.read_text().replace("checkpoint_webhook_url: null", f"checkpoint_webhook_url: {url}")
        )
        out = flat(run_cli(cfg, "audit", "checkpoint", env={"PERSONA_CHECKPOINT_SECRET": "s3cret"}).stdout)
        assert "sent to http://127.0.0.1:" in out and "/witness?***" in out and "t0ps3cret" not in out
        (path, headers, body) = got[0]
        note = (tmp_path / "checkpoints" / "000000000000.checkpoint").read_bytes()
        assert path == "/witness?token=t0ps3cret" and body == note
        assert headers["X-Persona-Delivery"] == "checkpoint-0"
        assert (
            headers["X-Persona-Signature"]
            == "sha256=" + hmac.new(b"s3cret", note, hashlib.sha256).hexdigest()
        )
        server.shutdown()
        refused = run_cli(cfg, "audit", "checkpoint", check=1)
        text = flat(refused.stdout + refused.stderr)
        assert "written to" in text and "t0ps3cret" not in text and "s3cret" not in text
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_verify_runs_unkeyed_without_the_master_key_and_creates_none(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    fresh = flat(run_cli(cfg, "audit", "verify").stdout)
    assert "! MACs not checked: no master key in this process" in fresh
    assert not (tmp_path / "master.key").exists(), "a read-only command creates no master key"
    run_cli(cfg, "users", "add", "alice@example.com", "--role", "viewer", "--by", "admin@example.com")
    run_cli(cfg, "audit", "checkpoint")
    keyed = flat(run_cli(cfg, "audit", "verify").stdout)
    assert "✓ every record's MAC verifies: 1 keyed" in keyed
    (tmp_path / "master.key").rename(tmp_path / "master.key.away")
    auditor = flat(run_cli(cfg, "audit", "verify").stdout)  # an auditor's host: the database, not the key
    assert (
        "! MACs not checked" in auditor and "✓ consistent with checkpoint 000000000001.checkpoint" in auditor
    )
    refused = run_cli(cfg, "users", "add", "bob@example.com", "--role", "viewer", "--by", "admin@example.com",
                      check=1)  # fmt: skip
    assert "there is no master key" in flat(refused.stderr) and "audit records are keyed with it" in flat(
        refused.stderr
    )
    assert not (tmp_path / "master.key").exists(), "never a new key over records the old one keyed"
