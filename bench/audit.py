"""Audit: appends/s on durable SQLite, then the time and memory of ``verify`` over 1M records.

Appends go through the public API (``AuditLog.append``, group commit, WAL + ``synchronous=FULL``):
once one at a time (each append waits for its own commit), then with many in flight (what a busy
server does), then the log is filled to 1M records the same way. ``verify`` runs in a fresh process
(``python -m bench.audit verify DB``) so its memory is its own: peak RSS (``VmHWM``) of that process,
and how much it grew during the verify.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.report import Table, verdict
from bench.servers import ROOT

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


async def _fill(db: Path, total: int, quick: bool) -> dict[str, Any]:
    from persona import log as plog
    from persona.audit import AuditLog
    from persona.store.engine import Store

    plog.configure("warning")
    store = Store.open(f"sqlite:///{db}")
    store.create_all()
    log = AuditLog(store)
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
    finally:
        await log.aclose()
        store.close()
    out["records"] = done
    return out


def _verify_child(db: str) -> None:
    """In a fresh process: open, verify, report time and memory as one JSON line."""
    from persona import log as plog
    from persona.audit import AuditLog
    from persona.store.engine import Store

    plog.configure("warning")
    store = Store.open(f"sqlite:///{db}")
    log = AuditLog(store)
    before = _vmrss_mb()
    started = time.perf_counter()
    report = log.verify()
    wall = time.perf_counter() - started
    print(
        json.dumps(
            {
                "wall_s": wall,
                "ok": report.ok,
                "records": report.records,
                "problem": report.problem,
                "rss_before_mb": before,
                "peak_rss_mb": _vmhwm_mb(),
            }
        )
    )
    store.close()


def run(*, quick: bool, workdir: Path) -> Table:
    total = RECORDS_QUICK if quick else RECORDS_FULL
    workdir = workdir / "audit"
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "audit.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    rates = asyncio.run(_fill(db, total, quick))
    size_mb = sum(Path(f"{db}{s}").stat().st_size for s in ("", "-wal") if Path(f"{db}{s}").exists()) / 2**20
    done = subprocess.run(
        [sys.executable, "-m", "bench.audit", "verify", str(db)],
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
        ["database size", f"{size_mb:,.0f} MB", "", ""],
    ]  # fmt: skip
    t.notes = [
        f"Chain verified: {v['ok']} ({v['records']:,} records){'' if v['ok'] else ': ' + str(v['problem'])}.",
        "Each event is a realistic `tool_call_succeeded` record (arguments, result, decision, latency), "
        "appended through `AuditLog.append` and so scrubbed, canonicalised, hashed and chained.",
    ]
    if quick:
        t.notes.append(f"--quick: {total:,} records; the 1M verify time is extrapolated linearly.")
    t.data = {"rates": rates, "verify": v, "records": total, "db_mb": size_mb}
    return t


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "verify":
        _verify_child(sys.argv[2])
    else:
        raise SystemExit("usage: python -m bench.audit verify DB")
