"""Where the CLI finds the service stores."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from asset_manager.errors import CliError
from libs.common.settings import Settings


def store_file(settings: Settings, name: Literal["metadata", "health", "monitor"] | str) -> Path:
    """The SQLite file of store `name`; a one-line CLI error for a store URL that is not a file."""
    from libs.common.store import StoreError, sqlite_path

    try:
        return sqlite_path(settings.store_url(name))  # type: ignore[arg-type]
    except StoreError as exc:
        raise CliError(str(exc)) from exc
