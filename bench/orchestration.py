"""Orchestration overhead: the same scripted conversation through every adapter, side by side.

The fake OpenAI endpoint and the Plisio sandbox each run in their own process on 127.0.0.1; every
adapter runs in a fresh interpreter (``bench.adapters._harness``), once non-streaming and once
streaming, in each of ``repeats`` rounds; every round starts one adapter later (``bench.repeats``) and
the table shows each figure as median [min–max] over the rounds, ratios between medians. Before an
adapter is timed, the servers must have seen its warm-up conversations complete (every model request
valid, every tool call served and answered, every sandbox request made); after timing, the totals must
match again. A row that fails either check in any round says "did not complete" and why.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import statistics
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import scenario
from bench.adapters import ADAPTERS, BASELINE
from bench.repeats import Spread, cell, rotated
from bench.report import Table
from bench.servers import PREFIX, ROOT, ServerProcess

CHILD_TIMEOUT_S = 900.0
IN_FLIGHT = 32


@dataclass(frozen=True)
class Plan:
    warmup: int
    sequential: int
    concurrent: int
    in_flight: int = IN_FLIGHT


FULL = Plan(warmup=5, sequential=200, concurrent=320)
QUICK = Plan(warmup=2, sequential=25, concurrent=64)


@dataclass
class Outcome:
    adapter: str
    label: str
    stream: bool
    round: int = 0
    ok: bool = False
    problem: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    log_tail: str = ""
    """The end of the adapter's stderr when it failed (the scratch directory is removed afterwards)."""

    def figure(self, key: str) -> float | None:
        value = self.metrics.get(key)
        return float(value) if isinstance(value, int | float) else None


@dataclass
class Row:
    """One adapter in one mode over every round: what the table shows, medians for the ratios."""

    adapter: str
    label: str
    stream: bool
    rounds: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.rounds) and all(o.ok for o in self.rounds)

    @property
    def failure(self) -> Outcome | None:
        """The round that did not complete (a failure in round 3 is no less one; later rounds are skipped)."""
        return next((o for o in self.rounds if not o.ok), None)

    def spread(self, key: str) -> Spread | None:
        return Spread.of([v for o in self.rounds if (v := o.figure(key)) is not None])

    def figure(self, key: str) -> float | None:
        """The median over the rounds (what targets and ratios use)."""
        s = self.spread(key)
        return s.median if s is not None else None


def rows_of(outcomes: list[Outcome]) -> list[Row]:
    """Outcomes grouped by (mode, adapter), plain first, adapters in the order of ``ADAPTERS``."""
    grouped: dict[tuple[bool, str], Row] = {}
    order = {a: i for i, (a, _) in enumerate(ADAPTERS)}
    for o in sorted(outcomes, key=lambda o: (o.stream, order.get(o.adapter, len(order)), o.round)):
        grouped.setdefault((o.stream, o.adapter), Row(o.adapter, o.label, o.stream)).rounds.append(o)
    return list(grouped.values())


def child_env() -> dict[str, str]:
    """The environment minus anything that would send a framework to the network (tracing, keys)."""
    drop = ("OPENAI_", "LANGCHAIN_", "LANGSMITH_", "LOGFIRE_", "OTEL_", "PYDANTIC_AI_", "AGENTS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        OPENAI_AGENTS_DISABLE_TRACING="1",
        LANGSMITH_TRACING="false",
        LANGCHAIN_TRACING_V2="false",
        NO_PROXY="127.0.0.1,localhost",
        PYTHONPATH=str(ROOT),
    )
    return env


def system_prompt() -> tuple[str, list[dict[str, Any]]]:
    """The finance persona's rendered system prompt and its 13 tool definitions, as our loop sends them."""
    from persona.app import Runtime
    from persona.config import load_settings
    from persona.store.engine import Store

    settings = load_settings(ROOT / "config.yaml", env={})
    rt = Runtime.build(settings, store=Store.open("sqlite:///:memory:"))
    try:
        ctx = rt.context(scenario.PERSONA, scenario.USER)
        return rt.system_prompt(ctx), rt.dispatcher.tools_for(ctx.persona)
    finally:
        rt.audit.close()
        rt.store.close()


