"""Listings are safe for a terminal and a spreadsheet, and `--output` is checked in one place for all."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from asset_manager.output import LARGE_LISTING, OutputFormat, render_text, safe_text
from tests.asset_manager.conftest import Cli

COLUMNS = ["key", "reason", "n"]
# What a terminal acts on: C0/C1 controls but the line feeds between lines, DEL, bidirectional overrides.
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
HOSTILE = [
    "\x1b[2J\x1b[31mred",
    '=HYPERLINK("http://x","y")',
    "+1+2",
    "-2+3",
    "@SUM(A1)",
    "\tx",
    "\rx",
    "a\nb|c",
    "[/b] [bold]x",
    "\u202eevil",
    "<script>",
    "\x00\x07\x08",
    "\u0085next",
]
cells = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=30), st.integers(-5, 5), st.none())
rows_strategy = st.lists(
    st.fixed_dictionaries({"key": cells, "reason": cells, "n": cells}), min_size=1, max_size=6
)


@hsettings(max_examples=150, deadline=None)
@given(rows=rows_strategy, big=st.booleans())
def test_no_control_character_and_no_formula_reaches_the_output(
    rows: list[dict[str, object]], big: bool
) -> None:
    if big:  # the plain layout of large listings, the same guarantees
        rows = rows * (LARGE_LISTING // len(rows) + 1)
    for fmt in (OutputFormat.table, OutputFormat.csv, OutputFormat.markdown):
        text = render_text(rows, COLUMNS, fmt, title="t\x1b]0;pwned\x07")
        assert not UNSAFE.search(text), (fmt, text)
    body = render_text(rows, COLUMNS, OutputFormat.csv)
    parsed = list(csv.reader(io.StringIO(body)))
    assert len(parsed) == len(rows) + 1  # no row split or merged
    for row, cells_ in zip(rows, parsed[1:], strict=True):
        for column, cell in zip(COLUMNS, cells_, strict=True):
            value = row[column]
            if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
                assert cell.startswith("'"), cell
            if isinstance(value, int):
                assert cell == str(value)  # numbers stay numbers
    markdown = render_text(rows, COLUMNS, OutputFormat.markdown).splitlines()
    assert len(markdown) == len(rows) + 2
    assert all(len(re.findall(r"(?<!\\)\|", line)) == len(COLUMNS) + 1 for line in markdown[2:])
    # JSON stays lossless (its encoder escapes every control character).
    assert json.loads(render_text(rows, COLUMNS, OutputFormat.json)) == [
        {c: r[c] for c in COLUMNS} for r in rows
    ]


def test_safe_text_shows_what_was_there() -> None:
    assert safe_text("a\x1b[31mb\nc\u202ed") == "a\\x1b[31mb\\nc\\u202ed"
    assert safe_text("plain text, ünïcode ✓") == "plain text, ünïcode ✓"


LISTINGS = [
    ["alerts"],
    ["alerts", "show", "1"],
    ["alerts", "silences"],
    ["alerts", "deliveries"],
    ["list-assets"],
    ["asset-details", "x"],
    ["asset-inventory"],
    ["ownership-report"],
    ["asset-health"],
]


@pytest.mark.parametrize("args", LISTINGS, ids=lambda a: " ".join(a))
def test_every_listing_checks_output_before_anything(cli: Cli, tmp_path: Path, args: list[str]) -> None:
    for path, message in (
        (Path("../../x.json"), "'..' is not allowed"),
        (tmp_path / "nonexistent" / "x.json", "does not exist"),
        (tmp_path, "is a directory"),
    ):
        code, out, err = cli.run(*args, "--format", "json", "--output", str(path))
        assert code == 2 and err.count("\n") == 1 and message in err and out == "", (args, path, err)
    assert not (tmp_path.parent / "x.json").exists()
