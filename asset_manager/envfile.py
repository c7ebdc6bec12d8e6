"""The project's `.env`: where DAGSTER_HOME is written once, so that every shell uses the same instance.

Dagster's CLI (`dagster asset materialize`, `dagster dev`, ...) reads `.env` from its working directory and
without DAGSTER_HOME runs on a temporary instance that nothing else sees. `asset-manager init` and
`asset-manager dev` therefore write DAGSTER_HOME into the project's `.env` (the other lines are kept), and
`asset-manager` reads the same file, so a second shell needs no `export`.

An exported DAGSTER_HOME wins for asset-manager and is never written to `.env` (it is the user's choice, and
tests export theirs); when it differs from `.env` both are named in a warning, since Dagster's CLI, started in
the project folder, would use the one in `.env`.
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values, set_key

from libs.common.settings import PROJECT_ROOT

ENV_FILE_NAME = ".env"
DAGSTER_HOME = "DAGSTER_HOME"
# The variables this process took from `.env` (not exported by the user).
_loaded: set[str] = set()


def env_file() -> Path:
    """The `.env` asset-manager reads: the working directory's, as Dagster's CLI does (so both agree)."""
    return Path.cwd() / ENV_FILE_NAME


def load_env_file(path: Path | None = None) -> list[str]:
    """Put the variables of `.env` that are not set already into os.environ; returns warnings to show."""
    path = path or env_file()
    if not path.is_file():
        return []
    warnings = []
    for key, value in dotenv_values(path).items():
        if value is None:
            continue
        current = os.environ.get(key)
        if current is None:
            os.environ[key] = value
            _loaded.add(key)
        elif (
            key == DAGSTER_HOME and Path(current).expanduser().resolve() != Path(value).expanduser().resolve()
        ):
            warnings.append(
                f"DAGSTER_HOME is {current} in the environment but {value} in {path}: asset-manager uses "
                f"{current}, Dagster's CLI started in {path.parent} uses {value}. Unset one of them."
            )
    return warnings


def dagster_home_exported() -> bool:
    """Whether DAGSTER_HOME came from the process environment rather than `.env` or the default."""
    return DAGSTER_HOME in os.environ and DAGSTER_HOME not in _loaded


def write_dagster_home(home: Path, path: Path | None = None) -> Path:
    """Set DAGSTER_HOME=<home> in `.env` (created if missing; other lines kept); returns the file."""
    path = path or PROJECT_ROOT / ENV_FILE_NAME
    if not path.exists():
        path.write_text(
            "# Written by `asset-manager init`/`dev`: Dagster's CLI and asset-manager read DAGSTER_HOME "
            "from here,\n"
            "# so every shell started in this folder uses the same Dagster instance.\n",
            encoding="utf-8",
        )
    set_key(str(path), DAGSTER_HOME, str(home.resolve()), quote_mode="always")
    return path


def record_dagster_home(home: Path, path: Path | None = None) -> str:
    """Write DAGSTER_HOME to the project's `.env` unless it was exported; a line saying what was done."""
    path = path or PROJECT_ROOT / ENV_FILE_NAME
    if dagster_home_exported():
        return (
            f"DAGSTER_HOME {home} is exported in this shell: export it in every shell (or put it in "
            f"{path}), or Dagster's CLI runs on a temporary instance"
        )
    path = write_dagster_home(home, path)
    return f"DAGSTER_HOME {home} recorded in {path} (Dagster's CLI and asset-manager read it there)"
