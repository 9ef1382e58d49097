"""``persona users``: who may use the HTTP API, with which role, and their API tokens.

A token is printed once, on standard output alone (``TOKEN=$(persona users token EMAIL)``); only
its hash is stored, so a lost token is replaced, never recovered.
"""

from __future__ import annotations

from typing import Annotated

import typer

from persona.cli.output import AsJson, AsJsonl
from persona.cli.vault import By, VaultContext, with_vault

app = typer.Typer(
    rich_markup_mode=None,
    help="HTTP API users, roles (admin, operator, viewer) and tokens.",
    no_args_is_help=True,
)


@app.command("add")
def add(
    email: str,
    role: Annotated[str, typer.Option("--role", help="admin, operator or viewer.")],
    by: By = None,
) -> None:
    """Add a user with a role (admin: connections, grants, approvals; operator: chat, drafts; viewer: audit)."""
    from rich.console import Console

    async def work(ctx: VaultContext) -> str:
        user = ctx.users.add(email, role, ctx.actor(by))
        return f"user {user.email} added as {user.role}; issue a token with: persona users token {user.email}"

    Console(highlight=False).print(with_vault(work))


@app.command("list")
def list_users(as_json: AsJson = False, as_jsonl: AsJsonl = False) -> None:
    """Users, roles, status and how many active tokens each holds."""
    from persona.cli.output import emit_list

    async def work(ctx: VaultContext) -> None:
        found = ctx.users.list()
        rows = [
            (u.email, u.role, u.status, u.tokens, u.last_used_at or "-", u.created_at, u.created_by)
            for u in found
        ]
        emit_list(
            f"{len(found)} user(s)",
            ("email", "role", "status", "tokens", "token last used", "created", "by"),
            rows,
            found,
            as_json=as_json,
            as_jsonl=as_jsonl,
        )

    with_vault(work)


@app.command("token")
def token(email: str, by: By = None) -> None:
    """Issue an API token; it is shown once (only its hash is kept)."""
    from rich.console import Console

    async def work(ctx: VaultContext) -> str:
        return ctx.users.issue_token(email, ctx.actor(by))

    issued = with_vault(work)
    Console(stderr=True, highlight=False).print(
        f"API token for {email.strip().lower()}, shown once (send it as Authorization: Bearer <token>):"
    )
    typer.echo(issued)


@app.command("disable")
def disable(email: str, by: By = None) -> None:
    """Disable a user: their tokens are refused from the next request on."""
    from rich.console import Console

    async def work(ctx: VaultContext) -> str:
        user = ctx.users.disable(email, ctx.actor(by))
        return f"user {user.email} disabled; their tokens are refused"

    Console(highlight=False).print(with_vault(work))
