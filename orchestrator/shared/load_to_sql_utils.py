"""Load a DataFrame into a staging table: sanitize, create if missing, replace or append, batched inserts.

    sanitized = sanitize_dataframe(raw_df)
    load_to_stg_table(context=context, df=sanitized, target_table_name="orders_staging")

The target is the `warehouse` connection of app_config.yaml (by default a SQLite file under DAGSTER_HOME,
where schema `stg` is the attached file `warehouse.stg.db`). Table and schema names must be plain
identifiers (letters, digits, underscores; at most 63 characters) and are always quoted; anything else is
refused with a ValueError before a connection is opened. The whole load is one transaction: a failure
leaves the table as it was.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import sqlite3
import time
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyodbc

from libs.common.log import get_logger
from orchestrator.settings import OrchestratorSettings, SqlConnection
from orchestrator.shared.ingest_utils import ingest_from_sql
from orchestrator.shared.sql import (
    INLINE,
    WAREHOUSE,
    Dialect,
    Handle,
    ResolvedConnection,
    SqlError,
    attach_sqlite_schema,
    opened,
    resolve,
)

__all__ = [
    "LoadResult",
    "SqlError",
    "infer_sql_types",
    "load_to_stg_table",
    "quote_identifier",
    "read_stg_table",
    "sanitize_column_names",
    "sanitize_dataframe",
    "validate_identifier",
]

log = get_logger(__name__)

# A SqlConnection object has no name a later step could resolve, so load_to_stg_table leaves it here for the
# IO manager, which stores the output in the same step process right after the asset returns.
_inline_connections: dict[tuple[str, str], SqlConnection] = {}


def take_inline_connection(schema: str, table: str) -> SqlConnection | None:
    """The SqlConnection object the latest load of `schema.table` in this process used, if it used one."""
    return _inline_connections.pop((schema, table), None)


MAX_IDENTIFIER = 63  # PostgreSQL's limit; SQL Server allows 128, SQLite more
IDENTIFIER = re.compile(rf"^[A-Za-z_][A-Za-z0-9_]{{0,{MAX_IDENTIFIER - 1}}}$")
Mode = Literal["replace", "append"]


# ---------------------------------------------------------------------------------------- identifiers


def validate_identifier(name: str, what: str = "identifier") -> str:
    """`name` if it is a plain SQL identifier, else ValueError saying why (never executed)."""
    if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):
        raise ValueError(
            f"invalid {what} {name!r}: use letters, digits and underscores only, starting with a letter or "
            f"underscore, at most {MAX_IDENTIFIER} characters"
        )
    return name


def quote_identifier(name: str, dialect: Dialect = "generic") -> str:
    """A validated identifier, quoted for `dialect` (brackets on SQL Server, double quotes elsewhere)."""
    validate_identifier(name)
    return f"[{name}]" if dialect == "mssql" else f'"{name}"'


def _safe_name(raw: Any) -> str:
    if isinstance(raw, tuple):  # MultiIndex columns
        raw = "_".join(str(p) for p in raw if p is not None and str(p) != "")
    text = unicodedata.normalize("NFKD", str(raw)).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()
    if not text:
        text = "column"
    if text[0].isdigit():
        text = f"c_{text}"
    return text[:MAX_IDENTIFIER]


def sanitize_column_names(columns: Iterable[Any]) -> list[str]:
    """Lower-case ASCII identifiers, unique case-insensitively (`id`, `id_2`, ...), at most 63 chars."""
    out: list[str] = []
    taken: set[str] = set()
    for raw in columns:
        base = _safe_name(raw)
        name, n = base, 1
        while name in taken:
            n += 1
            suffix = f"_{n}"
            name = base[: MAX_IDENTIFIER - len(suffix)] + suffix
        taken.add(name)
        out.append(name)
    return out


# ------------------------------------------------------------------------------------------- values


def _is_null(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating):
        return bool(np.isnan(value))
    if isinstance(value, Decimal):
        return value.is_nan()
    if isinstance(value, np.datetime64 | np.timedelta64):
        return bool(np.isnat(value))
    return False


def _to_datetime(value: Any) -> dt.datetime:
    if isinstance(value, np.datetime64):
        value = pd.Timestamp(value)
    if isinstance(value, pd.Timestamp):
        if value.tzinfo is not None:
            value = value.tz_convert("UTC").tz_localize(None)
        value = value.floor("us").to_pydatetime()
    if not isinstance(value, dt.datetime):
        raise TypeError(f"not a datetime: {value!r}")
    result: dt.datetime = value
    if result.tzinfo is not None:  # ODBC binds wall time only: store aware values as UTC
        result = result.astimezone(dt.UTC).replace(tzinfo=None)
    return result


def _kind(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, int | np.integer):
        return "int"
    if isinstance(value, float | np.floating):
        return "float"
    if isinstance(value, Decimal):
        return "decimal"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dt.datetime | pd.Timestamp | np.datetime64):
        return "datetime"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, dt.time):
        return "time"
    if isinstance(value, dt.timedelta | pd.Timedelta | np.timedelta64):
        return "timedelta"
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytes"
    if isinstance(value, dict | list | tuple):
        return "json"
    return "other"


def _convert(value: Any, kind: str) -> Any:
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return int(value)
    if kind == "float":
        number = float(value)
        return None if math.isnan(number) else number
    if kind == "decimal":
        return value if isinstance(value, Decimal) else Decimal(str(value))
    if kind == "datetime":
        return _to_datetime(value)
    if kind == "date" or kind == "time":
        return value
    if kind == "timedelta":
        return pd.Timedelta(value).total_seconds()
    if kind == "bytes":
        return bytes(value)
    if kind == "json":
        return json.dumps(value, default=str, ensure_ascii=False)
    return value if isinstance(value, str) else str(value)


def _column_kind(values: Sequence[Any]) -> str:
    kinds = {_kind(v) for v in values}
    if not kinds:
        return "null"
    if len(kinds) == 1:
        return next(iter(kinds))
    if kinds <= {"int", "float"}:
        return "float"
    if kinds <= {"int", "decimal"}:
        return "decimal"
    if kinds <= {"datetime", "date"}:
        return "datetime"
    return "str"  # mixed: text is the one type every value can become


def _as_datetime(value: Any) -> Any:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime.combine(value, dt.time())
    return value


def _sanitize_values(series: pd.Series) -> list[Any]:
    values = [None if _is_null(v) else v for v in series.tolist()]
    present = [v for v in values if v is not None]
    kind = _column_kind(present)
    if kind == "null":
        return values
    if kind == "datetime":  # dates mixed with datetimes become midnight
        return [None if v is None else _to_datetime(_as_datetime(v)) for v in values]
    if kind == "decimal":
        out: list[Any] = []
        for v in values:
            try:
                out.append(None if v is None else (v if isinstance(v, Decimal) else Decimal(int(v))))
            except (InvalidOperation, ValueError):
                out.append(str(v))
        return out
    return [None if v is None else _convert(v, kind) for v in values]


def sanitize_dataframe(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of `df` a SQL table accepts: safe unique column names, NULLs as None, plain Python values.

    Column names become lower-case ASCII identifiers (`Order ID` → `order_id`, duplicates get `_2`).
    NaN, NaT, pd.NA and Decimal('NaN') become None. Values become bool, int, float, Decimal, str,
    datetime (aware ones converted to naive UTC), date, time, bytes; timedeltas become seconds, dicts and
    lists JSON text, and a column of mixed types text. Every column has dtype object so pandas cannot
    turn the None back into NaN. Idempotent: sanitizing twice changes nothing.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"sanitize_dataframe expects a pandas DataFrame, got {type(df).__name__}")
    names = sanitize_column_names(df.columns)
    data = {}
    for position, name in enumerate(names):
        data[name] = pd.Series(_sanitize_values(df.iloc[:, position]), dtype=object)
    return pd.DataFrame(data, index=pd.RangeIndex(len(df)), columns=names)


# -------------------------------------------------------------------------------------------- types


def _decimal_type(values: Sequence[Decimal]) -> tuple[int, int]:
    scale, integer = 0, 1
    for value in values:
        _sign, digits, exponent = value.as_tuple()
        if not isinstance(exponent, int):  # NaN/Infinity never reach here (sanitized to None)
            continue
        scale = max(scale, -exponent)
        integer = max(integer, len(digits) + exponent)
    precision = min(38, integer + scale)
    return max(precision, 1), min(scale, precision)


def _sql_type(kind: str, values: Sequence[Any], dialect: Dialect) -> str:
    mssql, pg, sqlite = dialect == "mssql", dialect == "postgresql", dialect == "sqlite"
    if kind == "bool":
        return "BIT" if mssql else "BOOLEAN"
    if kind == "int":
        return "INTEGER" if sqlite else "BIGINT"
    if kind == "float":
        return "FLOAT" if mssql else ("REAL" if sqlite else "DOUBLE PRECISION")
    if kind == "decimal":
        precision, scale = _decimal_type([v for v in values if isinstance(v, Decimal)])
        # SQLite has no decimal storage; NUMERIC reads back as a number on both engines (DECIMAL as text).
        return f"NUMERIC({precision},{scale})" if sqlite else f"DECIMAL({precision},{scale})"
    if kind == "datetime":
        return "DATETIME2" if mssql else "TIMESTAMP"
    if kind == "date":
        return "DATE"
    if kind == "time":
        return "TIME"
    if kind == "bytes":
        return "VARBINARY(MAX)" if mssql else ("BYTEA" if pg else "BLOB")
    return "NVARCHAR(MAX)" if mssql else "TEXT"


def infer_sql_types(df: pd.DataFrame, dialect: Dialect = "generic") -> dict[str, str]:
    """Column → SQL type for a sanitized frame (all-NULL columns become text)."""
    types = {}
    for name in df.columns:
        values = [v for v in df[name].tolist() if v is not None]
        types[str(name)] = _sql_type(_column_kind(values), values, dialect)
    return types


# --------------------------------------------------------------------------------------------- load


@dataclass(frozen=True)
class LoadResult:
    """What load_to_stg_table did."""

    connection: str
    schema: str
    table: str
    mode: Mode
    rows: int
    columns: dict[str, str]
    created: bool
    added_columns: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"{self.schema}.{self.table}"


def _table_exists(handle: Handle, cursor: Any, schema: str, table: str) -> bool:
    dialect = handle.conn.dialect
    if dialect == "sqlite":
        cursor.execute(
            f'SELECT 1 FROM "{schema}".sqlite_master WHERE type = ? AND name = ?', ["table", table]
        )
    else:
        cursor.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        )
    return cursor.fetchone() is not None


def _existing_columns(cursor: Any, target: str) -> list[str]:
    cursor.execute(f"SELECT * FROM {target} WHERE 1 = 0")
    columns = [d[0] for d in cursor.description]
    cursor.fetchall()
    return columns


def _ensure_schema(handle: Handle, cursor: Any, schema: str) -> None:
    dialect = handle.conn.dialect
    q = quote_identifier(schema, dialect)
    if dialect == "sqlite":
        if schema != "main":
            attach_sqlite_schema(handle, cursor, schema)
    elif dialect == "postgresql":
        cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {q}")
    elif dialect == "mssql":
        cursor.execute(f"IF SCHEMA_ID(?) IS NULL EXEC('CREATE SCHEMA {q}')", [schema])


def _fast_executemany(conn: ResolvedConnection) -> bool:
    if conn.engine != "odbc" or conn.dialect == "sqlite":
        return False  # the SQLite ODBC driver crashes with parameter arrays
    configured = conn.config.fast_executemany
    return conn.dialect == "mssql" if configured is None else configured


def load_to_stg_table(
    context: Any,
    df: pd.DataFrame,
    target_table_name: str,
    *,
    schema: str = "stg",
    connection: str | SqlConnection | None = None,
    mode: Mode = "replace",
    batch_size: int = 1000,
    settings: OrchestratorSettings | None = None,
) -> LoadResult:
    """Write `df` into `<schema>.<target_table_name>` and report it as Dagster output metadata.

    `mode="replace"` drops and recreates the table with the frame's columns (so added or removed source
    columns follow the source); `mode="append"` creates it when missing, adds columns the frame has and the
    table lacks (nullable), and inserts the rows (columns the frame lacks stay NULL). Inserts go in
    batches of `batch_size`, with `fast_executemany` where the driver supports it (SQL Server). All in one
    transaction. `context` (an asset/op execution context, or None) receives `dagster/row_count`,
    `dagster/table_name`, `dagster/column_schema` and the target. Returns a LoadResult.
    """
    validate_identifier(target_table_name, "table name")
    validate_identifier(schema, "schema name")
    if mode not in ("replace", "append"):
        raise ValueError(f"mode must be 'replace' or 'append', got {mode!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    frame = sanitize_dataframe(df)
    if frame.shape[1] == 0:
        raise ValueError("the DataFrame has no columns to load")
    conn = resolve(connection, settings=settings, default=WAREHOUSE)
    dialect = conn.dialect
    types = infer_sql_types(frame, dialect)
    target = f"{quote_identifier(schema, dialect)}.{quote_identifier(target_table_name, dialect)}"
    started = time.monotonic()
    created, added = False, []
    with opened(conn, create=True) as handle:
        cursor = handle.cursor()
        try:
            _ensure_schema(handle, cursor, schema)
            handle.begin()
            exists = _table_exists(handle, cursor, schema, target_table_name)
            if exists and mode == "replace":
                cursor.execute(f"DROP TABLE {target}")
                exists = False
            if not exists:
                columns_sql = ", ".join(f"{quote_identifier(c, dialect)} {t}" for c, t in types.items())
                cursor.execute(f"CREATE TABLE {target} ({columns_sql})")
                created = True
            else:
                present = {c.lower() for c in _existing_columns(cursor, target)}
                for name, sql_type in types.items():
                    if name.lower() not in present:
                        cursor.execute(
                            f"ALTER TABLE {target} ADD {quote_identifier(name, dialect)} {sql_type}"
                        )
                        added.append(name)
            rows = _insert(handle, cursor, target, frame, batch_size)
            handle.commit()
        except (pyodbc.Error, sqlite3.Error) as exc:
            handle.rollback()
            raise handle.error(f"load into {schema}.{target_table_name}", exc) from None
        except BaseException:
            handle.rollback()
            raise
    result = LoadResult(
        connection=conn.name,
        schema=schema,
        table=target_table_name,
        mode=mode,
        rows=rows,
        columns=types,
        created=created,
        added_columns=added,
    )
    log.info(
        "sql.loaded",
        connection=conn.name,
        target=result.target,
        mode=mode,
        rows=rows,
        created=created,
        added_columns=added,
        seconds=round(time.monotonic() - started, 3),
    )
    if conn.name == INLINE:
        _inline_connections[(schema, target_table_name)] = conn.config
    _report(context, result)
    return result


def _insert(handle: Handle, cursor: Any, target: str, frame: pd.DataFrame, batch_size: int) -> int:
    if frame.empty:
        return 0
    dialect = handle.conn.dialect
    columns = ", ".join(quote_identifier(str(c), dialect) for c in frame.columns)
    markers = ", ".join("?" for _ in frame.columns)
    statement = f"INSERT INTO {target} ({columns}) VALUES ({markers})"
    if handle.is_odbc:
        cursor.fast_executemany = _fast_executemany(handle.conn)
    sqlite = dialect == "sqlite"
    total = 0
    rows = frame.itertuples(index=False, name=None)
    while True:
        batch = []
        for row in rows:
            batch.append([_sqlite_value(v) for v in row] if sqlite else list(row))
            if len(batch) >= batch_size:
                break
        if not batch:
            break
        cursor.executemany(statement, batch)
        total += len(batch)
    return total


def _sqlite_value(value: Any) -> Any:
    # SQLite stores what it is given: write the text forms both SQLite engines read back identically
    # (the ODBC driver would cut microseconds off bound datetimes).
    if isinstance(value, dt.datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
        return text + (f".{value.microsecond:06d}" if value.microsecond else "")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _report(context: Any, result: LoadResult) -> None:
    if context is None:
        return
    from dagster import MetadataValue, TableColumn, TableSchema

    schema = TableSchema(columns=[TableColumn(name=n, type=t) for n, t in result.columns.items()])
    metadata = {
        "dagster/row_count": MetadataValue.int(result.rows),
        "dagster/table_name": MetadataValue.text(result.target),
        "dagster/column_schema": MetadataValue.table_schema(schema),
        "target_table": MetadataValue.text(result.target),
        "target_connection": MetadataValue.text(result.connection),
        "load_mode": MetadataValue.text(result.mode),
    }
    if result.added_columns:
        metadata["added_columns"] = MetadataValue.text(", ".join(result.added_columns))
    context.add_output_metadata(metadata)


def read_stg_table(
    table_name: str,
    *,
    schema: str = "stg",
    connection: str | SqlConnection | None = None,
    settings: OrchestratorSettings | None = None,
) -> pd.DataFrame:
    """The rows of `<schema>.<table_name>` on the warehouse (or `connection`), typed as ingest_from_sql
    does."""
    validate_identifier(table_name, "table name")
    validate_identifier(schema, "schema name")
    conn = resolve(connection, settings=settings, default=WAREHOUSE)
    target = f"{quote_identifier(schema, conn.dialect)}.{quote_identifier(table_name, conn.dialect)}"
    return ingest_from_sql(connection=conn, query=f"SELECT * FROM {target}", settings=settings)
