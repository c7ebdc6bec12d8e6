"""In-process loading of a real Dagster code location from disk."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.discovery.scan import definitions_loader, scan

CODE = """
import dagster as dg

@dg.asset(group_name="g", description={description!r})
def one() -> None: ...

defs = dg.Definitions(assets=[one])
"""


@pytest.fixture
def package(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    name = f"scanpkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "definitions.py").write_text(CODE.format(description="first"))
    sys.path.insert(0, str(tmp_path))
    yield tmp_path / name, name
    sys.path.remove(str(tmp_path))
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def test_unchanged_sources_reuse_the_load_and_edits_are_seen(package: tuple[Path, str]) -> None:
    path, name = package
    load = definitions_loader(f"{name}.definitions:defs")
    first = scan("loc", load)
    assert first.ok and first.snapshot is not None
    assert [a.description for a in first.snapshot.assets] == ["first"]
    again = scan("loc", load)
    assert again.snapshot is first.snapshot  # nothing changed on disk: not re-imported
    (path / "definitions.py").write_text(CODE.format(description="second, longer"))
    edited = scan("loc", load)
    assert edited.snapshot is not None and [a.description for a in edited.snapshot.assets] == [
        "second, longer"
    ]


def test_broken_code_location_is_a_problem_not_a_crash(package: tuple[Path, str]) -> None:
    path, name = package
    (path / "definitions.py").write_text("import dagster as dg\nraise RuntimeError('bad config')\n")
    result = scan("loc", definitions_loader(f"{name}.definitions:defs"))
    assert result.snapshot is None and not result.ok
    assert len(result.problems) == 1
    assert "RuntimeError: bad config" in result.problems[0] and "definitions.py:2" in result.problems[0]


def test_missing_module_is_a_problem(package: tuple[Path, str]) -> None:
    result = scan("loc", definitions_loader("no_such_package_here.definitions:defs"))
    assert result.snapshot is None and "ModuleNotFoundError" in result.problems[0]
