"""sanitize_dataframe (properties) and load_to_stg_table on real databases: SQLite through the SQLite3 ODBC
driver and the sqlite3 fallback, PostgreSQL through `PostgreSQL Unicode`; metadata on a real Dagster run."""

from __future__ import annotations

import datetime as dt
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, TableSchema, asset, materialize
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.settings import OrchestratorSettings, SqlConnection
from orchestrator.shared.ingest_utils import ingest_from_sql
from orchestrator.shared.load_to_sql_utils import (
    IDENTIFIER,
    infer_sql_types,
    load_to_stg_table,
    read_stg_table,
    sanitize_column_names,
    sanitize_dataframe,
    validate_identifier,
)
from orchestrator.shared.sql import SqlQueryError, resolve


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Order ID": pd.array([1, 2, None], dtype="Int64"),
            "Customer Name": ["Zoë Müller 😀", None, ""],
            "amount": [Decimal("12345.6789"), None, Decimal("-0.0001")],
            "Created At": pd.to_datetime(["2026-03-14 10:11:12.123456", None, "2026-03-15 00:00:00.000000"]),
            "day": [dt.date(2026, 3, 14), None, dt.date(2026, 3, 15)],
            "active": pd.array([True, None, False], dtype="boolean"),
            "ratio": [0.5, np.nan, 2.0],
        }
    )


EXPECTED = {
    "order_id": [1, 2, None],
    "customer_name": ["Zoë Müller 😀", None, ""],
    "created_at": [dt.datetime(2026, 3, 14, 10, 11, 12, 123456), None, dt.datetime(2026, 3, 15)],
    "day": [dt.date(2026, 3, 14), None, dt.date(2026, 3, 15)],
    "active": [True, None, False],
    "ratio": [0.5, None, 2.0],
}


def _plain(df: pd.DataFrame) -> dict[str, list[Any]]:
    """Column → Python values with every kind of missing value as None."""
    out = {}
    for name in df.columns:
        values = []
        for value in df[name].tolist():
            if (
                value is None
                or value is pd.NA
                or value is pd.NaT
                or (isinstance(value, float) and np.isnan(value))
            ):
                values.append(None)
            elif isinstance(value, pd.Timestamp):
                values.append(value.to_pydatetime())
            else:
                values.append(value)
        out[str(name)] = values
    return out


# ------------------------------------------------------------------------------------------- sanitize


def test_sanitize_examples() -> None:
    frame = sanitize_dataframe(_frame())
    assert list(frame.columns) == [
        "order_id",
        "customer_name",
        "amount",
        "created_at",
        "day",
        "active",
        "ratio",
    ]
    assert all(str(t) == "object" for t in frame.dtypes)
    assert _plain(frame) == {**EXPECTED, "amount": [Decimal("12345.6789"), None, Decimal("-0.0001")]}
    assert type(frame["order_id"][0]) is int and type(frame["active"][0]) is bool
    mixed = sanitize_dataframe(
        pd.DataFrame(
            {
                "when": [pd.Timestamp("2026-01-01 12:00", tz="Europe/Berlin"), pd.NaT],
                "n": [np.int64(3), np.float64(1.5)],
                "blob": [bytearray(b"\x00\x01"), None],
                "json": [{"a": 1}, [1, "ü"]],
                "mixed": [1, "x"],
                "took": [pd.Timedelta(seconds=90), None],
                "nan_decimal": [Decimal("NaN"), Decimal("1")],
            }
        )
    )
    assert _plain(mixed) == {
        "when": [dt.datetime(2026, 1, 1, 11, 0), None],  # aware → naive UTC
        "n": [3.0, 1.5],
        "blob": [b"\x00\x01", None],
        "json": ['{"a": 1}', '[1, "ü"]'],
        "mixed": ["1", "x"],
        "took": [90.0, None],
        "nan_decimal": [None, Decimal("1")],
    }


def test_column_names() -> None:
    assert sanitize_column_names(
        ["Order ID", "order id", "ORDER_ID", "1st", "", "naïve café", "名前", "a-b.c", ("x", "y")]
    ) == [
        "order_id", "order_id_2", "order_id_3", "c_1st", "column", "naive_cafe", "column_2", "a_b_c", "x_y",
    ]  # fmt: skip
    assert sanitize_column_names(["x" * 80, "x" * 70]) == ["x" * 63, "x" * 61 + "_2"]


