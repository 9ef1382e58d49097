"""Entry point: global options, sub-command registration, and errors printed without tracebacks.

Imports are deferred into the commands so ``persona --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from persona.cli.state import STATE

app = typer.Typer(
    rich_markup_mode=None,
    name="persona",
    help="LLM personas that operate a Plisio crypto-payment account through typed, audited tools.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from persona.release import VERSION

        typer.echo(f"persona {VERSION}")
        raise typer.Exit()


@app.callback()
def _global(
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="Config file (default: $PERSONA_CONFIG or ./config.yaml)."),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = None,
    _show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the release and exit."),
    ] = False,
) -> None:
    STATE.config = config
    STATE.log_level = log_level


def _register() -> None:
    from persona.cli import (
        approvals,
        audit,
        chat,
        configuration,
        db,
        demo,
        drafts,
        effects,
        flows,
        llm,
        replay,
        sandbox,
        serve,
        tools,
        users,
        vault,
    )

    app.add_typer(tools.app, name="tools")
    app.add_typer(approvals.app, name="approvals")
    app.add_typer(effects.app, name="effects")
    app.add_typer(audit.app, name="audit")
    app.add_typer(drafts.app, name="drafts")
    app.add_typer(flows.refunds_app, name="refunds")
    app.add_typer(flows.churn_app, name="churn")
    app.command("chat")(chat.chat)
    app.command("record")(chat.record)
    app.command("replay")(replay.replay)
    app.command("demo")(demo.demo)
    app.command("sandbox")(sandbox.sandbox)
    app.command("serve")(serve.serve)
    app.command("worker")(serve.worker)
    app.command("reconcile")(serve.reconcile)
    app.add_typer(serve.inbox_app, name="inbox")
    app.add_typer(vault.connect_app, name="connect")
    app.add_typer(vault.connections_app, name="connections")
    app.add_typer(vault.grants_app, name="grants")
    app.add_typer(users.app, name="users")
    app.add_typer(llm.app, name="llm")
    app.add_typer(db.app, name="db")
    app.add_typer(configuration.app, name="config")


_register()


def main() -> None:
    from persona.errors import PersonaError
    from tools.errors import ToolsError

    try:
        app()
    except PersonaError as exc:
        _fail(str(exc), exc.exit_code)
    except ToolsError as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _fail(message: str, code: int) -> None:
    from rich.console import Console
    from rich.markup import escape

    from tools.redaction import scrub

    Console(stderr=True).print(f"[bold red]error:[/] {escape(scrub(message))}", highlight=False, markup=True)
    sys.exit(code)
