"""``persona chat`` and ``persona record``: talk to a persona; tool calls and outcomes show as they happen."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from persona.app import Runtime
    from persona.calls import CallContext
    from persona.conversations import Conversations
    from persona.deps import ChatDeps
    from persona.loop import LoopEvent, TurnResult

T = TypeVar("T")

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
UserOpt = Annotated[
    str, typer.Option("--user", "-u", help="Who is talking: a user's email (recorded in the audit log).")
]
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
    from persona.cli.identity import resolve_actor
    from persona.cli.runtime import with_runtime

    _need_user(user)

    async def work(rt: Runtime) -> Ended:
        return await session(rt.chat, persona, resolve_actor(rt, user, "--user"), message, conversation)

    try:
        ended = with_runtime(work)
    except Left as left:
        _left(left)
    if ended.stopped:  # shown once, as the turn's notice; a script must not take it for success
        raise typer.Exit(1)


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
    from persona.cli.identity import resolve_actor
    from persona.cli.runtime import with_runtime
    from persona.cli.state import STATE
    from persona.errors import NotConfigured
    from persona.replay.scenario import DEFAULT_NOW
    from persona.settings import PlisioMode
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

    async def work(rt: Runtime) -> Ended:
        ended = await session(rt.chat, persona, resolve_actor(rt, user, "--user"), message, None)
        export_to(rt, ended.conversation_id, out, name or out.stem.replace("_", "-"))
        return ended

    try:
        ended = with_runtime(work, plisio=plisio)
    except Left as left:
        _left(left)
    Console(highlight=False).print(
        f"recorded {ended.conversation_id} -> {out} (replay it: persona replay {out})"
        + (f"; a turn stopped early ({ended.stopped}), as the scenario records" if ended.stopped else "")
    )
    if ended.stopped:
        raise typer.Exit(1)


def export_to(rt: Runtime, conversation_id: str, out: Path, name: str) -> str:
    from persona.private_files import open_private
    from persona.replay.export import scenario_from_records
    from persona.replay.scenario import dump

    scenario = scenario_from_records(rt.audit.conversation(conversation_id), name=name)
    with open_private(out) as fh:  # mode 0600: a conversation holds customer data
        fh.write(dump(scenario))
    return conversation_id


@dataclasses.dataclass(frozen=True)
class Ended:
    """How a scripted session ended: its conversation, and why a turn stopped early (a model error, a
    limit), if one did."""

    conversation_id: str
    stopped: str | None = None


async def session(
    deps: ChatDeps, persona: str, user: str, messages: list[str] | None, conversation: str | None
) -> Ended:
    """An interactive (or scripted by ``messages``) chat.

    The history is the stored one (``--conversation`` resumes it for its owner). Ctrl-C while a turn runs
    cancels that turn (a write already sent still finishes and is recorded) and the prompt comes back; a
    second Ctrl-C, or one at the prompt, raises :class:`Left`."""
    from rich.console import Console

    from persona.calls import call_context
    from persona.conversations import Conversations, audited, new_conversation_id

    console = Console(highlight=False)
    deps.settings.chat_persona(persona)  # a flow-only persona is refused before a model is even looked for
    conversation_id = conversation or new_conversation_id()
    stored = Conversations(
        deps.store,
        deps.now,
        fresh_hint="start a new one without --conversation",
        used_elsewhere=audited(deps.audit),
    )
    opened = await stored.open(conversation_id, persona, user)  # Forbidden: someone else's conversation
    chat = _Chat(
        deps, console, stored, call_context(deps.settings, persona, user, conversation_id=conversation_id)
    )
    console.print(
        f"[bold]{persona}[/] · {conversation_id} · Plisio {deps.settings.plisio.mode.value} · "
        f"model {chat.model.name}. Empty line or Ctrl-D ends.",
        style="dim",
    )
    if messages is None:
        console.print("Ctrl-C cancels a turn; at the prompt, it leaves.", style="dim")
    if opened.turns:
        console.print(f"resumed {conversation_id} ({_earlier(opened.turns)})", style="dim")
    queue = list(messages) if messages is not None else None
    ctrl_c = _CtrlC(asyncio.get_running_loop())
    try:
        ctrl_c.install()
        while not ctrl_c.leave:
            text = (queue.pop(0) if queue else "") if queue is not None else _ask(console, ctrl_c)
            if text is None:
                break
            if not text:
                return Ended(conversation_id, chat.stopped if queue is not None else None)
            if not await chat.turn(text, ctrl_c) and queue is not None:
                break  # a scripted session has no prompt to come back to
    finally:
        ctrl_c.uninstall()
    raise Left(conversation_id)


class Left(Exception):
    """The user left the session with Ctrl-C (exit status 130)."""

    def __init__(self, conversation_id: str) -> None:
        super().__init__(conversation_id)
        self.conversation_id = conversation_id


class _CtrlC:
    """SIGINT while a turn runs cancels it; another one, while it winds down or at the prompt, leaves.

    One Python-level handler for the whole session (it replaces asyncio.run's, which would cancel the
    command): it runs even while the prompt blocks in ``input()``, where it raises KeyboardInterrupt, so no
    Ctrl-C falls between two handlers. The cancel is handed to the loop as asyncio's own Runner._on_sigint
    does (CPython Lib/asyncio/runners.py)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.task: asyncio.Future[Any] | None = None
        self.cancelled = False
        self.leave = False
        self.prompting = False
        self._previous: Any = None
        self._on = False

    def install(self) -> None:
        try:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: Ctrl-C stays asyncio's
            return
        self._on = True

    def uninstall(self) -> None:
        if self._on:
            signal.signal(signal.SIGINT, self._previous)
            self._on = False

    @contextlib.contextmanager
    def at_prompt(self) -> Iterator[None]:
        """While the prompt waits, Ctrl-C (or one that came since the turn) raises KeyboardInterrupt."""
        self.prompting = True
        try:
            if self.leave:
                raise KeyboardInterrupt
            yield
        finally:
            self.prompting = False

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.prompting:
            raise KeyboardInterrupt
        task = self.task
        if task is not None and not task.done() and not self.cancelled:
            self.cancelled = True
            self.loop.call_soon_threadsafe(task.cancel)
        else:
            self.leave = True

    async def run(self, work: Coroutine[Any, Any, T]) -> T | None:
        """``work`` as a task Ctrl-C may cancel: its result, or None when it was cancelled so."""
        task: asyncio.Future[T] = asyncio.ensure_future(work)
        self.task, self.cancelled = task, False
        try:
            return await task
        except asyncio.CancelledError:
            if not self.cancelled:
                raise
            return None
        finally:
            self.task = None


