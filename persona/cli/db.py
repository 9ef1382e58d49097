"""``persona db upgrade`` and ``persona db current``: the store's schema revision, and bringing it forward.

Every other command refuses a store whose schema is behind this release (and names this command) or ahead
of it; these two open the store without that check.
"""

from __future__ import annotations

from typing import Any

import typer

from persona.cli.output import AsJson, cell, print_json

app = typer.Typer(
    rich_markup_mode=None,
    help="The store's schema: which revision it is at, and upgrading it to this release's.",
    no_args_is_help=True,
)


def _report(url: str, before: Any, after: Any, created: Any) -> dict[str, Any]:
    return {
        "database": url,
        "revision": after.current,
        "head": after.head,
        "state": after.state,
        "before": before.current if before is not None else after.current,
        "initialised_at": created,
    }


@app.command("current")
def current(as_json: AsJson = False) -> None:
    """Show the store's schema revision and this release's (exit status 1 when they differ)."""
    from persona.cli.state import STATE
    from persona.release import VERSION
    from persona.store import schema
    from persona.store.engine import Store

    store = Store.open(STATE.settings().store_url())
    try:
        found = schema.status(store)
        created = schema.initialised_at(store) if found.state == "current" else None
    finally:
        store.close()
    if as_json:
        print_json({**_report(store.url, None, found, created), "release": VERSION})
    else:
        advice = {
            "current": "current",
            "empty": f"empty: the first start creates it at {found.head}",
            "behind": f"behind: run `persona db upgrade` (after a backup) to reach {found.head}",
            "ahead": "ahead: a newer release upgraded it; run that release",
        }[found.state]
        typer.echo(f"database  {store.url}")
        typer.echo(f"revision  {found.revision}")
        typer.echo(f"release   {VERSION} (revision {found.head})")
        typer.echo(f"state     {advice}")
        if created is not None:
            typer.echo(f"created   {cell(created)}")
    if found.state != "current":
        raise typer.Exit(1)


@app.command("upgrade")
def upgrade(as_json: AsJson = False) -> None:
    """Bring the store's schema to this release's revision, in one transaction (an empty store is created).

    Safe to run while other instances start: they wait for the lock and then find the schema current.
    Back up the database first; the baseline cannot be undone.
    """
    from persona.cli.state import STATE
    from persona.clock import utcnow
    from persona.store import schema
    from persona.store.engine import Store

    store = Store.open(STATE.settings().store_url())
    try:
        before, after = schema.upgrade(store, now=utcnow)
        created = schema.initialised_at(store)
    finally:
        store.close()
    if as_json:
        print_json(_report(store.url, before, after, created))
    elif before.current == after.current:
        typer.echo(f"{store.url}: already at revision {after.current} (this release's); nothing to do")
    elif before.state == "empty":
        typer.echo(f"{store.url}: created at revision {after.current} (this release's)")
    else:
        typer.echo(
            f"{store.url}: upgraded from revision {before.revision} to {after.current} (this release's)"
        )
        typer.echo(
            f"the reconciler acts on failures after {cell(created)} (`persona reconcile --since` for earlier)"
        )
