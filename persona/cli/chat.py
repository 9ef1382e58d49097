"""``persona chat`` and ``persona record``: talk to a persona; tool calls and outcomes show as they happen."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from persona.app import Runtime

OUTCOME_STYLE = {
    "succeeded": "[green]✓ succeeded[/]",
    "replayed": "[green]✓ already done: answered from its effect[/]",
    "unknown": "[yellow]? sent, outcome not confirmed yet (looked up by order number)[/]",
    "failed": "[red]✗ failed[/]",
    "denied": "[red]✗ denied[/]",
    "pending_approval": "[yellow]⏸ pending approval[/]",
    "loop_guard": "[red]✗ refused (loop guard)[/]",
}

PersonaOpt = Annotated[str, typer.Option("--persona", "-p", help="Persona name from config.yaml.")]
UserOpt = Annotated[str, typer.Option("--user", "-u", help="Who is talking (recorded in the audit log).")]
MessageOpt = Annotated[
    list[str] | None,
    typer.Option("--message", "-m", help="Send this message (repeatable) instead of prompting."),
]


def chat(
    persona: PersonaOpt = "finance",
    user: UserOpt = "",
    message: MessageOpt = None,
    conversation: Annotated[
        str | None, typer.Option("--conversation", help="Conversation id to use.")
    ] = None,
) -> None:
    """Chat with a persona (against the sandbox unless plisio.mode is live)."""
    from persona.cli.runtime import with_runtime

    _need_user(user)

    async def work(rt: Runtime) -> str:
        return await session(rt, persona, user, message, conversation)

    with_runtime(work)


def record(
    out: Annotated[Path, typer.Option("--out", "-o", help="Scenario file to write.")],
    persona: PersonaOpt = "finance",
    user: UserOpt = "",
    message: MessageOpt = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Scenario name (default: from the file name).")
    ] = None,
) -> None:
    """Chat live with the configured model and save the conversation as a replay scenario."""
    from rich.console import Console

    from persona.app import connect_plisio
    from persona.cli.main import STATE
    from persona.cli.runtime import with_runtime
    from persona.config import PlisioMode
    from persona.errors import NotConfigured
    from persona.replay.scenario import DEFAULT_NOW
    from tools.plisio.sandbox import Sandbox

    _need_user(user)
    settings = STATE.settings()
    if settings.plisio.mode != PlisioMode.SANDBOX:
        raise NotConfigured(
            "record against the sandbox (plisio.mode: sandbox): scenarios replay on the sandbox"
        )
    # The sandbox seeded at the replay instant, so what the model reads now is what a replay reads.
    sandbox = Sandbox(seed=settings.plisio.sandbox.seed, now=lambda: DEFAULT_NOW)
    plisio = connect_plisio(settings, sandbox=sandbox)

    async def work(rt: Runtime) -> str:
        conversation_id = await session(rt, persona, user, message, None)
        return export_to(rt, conversation_id, out, name or out.stem.replace("_", "-"))

    written = with_runtime(work, plisio=plisio)
    Console(highlight=False).print(f"recorded {written} -> {out} (replay it: persona replay {out})")


def export_to(rt: Runtime, conversation_id: str, out: Path, name: str) -> str:
    from persona.replay.export import scenario_from_records
    from persona.replay.scenario import dump

    scenario = scenario_from_records(rt.audit.conversation(conversation_id), name=name)
    out.write_text(dump(scenario), encoding="utf-8")
    return conversation_id


async def session(
    rt: Runtime, persona: str, user: str, messages: list[str] | None, conversation: str | None
) -> str:
    """An interactive (or scripted by ``messages``) chat; returns the conversation id."""
    from rich.console import Console

    from persona.loop import LoopEvent, run_turn

    console = Console(highlight=False)
    rt.settings.chat_persona(persona)  # a flow-only persona is refused before a model is even looked for
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

    queue = list(messages) if messages is not None else None
    while True:
        text = (queue.pop(0) if queue else "") if queue is not None else _ask(console)
        if not text:
            return ctx.conversation_id
        streamed.clear()
        result = await run_turn(
            model=model, dispatcher=rt.dispatcher, ctx=ctx, system_prompt=system, history=history,
            user_message=text, on_event=on_event, on_text=on_text,
        )  # fmt: skip
        history.extend(result.messages)
        shown = "".join(streamed)
        if streamed:
            console.print()
            tail = result.text[len(shown) :] if result.text.startswith(shown) else ""
            if tail.strip():
                console.print(tail.strip(), markup=False)
        else:
            console.print(f"[bold cyan]{persona}>[/] ", end="")
            console.print(result.text, markup=False)
        console.print(
            f"[dim]({result.steps} steps, {len(result.calls)} tool calls, {result.usage.total_tokens} tokens"
            f"{', stopped: ' + result.stopped_by if result.stopped_by else ''})[/]"
        )


def _need_user(user: str) -> None:
    from persona.errors import NotConfigured

    if not user:
        raise NotConfigured("say who is talking: --user alice@example.com (it is recorded in the audit log)")


def _ask(console: Any) -> str:
    try:
        return str(console.input("[bold]you>[/] ")).strip()
    except EOFError:
        return ""


def _short(value: Any, limit: int = 120) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
