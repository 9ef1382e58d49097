"""``persona audit``: list, show (a record or a whole conversation), verify the chain, export JSON Lines."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from persona.cli.options import choice
from persona.cli.output import AsJson, AsJsonl

if TYPE_CHECKING:
    from persona.checkpoints.verification import Finding

app = typer.Typer(
    rich_markup_mode=None, help="The append-only, hash-chained audit log.", no_args_is_help=True
)

Opt = typer.Option


def _filter(**kw: Any) -> Any:
    from persona.audit import AuditFilter

    return AuditFilter(**kw)


def _when(value: str | None, key: str = "--since/--until") -> datetime | None:
    from persona.errors import ConfigError

    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{value!r} is not a date/time", key=key, fix="use ISO 8601, e.g. 2026-11-24T09:00"
        ) from None


@app.command("list")
def list_records(
    user: Annotated[str | None, Opt(help="Only this user.")] = None,
    persona: Annotated[str | None, Opt(help="Only this persona.")] = None,
    conversation: Annotated[
        str | None, Opt(help="Only this conversation id (or its first characters).")
    ] = None,
    event: Annotated[str | None, Opt(help="Only this event type, e.g. tool_call_denied.")] = None,
    tool: Annotated[str | None, Opt(help="Only this tool.")] = None,
    since: Annotated[str | None, Opt(help="From this time (ISO 8601).")] = None,
    until: Annotated[str | None, Opt(help="Up to this time (ISO 8601).")] = None,
    limit: Annotated[int, Opt(help="At most this many records (newest).", min=1)] = 50,
    as_json: AsJson = False,
    as_jsonl: AsJsonl = False,
) -> None:
    """List audit records, newest last."""
    from persona.app import Runtime
    from persona.cli.options import resolve_id
    from persona.cli.output import emit_list
    from persona.cli.runtime import with_runtime

    async def work(rt: Runtime) -> None:
        for flag, field, value in (("--event", "event", event), ("--tool", "tool", tool)):
            if value is not None:
                _known(rt, flag, field, value)
        if persona is not None:
            choice(persona, sorted(rt.settings.personas), "--persona")
        conv = (
            None
            if conversation is None
            else resolve_id(conversation, rt.audit.conversations_starting, "conversation")
        )
        flt = _filter(user=user, persona=persona, conversation_id=conv, event=event, tool=tool, since=_when(since),
                      until=_when(until), limit=limit, newest=True)  # fmt: skip
        records = rt.audit.query(flt)
        rows = [(r.seq, r.ts, r.user, r.persona, r.conversation_id, r.event, r.tool, r.decision, r.reason)
                for r in records]  # fmt: skip
        emit_list(f"{len(records)} audit record(s)",
                  ("seq", "time", "user", "persona", "conversation", "event", "tool", "decision", "reason"),
                  rows, records, as_json=as_json, as_jsonl=as_jsonl)  # fmt: skip

    with_runtime(work, keys_optional=True)


def _known(rt: Any, flag: str, field: str, value: str) -> None:
    """An event or tool filter names one the log holds, or the error lists those it does."""
    from persona.errors import ConfigError

    held = rt.audit.known(field)
    if value not in held:
        raise ConfigError(
            f"no audit record has {field} {value!r}", key=flag,
            fix=f"use one this log holds: {', '.join(held) or '(none yet)'}",
        )  # fmt: skip


@app.command("show")
def show(
    target: Annotated[
        str, typer.Argument(help="A record's seq, or a conversation id (or its first characters).")
    ],
    as_json: AsJson = False,
) -> None:
    """Show one record in full (JSON), or a conversation as a readable transcript (``--json``: its records)."""
    from persona.app import Runtime
    from persona.cli.options import resolve_id
    from persona.cli.output import print_json
    from persona.cli.runtime import with_runtime
    from persona.errors import NotFound
    from persona.transcript import transcript

    async def work(rt: Runtime) -> None:
        if target.isdigit():
            record = rt.audit.get(int(target))
            if record is None:
                raise NotFound(f"no audit record with seq {target}")
            print_json(record)
            return
        conversation = resolve_id(target, rt.audit.conversations_starting, "conversation")
        records = rt.audit.conversation(conversation)
        if as_json:
            print_json(records)
            return
        first = records[0]
        typer.echo(
            f"conversation {conversation} · persona {first.persona} · user {first.user} · {len(records)} records"
        )
        for line in transcript(records):
            typer.echo(line)

    with_runtime(work, keys_optional=True)


@app.command("verify")
def verify(
    expect_head: Annotated[
        str | None, Opt("--expect-head", help="Head hash recorded elsewhere earlier.")
    ] = None,
    checkpoint: Annotated[
        str | None,
        Opt(
            "--checkpoint",
            help="A signed checkpoint file to check against (default: the latest in audit.checkpoint_dir).",
        ),
    ] = None,
    pubkey: Annotated[
        str | None,
        Opt(
            "--pubkey",
            help="The verifier key `persona audit pubkey` printed (default: this server's own key).",
        ),
    ] = None,
    export: Annotated[
        str | None,
        Opt(
            "--export",
            help="Check this full export (JSON Lines) instead of the database: offline, with --checkpoint "
            "and --pubkey; no database, no master key.",
        ),
    ] = None,
) -> None:
    """Check the hash chain and the latest signed checkpoint; names the first bad record. Exit 1 if either
    does not verify."""
    from rich.console import Console

    from persona.app import Runtime
    from persona.checkpoints.note import NoteVerifier
    from persona.checkpoints.signed import CheckpointDir
    from persona.checkpoints.signing import load_signer
    from persona.checkpoints.verification import verify_log
    from persona.cli.runtime import with_runtime
    from persona.cli.state import STATE

    console = Console(highlight=False)
    if export is not None:
        if checkpoint is None or pubkey is None:
            raise typer.BadParameter(
                "--export needs --checkpoint FILE and --pubkey KEY (it uses no database)"
            )
        if not _verify_offline(console, Path(export), Path(checkpoint), pubkey):
            raise typer.Exit(1)
        return
    settings = STATE.settings()

    async def work(rt: Runtime) -> bool:
        folder = CheckpointDir(settings.checkpoint_path())
        findings = verify_log(
            rt.audit, checkpoint=Path(checkpoint) if checkpoint else folder.latest(), folder=folder.path,
            verifier=lambda: NoteVerifier.from_vkey(pubkey or load_signer(settings, create=False).vkey),
            expect_head=None if expect_head is None else expect_head.strip().lower(),
        )  # fmt: skip
        for finding in findings:
            _print_finding(console, finding)
        return all(finding.level != "bad" for finding in findings)

    if not with_runtime(work, keys_optional=True):
        raise typer.Exit(1)


_MARKS = {"ok": "[green]✓", "warn": "[yellow]!", "bad": "[red]✗"}


def _print_finding(console: Any, finding: Finding) -> None:
    from rich.markup import escape  # findings quote database text: never markup

    detail = f": {escape(finding.detail)}" if finding.detail else ""
    console.print(f"{_MARKS[finding.level]} {escape(finding.title)}[/]{detail}")


def _verify_offline(console: Any, export: Path, checkpoint: Path, pubkey: str) -> bool:
    from persona.checkpoints.note import NoteVerifier
    from persona.checkpoints.offline import verify_export
    from persona.checkpoints.signed import open_file
    from persona.errors import AuditIntegrityError

    try:
        verifier = NoteVerifier.from_vkey(pubkey)
        signed = open_file(checkpoint, verifier)
        with export.open(encoding="utf-8") as lines:
            count = verify_export(lines, signed, verifier)
    except OSError as exc:
        console.print(f"[red]✗ cannot read {export}[/]: {exc.strerror or exc}")
        return False
    except UnicodeDecodeError as exc:
        console.print(f"[red]✗ {export} is not an export[/]: not UTF-8 text (byte {exc.start})")
        return False
    except AuditIntegrityError as exc:
        console.print(f"[red]✗ the export does not verify[/]: {exc}")
        return False
    console.print(
        f"[green]✓ export verified offline[/]: {count} records chained; the first {signed.size} are the ones "
        f"{verifier.name} ({verifier.key_id.hex()}) signed in {checkpoint.name}"
    )
    return True


PubkeyOpt = Annotated[
    str | None,
    Opt("--pubkey", help="The verifier key `persona audit pubkey` printed (default: this server's own key)."),
]


def _checkpoint_file(settings: Any, given: str | None) -> Path:
    """The checkpoint file named, else the latest in audit.checkpoint_dir."""
    from persona.checkpoints.signed import CheckpointDir
    from persona.errors import NotFound

    if given:
        return Path(given)
    folder = CheckpointDir(settings.checkpoint_path())
    latest = folder.latest()
    if latest is None:
        raise NotFound(f"no signed checkpoint in {folder.path} (fix: run `persona audit checkpoint`)")
    return latest


def _signed(settings: Any, path: Path, pubkey: str | None) -> Any:
    from persona.checkpoints.note import NoteVerifier
    from persona.checkpoints.signed import open_file
    from persona.checkpoints.signing import load_signer

    return open_file(path, NoteVerifier.from_vkey(pubkey or load_signer(settings, create=False).vkey))


@app.command("prove")
def prove(
    seq: Annotated[int, typer.Argument(help="The record's seq.", min=1)],
    checkpoint: Annotated[
        str | None, Opt("--checkpoint", help="Against this checkpoint (default: the latest).")
    ] = None,
    pubkey: PubkeyOpt = None,
) -> None:
    """Print the inclusion proof of one record against a signed checkpoint (JSON), checked before it is printed."""
    import json as json_module

    from persona.app import Runtime
    from persona.checkpoints import merkle
    from persona.checkpoints.ledger import check, tree
    from persona.cli.runtime import with_runtime
    from persona.cli.state import STATE
    from persona.errors import NotFound

    settings = STATE.settings()

    async def work(rt: Runtime) -> None:
        path = _checkpoint_file(settings, checkpoint)
        signed = _signed(settings, path, pubkey)
        check(rt.audit, signed)
        if seq > signed.size:
            raise NotFound(
                f"record {seq} is after checkpoint {path.name} (size {signed.size}): sign a newer one"
            )
        whole = tree(rt.audit)
        proof = whole.inclusion_proof(seq - 1, signed.size)
        leaf = whole.leaf(seq - 1)
        merkle.verify_inclusion(seq - 1, signed.size, leaf, proof, signed.root)
        print(json_module.dumps({
            "seq": seq, "leaf_index": seq - 1, "leaf_hash": leaf.hex(), "tree_size": signed.size,
            "root": signed.root.hex(), "checkpoint": path.name, "proof": [p.hex() for p in proof],
        }, indent=2))  # fmt: skip

    with_runtime(work)


@app.command("consistency")
def consistency(
    older: Annotated[str, typer.Argument(help="The older signed checkpoint file.")],
    newer: Annotated[
        str | None, typer.Argument(help="The newer one (default: the latest in audit.checkpoint_dir).")
    ] = None,
    pubkey: PubkeyOpt = None,
) -> None:
    """Print the RFC 6962 consistency proof from an older signed checkpoint to a newer one (JSON): the newer
    tree extends the older, nothing before it was rewritten. Checked before it is printed; exit 1 if not."""
    import json as json_module

    from persona.app import Runtime
    from persona.checkpoints import merkle
    from persona.checkpoints.ledger import check, tree
    from persona.cli.runtime import with_runtime
    from persona.cli.state import STATE

    settings = STATE.settings()

    async def work(rt: Runtime) -> None:
        new_path = _checkpoint_file(settings, newer)
        first, second = _signed(settings, Path(older), pubkey), _signed(settings, new_path, pubkey)
        if first.size > second.size:
            raise typer.BadParameter(
                f"{older} ({first.size} records) is newer than {new_path.name} ({second.size}): swap them"
            )
        check(rt.audit, second)
        proof = tree(rt.audit).consistency_proof(first.size, second.size)
        merkle.verify_consistency(first.size, second.size, proof, first.root, second.root)
        print(json_module.dumps({
            "size1": first.size, "root1": first.root.hex(), "size2": second.size, "root2": second.root.hex(),
            "checkpoints": [Path(older).name, new_path.name], "proof": [p.hex() for p in proof],
        }, indent=2))  # fmt: skip

    with_runtime(work)


@app.command("prune")
def prune_cmd(
    before: Annotated[str, Opt("--before", help="Prune the records stamped before this time (ISO 8601).")],
    by: Annotated[str, Opt("--by", help="Who prunes: a user's email (recorded in the audit log).")],
    yes: Annotated[bool, Opt("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete old audit records, only after signing a checkpoint that records the pruned range (kept in
    audit.checkpoint_dir), so what remains still verifies against it."""
    from datetime import UTC

    from rich.console import Console

    from persona.app import Runtime
    from persona.checkpoints.retention import prune
    from persona.checkpoints.signed import CheckpointDir
    from persona.checkpoints.signing import load_signer
    from persona.cli.identity import resolve_actor
    from persona.cli.runtime import with_runtime
    from persona.cli.state import STATE

    moment = _when(before, "--before")
    assert moment is not None
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    if not yes:
        typer.confirm(f"Delete every audit record stamped before {moment.isoformat()}?", abort=True)
    settings = STATE.settings()

    async def work(rt: Runtime) -> str:
        actor = resolve_actor(rt, by)
        folder = CheckpointDir(settings.checkpoint_path())
        done = prune(rt.audit, rt.store, load_signer(settings, create=False), folder, before=moment, by=actor,
                     now=rt.now)  # fmt: skip
        return (
            f"pruned records 1..{done.through_seq} ({done.removed} deleted); the range is recorded in the signed "
            f"checkpoint of {done.checkpoint.size} records, {done.path}"
        )

    Console(highlight=False).print(with_runtime(work))


