"""``persona tools``: list the Plisio tools, show a schema, call one (sandbox by default)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from persona.cli.output import AsJson, AsJsonl

app = typer.Typer(rich_markup_mode=None, help="The Plisio tools: list, schema, call.", no_args_is_help=True)


@app.command("list")
def list_tools(as_json: AsJson = False, as_jsonl: AsJsonl = False) -> None:
    """List the tools with their flags and descriptions."""
    from persona.cli.output import emit_list
    from tools.plisio.tools import PLISIO_TOOLS

    def kind(tool: Any) -> str:
        return "read" if tool.read_only else str(tool.side_effect)

    items = [
        {"name": tool.name, "kind": kind(tool), "read_only": tool.read_only,
         "side_effect": tool.side_effect, "description": tool.description}
        for tool in PLISIO_TOOLS
    ]  # fmt: skip
    emit_list(
        f"{len(PLISIO_TOOLS)} Plisio tools",
        ("tool", "kind", "description"),
        [(tool.name, kind(tool), tool.description) for tool in PLISIO_TOOLS],
        items,
        as_json=as_json,
        as_jsonl=as_jsonl,
    )


@app.command("schema")
def schema(name: Annotated[str, typer.Argument(help="Tool name, e.g. plisio_get_balance.")]) -> None:
    """Print the strict OpenAI tool definition sent to the model."""
    from rich.console import Console
    from rich.json import JSON

    tool = _tool(name)
    _print_json(Console(), json.dumps(tool.openai_tool(), ensure_ascii=False), JSON)


@app.command("call")
def call(
    name: Annotated[str, typer.Argument(help="Tool name.")],
    args: Annotated[str, typer.Option("--args", "-a", help="Arguments as a JSON object.")] = "{}",
    persona: Annotated[
        str | None,
        typer.Option(
            "--persona",
            "-p",
            help="Call as this persona, through its gate (scope, caps, approvals, grants); required for a tool "
            "with a side effect.",
        ),
    ] = None,
    user: Annotated[str, typer.Option("--user", "-u", help="Who calls (recorded in the audit log).")] = "",
) -> None:
    """Call one tool against the configured Plisio (the in-process sandbox by default), audited.

    With --persona the call goes through the dispatcher exactly as the persona's own calls do: a side effect
    is capped, held for approval or refused by the same policy, once, with source ``cli``. Without it only a
    read-only tool runs, and it is audited too."""  # fmt: skip
    from persona.cli.state import STATE
    from persona.errors import NotConfigured

    tool = _tool(name)
    if persona is not None and not user:
        raise NotConfigured("say who calls: --user alice@example.com (it is recorded in the audit log)")
    if not tool.read_only and persona is None:
        raise NotConfigured(
            f"{name} {tool.side_effect}: it runs only through a persona's gate (scope, caps, approvals, grants, "
            "audit): add --persona NAME (e.g. --persona finance)"
        )
    if persona is not None:
        STATE.settings().chat_persona(persona, doing="call tools as")  # not a flow's persona, by hand
    parsed = tool.parse(args)
    from tools.registry import ToolFailure

    if isinstance(parsed, ToolFailure):
        _invalid(name, parsed)
    import asyncio

    settings = STATE.settings()
    if persona is None:
        ok, data, error = asyncio.run(_run_read(settings, tool, parsed, user or None))
    else:
        ok, data, error = asyncio.run(_run_gated(settings, tool, args, persona, user))
    _show(name, ok, data, error)


def _invalid(name: str, failure: Any) -> None:
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    console.print(f"[bold red]invalid arguments for {name}:[/] {failure.message}")
    for item in (failure.details or {}).get("errors", [])[1:]:
        console.print(f"  {item['field'] or '(arguments)'}: {item['message']}")
    raise typer.Exit(2)


def _show(name: str, ok: bool, data: Any, error: str | None) -> None:
    from rich.console import Console
    from rich.json import JSON

    from tools.registry import dumps

    if ok:
        _print_json(Console(), dumps(data), JSON)
        return
    Console(stderr=True, highlight=False).print(f"[bold red]{name}:[/] {error}")
    raise typer.Exit(1)


async def _run_read(settings: Any, tool: Any, parsed: Any, user: str | None) -> tuple[bool, Any, str | None]:
    """A read-only tool outside any persona: run through the runtime (a vault key is used as the service uses
    it) and audited as the CLI user's call."""
    from persona.app import Runtime
    from persona.audit import AuditEvent
    from persona.cli.identity import resolve_actor
    from persona.events import Event, Source
    from tools.plisio.tools import PlisioContext
    from tools.registry import run, to_jsonable

    rt = Runtime.build(settings)
    try:
        user = None if user is None else resolve_actor(rt, user, "--user")
        arguments = to_jsonable(parsed.model_dump(mode="python"))
        await rt.audit.append(AuditEvent(event=Event.TOOL_CALL_ATTEMPTED, source=Source.CLI, user=user,
                                         tool=tool.name, payload={"arguments": arguments}))  # fmt: skip
        ctx = PlisioContext(client=rt.plisio.client, callback_url=settings.callback_url())
        result = await run(tool, parsed, ctx, timeout=settings.plisio.retry.deadline + 5)
        error = None if result.ok or result.error is None else f"{result.error.type}: {result.error.message}"
        await rt.audit.append(AuditEvent(
            event=Event.TOOL_CALL_SUCCEEDED if result.ok else Event.TOOL_CALL_FAILED, source=Source.CLI,
            user=user, tool=tool.name, reason=error, payload={"arguments": arguments},
        ))  # fmt: skip
        return result.ok, result.data, error
    finally:
        await rt.aclose()


