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
) -> None:
    """Call one tool against the configured Plisio (the in-process sandbox by default)."""
    from rich.console import Console
    from rich.json import JSON

    from persona.cli.main import STATE

    settings = STATE.settings()
    tool = _tool(name)
    if not tool.read_only:
        from persona.errors import Forbidden

        # No side door: a write goes through a persona's gate (scope, caps, approvals, effects ledger, audit).
        raise Forbidden(
            f"{name} {tool.side_effect}: it runs only through a persona's gate, with its caps, approvals and "
            "audit; use `persona chat --persona finance` or POST /v1/chat. `tools call` runs read-only tools"
        )
    parsed = tool.parse(args)
    from tools.registry import ToolFailure, dumps, run

    console = Console()
    if isinstance(parsed, ToolFailure):
        console.print(f"[bold red]invalid arguments for {name}:[/] {parsed.message}", highlight=False)
        for item in (parsed.details or {}).get("errors", [])[1:]:
            console.print(f"  {item['field'] or '(arguments)'}: {item['message']}", highlight=False)
        raise typer.Exit(2)
    import asyncio

    result = asyncio.run(_run(settings, tool, parsed, run))
    if result.ok:
        _print_json(console, dumps(result.data), JSON)
        return
    assert result.error is not None
    console.print(
        f"[bold red]{name} failed ({result.error.type}):[/] {result.error.message}", highlight=False
    )
    raise typer.Exit(1)


async def _run(settings: Any, tool: Any, parsed: Any, run: Any) -> Any:
    """Through the runtime, so a key in the vault is used exactly as the service uses it."""
    from persona.app import Runtime
    from tools.plisio.tools import PlisioContext

    rt = Runtime.build(settings)
    try:
        ctx = PlisioContext(client=rt.plisio.client, callback_url=settings.callback_url())
        return await run(tool, parsed, ctx, timeout=settings.plisio.retry.deadline + 5)
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