@given(st.lists(st.one_of(st.text(max_size=70), st.integers()), max_size=12))
def test_column_names_are_safe_unique_and_stable(columns: list[Any]) -> None:
    names = sanitize_column_names(columns)
    assert len(names) == len(columns)
    assert all(IDENTIFIER.fullmatch(n) and n == n.lower() for n in names)
    assert len({n.lower() for n in names}) == len(names)
    assert sanitize_column_names(names) == names


cells = st.one_of(
    st.none(),
    st.just(float("nan")),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=True, allow_infinity=False),
    st.text(max_size=8),
    st.booleans(),
    st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-(10**6), max_value=10**6),
    st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2100, 1, 1)),
    st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2100, 1, 1)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(cells, min_size=3, max_size=3), max_size=6), st.sampled_from(["object", "infer"]))
def test_sanitize_is_idempotent_and_null_free(rows: list[list[Any]], how: str) -> None:
    df = pd.DataFrame(rows, columns=["A", "a", "b c"], dtype=object if how == "object" else None)
    once = sanitize_dataframe(df)
    twice = sanitize_dataframe(once)
    assert list(once.columns) == ["a", "a_2", "b_c"]
    assert _plain(once) == _plain(twice) and list(twice.columns) == list(once.columns)
    for name in once.columns:
        values = once[name].tolist()
        assert not any(v is pd.NA or v is pd.NaT or (isinstance(v, float) and np.isnan(v)) for v in values)
        kinds = {type(v) for v in values if v is not None}
        assert len(kinds) <= 1 or kinds <= {int, float}  # one Python type per column
    infer_sql_types(once, "postgresql")


# ----------------------------------------------------------------------------------------- identifiers

BAD_NAMES = [
    "x; DROP TABLE y",
    'a"b',
    "a]b",
    "",
    "1abc",
    "a b",
    "a-b",
    "stg.orders",
    "ä",
    "x" * 64,
    "t--",
    "t/*",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_identifiers_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="invalid table name"):
        validate_identifier(name, "table name")


def test_injection_attempt_is_never_executed(
    shared_settings: OrchestratorSettings, sqlite_odbc: None
) -> None:
    victim = pd.DataFrame({"id": [1, 2, 3]})
    load_to_stg_table(None, victim, "y", settings=shared_settings)
    for table, schema in [
        ("x; DROP TABLE y", "stg"),
        ('a"b', "stg"),
        ("ok", 'stg"; DROP TABLE y; --'),
        ("y", "stg "),
    ]:
        with pytest.raises(ValueError, match=r"invalid (table|schema) name"):
            load_to_stg_table(
                None, victim.head(1), table, schema=schema, mode="replace", settings=shared_settings
            )
    assert read_stg_table("y", settings=shared_settings)["id"].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="invalid table name"):
        read_stg_table("y; DROP TABLE y", settings=shared_settings)


# ------------------------------------------------------------------------------------------------ SQLite


def _round_trip(settings_: OrchestratorSettings, connection: str | SqlConnection | None) -> None:
    result = load_to_stg_table(None, _frame(), "orders_staging", connection=connection, settings=settings_)
    assert (result.rows, result.created, result.target) == (3, True, "stg.orders_staging")
    back = read_stg_table("orders_staging", connection=connection, settings=settings_)
    plain = _plain(back)
    assert {k: plain[k] for k in EXPECTED} == EXPECTED
    return None


def test_sqlite_odbc_round_trip(shared_settings: OrchestratorSettings, sqlite_odbc: None) -> None:
    assert resolve("warehouse", settings=shared_settings).engine == "odbc"
    _round_trip(shared_settings, None)
    back = read_stg_table("orders_staging", settings=shared_settings)
    assert back["amount"].tolist()[0] == pytest.approx(12345.6789)  # SQLite stores decimals as REAL
    # The stg schema is its own file next to the warehouse, readable with plain sqlite3 too.
    stg = shared_settings.dagster_home / "warehouse.stg.db"
    with sqlite3.connect(stg) as raw:
        assert raw.execute("SELECT COUNT(*) FROM orders_staging").fetchone()[0] == 3