@app.command("checkpoint")
def checkpoint_cmd() -> None:
    """Sign the log's current Merkle tree head and keep it in audit.checkpoint_dir (never overwritten);
    POST it to audit.checkpoint_webhook_url too when that is set."""
    from rich.console import Console

    from persona.app import Runtime
    from persona.checkpoints.ledger import sign_current
    from persona.checkpoints.signed import CheckpointDir
    from persona.checkpoints.signing import load_signer
    from persona.checkpoints.sinks import WebhookSink
    from persona.cli.runtime import with_runtime
    from persona.cli.state import STATE

    settings = STATE.settings()
    console = Console(highlight=False)

    async def work(rt: Runtime) -> None:
        await rt.audit.flush()
        folder = CheckpointDir(settings.checkpoint_path())
        signed, path = sign_current(rt.audit, load_signer(settings), folder)
        console.print(f"checkpoint {signed.size} records, root {signed.root.hex()[:16]}…, written to {path}")
        sink = WebhookSink.from_settings(settings, transport=rt.checkpoint_transport)
        if sink is not None:
            status = await sink.deliver(path.read_text(encoding="utf-8"), size=signed.size)
            console.print(f"sent to {sink.shown} ({status})")

    with_runtime(work)


@app.command("pubkey")
def pubkey_cmd() -> None:
    """Print the verifier key of this server's checkpoint signing key (give it to auditors)."""
    from persona.checkpoints.signing import load_signer
    from persona.cli.state import STATE

    print(load_signer(STATE.settings()).vkey)


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

    from persona.private_files import open_private

    async def work(rt: Runtime) -> int:
        if out is None:
            return rt.audit.export_jsonl(sys.stdout, flt)
        with open_private(Path(out)) as fh:  # mode 0600: the records name customers
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
