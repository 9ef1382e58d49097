"""Invariants of the house, held by tests (after httpx's ``tests/test_exported_members.py``).

They read the source, not the running program: who imports what (every import counts, at module level, inside
a function or under ``TYPE_CHECKING``: a dependency is a dependency), how long a module is, what a package
exports, what the audit log can be told. Each names what broke and where, so the fix is obvious.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path

import pytest

from persona.events import EVENTS
from tests.harness import REPO
from tools import errors
from tools.plisio.tools import plisio_registry

PACKAGES = ("persona", "tools")
MAX_LINES = 500

WORLD_BUILDERS = {"persona.demo", "persona.replay.runner"}
"""Besides the entry points (``persona.cli``, ``persona.server``), the modules that build a whole world of their
own with ``Runtime.build`` (the demo's; a fresh one per replayed scenario). Nothing else takes the runtime: a
handler, a flow, the worker, the console take their typed bundle from ``persona/deps.py``."""


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def rel(self) -> str:
        return str(self.path.relative_to(REPO))


@cache
def modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = Module(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def imported(module: Module) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in ``module``; ``from P import m`` names ``P.m`` when it is one."""
    known = modules()
    is_package = module.path.name == "__init__.py"
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.name.split(".") if is_package else module.name.split(".")[:-1]
                here = here[: len(here) - node.level + 1]
                base = ".".join([*here, base] if base else here)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in known else base), node.lineno


def owner(name: str) -> str | None:
    """The module of ours that ``name`` (a module or a name inside one) belongs to."""
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


@cache
def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, module in modules().items():
        edges[name] = {t for imp, _ in imported(module) if (t := owner(imp)) is not None and t != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def importers_of(target: str) -> dict[str, int]:
    """Modules of ours that import ``target`` (or something inside it), with the first line that does."""
    users: dict[str, int] = {}
    for name, module in modules().items():
        for imp, line in imported(module):
            if imp == target or imp.startswith(target + "."):
                users.setdefault(name, line)
    return users


# -- imports ---------------------------------------------------------------------------------------------------


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == [], "import cycles (each must be broken: move the shared part a floor down)"


def test_tools_never_import_persona() -> None:
    wrong = {
        f"{m.rel}:{line} imports {imp}"
        for m in modules().values()
        if m.name.startswith("tools")
        for imp, line in imported(m)
        if imp == "persona" or imp.startswith("persona.")
    }
    assert wrong == set(), "tools/ is the integration: it knows nothing of the persona"


@pytest.mark.parametrize("library", ["openai", "httpx2"])
def test_only_the_model_client_package_imports_the_model_sdk(library: str) -> None:
    users = {name for name in importers_of(library) if not name.startswith("persona.llm")}
    assert users == set(), (
        f"{library} belongs to persona/llm/ (the model endpoint's boundary): {sorted(users)}"
    )


def test_the_gate_knows_tools_not_plisio() -> None:
    for name in ("persona.dispatcher", "persona.effects.executor", "persona.loop.turn"):
        plisio = {imp for imp, _ in imported(modules()[name]) if imp.startswith("tools.plisio")}
        assert plisio == set(), (
            f"{name} imports {sorted(plisio)}: the tool context comes from the integration"
        )


GATE = ("persona.dispatcher", "persona.effects.executor", "persona.loop.turn", "tools.registry")


def test_the_gate_catches_service_errors_not_plisio_ones() -> None:
    for name in GATE:
        named = {
            alias.name
            for node in ast.walk(modules()[name].tree)
            if isinstance(node, ast.ImportFrom) and node.module == "tools.errors"
            for alias in node.names
        }
        assert not {n for n in named if n.startswith("Plisio")}, (
            f"{name} imports {sorted(named)}: the gate catches ServiceError, OutcomeUnknown, EffectDiffers"
        )
    # and Plisio's errors are those: what the executor tells apart, the integration raises
    assert issubclass(errors.PlisioOutcomeUnknown, errors.OutcomeUnknown)
    assert issubclass(errors.PlisioExistingInvoice, errors.EffectDiffers)
    assert issubclass(errors.PlisioError, errors.ServiceError)
    assert not issubclass(errors.PlisioApiError, errors.OutcomeUnknown | errors.EffectDiffers)
    assert not issubclass(errors.PlisioTransportError, errors.OutcomeUnknown), "a refused connect never left"


def test_only_entry_points_and_world_builders_take_the_runtime() -> None:
    users = set(importers_of("persona.app"))
    entry = {u for u in users if u.startswith("persona.cli") or u in {"persona.server"}}
    assert users - entry == WORLD_BUILDERS, (
        f"these reach for the runtime (take a bundle from persona/deps.py): {sorted(users - entry - WORLD_BUILDERS)}"
    )


def test_only_the_config_module_reads_the_environment() -> None:
    readers = set()
    for m in modules().values():
        for node in ast.walk(m.tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in {"environ", "getenv"}
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
            ):
                readers.add(m.name)
    assert readers == {"persona.config"}, readers


# -- size and exports ------------------------------------------------------------------------------------------


def test_no_module_past_the_limit() -> None:
    paths = [m.path for m in modules().values()] + sorted((REPO / "bench").rglob("*.py"))
    lines = {str(p.relative_to(REPO)): len(p.read_text(encoding="utf-8").splitlines()) for p in paths}
    long = {path: n for path, n in lines.items() if n > MAX_LINES}
    assert long == {}, f"split these modules (over {MAX_LINES} lines): {long}"


def _public_names(module: Module) -> set[str]:
    """What a package's ``__init__`` defines or re-exports from our own modules, not starting with ``_``."""
    names: set[str] = set()
    for node in module.tree.body:
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(PACKAGES)):
            names |= {a.asname or a.name for a in node.names}  # re-exported; a third-party import is a tool
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_") and n not in {"annotations", "__all__"}}


