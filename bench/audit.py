"""Audit: appends/s on durable SQLite, then the time and memory of ``verify`` over 1M records.

Appends go through the public API (``AuditLog.append``, group commit, WAL + ``synchronous=FULL``), keyed
(each record's MAC, as the runtime writes them): once one at a time (each append waits for its own
commit), then with many in flight (what a busy server does), then the log is filled to 1M records the
same way, and a checkpoint of it is signed. ``verify`` is what ``persona audit verify`` runs
(``verify_log``: the chain, every MAC and the Merkle root against the signed checkpoint, in one pass), in a
fresh process (``python -m bench.audit verify DIR``) so its memory is its own: peak RSS (``VmHWM``) of that
process, and how much it grew during the verify.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.report import Table, verdict
from bench.servers import ROOT
from persona.clock import utcnow
from persona.store.schema import prepare

RECORDS_FULL = 1_000_000
RECORDS_QUICK = 100_000


def _event(i: int) -> Any:
    from persona.audit import AuditEvent

    return AuditEvent(
        event="tool_call_succeeded",
        source="chat",
        user="bench-user",
        persona="finance",
        conversation_id=f"conv_{i // 22:012x}",
        tool="plisio_get_balance",
        decision="allow",
        reason="read-only tool in scope",
        latency_ms=1.25,
        payload={
            "tool_call_id": f"call_{i:016x}",
            "arguments": {"psys_cid": "BTC"},
            "result": {"ok": True, "result": {"psys_cid": "BTC", "balance": "0.24174428"}},
        },
    )


def _vmhwm_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _vmrss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _append(log: Any, start: int, count: int, in_flight: int) -> float:
    """Append ``count`` events with at most ``in_flight`` waiting; return appends/s."""
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with gate:
            await log.append(_event(i))

    started = time.perf_counter()
    if in_flight == 1:
        for i in range(start, start + count):
            await log.append(_event(i))
    else:
        chunk = 20_000  # bounded number of pending tasks
        for first in range(start, start + count, chunk):
            await asyncio.gather(*(one(i) for i in range(first, min(first + chunk, start + count))))
    return count / (time.perf_counter() - started)


def _keys(workdir: Path) -> Any:
    from persona.audit_keys import MacKeys
    from persona.masterkey import Keyring

    return MacKeys.of(Keyring(1, {1: bytes.fromhex((workdir / "master.hex").read_text())}), [])


def _signer(workdir: Path) -> Any:
    from persona.checkpoints.note import NoteSigner

    return NoteSigner.from_skey((workdir / "signing.key").read_text())


async def _fill(workdir: Path, db: Path, total: int, quick: bool) -> dict[str, Any]:
    import secrets

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from persona import log as plog
    from persona.audit import AuditLog
    from persona.checkpoints.ledger import sign_current
    from persona.checkpoints.signed import CheckpointDir
    from persona.checkpoints.signing import skey_of
    from persona.store.engine import Store

    plog.configure("warning")
    (workdir / "master.hex").write_text(secrets.token_bytes(32).hex())
    (workdir / "signing.key").write_text(skey_of("bench/audit", Ed25519PrivateKey.generate()))
    store = Store.open(f"sqlite:///{db}")
    prepare(store, now=utcnow)
    log = AuditLog(store)
    log.use_keys(_keys(workdir))
    done = 0
    out: dict[str, Any] = {}
    try:
        n = 300 if quick else 2_000
        out["sequential"] = await _append(log, done, n, 1)
        done += n
        n = 5_000 if quick else 20_000
        out["in_flight_64"] = await _append(log, done, n, 64)
        done += n
        rest = total - done
        out["fill"] = await _append(log, done, rest, 1024)
        done += rest
        sign_current(log, _signer(workdir), CheckpointDir(workdir / "checkpoints"))
    finally:
        await log.aclose()
        store.close()
    out["records"] = done
    return out


def _verify_child(workdir: Path) -> None:
    """In a fresh process: open, verify (chain + MACs + checkpoint), report time and memory as one JSON line."""
    from persona import log as plog
    from persona.audit import AuditLog
    from persona.audit_segments import cores
    from persona.checkpoints.note import NoteVerifier
    from persona.checkpoints.signed import CheckpointDir
    from persona.checkpoints.verification import verify_log
    from persona.store.engine import Store

    plog.configure("warning")
    store = Store.open(f"sqlite:///{workdir / 'audit.sqlite3'}")
    log = AuditLog(store)
    log.use_keys(_keys(workdir))
    folder = CheckpointDir(workdir / "checkpoints")
    key = NoteVerifier.from_vkey(_signer(workdir).vkey)
    before = _vmrss_mb()
    started = time.perf_counter()
    found = verify_log(log, checkpoint=folder.latest(), folder=folder.path, verifier=lambda: key)
    wall = time.perf_counter() - started
    bad = [f"{f.title}: {f.detail}" for f in found if f.level != "ok"]
    print(json.dumps({"wall_s": wall, "ok": not bad, "records": log.head()[0], "problem": "; ".join(bad) or None,
                      "checked": [f.title for f in found], "rss_before_mb": before, "peak_rss_mb": _vmhwm_mb(),
                      "workers": cores(),
                      "child_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))  # fmt: skip
    store.close()


def run(*, quick: bool, workdir: Path) -> Table:
    total = RECORDS_QUICK if quick else RECORDS_FULL
    workdir = workdir / "audit"
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "audit.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    for old in (workdir / "checkpoints").glob("*.checkpoint"):
        old.unlink()
    rates = asyncio.run(_fill(workdir, db, total, quick))
    size_mb = sum(Path(f"{db}{s}").stat().st_size for s in ("", "-wal") if Path(f"{db}{s}").exists()) / 2**20
    done = subprocess.run(
        [sys.executable, "-m", "bench.audit", "verify", str(workdir)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    v = json.loads(done.stdout.strip().splitlines()[-1])
    scale = RECORDS_FULL / total
    t = Table(
        section="audit",
        title="Audit log (durable SQLite: WAL, synchronous=FULL)",
        columns=["measure", "result", "target", "verdict"],
    )
    t.rows = [
        ["appends/s, one at a time (each waits for its commit)", f"{rates['sequential']:,.0f}", "", ""],
        ["appends/s, 64 in flight (group commit)", f"{rates['in_flight_64']:,.0f}", "≥ 5,000", verdict(rates["in_flight_64"] >= 5000)],
        [f"appends/s, filling to {total:,} records (1,024 in flight)", f"{rates['fill']:,.0f}", "", ""],
        [
            f"`verify` of {v['records']:,} records: wall",
            f"{v['wall_s']:.2f} s" + (f" (×{scale:.0f} ≈ {v['wall_s'] * scale:.1f} s for 1M)" if scale != 1 else ""),
            "≤ 10 s for 1M",
            verdict(v["wall_s"] * scale <= 10) if v["ok"] else "**verify failed**",
        ],
        [
            "`verify`: peak RSS of its process (growth during verify)",
            f"{v['peak_rss_mb']:.0f} MB (+{v['peak_rss_mb'] - v['rss_before_mb']:.0f} MB)",
            "bounded",
            "",
        ],
        [
            "`verify`: processes, and the largest peak RSS of the others",
            f"{v['workers']}, {v['child_peak_rss_mb']:.0f} MB",
            "",
            "",
        ],
        ["database size", f"{size_mb:,.0f} MB", "", ""],
    ]  # fmt: skip
    t.notes = [
        f"Verified: {v['ok']} ({v['records']:,} records: {'; '.join(v.get('checked', []))})"
        f"{'' if v['ok'] else ': ' + str(v['problem'])}.",
        "Each event is a realistic `tool_call_succeeded` record (arguments, result, decision, latency), "
        "appended through `AuditLog.append` and so scrubbed, canonicalised, hashed, chained and keyed (HMAC).",
        "`verify` = `persona audit verify`: rehash and chain every record, check every MAC, and compute the "
        "Merkle root the signed checkpoint must match, in one pass over the log cut into one segment per core "
        "(the others scanned by spawned processes).",
        "One run (`--repeats` does not apply: filling the log to 1M records takes minutes): every figure is "
        "one measurement, so compare it across runs with the run-to-run spread in mind.",
    ]
    if quick:
        t.notes.append(f"--quick: {total:,} records; the 1M verify time is extrapolated linearly.")
    t.data = {"rates": rates, "verify": v, "records": total, "db_mb": size_mb}
    return t


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "verify":
        _verify_child(Path(sys.argv[2]))
    else:
        raise SystemExit("usage: python -m bench.audit verify DIR")
