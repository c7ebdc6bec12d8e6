"""Rendering of CLI listings: `--format table|json|csv|markdown` and `--output FILE`, one way for every command."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from asset_manager.errors import CliError
from libs.common.text import clip


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


FormatOption = Annotated[OutputFormat, typer.Option("--format", "-f", help="table, json, csv or markdown")]
OutputOption = Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout")]


def check_output_path(path: Path) -> Path:
    """Refuse output paths that climb out with `..`, point at a directory, or have no parent directory."""
    if ".." in path.parts:
        raise CliError(f"refusing --output {path}: '..' is not allowed in output paths")
    if path.is_dir():
        raise CliError(f"--output {path} is a directory")
    if not path.parent.exists():
        raise CliError(f"--output {path}: directory {path.parent} does not exist")
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple | set):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


# Above this many rows, tables are plain aligned text and JSON one object per line: rich's table layout
# costs about a millisecond per row (10,000 assets: 12 s instead of 0.2 s).
LARGE_LISTING = 500
# Widest cell of a plain table; longer text is cut at a word and ends with "…" (json/csv/markdown keep it).
PLAIN_WIDTH = 60


def _plain_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], title: str | None) -> str:
    cells = [[clip(_cell(r.get(c)).replace("\n", " "), PLAIN_WIDTH) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [title] if title else []
    out.append(line(columns))
    out.append(line(["-" * w for w in widths]))
    out.extend(line(row) for row in cells)
    return "\n".join(out) + "\n"


def render_text(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: OutputFormat, *, title: str | None = None
) -> str:
    """The listing as text in `fmt` (a rich table is rendered without colour)."""
    if fmt is OutputFormat.json:
        if len(rows) > LARGE_LISTING:
            # One object per line through the C encoder: `indent` forces the pure-Python one (10x slower).
            body = ",\n".join(json.dumps({c: r.get(c) for c in columns}, default=str) for r in rows)
            return "[\n" + body + "\n]\n"
        return json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=2, default=str) + "\n"
    if fmt is OutputFormat.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
        return buffer.getvalue()
    if fmt is OutputFormat.markdown:
        def esc(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")

        lines = [f"### {title}", ""] if title else []
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "|".join("---" for _ in columns) + "|")
        lines.extend("| " + " | ".join(esc(_cell(r.get(c))) for c in columns) + " |" for r in rows)
        return "\n".join(lines) + "\n"
    if len(rows) > LARGE_LISTING:
        return _plain_table(rows, columns, title)
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    buffer = io.StringIO()
    Console(file=buffer, width=200, no_color=True, force_terminal=False).print(table)
    return buffer.getvalue()


def emit(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    fmt: OutputFormat,
    output: Path | None,
    *,
    title: str | None = None,
) -> None:
    """Print the listing, or write it to `output`."""
    if output is not None:
        check_output_path(output).write_text(render_text(rows, columns, fmt, title=title), encoding="utf-8")
        typer.echo(f"wrote {len(rows)} rows to {output}", err=True)
        return
    if fmt is OutputFormat.table and sys.stdout.isatty() and len(rows) <= LARGE_LISTING:
        table = Table(title=title)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(_cell(row.get(c)) for c in columns))
        Console().print(table)
        return
    sys.stdout.write(render_text(rows, columns, fmt, title=title))
