"""Webhook ingest: signed Plisio callbacks posted to ``persona serve`` on loopback, bounded in time.

The server (``bench.webhook_server``: ``persona serve``'s app with the worker in process, durable
SQLite inbox) and the load generator (``bench.webhook_load``) are separate processes. Each load runs
for a fixed time at a fixed number of keep-alive connections, first against the same server's bare
endpoint (no verify, no store: the ceiling), then against ``POST /webhooks/plisio``. Afterwards the
worker is given time to drain, and the books must balance: every 2xx is an inbox row, and every row
was processed (``done``). Anything else is reported as loss.

With ``repeats`` > 1 the four loads run once per round, each round starting one load later
(``bench.repeats``), and each figure is the median [min–max] over the rounds. Every load is followed by
draining the inbox, so the next one starts with an idle worker whatever ran before it: otherwise a
load would pay for its predecessor's backlog, and rotating the order would move that cost around.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from bench.orchestration import child_env
from bench.repeats import Spread, cell, rotated
from bench.report import Table, ms, verdict
from bench.servers import PREFIX, ROOT

CONNECTIONS = (8, 32)
DRAIN_TIMEOUT_S = 600.0
ENDPOINTS = (
    ("/_bench/bare", "same server, bare endpoint (no verify, no store)"),
    ("/webhooks/plisio", "`persona serve` /webhooks/plisio (verify + durable inbox)"),
)
LOADS = tuple((path, label, connections) for path, label in ENDPOINTS for connections in CONNECTIONS)
"""One round: the bare endpoint then ours, each at every connection count (the order of round 0)."""


def ready() -> str | None:
    """None when ``persona serve``'s app can be built here, else why not."""
    try:
        from persona.server import create_app  # noqa: F401
        from persona.webhooks import Receiver  # noqa: F401
        from persona.worker import Worker  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def config(workdir: Path) -> tuple[Path, Path]:
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    db = workdir / "serve.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    raw["store"] = {"url": f"sqlite:///{db}"}
    raw["prompts_dir"] = str(ROOT / "prompts")
    raw["log"] = {"level": "warning", "format": "console"}
    raw["plisio"]["mode"] = "sandbox"
    raw["plisio"]["sandbox"]["url"] = None  # the in-process sandbox: nothing else to start
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, db


