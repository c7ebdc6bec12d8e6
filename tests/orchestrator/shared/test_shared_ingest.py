"""ingest_from_sql against real databases: SQLite through the SQLite3 ODBC driver and through the sqlite3
fallback (identical frames), PostgreSQL through `PostgreSQL Unicode`; retries, timeouts and errors."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import warnings
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pyodbc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.common.log import configure_logging
from orchestrator.settings import OrchestratorSettings, SqlConnection
from orchestrator.shared.ingest_utils import count_placeholders, ingest_from_sql
from orchestrator.shared.load_window import get_load_window
from orchestrator.shared.sql import SqlConnectionError, SqlError, SqlQueryError, resolve

WINDOW_QUERY = "SELECT * FROM orders WHERE created_date >= ? AND created_date < ? ORDER BY order_id"


def _fallback(settings: OrchestratorSettings) -> SqlConnection:
    return settings.connections["demo_source"].model_copy(update={"engine": "sqlite3"})


def test_window_query_through_the_sqlite_odbc_driver(
    shared_settings: OrchestratorSettings, demo_db: Path, demo_now: dt.datetime, sqlite_odbc: None
) -> None:
    assert resolve("demo_source", settings=shared_settings).engine == "odbc"
    start, end = get_load_window(now=demo_now, settings=shared_settings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pandas "only SQLAlchemy connectables" UserWarning
        df = ingest_from_sql(
            connection="demo_source", query=WINDOW_QUERY, params=[start, end], settings=shared_settings
        )
    assert len(df) > 0
    naive_start, naive_end = start.replace(tzinfo=None), end.replace(tzinfo=None)
    assert df["created_date"].min() >= naive_start and df["created_date"].max() < naive_end
    assert {
        "order_id": "Int64",
        "quantity": "Int64",
        "unit_price": "float64",
        "discount": "float64",
        "status": "string",
        "order_date": "object",
        "shipped_at": "datetime64[us]",
        "created_date": "datetime64[us]",
    }.items() <= df.dtypes.astype(str).to_dict().items()
    assert isinstance(df["order_date"].iloc[0], dt.date)
    assert df["discount"].isna().any() and df["shipped_at"].isna().any()  # NULLs
    # Same rows as a plain sqlite3 count of the window.
    import sqlite3

    with sqlite3.connect(demo_db) as raw:
        expected = raw.execute(
            "SELECT COUNT(*) FROM orders WHERE created_date >= ? AND created_date < ?",
            [naive_start.strftime("%Y-%m-%d %H:%M:%S"), naive_end.strftime("%Y-%m-%d %H:%M:%S")],
        ).fetchone()[0]
    assert len(df) == expected


def test_fallback_returns_identical_frames(
    shared_settings: OrchestratorSettings, demo_db: Path, demo_now: dt.datetime, sqlite_odbc: None
) -> None:
    start, end = get_load_window(now=demo_now, settings=shared_settings, lookback=dt.timedelta(days=5))
    queries = [
        (WINDOW_QUERY, [start, end]),
        ("SELECT * FROM customers ORDER BY customer_id", []),
        ("SELECT * FROM products WHERE unit_price > ? ORDER BY product_id", [Decimal("5.00")]),
        ("SELECT status, COUNT(*) AS n, SUM(quantity) AS q FROM orders GROUP BY status ORDER BY status", []),
    ]
    for query, params in queries:
        odbc = ingest_from_sql(connection="demo_source", query=query, params=params, settings=shared_settings)
        fallback = ingest_from_sql(
            connection=_fallback(shared_settings), query=query, params=params, settings=shared_settings
        )
        assert len(odbc) > 0
        pd.testing.assert_frame_equal(odbc, fallback)


def test_unicode_nulls_and_chunking(
    shared_settings: OrchestratorSettings, demo_db: Path, sqlite_odbc: None
) -> None:
    query = "SELECT customer_id, name, email, city, is_active FROM customers ORDER BY customer_id"
    whole = ingest_from_sql(connection="demo_source", query=query, settings=shared_settings)
    chunked = ingest_from_sql(connection="demo_source", query=query, chunk_size=7, settings=shared_settings)
    small_fetch = shared_settings.connections["demo_source"].model_copy(update={"fetch_size": 3})
    via_config = ingest_from_sql(connection=small_fetch, query=query, settings=shared_settings)
    pd.testing.assert_frame_equal(whole, chunked)
    pd.testing.assert_frame_equal(whole, via_config)
    assert len(whole) == 60
    names = "".join(whole["name"])
    assert any(ch in names for ch in "ëéøłüñ田Новак")
    assert whole["email"].isna().any() and whole["city"].isna().any()
    assert str(whole["is_active"].dtype) == "boolean"


def test_empty_result(shared_settings: OrchestratorSettings, demo_db: Path, sqlite_odbc: None) -> None:
    long_ago = [dt.datetime(1990, 1, 1), dt.datetime(1990, 1, 2)]
    for connection in ("demo_source", _fallback(shared_settings)):
        df = ingest_from_sql(
            connection=connection, query=WINDOW_QUERY, date_params=long_ago, settings=shared_settings
        )
        assert df.empty and list(df.columns)[:3] == ["order_id", "customer_id", "product_id"]


def test_values_only_travel_as_parameters(
    shared_settings: OrchestratorSettings, demo_db: Path, sqlite_odbc: None
) -> None:
    hostile = "x'; DROP TABLE orders; --"
    for connection in ("demo_source", _fallback(shared_settings)):
        df = ingest_from_sql(
            connection=connection,
            query="SELECT * FROM orders WHERE status = ?",
            params=[hostile],
            settings=shared_settings,
        )
        assert df.empty
        left = ingest_from_sql(
            connection=connection, query="SELECT COUNT(*) AS n FROM orders", settings=shared_settings
        )
        assert left["n"].iloc[0] == 300
    with pytest.raises(ValueError, match="1 `\\?` parameter marker"):
        ingest_from_sql(
            connection="demo_source", query="SELECT * FROM orders WHERE status = ?", settings=shared_settings
        )
    with pytest.raises(ValueError, match="more than one SQL statement"):
        ingest_from_sql(
            connection="demo_source", query="SELECT 1; DROP TABLE orders", settings=shared_settings
        )
    with pytest.raises(ValueError, match="not a string"):
        ingest_from_sql(connection="demo_source", query="SELECT ?", params="abc", settings=shared_settings)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        ingest_from_sql(
            connection="demo_source", query="SELECT ?", params=[1], date_params=[1], settings=shared_settings
        )


def test_count_placeholders() -> None:
    assert count_placeholders("SELECT * FROM t WHERE a = ? AND b = '?' AND \"c?\" = ? -- ?\n/* ? */") == 2
    assert count_placeholders("SELECT 'it''s ?' , [x?] FROM t WHERE y = ?;  ") == 1
    with pytest.raises(ValueError):
        count_placeholders("SELECT 1; SELECT 2")


@given(st.text(alphabet="ab?';\"-/*\n ", max_size=40))
def test_count_placeholders_never_crashes(query: str) -> None:
    try:
        assert count_placeholders(query) >= 0
    except ValueError as exc:
        assert "more than one" in str(exc)


def test_missing_file_is_not_created(shared_settings: OrchestratorSettings) -> None:
    missing = shared_settings.connections["demo_source"].model_copy(update={"database": "nope.db"})
    for engine in ("auto", "sqlite3"):
        with pytest.raises(SqlConnectionError, match=r"connection '\(inline\)'.*does not exist"):
            ingest_from_sql(
                connection=missing.model_copy(update={"engine": engine}),
                query="SELECT 1",
                settings=shared_settings,
            )
    assert not (shared_settings.dagster_home / "nope.db").exists()


def test_auto_engine_falls_back_when_the_driver_is_not_registered(
    shared_settings: OrchestratorSettings, demo_db: Path, tmp_path: Path
) -> None:
    """With an empty odbcinst.ini the same call and config read the file through sqlite3."""
    empty = tmp_path / "odbc"
    empty.mkdir()
    script = (
        "import json, sys\n"
        "from libs.common.settings import load_settings\n"
        "from orchestrator.settings import OrchestratorSettings\n"
        "from orchestrator.shared.ingest_utils import ingest_from_sql\n"
        "from orchestrator.shared.sql import resolve\n"
        "s = load_settings(OrchestratorSettings, dagster_home=sys.argv[1], logging={'file': None},\n"
        "                  connections={'demo_source': {'driver': 'SQLite3',\n"
        "                                               'database': 'demo_source.db'}})\n"
        "df = ingest_from_sql(connection='demo_source', query='SELECT * FROM orders WHERE quantity > ?',\n"
        "                     params=[3], settings=s)\n"
        "print(json.dumps({'engine': resolve('demo_source', settings=s).engine, 'rows': len(df),\n"
        "                  'dtypes': df.dtypes.astype(str).to_dict()}))\n"
    )
    env = {**os.environ, "ODBCSYSINI": str(empty), "ODBCINSTINI": "odbcinst.ini"}
    out = subprocess.run(
        [sys.executable, "-c", script, str(shared_settings.dagster_home)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["engine"] == "sqlite3"
    direct = ingest_from_sql(
        connection=_fallback(shared_settings),
        query="SELECT * FROM orders WHERE quantity > ?",
        params=[3],
        settings=shared_settings,
    )
    assert result["rows"] == len(direct) > 0
    assert result["dtypes"] == direct.dtypes.astype(str).to_dict()


def test_unknown_connection_and_missing_secret(
    shared_settings: OrchestratorSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SqlError, match=r"connection .nope. is not configured.*demo_source"):
        ingest_from_sql(connection="nope", query="SELECT 1", settings=shared_settings)
    monkeypatch.delenv("AMS_TEST_NO_SUCH_PASSWORD", raising=False)
    cfg = SqlConnection(
        driver="PostgreSQL Unicode",
        server="127.0.0.1",
        database="x",
        username="u",
        password_env="AMS_TEST_NO_SUCH_PASSWORD",
    )
    with pytest.raises(SqlError, match=r"AMS_TEST_NO_SUCH_PASSWORD .*is not set"):
        ingest_from_sql(connection=cfg, query="SELECT 1", settings=shared_settings)
    with pytest.raises(SqlConnectionError, match="ODBC driver 'No Such Driver' is not installed"):
        ingest_from_sql(
            connection=SqlConnection(driver="No Such Driver", server="h", database="d"),
            query="SELECT 1",
            settings=shared_settings,
        )


# --------------------------------------------------------------------------------------------- PostgreSQL


def _pg_exec(pg: SqlConnection, *statements: str) -> None:
    text = (
        f"DRIVER={{{pg.driver}}};SERVER={pg.server};PORT={pg.port};DATABASE={pg.database};UID={pg.username};"
    )
    with pyodbc.connect(text, autocommit=True) as raw:
        for statement in statements:
            raw.cursor().execute(statement)


def test_postgres_types_nulls_unicode_and_decimals(
    pg: SqlConnection, shared_settings: OrchestratorSettings
) -> None:
    _pg_exec(
        pg,
        "CREATE TABLE src (id bigint, name text, amount numeric(14,4), ratio double precision,"
        " active boolean, day date, created_at timestamp, note varchar(40))",
        "INSERT INTO src VALUES"
        " (1, 'Zoë Müller 田中 😀', 12345678.9012, 0.5, true, '2026-03-14',"
        " '2026-03-14 10:11:12.123456', NULL),"
        " (2, NULL, NULL, NULL, NULL, NULL, NULL, ''),"
        " (3, 'Łódź', -0.0001, 2, false, '2026-03-15', '2026-03-15 00:00:00', 'x')",
    )
    query = "SELECT * FROM src WHERE created_at >= ? AND created_at < ? OR created_at IS NULL ORDER BY id"
    start = dt.datetime(2026, 3, 14, tzinfo=dt.UTC)
    df = ingest_from_sql(
        connection=pg,
        query=query,
        date_params=[start, start + dt.timedelta(days=1)],
        settings=shared_settings,
    )
    assert df["id"].tolist() == [1, 2]
    assert df.dtypes.astype(str).to_dict() == {
        "id": "Int64",
        "name": "string",
        "amount": "object",
        "ratio": "float64",
        "active": "boolean",
        "day": "object",
        "created_at": "datetime64[us]",
        "note": "string",
    }
    first, second = df.iloc[0], df.iloc[1]
    assert first["name"] == "Zoë Müller 田中 😀"
    assert first["amount"] == Decimal("12345678.9012") and isinstance(first["amount"], Decimal)
    assert first["day"] == dt.date(2026, 3, 14)
    assert first["created_at"] == pd.Timestamp("2026-03-14 10:11:12.123456")
    assert bool(first["active"]) is True
    assert pd.isna(first["note"]) and second["note"] == ""
    assert pd.isna(second["name"]) and second["amount"] is None and pd.isna(second["created_at"])
    # An empty result keeps the driver's column types.
    empty = ingest_from_sql(
        connection=pg, query="SELECT * FROM src WHERE id < ?", params=[0], settings=shared_settings
    )
    assert empty.empty
    assert empty.dtypes.astype(str).to_dict() == {
        "id": "Int64",
        "name": "string",
        "amount": "object",
        "ratio": "float64",
        "active": "boolean",
        "day": "object",
        "created_at": "datetime64[us]",
        "note": "string",
    }


def test_adhoc_server_and_database_use_the_default_profile(
    pg: SqlConnection, shared_settings: OrchestratorSettings, demo_now: dt.datetime
) -> None:
    """The README's form: ingest_from_sql(sql_server=..., sql_database=..., query=..., date_params=[...])."""
    _pg_exec(
        pg,
        "CREATE TABLE t (id int, created_date timestamp)",
        "INSERT INTO t VALUES (1, '2026-03-14 08:00'), (2, '2026-03-13 08:00')",
    )
    profile = pg.model_copy(update={"server": None, "database": None})
    configured = shared_settings.model_copy(
        update={"connections": {**shared_settings.connections, "default": profile}}
    )
    start, end = get_load_window(now=demo_now, settings=configured)
    df = ingest_from_sql(
        sql_server=pg.server,
        sql_database=pg.database,
        query="SELECT * FROM t WHERE created_date >= ? AND created_date < ?",
        date_params=[start, end],
        settings=configured,
    )
    assert df["id"].tolist() == [1]


