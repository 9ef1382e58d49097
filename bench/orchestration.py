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
from pathlib import Path
from typing import Any

import yaml

from bench import scenario
from bench.adapters import ADAPTERS, BASELINE
from bench.orchestration_table import FULL, QUICK, Outcome, Plan, table
from bench.repeats import rotated
from bench.report import Table
from bench.servers import PREFIX, ROOT, ServerProcess

CHILD_TIMEOUT_S = 900.0


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
    from persona.calls import call_context
    from persona.config import load_settings
    from persona.store.engine import Store

    settings = load_settings(ROOT / "config.yaml", env={})
    rt = Runtime.build(settings, store=Store.open("sqlite:///:memory:"))
    try:
        ctx = call_context(settings, scenario.PERSONA, scenario.USER)
        return rt.prompts.for_call(ctx, today=rt.now().date()), rt.dispatcher.tools_for(ctx.persona)
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