def persona_config(workdir: Path, *, stream: bool, openai_url: str, sandbox_url: str) -> Path:
    """config.yaml with the loopback endpoints, a durable SQLite file, and caps sized for many runs.

    The finance persona's daily invoice total is raised so hundreds of 20 USD invoices stay within
    it: policy still values, checks and reserves every invoice, it just never runs out of budget.
    """
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    db = workdir / f"persona-{'stream' if stream else 'plain'}.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    raw["plisio"]["sandbox"]["url"] = sandbox_url
    raw["llm"].update(base_url=openai_url, model=scenario.MODEL, stream=stream)
    raw["store"] = {"url": f"sqlite:///{db}"}
    raw["prompts_dir"] = str(ROOT / "prompts")
    raw["log"] = {"level": "warning", "format": "console"}
    raw["personas"][scenario.PERSONA]["invoice_policy"]["daily_total"] = 100_000_000
    path = workdir / f"persona-{'stream' if stream else 'plain'}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


READ_BACK = "/api/v1/operations/{id}"
READ_BACK_RE = re.compile(r"/api/v1/operations/[0-9a-f]{24}")


def check_servers(openai: ServerProcess, sandbox: ServerProcess, conversations: int) -> str | None:
    """None when the servers saw exactly ``conversations`` complete conversations, else what is wrong."""
    o, s = openai.stats(), sandbox.stats()
    want_requests = conversations * scenario.MODEL_REQUESTS
    want_calls = conversations * scenario.TOOL_CALLS
    if o.get("invalid"):
        return f"{o['invalid']} invalid model requests (last: {o.get('errors', [])[-1:]})"
    if o.get("completed", 0) != conversations:
        return f"{o.get('completed', 0)} of {conversations} conversations reached the final answer"
    if o.get("requests", 0) != want_requests:
        return f"{o.get('requests', 0)} model requests, expected {want_requests}"
    if o.get("tool_calls_served", 0) != want_calls:
        return f"{o.get('tool_calls_served', 0)} tool calls served, expected {want_calls}"
    paths: Counter[str] = Counter()
    for path, n in (s.get("paths") or {}).items():
        # The persona reads each invoice it made back (GET /operations/{id}: return_existing may answer
        # with an older invoice); the peers do not. One per conversation, or none.
        paths[READ_BACK if READ_BACK_RE.fullmatch(path) else path] += n
    if paths.get(READ_BACK) == conversations:
        del paths[READ_BACK]
    want = Counter({p: n * conversations for p, n in scenario.SANDBOX_PATHS.items()})
    if paths != want:
        return f"sandbox requests {dict(paths)} differ from the expected {dict(want)}"
    if s.get("failed"):
        return f"sandbox requests failed: {s['failed']}"
    return None