class _Chat:
    """One CLI conversation: its model, its stored history, its view of each turn."""

    def __init__(self, deps: ChatDeps, console: Any, stored: Conversations, ctx: CallContext) -> None:
        self.deps, self.console, self.stored, self.ctx = deps, console, stored, ctx
        self.model = deps.models(ctx.persona_name, ctx.user)  # the runtime's: closed with it
        self.system = deps.prompts.for_call(ctx, today=deps.now().date())
        self.view = _TurnView(console, ctx.persona_name)
        self.stopped: str | None = None
        """Why the last turn that stopped early did (``model_error``, ``max_steps``, ...)."""

    async def turn(self, text: str, ctrl_c: _CtrlC) -> bool:
        """One turn, stored when it ended; False when Ctrl-C cancelled it (recorded, nothing stored)."""
        from datetime import timedelta

        from rich.markup import escape

        from persona.errors import Conflict
        from persona.loop import run_turn

        ctx = self.ctx
        lease = timedelta(seconds=ctx.persona.limits.wall_clock_s * 2)  # a turn never runs longer than this
        async with self.stored.turn(ctx.conversation_id, ctx.persona_name, ctx.user, lease=lease) as convo:
            self.view.start()
            try:
                result = await ctrl_c.run(
                    run_turn(
                        model=self.model, dispatcher=self.deps.dispatcher, ctx=ctx, system_prompt=self.system,
                        history=convo.history, user_message=text, on_event=self.view.on_event,
                        on_text=self.view.on_text,
                    )
                )  # fmt: skip
            finally:
                self.view.stop()
            if result is None:
                await self.cancelled()
                return False
            self.view.answer(result)
            self.stopped = result.stopped_by or self.stopped
            try:
                await self.stored.append(convo, result.messages)
            except Conflict as busy:  # another instance stored a turn of this conversation meanwhile
                self.console.print(f"[yellow]! {escape(str(busy))}[/]", soft_wrap=True)
                self.stopped = "not_stored"
        return True

    async def cancelled(self) -> None:
        from persona.calls import call_event
        from persona.events import Event, Source

        await self.deps.audit.append(
            call_event(
                dataclasses.replace(self.ctx, source=Source.CLI), Event.TURN_CANCELLED, reason="ctrl_c",
                payload={"note": "interrupted by the user; the turn is not kept in the conversation's history"},
            )
        )  # fmt: skip
        self.console.print(
            "[yellow]turn cancelled (Ctrl-C); it is not kept in the history. Ctrl-C again leaves.[/]"
        )


