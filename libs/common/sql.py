"""What the stores' SQL runs on: the connection and cursor every store offers (a `sqlite3.Connection`, or
`libs.common.pg.PgConnection` for a PostgreSQL store), and the splitting of migration scripts."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol


class Cursor(Protocol):
    """The result of one statement; rows are addressable by column name and by index."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The part of `sqlite3.Connection` the services use; `PgConnection` offers the same."""

    def execute(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...

    def executescript(self, sql_script: str, /) -> Any: ...

    def close(self) -> None: ...


def split_statements(script: str) -> list[str]:
    """The complete SQL statements of `script`, in order (comments and blank lines kept with them)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
