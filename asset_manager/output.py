"""Rendering of CLI listings: `--format table|json|csv|markdown` and `--output FILE`, one way for every
command."""

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
from rich.text import Text

from asset_manager.errors import CliError, check_path
from libs.common.text import clip


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


def check_output_path(path: Path) -> Path:
    """Refuse output paths that climb out with `..`, point at a directory, or have no parent directory."""
    if ".." in path.parts:
        raise CliError(f"refusing --output {path}: '..' is not allowed in output paths")
    if path.is_dir():
        raise CliError(f"--output {path} is a directory")
    if not path.parent.is_dir():
        raise CliError(f"--output {path}: directory {path.parent} does not exist")
    return path


def _checked_output(path: Path | None) -> Path | None:
    # Checked while the arguments are parsed, before the command does anything, for every listing.
    return None if path is None else check_output_path(check_path(path) or path)


def write_output(path: Path, text: str) -> None:
    """Write a listing to `path` (checked again: the directory may have gone since); one-line errors."""
    check_output_path(path)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write --output {path}: {exc.strerror or exc}", code=1) from None


FormatOption = Annotated[OutputFormat, typer.Option("--format", "-f", help="table, json, csv or markdown")]
OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write to this file instead of stdout", callback=_checked_output),
]


# Characters a terminal acts on (C0 and C1 controls: ESC sequences, carriage returns, backspaces) and the
# ones that reorder what is shown (bidirectional overrides, "Trojan Source"): shown as escapes, never raw.
_UNSAFE = [
    *range(0x00, 0x20),
    0x7F,
    *range(0x80, 0xA0),
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
    0x2028,
    0x2029,
]
_ESCAPES = str.maketrans(
    {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _UNSAFE}
    | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
)
# OWASP (CSV injection): a cell starting with one of these is a formula to a spreadsheet.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_text(text: str) -> str:
    """`text` with every control and reordering character escaped (`\\x1b`, `\\n`, `\\u202e`)."""
    return text.translate(_ESCAPES)


def _raw_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple | set):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def _cell(value: Any) -> str:
    return safe_text(_raw_cell(value))


def csv_cell(value: Any) -> str:
    """A cell for CSV: escaped like every cell, and a text that a spreadsheet would take for a formula
    (starting with = + - @ tab or CR) prefixed with `'` as OWASP recommends; numbers stay numbers."""
    raw = _raw_cell(value)
    if raw.startswith(_FORMULA_START) and not isinstance(value, int | float):
        return "'" + safe_text(raw)
    return safe_text(raw)


# Above this many rows, tables are plain aligned text and JSON one object per line: rich's table layout
# costs about a millisecond per row (10,000 assets: 12 s instead of 0.2 s).
LARGE_LISTING = 500
# Widest cell of a plain table; longer text is cut at a word and ends with "…" (json/csv/markdown keep it).
PLAIN_WIDTH = 60


def _plain_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], title: str | None) -> str:
    cells = [[clip(_cell(r.get(c)), PLAIN_WIDTH) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [safe_text(title)] if title else []
    out.append(line(columns))
    out.append(line(["-" * w for w in widths]))
    out.extend(line(row) for row in cells)
    return "\n".join(out) + "\n"


def rich_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], title: str | None, **options: Any
) -> Table:
    # Cells and title as Text: a string would be read as rich markup ("[/]" in an asset key raises).
    table = Table(title=Text(safe_text(title)) if title else None, **options)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(_cell(row.get(c))) for c in columns))
    return table


def render_text(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: OutputFormat, *, title: str | None = None
) -> str:
    """The listing as text in `fmt` (a rich table is rendered without colour)."""
    if fmt is OutputFormat.json:
        if len(rows) > LARGE_LISTING:
            # One object per line through the C encoder: `indent` forces the pure-Python one (10x slower).
            # One encoder for every line: `json.dumps(..., default=str)` builds a new one per call, a third
            # of the encoding time of 50,000 rows.
            encode = json.JSONEncoder(default=str).encode
            body = ",\n".join([encode({c: r.get(c) for c in columns}) for r in rows])
            return "[\n" + body + "\n]\n"
        return json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=2, default=str) + "\n"
    if fmt is OutputFormat.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([csv_cell(row.get(c)) for c in columns])
        return buffer.getvalue()
    if fmt is OutputFormat.markdown:

        def esc(text: str) -> str:  # after safe_text: no raw newline or control character is left
            return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")

        lines = [f"### {esc(safe_text(title))}", ""] if title else []
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "|".join("---" for _ in columns) + "|")
        lines.extend("| " + " | ".join(esc(_cell(r.get(c))) for c in columns) + " |" for r in rows)
        return "\n".join(lines) + "\n"
    if len(rows) > LARGE_LISTING:
        return _plain_table(rows, columns, title)
    table = rich_table(rows, columns, title, show_lines=False)
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
        write_output(output, render_text(rows, columns, fmt, title=title))
        typer.echo(f"wrote {len(rows)} rows to {output}", err=True)
        return
    if fmt is OutputFormat.table and sys.stdout.isatty() and len(rows) <= LARGE_LISTING:
        Console().print(rich_table(rows, columns, title))
        return
    sys.stdout.write(render_text(rows, columns, fmt, title=title))


Section = tuple[str, list[dict[str, Any]], list[str]]


def write_sections(
    document: Mapping[str, Any], sections: Sequence[Section], fmt: OutputFormat, output: Path | None
) -> None:
    """A report of several listings: `document` as JSON, else each section as a titled table, CSV block or
    markdown table."""
    if fmt is OutputFormat.json:
        text = json.dumps(document, indent=2, default=str) + "\n"
    elif fmt is OutputFormat.table and output is None and sys.stdout.isatty():
        console = Console()
        for title, rows, columns in sections:
            console.print(rich_table(rows, columns, title))
        return
    else:
        parts = []
        for title, rows, columns in sections:
            body = render_text(rows, columns, fmt, title=title)
            parts.append(f"# {title}\n{body}" if fmt is OutputFormat.csv else body)
        text = "\n".join(parts)
    if output is not None:
        write_output(output, text)
        typer.echo(f"wrote {output}", err=True)
    else:
        sys.stdout.write(text)
