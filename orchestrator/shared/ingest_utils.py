"""Read a parameterised SQL query into a DataFrame, over ODBC (or the sqlite3 fallback for SQLite files).

    df = ingest_from_sql(
        sql_server="MY_SERVER", sql_database="MY_DATABASE", query=q, date_params=[start, end]
    )
    df = ingest_from_sql(connection="demo_source", query=q, params=[start, end])

Values only ever travel as bound parameters (`?` markers); the query text is checked for a matching number
of markers and a single statement before anything is sent. Rows are fetched in chunks (`fetch_size`) and
typed once, the same way for every driver: integers → Int64, floats → float64, booleans → boolean, text →
string, timestamps → datetime64[us], dates/decimals/times/bytes stay Python objects (as pandas.read_sql
does), NULL → <NA>/NaN/NaT/None. No pandas DBAPI warning: pandas never sees the connection.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pandas as pd
import pyodbc

from libs.common.log import get_logger
from orchestrator.settings import OrchestratorSettings, SqlConnection
from orchestrator.shared.sql import (
    ResolvedConnection,
    SqlError,
    SqlQueryError,
    bind_params,
    opened,
    resolve,
)

__all__ = ["SqlError", "SqlQueryError", "count_placeholders", "frame_from_rows", "ingest_from_sql"]

log = get_logger(__name__)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def count_placeholders(query: str) -> int:
    """The number of `?` markers outside quotes and comments; ValueError for more than one statement."""
    count = 0
    i, n = 0, len(query)
    statement_ended = False
    while i < n:
        ch = query[i]
        if ch in ("'", '"', "["):
            close = "]" if ch == "[" else ch
            i += 1
            while i < n:
                if query[i] == close:
                    if close != "]" and i + 1 < n and query[i + 1] == close:  # doubled quote
                        i += 2
                        continue
                    break
                i += 1
            i += 1
            continue
        if query.startswith("--", i):
            end = query.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if query.startswith("/*", i):
            end = query.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if statement_ended and not ch.isspace() and ch != ";":
            raise ValueError("the query holds more than one SQL statement; run one statement per call")
        if ch == ";":
            statement_ended = True
        elif ch == "?":
            count += 1
        i += 1
    return count


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if _INT64_MIN <= value <= _INT64_MAX else "object"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dt.datetime):
        return "datetime_tz" if value.tzinfo is not None else "datetime"
    return "object"  # date, time, Decimal, bytes, uuid...


_HINT_KINDS: dict[type, str] = {bool: "bool", int: "int", float: "float", str: "str", dt.datetime: "datetime"}


def _column(values: list[Any], hint: Any) -> pd.Series:
    kinds = {_kind(v) for v in values if v is not None}
    if not kinds:  # all NULL (or no rows): the driver's declared type, when it gives one
        kinds = {_HINT_KINDS.get(hint, "object")} if isinstance(hint, type) else {"object"}
        values = [None] * len(values)
    if kinds == {"bool"}:
        return pd.Series(values, dtype="boolean")
    if kinds == {"int"}:
        return pd.Series(values, dtype="Int64")
    if kinds <= {"int", "float"}:
        return pd.Series([float("nan") if v is None else float(v) for v in values], dtype="float64")
    if kinds == {"str"}:
        return pd.Series(values, dtype=pd.StringDtype())
    if kinds == {"datetime"}:
        return pd.Series(values, dtype="datetime64[us]")
    if kinds == {"datetime_tz"}:
        utc = [None if v is None else v.astimezone(dt.UTC).replace(tzinfo=None) for v in values]
        return pd.Series(utc, dtype="datetime64[us]").dt.tz_localize("UTC")
    return pd.Series(values, dtype=object)


def frame_from_rows(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], hints: Sequence[Any] = ()
) -> pd.DataFrame:
    """A typed DataFrame from fetched rows (see the module docstring for the type rules)."""
    width = len(columns)
    data: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for i in range(width):
            value = row[i]
            if isinstance(value, bytearray | memoryview):
                value = bytes(value)
            elif isinstance(value, Decimal) and value.is_nan():
                value = None
            data[i].append(value)
    series = {}
    names = _unique_labels(columns)
    for i, name in enumerate(names):
        series[name] = _column(data[i], hints[i] if i < len(hints) else None)
    frame = pd.DataFrame(series, index=pd.RangeIndex(len(rows)))
    return frame


def _unique_labels(columns: Sequence[str]) -> list[str]:
    # Two `id` columns from a join would collapse into one in a dict; keep both (`id`, `id_2`).
    seen: dict[str, int] = {}
    out = []
    for name in columns:
        label = str(name)
        if label in seen:
            seen[label] += 1
            label = f"{label}_{seen[label]}"
        else:
            seen[label] = 1
        out.append(label)
    return out


def ingest_from_sql(
    *,
    query: str,
    sql_server: str | None = None,
    sql_database: str | None = None,
    date_params: Sequence[Any] | None = None,
    connection: str | SqlConnection | ResolvedConnection | None = None,
    params: Sequence[Any] | None = None,
    chunk_size: int | None = None,
    settings: OrchestratorSettings | None = None,
) -> pd.DataFrame:
    """Run one parameterised SELECT and return its rows as a typed DataFrame.

    The source is `connection` (a name under `connections:` in app_config.yaml, or a SqlConnection) or
    `sql_server` + `sql_database` (driver and authentication from the configured connection with that
    server and database, else from the `default` connection). `params` (or `date_params`, the same thing
    under the README's name) bind to the `?` markers in order. Raises ValueError for a malformed call,
    SqlConnectionError when the source cannot be reached after the configured retries, and SqlQueryError
    when the statement fails; all of them name the connection, never its password.
    """
    if params is not None and date_params is not None:
        raise ValueError("pass params= or date_params=, not both")
    values = list(params if params is not None else date_params or [])
    if isinstance(params, str | bytes) or isinstance(date_params, str | bytes):
        raise ValueError("params must be a list of values, not a string")
    markers = count_placeholders(query)
    if markers != len(values):
        raise ValueError(
            f"the query has {markers} `?` parameter marker(s) but {len(values)} value(s) were given; "
            "values are always bound as parameters, never formatted into the SQL"
        )
    conn = resolve(connection, sql_server=sql_server, sql_database=sql_database, settings=settings)
    size = chunk_size or conn.config.fetch_size
    started = time.monotonic()
    with opened(conn) as handle:
        cursor = handle.cursor()
        handle.arm_query_timeout()
        try:
            cursor.execute(query, bind_params(conn, values))
            if cursor.description is None:
                raise SqlQueryError(
                    f"query on {conn.describe()} returned no result set (expected a SELECT)",
                    connection=conn.name,
                )
            columns = [d[0] for d in cursor.description]
            # Only ODBC drivers other than SQLite declare types for every column; SQLite's two engines
            # must type identically, so an all-NULL SQLite column stays `object` on both.
            hints = [d[1] for d in cursor.description] if handle.is_odbc and conn.dialect != "sqlite" else []
            rows: list[Sequence[Any]] = []
            chunks = 0
            while True:
                chunk = cursor.fetchmany(size)
                if not chunk:
                    break
                rows.extend(chunk)
                chunks += 1
        except (pyodbc.Error, sqlite3.Error) as exc:
            raise handle.error("query", exc) from None
    frame = frame_from_rows(columns, rows, hints)
    log.info(
        "sql.ingested",
        connection=conn.name,
        engine=conn.engine,
        rows=len(frame),
        columns=len(columns),
        chunks=chunks,
        seconds=round(time.monotonic() - started, 3),
    )
    return frame