async def _run_gated(
    settings: Any, tool: Any, raw: str, persona: str, user: str
) -> tuple[bool, Any, str | None]:
    """Through the persona's dispatcher: the one gate every caller's side effect passes."""
    import uuid

    from persona.app import Runtime
    from persona.calls import call_context
    from persona.cli.identity import resolve_actor
    from persona.dispatcher import Outcome
    from persona.events import Source
    from persona.llm import ToolCall

    rt = Runtime.build(settings)
    try:
        user = resolve_actor(rt, user, "--user")
        ctx = call_context(
            settings, persona, user, conversation_id=f"cli_{uuid.uuid4().hex[:16]}", source=Source.CLI
        )
        done = await rt.dispatcher.dispatch(ToolCall(id="cli_call", name=tool.name, arguments=raw), ctx)
        if done.outcome in (Outcome.SUCCEEDED, Outcome.REPLAYED):
            return True, done.data(), None
        if done.outcome == Outcome.PENDING_APPROVAL:
            return (
                False,
                None,
                (
                    f"held for approval {done.approval_id}: {done.decision.reason if done.decision else ''} "
                    f"(an admin decides: persona approvals approve {done.approval_id} --by ...)"
                ),
            )
        if done.outcome == Outcome.UNKNOWN:
            return (
                False,
                None,
                (
                    f"unknown: sent to Plisio and no answer seen; effect {done.effect_id} is looked up by its order "
                    f"number (persona effects show {done.effect_id}); do not call it again"
                ),
            )
        try:
            error = json.loads(done.content).get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        return False, None, f"{done.outcome.value}: {error.get('message') or done.content}"
    finally:
        await rt.aclose()


def _print_json(console: Any, text: str, json_renderable: Any) -> None:
    """Pretty on a terminal; exact, unwrapped JSON when piped (scripts parse it)."""
    if console.is_terminal:
        console.print(json_renderable(text))
    else:
        print(json.dumps(json.loads(text), indent=2, ensure_ascii=False))


def _tool(name: str) -> Any:
    from persona.errors import NotFound
    from tools.plisio.tools import PLISIO_TOOLS

    for tool in PLISIO_TOOLS:
        if tool.name == name:
            return tool
    names = ", ".join(t.name for t in PLISIO_TOOLS)
    raise NotFound(f"no tool named {name!r}; the tools are: {names}")