class _TurnView:
    """What a turn shows: a spinner while the model thinks (terminals only), streamed text as the model
    sends it (written to the file, so the terminal wraps it: Rich would break long chunks), tool calls."""

    def __init__(self, console: Any, persona: str) -> None:
        self.console, self.persona = console, persona
        self.streamed: list[str] = []
        self.notices: list[str] = []
        self._status: Any = None

    def start(self) -> None:
        self.streamed.clear()
        self.notices.clear()
        self._thinking()

    def stop(self) -> None:
        self._quiet()
        if self.streamed:
            self.console.print()

    def on_text(self, delta: str) -> None:
        self._quiet()
        if not self.streamed:
            self.console.print(f"[bold cyan]{self.persona}>[/] ", end="")
        self.streamed.append(delta)
        self.console.file.write(delta)
        self.console.file.flush()

    def on_event(self, ev: LoopEvent) -> None:
        self._quiet()
        if self.streamed:
            self.console.print()
            self.streamed.clear()
        if ev.kind == "tool_call":
            self.console.print(f"  [dim]→ {ev.tool} {_short(ev.arguments)}[/]", soft_wrap=True)
        elif ev.kind == "tool_result":
            self.console.print(f"    {OUTCOME_STYLE.get(ev.outcome or '', ev.outcome)} [dim]{ev.tool}[/]")
            self._thinking()  # the model reads the results next
        else:
            self.notices.append(ev.detail or "")
            self.console.print(f"  [yellow]! {ev.detail}[/]", soft_wrap=True)

    def answer(self, result: TurnResult) -> None:
        """The final text where streaming did not show it (all of it, or what was added after)."""
        shown = "".join(self.streamed)
        if shown:
            tail = result.text[len(shown) :] if result.text.startswith(shown) else ""
            if tail.strip():
                self.console.print(tail.strip(), markup=False, soft_wrap=True)
        elif result.text not in self.notices:  # a limit's text was shown as its notice already
            self.console.print(f"[bold cyan]{self.persona}>[/] ", end="")
            self.console.print(result.text, markup=False, soft_wrap=True)
        self.console.print(
            f"[dim]({result.steps} steps, {len(result.calls)} tool calls, {result.usage.total_tokens} tokens"
            f"{', stopped: ' + result.stopped_by if result.stopped_by else ''})[/]"
        )

    def _thinking(self) -> None:
        if self._status is None and self.console.is_terminal:
            self._status = self.console.status("[dim]thinking…[/]", spinner="dots")
            self._status.start()

    def _quiet(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _earlier(count: int) -> str:
    return "1 earlier turn" if count == 1 else f"{count} earlier turns"


def _left(left: Left) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(
        f"left {left.conversation_id} (Ctrl-C); resume it: persona chat --conversation {left.conversation_id}"
    )
    raise typer.Exit(130)


def _need_user(user: str) -> None:
    from persona.errors import NotConfigured

    if not user:
        raise NotConfigured("say who is talking: --user alice@example.com (it is recorded in the audit log)")


def _ask(console: Any, ctrl_c: _CtrlC) -> str | None:
    """The next message ("" ends the session); None after Ctrl-C here (the user leaves)."""
    try:
        with ctrl_c.at_prompt():
            return str(console.input("[bold]you>[/] ")).strip()
    except EOFError:
        return ""
    except KeyboardInterrupt:
        ctrl_c.prompting = False  # even if it struck while at_prompt was leaving
        console.print()
        return None


def _short(value: Any, limit: int = 120) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