def test_sqlite_fallback_writes_what_odbc_writes(
    shared_settings: OrchestratorSettings, sqlite_odbc: None
) -> None:
    fallback = SqlConnection(driver="SQLite3", database="warehouse_fb.db", engine="sqlite3")
    _round_trip(shared_settings, fallback)
    _round_trip(shared_settings, None)
    via_fallback = read_stg_table("orders_staging", connection=fallback, settings=shared_settings)
    via_odbc = read_stg_table("orders_staging", settings=shared_settings)
    pd.testing.assert_frame_equal(via_fallback, via_odbc)
    # And each engine reads the other's file identically.
    cross = fallback.model_copy(update={"database": "warehouse.db"})
    pd.testing.assert_frame_equal(
        read_stg_table("orders_staging", connection=cross, settings=shared_settings), via_odbc
    )


def test_replace_append_and_schema_changes(shared_settings: OrchestratorSettings, sqlite_odbc: None) -> None:
    first = pd.DataFrame({"id": [1, 2], "name": ["a", "b"], "old": [1.0, 2.0]})
    load_to_stg_table(None, first, "evolving", settings=shared_settings)
    appended = load_to_stg_table(
        None, pd.DataFrame({"id": [3], "name": ["c"], "new_col": ["x"]}), "evolving", mode="append",
        batch_size=1, settings=shared_settings,
    )  # fmt: skip
    assert (appended.created, appended.added_columns, appended.rows) == (False, ["new_col"], 1)
    back = read_stg_table("evolving", settings=shared_settings)
    assert list(back.columns) == ["id", "name", "old", "new_col"]
    assert _plain(back) == {
        "id": [1, 2, 3], "name": ["a", "b", "c"], "old": [1.0, 2.0, None], "new_col": [None, None, "x"],
    }  # fmt: skip
    replaced = load_to_stg_table(
        None, pd.DataFrame({"id": [9]}), "evolving", mode="replace", settings=shared_settings
    )
    assert replaced.created and _plain(read_stg_table("evolving", settings=shared_settings)) == {"id": [9]}
    # An empty frame still creates the table (with its columns) and loads nothing.
    empty = load_to_stg_table(
        None, pd.DataFrame({"id": pd.Series([], dtype="Int64")}), "empty_t", settings=shared_settings
    )
    assert empty.rows == 0 and read_stg_table("empty_t", settings=shared_settings).empty
    with pytest.raises(ValueError, match="mode must be"):
        load_to_stg_table(None, first, "evolving", mode="upsert", settings=shared_settings)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no columns"):
        load_to_stg_table(None, pd.DataFrame(), "evolving", settings=shared_settings)


def test_load_many_rows_in_batches(shared_settings: OrchestratorSettings, sqlite_odbc: None) -> None:
    n = 2500
    df = pd.DataFrame({"id": range(n), "label": [f"row {i} ü" for i in range(n)]})
    for connection in (None, SqlConnection(driver="SQLite3", database="warehouse.db", engine="sqlite3")):
        result = load_to_stg_table(
            None, df, "big", connection=connection, batch_size=700, settings=shared_settings
        )
        assert result.rows == n
        back = read_stg_table("big", connection=connection, settings=shared_settings)
        assert back["id"].tolist() == list(range(n)) and back["label"].iloc[-1] == f"row {n - 1} ü"


def test_metadata_on_a_real_materialization(shared_settings: OrchestratorSettings, sqlite_odbc: None) -> None:
    @asset
    def stg_probe(context) -> None:  # type: ignore[no-untyped-def]
        load_to_stg_table(context=context, df=sanitize_dataframe(_frame()), target_table_name="probe_staging",
                          settings=shared_settings)  # fmt: skip

    with DagsterInstance.ephemeral() as instance:
        assert materialize([stg_probe], instance=instance).success
        event = instance.get_latest_materialization_event(stg_probe.key)
        assert event is not None and event.asset_materialization is not None
        metadata = event.asset_materialization.metadata
    assert metadata["dagster/row_count"].value == 3
    assert metadata["target_table"].value == "stg.probe_staging"
    assert metadata["dagster/table_name"].value == "stg.probe_staging"
    schema = metadata["dagster/column_schema"].value
    assert isinstance(schema, TableSchema)
    assert {c.name: c.type for c in schema.columns} == {
        "order_id": "INTEGER", "customer_name": "TEXT", "amount": "NUMERIC(9,4)", "created_at": "TIMESTAMP",
        "day": "DATE", "active": "BOOLEAN", "ratio": "REAL",
    }  # fmt: skip


