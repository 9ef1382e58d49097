"""How commands print, for people and scripts alike: a table at a terminal, full values down a pipe, JSON on
request (``--json``: one document; ``--jsonl``: one object per line for lists).

A table never cuts a value a next command needs: at a terminal, long cells fold onto more lines instead of
ending in "…"; when standard output is not a terminal the table is plain text, columns padded to their widest
value, nothing cut or wrapped whatever ``COLUMNS`` says. JSON is written straight to standard output (never
through rich, so never wrapped), with every time as RFC 3339 in UTC with ``Z``, the one format used in every
table and document here (the audit export keeps the ``+00:00`` text its hashes cover).
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any, TextIO

import typer

from persona.jsonutil import jsonable as plain
from persona.jsonutil import rfc3339

AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")]
AsJsonl = Annotated[bool, typer.Option("--jsonl", help="Print JSON Lines: one object per line.")]


def print_json(value: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(plain(value), ensure_ascii=False, indent=2, sort_keys=True) + "\n")


def print_jsonl(items: Iterable[Any], out: TextIO | None = None) -> None:
    stream = out or sys.stdout
    for item in items:
        stream.write(json.dumps(plain(item), ensure_ascii=False, sort_keys=True) + "\n")


def cell(value: Any) -> str:
    """A value as a table shows it: times as RFC 3339 (seconds), nothing as empty."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return rfc3339(value, precise=False)
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def print_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO | None = None
) -> None:
    """A titled table: rich at a terminal (folding, never "…"), plain padded text otherwise (never cut)."""
    stream = out or sys.stdout
    texts = [[cell(v) for v in row] for row in rows]
    if stream.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for name in columns:
            table.add_column(name, overflow="fold")
        for row in texts:
            table.add_row(*row)
        Console(file=stream, highlight=False).print(table, markup=False)
        return
    widths = [max([len(name), *(len(row[i]) for row in texts)]) for i, name in enumerate(columns)]
    stream.write(title + "\n")
    for row in [list(columns), *texts]:
        stream.write(
            "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip() + "\n"
        )


def emit_list(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    items: Sequence[Any],
    *,
    as_json: bool = False,
    as_jsonl: bool = False,
) -> None:
    """A list command's output: the table, or ``items`` (what each row shows, in full) as JSON."""
    if as_json and as_jsonl:
        raise typer.BadParameter("choose one of --json and --jsonl")
    if as_json:
        print_json(list(items))
    elif as_jsonl:
        print_jsonl(items)
    else:
        print_table(title, columns, rows)