def _declared_all(module: Module) -> list[str] | None:
    for node in module.tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, list | tuple), module.rel
            return list(value)
    return None


def test_each_package_exports_exactly_its_public_names() -> None:
    for module in modules().values():
        if module.path.name != "__init__.py":
            continue
        declared = _declared_all(module)
        public = _public_names(module)
        if declared is None:
            assert public == set(), f"{module.rel} binds {sorted(public)}: declare them in __all__"
            continue
        assert sorted(declared) == sorted(set(declared)), f"{module.rel}: __all__ repeats a name"
        assert set(declared) == public, (
            f"{module.rel}: __all__ and the names it binds differ: only in __all__ {sorted(set(declared) - public)}, "
            f"not in __all__ {sorted(public - set(declared))}"
        )


def test_every_declared_export_exists() -> None:
    for module in modules().values():
        declared = _declared_all(module)
        if declared:
            loaded = importlib.import_module(module.name)
            missing = [n for n in declared if not hasattr(loaded, n)]
            assert missing == [], f"{module.rel}: __all__ names what it does not have: {missing}"


# -- tools -----------------------------------------------------------------------------------------------------


def test_every_side_effect_tool_declares_its_amount_rule_effect_key_and_lookup() -> None:
    effects = [tool for tool in plisio_registry() if tool.side_effect is not None]
    assert effects, "the registry declares side-effect tools"
    for tool in effects:
        assert tool.amount is not None, f"{tool.name}: no amount rule, so no cap could be checked"
        assert tool.idempotency, f"{tool.name}: no effect key rule, so a retry could act twice"
        assert tool.lookup is not None, f"{tool.name}: no lookup, so a lost answer could never be resolved"


# -- the audit vocabulary --------------------------------------------------------------------------------------


def test_event_names_are_unique_across_the_vocabulary() -> None:
    seen: dict[str, str] = {}
    for enum in EVENTS:
        assert issubclass(enum, StrEnum)
        for member in enum:
            assert member.value not in seen, (
                f"{member.value} is both {seen[member.value]} and {enum.__name__}"
            )
            seen[member.value] = enum.__name__


AUDIT_CALLS = {"AuditEvent": "event", "record": 0, "_record": 0, "call_event": 1, "record_call": 1}
"""Calls that name an audit event, and where the name is: a keyword, or the position of the argument."""


def test_no_audit_event_is_named_by_a_string_literal() -> None:
    literal = []
    for m in modules().values():
        if not m.name.startswith("persona"):
            continue
        for node in ast.walk(m.tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else ""
            )
            where = AUDIT_CALLS.get(called)
            if where is None:
                continue
            if isinstance(where, str):
                args = [k.value for k in node.keywords if k.arg == where]
            else:
                args = node.args[where : where + 1]
            if any(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
                literal.append(f"{m.rel}:{node.lineno}")
    assert literal == [], f"name these events from persona/events.py: {literal}"
