"""PostgreSQL behind the store API, for deployments that run several replicas of a worker.

`PgConnection` offers the part of `sqlite3.Connection` the services use (`execute`, `executemany`,
`executescript`, rows addressable by name and index) and translates the portable SQL they write:
`?` placeholders, SQLite column types in migrations, `INSERT OR IGNORE`. `BEGIN IMMEDIATE` becomes
`BEGIN` plus a transaction-scoped advisory lock, so writers of one store are serialised exactly as they are
on SQLite and read-modify-write logic stays correct across replicas. Driver errors are re-raised as the
sqlite3 exception of the same meaning, so the bus treats a lost database like a lost disk (retry, unready).
"""

from __future__ import annotations

import re
import sqlite3
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from libs.common.sql import split_statements

try:
    import psycopg2
    import psycopg2.extras
except ImportError as exc:  # pragma: no cover - psycopg2 is an optional dependency
    raise ImportError(
        "a postgresql:// store needs psycopg2 (pip install 'dagster-asset-management[postgres]')"
    ) from exc

_TYPE_RULES = [
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY(\s+AUTOINCREMENT)?\b", re.I), "BIGSERIAL PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b", re.I), "BIGINT"),
    (re.compile(r"\bREAL\b", re.I), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b", re.I), "BYTEA"),
    (re.compile(r"\)\s*WITHOUT\s+ROWID", re.I), ")"),
]
_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.I)
_DDL = re.compile(r"^\s*(CREATE|ALTER)\b", re.I)


def translate(sql: str) -> str:
    """Portable store SQL → PostgreSQL: placeholders, `%` escaping, types in DDL, INSERT OR IGNORE."""
    if _DDL.match(sql):
        for pattern, replacement in _TYPE_RULES:
            sql = pattern.sub(replacement, sql)
    ignore = bool(_INSERT_OR_IGNORE.match(sql))
    if ignore:
        sql = _INSERT_OR_IGNORE.sub("INSERT INTO", sql)
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if quote:
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "?":
            out.append("%s")
            continue
        if ch == "%":
            out.append("%%")
            continue
        out.append(ch)
    result = "".join(out).rstrip().rstrip(";")
    return result + " ON CONFLICT DO NOTHING" if ignore else result


class PgCursor:
    """The cursor of one statement: fetchone/fetchall/iteration over name-and-index rows, rowcount."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def fetchone(self) -> Any:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall()) if self._cursor.description else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class PgConnection:
    """A psycopg2 connection in autocommit mode driven by explicit BEGIN/COMMIT, like the SQLite stores."""

    def __init__(self, url: str, *, connect_timeout: int = 10) -> None:
        dsn = url.replace("postgresql+psycopg2://", "postgresql://", 1)
        try:
            self._conn = psycopg2.connect(dsn, connect_timeout=connect_timeout)
        except psycopg2.OperationalError as exc:
            raise sqlite3.OperationalError(f"cannot connect to PostgreSQL store: {exc}") from exc
        self._conn.autocommit = True
        self._lock_id = zlib.crc32(dsn.rsplit("/", 1)[-1].encode())

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> PgCursor:
        """Run one statement (translated); returns its cursor."""
        statement = sql.strip()
        upper = statement.upper()
        if upper.startswith("PRAGMA"):
            return PgCursor(_EmptyCursor())
        if upper.startswith("BEGIN"):
            self._run("BEGIN", ())
            if "IMMEDIATE" in upper:
                self._run("SELECT pg_advisory_xact_lock(%s)", (self._lock_id,))
            return PgCursor(_EmptyCursor())
        return PgCursor(
            self._run(
                translate(statement), tuple(params) if not isinstance(params, Mapping) else dict(params)
            )
        )

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> PgCursor:
        """Run one statement for every row, in pages (psycopg2's execute_batch)."""
        cursor = self._conn.cursor(cursor_factory=psycopg2.extras.DictCursor)
        try:
            psycopg2.extras.execute_batch(cursor, translate(sql), [tuple(r) for r in rows], page_size=500)
        except psycopg2.Error as exc:
            raise _as_sqlite_error(exc) from exc
        return PgCursor(cursor)

    def executescript(self, script: str) -> None:
        """Run several `;`-separated statements."""
        for statement in split_statements(script):
            self.execute(statement)

    def close(self) -> None:
        self._conn.close()

    def _run(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> Any:
        cursor = self._conn.cursor(cursor_factory=psycopg2.extras.DictCursor)
        try:
            cursor.execute(sql, params)
        except psycopg2.Error as exc:
            raise _as_sqlite_error(exc) from exc
        return cursor


class _EmptyCursor:
    description = None
    rowcount = -1

    def fetchall(self) -> list[Any]:
        return []


def _as_sqlite_error(exc: Exception) -> sqlite3.Error:
    message = f"{type(exc).__name__}: {str(exc).strip()}"
    if isinstance(exc, psycopg2.IntegrityError):
        return sqlite3.IntegrityError(message)
    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
        return sqlite3.OperationalError(message)
    if isinstance(exc, psycopg2.ProgrammingError):
        return sqlite3.ProgrammingError(message)
    return sqlite3.DatabaseError(message)