def test_query_timeout(pg: SqlConnection, shared_settings: OrchestratorSettings, demo_db: Path) -> None:
    with pytest.raises(SqlQueryError, match=r"query on connection .\(inline\).*(timeout|cancel)"):
        ingest_from_sql(
            connection=pg.model_copy(update={"query_timeout_s": 1}),
            query="SELECT pg_sleep(10)",
            settings=shared_settings,
        )
    slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"
    fallback = _fallback(shared_settings).model_copy(update={"query_timeout_s": 1})
    with pytest.raises(SqlQueryError, match="interrupted"):
        ingest_from_sql(connection=fallback, query=slow, settings=shared_settings)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_transient_errors_are_retried_then_fail_naming_the_connection(
    pg: SqlConnection,
    shared_settings: OrchestratorSettings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("AMS_TEST_PG_PASSWORD", "s3cr3t-Pa55word")
    configure_logging(shared_settings)  # structlog through the standard library, where caplog listens
    down = pg.model_copy(
        update={
            "port": _closed_port(),
            "retries": 2,
            "retry_backoff_s": 0.01,
            "password_env": "AMS_TEST_PG_PASSWORD",
            "authentication": "sql",
        }
    )
    configured = shared_settings.model_copy(update={"connections": {"erp": down}})
    with pytest.raises(SqlConnectionError) as caught:
        ingest_from_sql(connection="erp", query="SELECT 1", settings=configured)
    error = caught.value
    assert error.attempts == 3 and error.connection == "erp"
    assert str(error).startswith("connection 'erp' (ODBC driver 'PostgreSQL Unicode', server 127.0.0.1:")
    assert "after 3 attempts" in str(error) and "refused" in str(error).lower()
    assert "s3cr3t-Pa55word" not in str(error) and "s3cr3t-Pa55word" not in repr(error.__context__)
    # Read through the root logger, whichever handlers earlier tests configured.
    retries = [r for r in caplog.records if "sql.connect_retry" in r.getMessage()]
    assert len(retries) == 2
    assert all("s3cr3t-Pa55word" not in r.getMessage() for r in caplog.records)
    # A permanent error (no such database) fails at once.
    missing_db = pg.model_copy(update={"database": "ams_no_such_db", "retries": 5, "retry_backoff_s": 0.01})
    with pytest.raises(SqlConnectionError, match="does not exist") as caught:
        ingest_from_sql(connection=missing_db, query="SELECT 1", settings=shared_settings)
    assert caught.value.attempts == 1


def test_query_errors_name_the_connection(
    shared_settings: OrchestratorSettings, demo_db: Path, sqlite_odbc: None
) -> None:
    for connection, name in (("demo_source", "demo_source"), (_fallback(shared_settings), "(inline)")):
        with pytest.raises(
            SqlQueryError, match=f"query on connection {re.escape(repr(name))}.*no_such_table"
        ) as caught:
            ingest_from_sql(
                connection=connection, query="SELECT * FROM no_such_table", settings=shared_settings
            )
        assert caught.value.connection == name


def test_connection_strings_from_config(
    shared_settings: OrchestratorSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.shared.sql import connection_string, scrub

    monkeypatch.setenv("AMS_TEST_MSSQL_PASSWORD", "p;w{x}=")
    sql_auth = SqlConnection(
        server="db.internal", port=1433, database="Sales DB", username="etl",
        password_env="AMS_TEST_MSSQL_PASSWORD", options={"Encrypt": "yes"},
    )  # fmt: skip
    text, password = connection_string(resolve(sql_auth, settings=shared_settings))
    assert password == "p;w{x}="
    assert text == (
        "DRIVER={ODBC Driver 18 for SQL Server};SERVER=db.internal,1433;DATABASE={Sales DB};UID=etl;"
        "PWD={p;w{x}}=};Encrypt=yes;"
    )
    assert "p;w" not in scrub(f"failed with {text}", password)
    trusted = SqlConnection(server="db", database="d", authentication="trusted")
    assert "Trusted_Connection=yes" in connection_string(resolve(trusted, settings=shared_settings))[0]
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    pg_file = SqlConnection(driver="PostgreSQL Unicode", server="h", port=5433, database="d", username="u",
                            password_file=secret_file)  # fmt: skip
    text, password = connection_string(resolve(pg_file, settings=shared_settings))
    assert password == "from-file"
    assert (
        text == "DRIVER={PostgreSQL Unicode};SERVER=h;PORT=5433;DATABASE=d;BoolsAsChar=0;UID=u;PWD=from-file;"
    )
    sqlite = resolve("demo_source", settings=shared_settings)
    text, _ = connection_string(sqlite)
    assert text.startswith(
        f"DRIVER={{SQLite3}};Database={shared_settings.dagster_home / 'demo_source.db'};BigInt=1;"
    )
    assert "NoCreat=1" in text and "NoCreat" not in connection_string(sqlite, create=True)[0]


def test_connection_string_template(
    pg: SqlConnection, shared_settings: OrchestratorSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMS_TEST_PG_TEMPLATE_PW", "unused-by-trust")
    templated = pg.model_copy(
        update={
            "connection_string": "DRIVER={PostgreSQL Unicode};SERVER=${server};PORT=${port};"
            "DATABASE=${database};UID=${username};PWD=${password};BoolsAsChar=0;",
            "password_env": "AMS_TEST_PG_TEMPLATE_PW",
        }
    )
    df = ingest_from_sql(
        connection=templated,
        query="SELECT ? AS greeting, true AS yes",
        params=["grüß dich"],
        settings=shared_settings,
    )
    assert df["greeting"].tolist() == ["grüß dich"] and df["yes"].tolist() == [True]
    broken = templated.model_copy(update={"connection_string": "DRIVER=${drvier};"})
    with pytest.raises(SqlError, match="unknown placeholder"):
        ingest_from_sql(connection=broken, query="SELECT 1", settings=shared_settings)


def test_odd_file_paths(
    tmp_path: Path, shared_settings: OrchestratorSettings, demo_now: dt.datetime, sqlite_odbc: None
) -> None:
    from orchestrator.shared.demo_source import create_demo_source

    odd = create_demo_source(tmp_path / "dir with space ?#%={x}" / "söurce db.db", rows=20, now=demo_now)
    for engine in ("odbc", "sqlite3"):
        cfg = SqlConnection(driver="SQLite3", database=str(odd), engine=engine)  # type: ignore[arg-type]
        df = ingest_from_sql(
            connection=cfg, query="SELECT COUNT(*) AS n FROM orders", settings=shared_settings
        )
        assert df["n"].tolist() == [20]
    # The ODBC driver would cut the path at ';' and open another file: refused; sqlite3 reads it fine.
    semi = create_demo_source(tmp_path / "a;b" / "src.db", rows=5, now=demo_now)
    with pytest.raises(SqlError, match="cannot open a path containing ';'"):
        ingest_from_sql(connection=SqlConnection(driver="SQLite3", database=str(semi)), query="SELECT 1",
                        settings=shared_settings)  # fmt: skip
    assert not (tmp_path / "a").exists()
    fallback = SqlConnection(driver="SQLite3", database=str(semi), engine="sqlite3")
    assert ingest_from_sql(
        connection=fallback, query="SELECT COUNT(*) AS n FROM orders", settings=shared_settings
    )["n"].tolist() == [5]
