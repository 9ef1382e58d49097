"""``persona serve``, ``persona worker`` and ``persona inbox``: the long-running side of the service.

``serve`` runs the HTTP app (callbacks, chat, operator endpoints) and, unless told otherwise,
the worker in the same process; ``worker`` runs only the worker, for deployments that keep
them apart or run several. ``inbox`` shows what arrived and re-queues what failed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from persona.cli.output import AsJson, AsJsonl

if TYPE_CHECKING:
    from persona.worker import Worker

inbox_app = typer.Typer(
    rich_markup_mode=None,
    help="The Plisio callback inbox: list rows, retry failed ones.",
    no_args_is_help=True,
)

Opt = typer.Option
_STATES = ("pending", "processing", "done", "failed", "poison", "all")


def serve(
    host: Annotated[str | None, Opt("--host", help="Interface (default: server.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, Opt("--port", "-p", help="TCP port (default: server.port).")] = None,
    worker: Annotated[
        bool | None,
        Opt(
            "--worker/--no-worker", help="Run the worker in this process (default: server.in_process_worker)."
        ),
    ] = None,
) -> None:
    """Serve the review console at /, the HTTP API under /v1 (docs at /docs), POST /webhooks/plisio, /healthz."""
    import asyncio

    import uvicorn
    from rich.console import Console

    from persona.app import Runtime, settle_heap
    from persona.cli.listening import listen
    from persona.cli.state import STATE
    from persona.server import create_app
    from persona.worker import Worker

    settings = STATE.settings()
    bind_host = host or settings.server.host
    bind_port = port or settings.server.port
    in_process = settings.server.in_process_worker if worker is None else worker

    sock = listen(
        bind_host, bind_port, key="--port" if port else "server.port"
    )  # first: a port in use is one line

    async def main() -> None:
        rt = Runtime.build(settings)
        try:
            app = create_app(rt, start_worker=in_process)
            config = uvicorn.Config(
                app, host=bind_host, port=bind_port, lifespan="on", log_level=settings.log.level,
                access_log=settings.log.level == "debug", server_header=False,
            )  # fmt: skip
            err = Console(stderr=True)
            err.print(
                f"persona on http://{bind_host}:{bind_port} (review console: /; API docs: /docs; callbacks: "
                f"/webhooks/plisio; ready: /readyz; worker: {'in process' if in_process else 'separate'})."
                " Ctrl-C stops it.",
                highlight=False,
                soft_wrap=True,
            )
            if in_process:
                err.print(reconcile_plan(Worker(rt.worker)), highlight=False, soft_wrap=True)
            settle_heap()
            await uvicorn.Server(config).serve(sockets=[sock])
        finally:
            await rt.aclose()

    asyncio.run(main())


def reconcile_plan(runner: Worker) -> str:
    """What the scheduled reconciler will act on, said at start (a first start must not surprise anyone)."""
    from persona.cli.output import cell

    cfg = runner.settings
    since = runner.reconcile_since()
    floor = " that failed" if since is None else f" that failed since {cell(since)}"
    return (
        f"reconciler: every {cfg.reconcile_every_s:g} s, drafts recovery for invoices{floor} whose callback"
        f" never came (older ones: `persona reconcile --since TIME --dry-run`)"
    )


def worker(
    once: Annotated[bool, Opt("--once", help="Process what is due, run due schedules, then exit.")] = False,
    schedules: Annotated[
        bool,
        Opt(
            "--schedules/--no-schedules",
            help="Also run the reconciler and the churn scan on their schedules.",
        ),
    ] = True,
) -> None:
    """Process the callback inbox and run the schedules until stopped (SIGINT/SIGTERM)."""
    import asyncio
    import signal

    from persona.app import Runtime, settle_heap
    from persona.cli.runtime import with_runtime
    from persona.worker import Worker

    async def work(rt: Runtime) -> None:
        runner = Worker(rt.worker, schedules=schedules)
        if once:
            await runner.scheduler.tick()
            done = await runner.drain()
            typer.echo(f"processed {len(done)} inbox row(s)")
            return
        settle_heap()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        typer.echo(f"worker {runner.owner} running; Ctrl-C stops it", err=True)
        if schedules:
            typer.echo(reconcile_plan(runner), err=True)
        await runner.run(stop)

    with_runtime(work)


def reconcile(
    since: Annotated[
        str | None,
        Opt(
            "--since",
            help="Failures since this time (ISO 8601, UTC unless an offset is given) or age (72h, 30d)."
            " Default: as the schedule does (worker.reconcile_max_age_h, never before the store's first start).",
        ),
    ] = None,
    dry_run: Annotated[bool, Opt("--dry-run", help="List what would be recovered; queue nothing.")] = False,
    as_json: AsJson = False,
) -> None:
    """Find failed invoices whose callback never came, list them, then queue and process them (recovery drafts).

    The schedule acts only on failures newer than the store's first start; this command is how an operator
    asks for older ones, after seeing the list with ``--dry-run``.
    """  # fmt: skip
    from persona.app import Runtime
    from persona.cli.options import moment
    from persona.cli.output import cell, emit_list
    from persona.cli.runtime import with_runtime
    from persona.clock import utcnow
    from persona.worker import Reconciled, Worker

    cutoff = None if since is None else moment(since, "--since", utcnow())

    async def work(rt: Runtime) -> tuple[Reconciled, int]:
        runner = Worker(rt.worker, schedules=False)
        found = await runner.reconcile(since="scheduled" if cutoff is None else cutoff, dry_run=dry_run)
        done = [] if dry_run else await runner.drain()
        return found, len(done)

    found, processed = with_runtime(work)
    verb = "would queue" if dry_run else "queued"
    emit_list(
        f"reconciler: {found.seen} failed invoice(s) seen, {found.too_old} before"
        f" {cell(found.since) if found.since else 'any cutoff'} left alone; {verb} {len(found.enqueued)}",
        ("txn_id", "status", "amount", "currency", "order", "created"),
        [(op.id, op.status, op.amount, op.currency, op.params.order_name if op.params else None,
          op.created_at_utc and cell(datetime.fromtimestamp(op.created_at_utc, UTC))) for op in found.operations],
        [{"txn_id": op.id, "status": op.status} for op in found.operations],
        as_json=as_json,
        as_jsonl=False,
    )  # fmt: skip
    if not dry_run and not as_json:
        typer.echo(f"processed {processed} inbox row(s); drafts wait in `persona drafts list`")


@inbox_app.command("list")
def list_rows(
    state: Annotated[str, Opt("--state", help="pending, processing, done, failed, poison or all.")] = "all",
    limit: Annotated[int, Opt("--limit", help="At most this many rows (newest first).")] = 50,
    as_json: AsJson = False,
    as_jsonl: AsJsonl = False,
) -> None:
    """List inbox rows, newest first (``--state poison`` shows signed callbacks we could not use)."""
    from persona.app import Runtime
    from persona.cli.options import choice
    from persona.cli.output import emit_list
    from persona.cli.runtime import with_runtime
    from persona.inbox import Inbox, InboxRow

    choice(state, _STATES, "--state")

    async def work(rt: Runtime) -> list[InboxRow]:
        return Inbox(rt.store).list(state, limit=limit)

    rows = with_runtime(work)
    emit_list(
        f"{len(rows)} inbox row(s) · {state}",
        ("id", "state", "source", "txn_id", "status", "plisio", "action", "tries", "received", "error"),
        [
            (
                r.id,
                r.state,
                r.source,
                r.txn_id,
                r.status,
                r.plisio_status,
                r.action,
                r.attempts,
                r.received_at,
                " ".join((r.error or "").split()),
            )
            for r in rows
        ],
        rows,
        as_json=as_json,
        as_jsonl=as_jsonl,
    )


@inbox_app.command("retry")
def retry(
    row_id: Annotated[int, typer.Argument(help="The inbox row id, exactly (see `persona inbox list`).")],
) -> None:
    """Queue a failed (or poison) row again, with its attempts reset."""
    from persona.app import Runtime
    from persona.cli.runtime import with_runtime
    from persona.events import Source
    from persona.operations import retry_inbox_row

    async def work(rt: Runtime) -> None:
        row = await retry_inbox_row(
            rt.operator, row_id, by=None, source=Source.CLI
        )  # a number: never a prefix
        typer.echo(f"inbox row {row.id} ({row.txn_id} {row.status}) is pending again")

    with_runtime(work)
