"""The code rules of the project, checked with the suite: ruff clean and ruff-formatted everywhere (lines of
at most 110 columns), mypy --strict clean on the packages listed in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PACKAGES = ["libs", "services", "orchestrator", "asset_manager", "tests", "bench", "deploy"]


def test_ruff_clean() -> None:
    result = subprocess.run([str(BIN / "ruff"), "check", *PACKAGES], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-5000:]


def test_ruff_formatted() -> None:
    result = subprocess.run(
        [str(BIN / "ruff"), "format", "--check", *PACKAGES], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-5000:]


def test_mypy_strict_clean() -> None:
    result = subprocess.run([str(BIN / "mypy")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-5000:]
