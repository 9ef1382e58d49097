"""The shape of the house, checked: one gate for every Plisio write.

A Plisio write is a call of a client method that changes the merchant's account. Only the tool handler may
make one, and only the gate may run a tool: the dispatcher (reads) and the effects executor (writes, once,
under the ledger). ``persona tools call`` runs only read-only tools itself; a write there goes through the
dispatcher (tests/test_tools_call_gate.py). The demo and replay triggers play the shop's own checkout on the
sandbox, so they call the client directly, and nothing else does.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.harness import REPO

WRITE_METHODS = {"create_invoice"}
"""PlisioClient methods that change the account (every other one reads)."""

WRITERS = {
    "tools/plisio/tools.py": "the tool handler: reached only through the gate",
    "persona/demo.py": "the demo shop's checkout, on the sandbox",
    "persona/replay/triggers.py": "a replay scenario's checkout, on the sandbox",
}
RUNNERS = {
    "persona/dispatcher.py": "the gate: scope, policy, grants; reads run here",
    "persona/effects/executor.py": "a side effect, once, under the effects ledger",
    "persona/cli/tools.py": "`tools call` without --persona: read-only tools only (writes need the gate)",
}


def _sources() -> list[Path]:
    found = [*(REPO / "persona").rglob("*.py"), *(REPO / "tools").rglob("*.py")]
    return [p for p in found if "sandbox" not in p.relative_to(REPO).parts]


def _calls(path: Path, names: set[str]) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr in names)
            or (isinstance(node.func, ast.Name) and node.func.id in names)
        )
    ]


def test_only_the_tool_handler_writes_to_plisio() -> None:
    writers = {str(p.relative_to(REPO)) for p in _sources() if _calls(p, WRITE_METHODS)} - {
        "tools/plisio/client.py"
    }
    assert writers == set(WRITERS), writers


def test_only_the_gate_runs_tools() -> None:
    runners = set()
    for path in _sources():
        rel = str(path.relative_to(REPO))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported_run = any(
            isinstance(n, ast.ImportFrom)
            and n.module == "tools.registry"
            and any(a.name == "run" for a in n.names)
            for n in ast.walk(tree)
        )
        if (imported_run and _calls(path, {"run"})) or _calls(path, {"handler"}):
            runners.add(rel)
    assert runners - {"tools/registry.py"} == set(RUNNERS), runners


def test_tools_call_runs_a_tool_itself_only_when_it_is_read_only() -> None:
    source = (REPO / "persona/cli/tools.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    assert _calls_in(functions["_run_read"], "run") and not _calls_in(functions["_run_gated"], "run")
    guard = ast.get_source_segment(source, functions["call"]) or ""
    assert "if not tool.read_only and persona is None:" in guard and "raise NotConfigured(" in guard


def _calls_in(function: ast.AST, name: str) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name
        for n in ast.walk(function)
    )