class Server:
    def __init__(self, config_path: Path, log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.webhook_server", str(config_path)],
            cwd=ROOT, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.port: int | None = None
        self.exit: dict[str, Any] = {}
        for line in self.proc.stdout:
            if line.startswith(PREFIX + "port "):
                self.port = int(line.split()[-1])
                break
        if self.port is None:
            raise RuntimeError(f"the webhook server did not start (exit {self.proc.wait()}); see {log}")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(PREFIX + "exit "):
                self.exit = json.loads(line[len(PREFIX + "exit ") :])

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.close()
                self.proc.wait(60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        self.log.close()


def load(port: int, path: str, seconds: float, connections: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.webhook_load", str(port), path, str(seconds), str(connections)],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed: {done.stderr[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def inbox_counts(db: Path) -> dict[str, int]:
    from persona.inbox import Inbox
    from persona.store.engine import Store

    store = Store.open(f"sqlite:///{db}")
    try:
        return Inbox(store).counts()
    finally:
        store.close()


def drain(db: Path) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < DRAIN_TIMEOUT_S:
        counts = inbox_counts(db)
        if not counts.get("pending") and not counts.get("processing"):
            return time.perf_counter() - started
        time.sleep(0.5)
    raise TimeoutError(f"the worker did not drain the inbox within {DRAIN_TIMEOUT_S:g}s")


def spread(runs: list[dict[str, Any]], key: str) -> Spread | None:
    """``key`` over the rounds of one load (a missing percentile is left out, not taken as zero)."""
    return Spread.of([float(r[key]) for r in runs if r.get(key) is not None])


def run(*, quick: bool, workdir: Path, repeats: int = 1) -> Table:
    t = Table(
        section="webhooks",
        title="Webhook ingest (signed form callbacks on loopback, closed loop, keep-alive)",
        columns=[
            "endpoint",
            "connections",
            "answered/s",
            "2xx",
            "other",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "backlog drained in s",
        ],
    )
    missing = ready()
    if missing is not None:
        t.notes.append(f"**not run**: `persona serve` is not ready in this tree ({missing}).")
        return t
    seconds = 3.0 if quick else 10.0
    workdir = workdir / "webhooks"
    workdir.mkdir(parents=True, exist_ok=True)
    config_path, db = config(workdir)
    server = Server(config_path, workdir / "server.log")
    runs: list[dict[str, Any]] = []
    try:
        assert server.port is not None
        for round_index in range(repeats):
            if repeats > 1:
                print(f"  webhooks: round {round_index + 1} of {repeats}", flush=True)
            for path, label, connections in rotated(LOADS, round_index):
                print(f"  webhooks: {path} x{connections} for {seconds:g}s ...", flush=True)
                result = load(server.port, path, seconds, connections)
                drained = drain(db)
                runs.append(
                    {"round": round_index, "path": path, "label": label, "connections": connections, **result,
                     "drain_s": drained}
                )  # fmt: skip
    finally:
        server.stop()
    counts = inbox_counts(db)
    for r in runs:
        statuses = {int(k): v for k, v in r["statuses"].items()}
        r["ok"] = sum(v for k, v in statuses.items() if 200 <= k < 300)
        r["other"] = {k: v for k, v in statuses.items() if not 200 <= k < 300}
        r["committed_rate"] = r["ok"] / r["elapsed_s"]
    summaries: list[dict[str, Any]] = []
    for path, label, connections in LOADS:
        rounds = [r for r in runs if r["path"] == path and r["connections"] == connections]
        other: dict[int, int] = {}
        for r in rounds:
            for k, v in r["other"].items():
                other[k] = other.get(k, 0) + v
        summaries.append(
            {"path": path, "connections": connections, "committed_rate": spread(rounds, "committed_rate"),
             "p99_s": spread(rounds, "p99_s")}
        )  # fmt: skip
        t.rows.append(
            [
                label, str(connections), cell(spread(rounds, "rate"), digits=0, thousands=True),
                f"{sum(r['ok'] for r in rounds):,}",
                ", ".join(f"{k or 'out of bodies'}: {v}" for k, v in sorted(other.items())) or "0",
                *(cell(spread(rounds, key), scale=1000.0) for key in ("p50_s", "p99_s", "p999_s", "max_s")),
                cell(spread(rounds, "drain_s")),
            ]
        )  # fmt: skip
    stored = [r for r in runs if r["path"] == "/webhooks/plisio"]
    acked = sum(r["ok"] for r in stored)
    rows = sum(counts.values())
    processed = counts.get("done", 0)
    balanced = acked == rows == processed
    best = [
        s
        for s in summaries
        if s["path"] == "/webhooks/plisio" and s["p99_s"] is not None and s["committed_rate"]
    ]
    meets = [s for s in best if s["committed_rate"].median >= 1000 and s["p99_s"].median <= 0.050]
    fastest = max(best, key=lambda s: s["committed_rate"].median) if best else None
    of_medians = " (on the medians)" if repeats > 1 else ""
    t.notes += [
        f"Books: 2xx = {acked:,}, inbox rows = {rows:,}, processed (done) = {processed:,} "
        f"— {'balanced, zero loss' if balanced else '**NOT balanced**'}; rows by state: {counts}.",
        f"Target{of_medians}: ≥ 1,000 durably committed callbacks/s on 2 cores with p99 ack ≤ 50 ms and zero "
        "loss — "
        + verdict(bool(meets) and balanced)
        + (
            f" (best: {fastest['committed_rate'].median:,.0f}/s committed at {fastest['connections']} "
            f"connections, p99 {ms(fastest['p99_s'].median)} ms)."
            if fastest
            else "."
        ),
        (
            f"Each figure is the median [min–max] over {repeats} rounds of the {len(LOADS)} loads; each round "
            f"starts one load later (round r, counted from 0, starts at row r mod {len(LOADS)} as listed); "
            "2xx and other are totals over the rounds."
            if repeats > 1
            else "One round: each figure is from one load (`--quick` runs one round unless given "
            "`--repeats N`; a full run, 3, shown as median [min–max])."
        ),
        f"Each load: {seconds:g} s; the generator (its own process, asyncio streams, bodies signed "
        "beforehand) and the server share the machine's cores. A 2xx from /webhooks/plisio means the row is "
        "committed (SQLite WAL, synchronous=FULL) before the answer. The server runs its worker in process "
        "(schedules off), as `persona serve` does by default, so ingest competes with processing. After "
        "each load the worker is left to drain the inbox (the last column: seconds from the end of the load "
        "until no row is pending), so every load starts with an idle worker.",
        f"Server process CPU over the whole section: {server.exit.get('cpu_s', float('nan')):.1f} s.",
    ]
    t.data = {"repeats": repeats, "runs": runs, "counts": counts, "server": server.exit}
    return t