class Child:
    """One adapter process; its ``@@bench`` lines arrive on a queue (everything else is kept for errors)."""

    def __init__(self, adapter: str, config: Path, log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.adapters._harness", adapter, str(config)],
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.lines: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                kind, _, payload = line[len(PREFIX) :].partition(" ")
                self.lines.put((kind, json.loads(payload)))
            else:
                self.log.write(line)
        self.lines.put(None)

    def next(self) -> tuple[str, dict[str, Any]]:
        try:
            item = self.lines.get(timeout=CHILD_TIMEOUT_S)
        except queue.Empty:
            self.proc.kill()
            return "error", {"error": f"no answer within {CHILD_TIMEOUT_S:g}s"}
        if item is None:
            return "error", {"error": f"the adapter exited ({self.proc.wait()}) without a result"}
        return item

    def say(self, word: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(word + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def run_adapter(
    adapter: str, label: str, stream: bool, base: dict[str, Any], plan: Plan, workdir: Path,
    openai: ServerProcess, sandbox: ServerProcess, round_index: int = 0,
) -> Outcome:  # fmt: skip
    out = Outcome(adapter, label, stream, round_index)
    openai.reset()
    sandbox.reset()
    cfg = {
        **base,
        "stream": stream,
        "warmup": plan.warmup,
        "sequential": plan.sequential,
        "concurrent": plan.concurrent,
        "in_flight": plan.in_flight,
    }
    if adapter.startswith("persona_loop"):
        cfg["persona_config"] = str(
            persona_config(
                workdir,
                stream=stream,
                openai_url=base["openai_base_url"],
                sandbox_url=sandbox.base_url + "/api/v1",
            )
        )
    mode = "stream" if stream else "plain"
    config = workdir / f"{adapter}-{mode}.json"
    config.write_text(json.dumps(cfg))
    child = Child(adapter, config, workdir / f"{adapter}-{mode}.log")
    try:
        kind, payload = child.next()
        if kind != "warm":
            out.problem = _first_line(payload.get("error")) or "no warm-up report"
            return out
        problem = check_servers(openai, sandbox, plan.warmup)
        if problem is not None:
            child.say("stop")
            out.problem = f"warm-up: {problem}"
            return out
        child.say("go")
        kind, payload = child.next()
        if kind != "result":
            out.problem = _first_line(payload.get("error")) or "no result"
            return out
        problem = check_servers(openai, sandbox, payload["conversations"])
        if problem is not None:
            out.problem = f"timed run: {problem}"
            return out
        walls = sorted(payload["walls"])
        out.metrics = {
            "p50_s": statistics.median(walls),
            "p95_s": walls[min(len(walls) - 1, round(0.95 * (len(walls) - 1)))],
            "cpu_s": payload["seq_cpu_s"] / plan.sequential,
            "sys_s": payload["seq_sys_s"] / plan.sequential,
            "conc_cpu_s": payload["conc_cpu_s"] / plan.concurrent,
            "throughput": plan.concurrent / payload["conc_wall_s"],
            "import_s": payload["import_s"],
            "rss_mb": payload["peak_rss_mb"],
            "conversations": payload["conversations"],
            "extra": payload.get("extra") or {},
        }
        out.ok = True
        return out
    finally:
        child.close()
        if not out.ok:
            lines = (workdir / f"{adapter}-{mode}.log").read_text(errors="replace").strip().splitlines()
            out.log_tail = "\n".join(lines[-8:])


def _first_line(text: Any) -> str | None:
    return str(text).strip().splitlines()[0][:300] if text else None


def prime(adapters: list[str]) -> None:
    """Import each adapter once, untimed, so no row pays for a cold page cache or bytecode compile."""
    for adapter in adapters:
        subprocess.run(
            [sys.executable, "-c", f"import bench.adapters.{adapter}"],
            cwd=ROOT, env=child_env(), check=False, capture_output=True,
        )  # fmt: skip


def base_config(
    openai: ServerProcess, sandbox: ServerProcess, prompt: str, tools: list[dict[str, Any]]
) -> dict[str, Any]:
    """What every adapter is given: endpoints, keys, the prompt, the tools, the expected answer."""
    from tools.plisio.sandbox import SANDBOX_API_KEY

    return {
        "openai_base_url": openai.base_url + "/v1",
        "api_key": "sk-bench-not-a-real-key",
        "model": scenario.MODEL,
        "sandbox_base_url": sandbox.base_url + "/api/v1",
        "sandbox_api_key": SANDBOX_API_KEY,
        "system_prompt": prompt,
        "user_message": scenario.USER_MESSAGE,
        "tools": tools,
        "temperature": 0.1,
        "max_tokens": 1024,
        "final_text": scenario.FINAL_TEXT,
    }


def run(*, quick: bool, workdir: Path, only: list[str] | None = None, repeats: int = 1) -> Table:
    """Every chosen adapter, plain then streaming, in each of ``repeats`` rounds, the order rotated.

    A (adapter, mode) that failed is not run again in later rounds: it would fail the same way, and a
    hung framework costs ``CHILD_TIMEOUT_S`` each time.
    """
    plan = QUICK if quick else FULL
    chosen = [(a, label) for a, label in ADAPTERS if not only or a in only or a == BASELINE]
    workdir = workdir / "orchestration"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    prompt, tools = system_prompt()
    prime([a for a, _ in chosen])
    openai = ServerProcess("openai")
    sandbox = ServerProcess("sandbox")
    outcomes: list[Outcome] = []
    failed: set[tuple[str, bool]] = set()
    try:
        base = base_config(openai, sandbox, prompt, tools)
        for r in range(repeats):
            order = rotated(chosen, r)
            if repeats > 1:
                print(f"  orchestration: round {r + 1} of {repeats}, from {order[0][1]}", flush=True)
            for stream in (False, True):
                for adapter, label in order:
                    mode = "stream" if stream else "plain"
                    if (adapter, stream) in failed:
                        print(
                            f"  orchestration: {label} ({mode}) skipped: did not complete before", flush=True
                        )
                        continue
                    print(f"  orchestration: {label} ({mode}) ...", flush=True)
                    outcome = run_adapter(adapter, label, stream, base, plan, workdir, openai, sandbox, r)
                    if not outcome.ok:
                        print(f"    DID NOT COMPLETE: {outcome.problem}", flush=True)
                        failed.add((adapter, stream))
                    outcomes.append(outcome)
    finally:
        openai.stop()
        sandbox.stop()
    return table(outcomes, plan, tools, repeats)


def table(outcomes: list[Outcome], plan: Plan, tools: list[dict[str, Any]], repeats: int = 1) -> Table:
    t = Table(
        section="orchestration",
        title="Orchestration overhead (one scripted conversation: 5 model requests, 5 tool calls)",
        columns=[
            "adapter", "mode", "p50 ms", "p95 ms", "client CPU ms/conv", "of which kernel", "CPU ms/conv @32",
            f"conv/s @{plan.in_flight}", "import ms", "peak RSS MB", "verified",
        ],
    )  # fmt: skip
    rows = rows_of(outcomes)
    for stream in (False, True):
        mode = "stream" if stream else "plain"
        same_mode = [r for r in rows if r.stream == stream]
        base = next((r for r in same_mode if r.adapter == BASELINE and r.ok), None)

        def b(key: str, base: Row | None = base) -> Spread | None:
            return base.spread(key) if base is not None else None

        for row in same_mode:
            failure = row.failure
            if failure is not None:
                where = f" in round {failure.round + 1} of {repeats}" if repeats > 1 else ""
                t.rows.append(
                    [row.label, mode, *["—"] * 8, f"**did not complete**{where}: {failure.problem}"]
                )
                continue
            served = sum(o.metrics["conversations"] for o in row.rounds)
            rounds = len(row.rounds)
            t.rows.append(
                [
                    row.label,
                    mode,
                    cell(row.spread("p50_s"), b("p50_s"), scale=1000.0),
                    cell(row.spread("p95_s"), b("p95_s"), scale=1000.0),
                    cell(row.spread("cpu_s"), b("cpu_s"), scale=1000.0, digits=2),
                    cell(row.spread("sys_s"), None, scale=1000.0, digits=2),
                    cell(row.spread("conc_cpu_s"), b("conc_cpu_s"), scale=1000.0, digits=2),
                    cell(row.spread("throughput"), b("throughput")),
                    cell(row.spread("import_s"), b("import_s"), scale=1000.0, digits=0),
                    cell(row.spread("rss_mb"), b("rss_mb")),
                    f"{served} conv, {served * scenario.TOOL_CALLS} tool calls"
                    + (f" over {rounds} rounds" if rounds > 1 else ""),
                ]
            )
    t.notes += _targets(rows)
    t.notes += [
        _rounds_note(repeats, len({r.adapter for r in rows})),
        "Scenario (bench/scenario.py): 4 model steps that call tools (1, a parallel pair, 1, 1: shop info, "
        "balance + fee plans, last 3 completed invoices, create a 20 USD invoice) and the final text: 5 "
        "chat-completion requests, 5 tool calls, each a real HTTP request to the sandbox.",
        "Ratios in round brackets are to the hand loop on the `openai` client, same mode, same run"
        + (", median to median. " if repeats > 1 else ". ")
        + f"Each run: sequential phase {plan.sequential} conversations one at a time after {plan.warmup} warm-up; "
        f"concurrent phase {plan.concurrent} conversations, {plan.in_flight} in flight.",
        "Client CPU = `time.process_time()` of the adapter's own process (all its threads: for persona that "
        "includes the audit writer and the SQLite thread pool); the fake model and the sandbox run in two "
        "other processes. Import ms = importing the adapter module in a fresh interpreter (its framework "
        "and httpx); peak RSS = that process's high-water mark at the end (`VmHWM`; `ru_maxrss` would report the parent's, as Linux keeps it across `exec`).",
        f"Every adapter offers the same {len(tools)} strict tool definitions and the same system prompt "
        "(the finance persona's); peers call the sandbox through hand-wired `httpx` tools that return the "
        "API's data (lists projected to the fields our views keep). Verified = the servers counted every "
        "model request, served tool call, tool result and sandbox request of every conversation.",
    ]
    for o in outcomes:
        if not o.ok and o.log_tail:
            tail = o.log_tail.replace("`", "'").replace("\n", " ⏎ ")
            t.notes.append(
                f"{o.label} ({'stream' if o.stream else 'plain'}, round {o.round + 1}) stderr, last lines: "
                f"`{tail[-600:]}`"
            )
    for row in rows:
        extras = [o.metrics.get("extra") or {} for o in row.rounds if o.ok]
        if any(extras):
            records = sorted({str(e.get("audit_records")) for e in extras})
            t.notes.append(
                f"{row.label} ({'stream' if row.stream else 'plain'}): audit log {' / '.join(records)} records"
                + (" in each round" if len(extras) > 1 else "")
                + f", chain verified: {all(e.get('audit_ok') for e in extras)}."
            )
    t.data = {
        "plan": plan.__dict__,
        "repeats": repeats,
        "outcomes": [
            {
                "adapter": o.adapter,
                "stream": o.stream,
                "round": o.round,
                "ok": o.ok,
                "problem": o.problem,
                "metrics": o.metrics,
                "log_tail": o.log_tail,
            }
            for o in outcomes
        ],
    }
    return t


def _rounds_note(repeats: int, adapters: int) -> str:
    if repeats == 1:
        return (
            "One round: every figure, and so every ratio, is from one run of each adapter (`--quick` runs "
            "one round unless given `--repeats N`; a full run, 3, shown as median [min–max])."
        )
    return (
        f"Each figure is the median [min–max] over {repeats} rounds. A round runs every adapter once per mode, "
        f"in the order listed above rotated by one per round (round r, counted from 0, starts at adapter "
        f"r mod {adapters}), so no adapter always runs first or always after the same neighbour. Ratios and "
        "targets are computed from the medians. A row that did not complete in one round is not run again "
        "(the raw figures of its earlier rounds stay in `latest.json`)."
    )


def _targets(all_rows: list[Row]) -> list[str]:
    """The CPU targets, on medians over the rounds (one run's noise must not meet or miss them)."""
    notes = []
    peers = {"openai_agents_sdk", "pydanticai_agent", "langgraph_react"}
    for stream in (False, True):
        mode = "stream" if stream else "plain"
        rows = {r.adapter: r for r in all_rows if r.stream == stream and r.ok}
        ours, base = rows.get("persona_loop"), rows.get(BASELINE)
        if ours is None or base is None:
            continue
        cpu, base_cpu = ours.figure("cpu_s") or 0.0, base.figure("cpu_s") or 1.0
        peer_cpu = [rows[p].figure("cpu_s") or 0.0 for p in peers if p in rows]
        median = ", medians" if len(ours.rounds) > 1 else ""
        line = (
            f"Target ({mode}{median}): persona CPU ≤ 1.0× the `openai` hand loop: {cpu / base_cpu:.2f}× — "
            + ("met" if cpu <= base_cpu else "**not met**")
        )
        if peer_cpu:
            fastest = min(peer_cpu)
            line += f"; ≤ 0.6× the fastest peer framework: {cpu / fastest:.2f}× — " + (
                "met" if cpu <= 0.6 * fastest else "**not met**"
            )
        default_gc = rows.get("persona_loop_default_gc")
        if default_gc is not None:
            gc_cpu = default_gc.figure("cpu_s") or 0.0
            line += (
                f". Without `settle_heap()` (default GC, as the peers run): {gc_cpu / base_cpu:.2f}× the `openai` loop"
                + (f", {gc_cpu / min(peer_cpu):.2f}× the fastest peer" if peer_cpu else "")
            )
        notes.append(line + ".")
    return notes
