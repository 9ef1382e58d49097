"""``persona audit``: list, show (a record or a whole conversation), verify the chain, export JSON Lines."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    rich_markup_mode=None, help="The append-only, hash-chained audit log.", no_args_is_help=True
)

Opt = typer.Option


def _filter(**kw: Any) -> Any:
    from persona.audit import AuditFilter

    return AuditFilter(**kw)


def _when(value: str | None) -> datetime | None:
    from persona.errors import ConfigError

    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{value!r} is not a date/time", key="--since/--until", fix="use ISO 8601, e.g. 2026-11-24T09:00"
        ) from None


@app.command("list")
def list_records(
    user: Annotated[str | None, Opt(help="Only this user.")] = None,
    persona: Annotated[str | None, Opt(help="Only this persona.")] = None,
    conversation: Annotated[str | None, Opt(help="Only this conversation id.")] = None,
    event: Annotated[str | None, Opt(help="Only this event type, e.g. tool_call_denied.")] = None,
    tool: Annotated[str | None, Opt(help="Only this tool.")] = None,
    since: Annotated[str | None, Opt(help="From this time (ISO 8601).")] = None,
    until: Annotated[str | None, Opt(help="Up to this time (ISO 8601).")] = None,
    limit: Annotated[int, Opt(help="At most this many records (newest).")] = 50,
) -> None:
    """List audit records, newest last."""
    from rich.console import Console
    from rich.table import Table

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime

    flt = _filter(user=user, persona=persona, conversation_id=conversation, event=event, tool=tool,
                  since=_when(since), until=_when(until), limit=limit, newest=True)  # fmt: skip

    async def work(rt: Runtime) -> None:
        records = rt.audit.query(flt)
        table = Table(title=f"{len(records)} audit record(s)", title_justify="left")
        for col in (
            "seq",
            "time (UTC)",
            "user",
            "persona",
            "conversation",
            "event",
            "tool",
            "decision",
            "reason",
        ):
            table.add_column(col, overflow="fold")
        for r in records:
            table.add_row(
                str(r.seq), r.ts.strftime("%Y-%m-%d %H:%M:%S"), r.user or "", r.persona or "",
                r.conversation_id or "", r.event, r.tool or "", r.decision or "", (r.reason or "")[:80],
            )  # fmt: skip
        Console().print(table)

    with_runtime(work)


@app.command("show")
def show(target: Annotated[str, typer.Argument(help="A record's seq, or a conversation id.")]) -> None:
    """Show one record in full, or a conversation as a readable transcript."""
    from rich.console import Console
    from rich.json import JSON

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime
    from persona.errors import NotFound
    from persona.transcript import transcript

    console = Console(highlight=False)

    async def work(rt: Runtime) -> None:
        if target.isdigit():
            record = rt.audit.get(int(target))
            if record is None:
                raise NotFound(f"no audit record with seq {target}")
            console.print(JSON(record.model_dump_json()))
            return
        records = rt.audit.conversation(target)
        if not records:
            raise NotFound(f"no audit records for conversation {target!r}; `persona audit list` shows ids")
        first = records[0]
        console.print(f"[bold]conversation {target}[/] · persona {first.persona} · user {first.user} · "
                      f"{len(records)} records")  # fmt: skip
        for line in transcript(records):
            console.print(line, markup=False)

    with_runtime(work)


@app.command("verify")
def verify(
    expect_head: Annotated[
        str | None, Opt("--expect-head", help="Head hash recorded elsewhere earlier.")
    ] = None,
) -> None:
    """Check the whole hash chain; names the first bad record. Exit 1 if it does not verify."""
    from rich.console import Console

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime

    console = Console(highlight=False)

    async def work(rt: Runtime) -> bool:
        report = rt.audit.verify(expect_head=expect_head)
        if report.ok:
            console.print(
                f"[green]✓ audit chain intact[/]: {report.records} records, head {report.head_hash}"
            )
        else:
            console.print(f"[red]✗ audit chain broken at record {report.first_bad_seq}[/]: {report.problem}")
        return report.ok

    if not with_runtime(work):
        raise typer.Exit(1)


@app.command("export")
def export(
    out: Annotated[str | None, Opt("--out", "-o", help="File to write (default: standard output).")] = None,
    as_scenario: Annotated[
        str | None, Opt("--as-scenario", help="Write the --conversation as a replay scenario to this file.")
    ] = None,
    conversation: Annotated[str | None, Opt(help="Only this conversation id.")] = None,
    persona: Annotated[str | None, Opt(help="Only this persona.")] = None,
    since: Annotated[str | None, Opt(help="From this time (ISO 8601).")] = None,
    until: Annotated[str | None, Opt(help="Up to this time (ISO 8601).")] = None,
) -> None:
    """Export records as JSON Lines (hashes included, so the export can be verified elsewhere)."""
    from persona.app import Runtime
    from persona.cli.runtime import with_runtime

    if as_scenario is not None:
        _export_scenario(conversation, Path(as_scenario))
        return

    flt = _filter(conversation_id=conversation, persona=persona, since=_when(since), until=_when(until))

    async def work(rt: Runtime) -> int:
        if out is None:
            return rt.audit.export_jsonl(sys.stdout, flt)
        with Path(out).open("w", encoding="utf-8") as fh:  # noqa: ASYNC230 - a CLI command, nothing else runs
            return rt.audit.export_jsonl(fh, flt)

    count = with_runtime(work)
    if out is not None:
        print(f"exported {count} records to {out}", file=sys.stderr)


def _export_scenario(conversation: str | None, out: Path) -> None:
    from persona.app import Runtime
    from persona.cli.chat import export_to
    from persona.cli.runtime import with_runtime
    from persona.errors import ConfigError

    if not conversation:
        raise ConfigError(
            "--as-scenario needs --conversation ID", key="--conversation", fix="add --conversation"
        )

    async def work(rt: Runtime) -> str:
        return export_to(rt, conversation, out, out.stem.replace("_", "-"))

    with_runtime(work)
    print(
        f"wrote scenario {out} from conversation {conversation} (replay it: persona replay {out})",
        file=sys.stderr,
    )
