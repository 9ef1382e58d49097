"""``persona chat``: talk to a persona; tool calls and their outcomes show as they happen."""

from __future__ import annotations

from typing import Annotated, Any

import typer

OUTCOME_STYLE = {
    "succeeded": "[green]✓ succeeded[/]",
    "replayed": "[green]✓ answered from an earlier run[/]",
    "failed": "[red]✗ failed[/]",
    "denied": "[red]✗ denied[/]",
    "pending_approval": "[yellow]⏸ pending approval[/]",
    "loop_guard": "[red]✗ refused (loop guard)[/]",
}


def chat(
    persona: Annotated[
        str, typer.Option("--persona", "-p", help="Persona name from config.yaml.")
    ] = "finance",
    user: Annotated[
        str, typer.Option("--user", "-u", help="Who is talking (recorded in the audit log).")
    ] = "",
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="Send one message and exit (no interactive prompt).")
    ] = None,
    conversation: Annotated[
        str | None, typer.Option("--conversation", help="Conversation id to use.")
    ] = None,
) -> None:
    """Chat with a persona (against the sandbox unless plisio.mode is live)."""
    from rich.console import Console

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime
    from persona.errors import NotConfigured
    from persona.loop import LoopEvent, run_turn

    console = Console(highlight=False)
    if not user:
        raise NotConfigured("say who is talking: --user alice@example.com (it is recorded in the audit log)")

    async def session(rt: Runtime) -> None:
        ctx = rt.context(persona, user, conversation_id=conversation)
        model = rt.chat_model(persona)
        system = rt.system_prompt(ctx)
        history: list[dict[str, Any]] = []
        console.print(
            f"[bold]{persona}[/] · {ctx.conversation_id} · Plisio {rt.settings.plisio.mode.value} · "
            f"model {model.name}. Empty line or Ctrl-D ends.",
            style="dim",
        )
        streamed: list[str] = []

        def on_text(delta: str) -> None:
            if not streamed:
                console.print(f"[bold cyan]{persona}>[/] ", end="")
            streamed.append(delta)
            console.print(delta, end="", markup=False)

        def on_event(ev: LoopEvent) -> None:
            if streamed:
                console.print()
                streamed.clear()
            if ev.kind == "tool_call":
                console.print(f"  [dim]→ {ev.tool} {_short(ev.arguments)}[/]", soft_wrap=True)
            elif ev.kind == "tool_result":
                console.print(f"    {OUTCOME_STYLE.get(ev.outcome or '', ev.outcome)} [dim]{ev.tool}[/]")
            else:
                console.print(f"  [yellow]! {ev.detail}[/]")

        while True:
            text = message if message is not None else _ask(console)
            if not text:
                return
            streamed.clear()
            result = await run_turn(
                model=model, dispatcher=rt.dispatcher, ctx=ctx, system_prompt=system, history=history,
                user_message=text, on_event=on_event, on_text=on_text,
            )  # fmt: skip
            history.extend(result.messages)
            if streamed:
                console.print()
                tail = (
                    result.text[len("".join(streamed)) :] if result.text.startswith("".join(streamed)) else ""
                )
                if tail.strip():
                    console.print(tail.strip(), markup=False)
            else:
                console.print(f"[bold cyan]{persona}>[/] ", end="")
                console.print(result.text, markup=False)
            console.print(
                f"[dim]({result.steps} steps, {len(result.calls)} tool calls, {result.usage.total_tokens} tokens"
                f"{', stopped: ' + result.stopped_by if result.stopped_by else ''})[/]"
            )
            if message is not None:
                return

    with_runtime(session)


def _ask(console: Any) -> str:
    try:
        return str(console.input("[bold]you>[/] ")).strip()
    except EOFError:
        return ""


def _short(value: Any, limit: int = 120) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
