"""Webhook ingest: signed Plisio callbacks posted to ``persona serve`` on loopback, bounded in time.

The server (``bench.webhook_server``: ``persona serve``'s app with the worker in process, durable
SQLite inbox) and the load generator (``bench.webhook_load``) are separate processes. Each load runs
for a fixed time at a fixed number of keep-alive connections, first against the same server's bare
endpoint (no verify, no store: the ceiling), then against ``POST /webhooks/plisio``. Afterwards the
worker is given time to drain, and the books must balance: every 2xx is an inbox row, and every row
was processed (``done``). Anything else is reported as loss.
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
from bench.report import Table, ms, verdict
from bench.servers import PREFIX, ROOT

CONNECTIONS = (8, 32)
DRAIN_TIMEOUT_S = 600.0
ENDPOINTS = (
    ("/_bench/bare", "same server, bare endpoint (no verify, no store)"),
    ("/webhooks/plisio", "`persona serve` /webhooks/plisio (verify + durable inbox)"),
)


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


def run(*, quick: bool, workdir: Path) -> Table:
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
    drained_s: float | None = None
    try:
        assert server.port is not None
        for path, label in ENDPOINTS:
            for connections in CONNECTIONS:
                print(f"  webhooks: {path} x{connections} for {seconds:g}s ...", flush=True)
                result = load(server.port, path, seconds, connections)
                runs.append({"path": path, "label": label, "connections": connections, **result})
        drained_s = drain(db)
    finally:
        server.stop()
    counts = inbox_counts(db)
    for r in runs:
        statuses = {int(k): v for k, v in r["statuses"].items()}
        ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
        other = {k: v for k, v in statuses.items() if not 200 <= k < 300}
        r["ok"] = ok
        t.rows.append(
            [
                r["label"], str(r["connections"]), f"{r['rate']:,.0f}", f"{ok:,}",
                ", ".join(f"{k or 'out of bodies'}: {v}" for k, v in sorted(other.items())) or "0",
                ms(r["p50_s"]), ms(r["p99_s"]), ms(r["p999_s"]), ms(r["max_s"]),
            ]
        )  # fmt: skip
    stored = [r for r in runs if r["path"] == "/webhooks/plisio"]
    acked = sum(r["ok"] for r in stored)
    rows = sum(counts.values())
    processed = counts.get("done", 0)
    balanced = acked == rows == processed
    best = [r for r in stored if r["p99_s"] is not None]
    meets = [r for r in best if r["ok"] / r["elapsed_s"] >= 1000 and r["p99_s"] <= 0.050]
    fastest = max(best, key=lambda r: r["rate"]) if best else None
    t.notes += [
        f"Books: 2xx = {acked:,}, inbox rows = {rows:,}, processed (done) = {processed:,} "
        f"— {'balanced, zero loss' if balanced else '**NOT balanced**'}; rows by state: {counts}. "
        f"The in-process worker finished the backlog {drained_s:.1f} s after the last load."
        if drained_s is not None
        else "The worker did not drain.",
        "Target: ≥ 1,000 durably committed callbacks/s on 2 cores with p99 ack ≤ 50 ms and zero loss — "
        + verdict(bool(meets) and balanced)
        + (
            f" (best: {fastest['ok'] / fastest['elapsed_s']:,.0f}/s committed at {fastest['connections']} "
            f"connections, p99 {ms(fastest['p99_s'])} ms)."
            if fastest
            else "."
        ),
        f"Each row: {seconds:g} s of load; the generator (its own process, asyncio streams, bodies signed "
        "beforehand) and the server share the machine's cores. A 2xx from /webhooks/plisio means the row is "
        "committed (SQLite WAL, synchronous=FULL) before the answer. The server runs its worker in process "
        "(schedules off), as `persona serve` does by default, so ingest competes with processing.",
        f"Server process CPU over the whole section: {server.exit.get('cpu_s', float('nan')):.1f} s.",
    ]
    t.data = {"runs": runs, "counts": counts, "drained_s": drained_s, "server": server.exit}
    return t