# --------------------------------------------------------------------------------------------- PostgreSQL


def test_postgres_round_trip_exact_decimals(pg: SqlConnection, shared_settings: OrchestratorSettings) -> None:
    _round_trip(shared_settings, pg)
    back = read_stg_table("orders_staging", connection=pg, settings=shared_settings)
    assert back["amount"].tolist() == [Decimal("12345.6789"), None, Decimal("-0.0001")]
    types = ingest_from_sql(
        connection=pg,
        query="SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        params=["stg", "orders_staging"],
        settings=shared_settings,
    )
    assert dict(zip(types["column_name"], types["data_type"], strict=True)) == {
        "order_id": "bigint", "customer_name": "text", "amount": "numeric",
        "created_at": "timestamp without time zone", "day": "date", "active": "boolean",
        "ratio": "double precision",
    }  # fmt: skip


def test_postgres_append_replace_and_atomic_failure(
    pg: SqlConnection, shared_settings: OrchestratorSettings
) -> None:
    load_to_stg_table(
        None, pd.DataFrame({"id": [1, 2], "name": ["a", "ü"]}), "t", connection=pg, settings=shared_settings
    )
    load_to_stg_table(None, pd.DataFrame({"id": [3], "extra": [True]}), "t", connection=pg, mode="append",
                      settings=shared_settings)  # fmt: skip
    assert _plain(read_stg_table("t", connection=pg, settings=shared_settings)) == {
        "id": [1, 2, 3], "name": ["a", "ü", None], "extra": [None, None, True],
    }  # fmt: skip
    # A failing append (text into a bigint column) rolls back entirely: no added column, no rows.
    bad = pd.DataFrame({"id": ["not a number"] * 5, "another": [1] * 5})
    with pytest.raises(SqlQueryError, match=r"load into stg\.t on connection '\(inline\)'"):
        load_to_stg_table(
            None, bad, "t", connection=pg, mode="append", batch_size=2, settings=shared_settings
        )
    after = read_stg_table("t", connection=pg, settings=shared_settings)
    assert list(after.columns) == ["id", "name", "extra"] and len(after) == 3
    load_to_stg_table(
        None, pd.DataFrame({"only": ["x"]}), "t", connection=pg, mode="replace", settings=shared_settings
    )
    assert _plain(read_stg_table("t", connection=pg, settings=shared_settings)) == {"only": ["x"]}


def test_postgres_injection_attempt_leaves_the_table(
    pg: SqlConnection, shared_settings: OrchestratorSettings
) -> None:
    load_to_stg_table(None, pd.DataFrame({"id": [1]}), "y", connection=pg, settings=shared_settings)
    with pytest.raises(ValueError, match="invalid table name"):
        load_to_stg_table(None, pd.DataFrame({"id": [2]}), 'x"; DROP TABLE stg.y; --', connection=pg,
                          settings=shared_settings)  # fmt: skip
    # Hostile *values* are just data.
    hostile = pd.DataFrame({"id": [2], "note": ["'); DROP TABLE stg.y; --"]})
    load_to_stg_table(None, hostile, "y", connection=pg, mode="append", settings=shared_settings)
    assert _plain(read_stg_table("y", connection=pg, settings=shared_settings)) == {
        "id": [1, 2], "note": [None, "'); DROP TABLE stg.y; --"],
    }  # fmt: skip


def test_fast_executemany_choice(shared_settings: OrchestratorSettings, tmp_path: Path) -> None:
    from orchestrator.shared.load_to_sql_utils import _fast_executemany

    def choice(**fields: Any) -> bool:
        return _fast_executemany(resolve(SqlConnection(**fields), settings=shared_settings))

    assert choice(driver="ODBC Driver 18 for SQL Server", server="s", database="d")
    assert not choice(driver="PostgreSQL Unicode", server="s", database="d")
    assert choice(driver="PostgreSQL Unicode", server="s", database="d", fast_executemany=True)
    assert not choice(driver="SQLite3", database="w.db", fast_executemany=True)  # would crash the driver
