"""The seed's three asset examples, verbatim (tests/seed_examples/), materialize over real ODBC.

Its ingestion reads `sql_server='MY_SERVER', sql_database='MY_DATABASE'` (a configured connection with that
server and database), its loader writes a staging table with `load_to_stg_table` and returns nothing, and
its transformation takes the loader's output as a DataFrame: the staging table's rows.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, Definitions, asset, instance_for_test

from orchestrator.definitions import build_definitions
from orchestrator.loader import ScanResult
from orchestrator.settings import SqlConnection, get_settings
from orchestrator.shared.load_to_sql_utils import SqlError, load_to_stg_table, read_stg_table
from orchestrator.shared.load_window import get_load_window
from tests.orchestrator.shared.conftest import require_driver

SEED = Path(__file__).resolve().parents[1] / "seed_examples" / "assets"
SEED_FILES = (
    "ingestion/my_new_data_ingestion.py",
    "loaders/my_new_data_loader.py",
    "my_new_data_transform.py",
)
ROWS = 40


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"seed_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def create_source(path: Path, rows: int) -> None:
    """`my_source_table` with `rows` rows inside the current load window (and two outside it)."""
    get_settings.cache_clear()
    start, end = get_load_window()
    step = (end - start) / (rows + 1)
    moments = [start + step * (i + 1) for i in range(rows)] + [
        start - dt.timedelta(days=3),
        end + dt.timedelta(days=3),
    ]
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE my_source_table (id INTEGER PRIMARY KEY, name TEXT, amount REAL, "
            "created_date TIMESTAMP NOT NULL)"
        )
        db.executemany(
            "INSERT INTO my_source_table VALUES (?, ?, ?, ?)",
            [
                (
                    i,
                    f"item {i}",
                    i * 1.5,
                    m.astimezone(dt.UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S"),
                )
                for i, m in enumerate(moments)
            ],
        )


@pytest.fixture
def seed_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DagsterInstance]:
    """DAGSTER_HOME in tmp_path; `MY_SERVER`/`MY_DATABASE` and the warehouse on the SQLite3 ODBC driver."""
    require_driver("SQLite3")
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("AMS_LOGGING__FILE", "")
    monkeypatch.setenv(
        "AMS_CONNECTIONS",
        json.dumps(
            {
                # what a user adds to app_config.yaml for the seed's sql_server=/sql_database= call
                "my_source": {
                    "driver": "SQLite3",
                    "server": "MY_SERVER",
                    "database": "MY_DATABASE",
                    "engine": "odbc",
                },
                "warehouse": {"driver": "SQLite3", "database": "warehouse.db", "engine": "odbc"},
            }
        ),
    )
    monkeypatch.setenv("AMS_LOAD_WINDOW__TIMEZONE", "UTC")
    create_source(home / "MY_DATABASE", ROWS)
    get_settings.cache_clear()
    with instance_for_test(temp_dir=str(home)) as instance:
        yield instance
    get_settings.cache_clear()


def test_the_seed_examples_materialize_verbatim(seed_instance: DagsterInstance) -> None:
    modules = [load_module(SEED / name) for name in SEED_FILES]
    assets = [a for m in modules for a in m.all_assets]
    defs = build_definitions(ScanResult(package="seed", root=SEED, assets=assets), sensors=[])
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(instance=seed_instance)
    assert result.success

    # the loader returned nothing: its value is the staging table, which the transformation received
    staged = read_stg_table("my_new_data_staging")
    assert len(staged) == ROWS
    transformed = result.output_for_node("transformed_my_new_data")
    assert isinstance(transformed, pd.DataFrame)
    assert len(transformed) == ROWS
    assert {"processed_date", "record_count"} <= set(transformed.columns)
    assert sorted(transformed["id"].tolist()) == sorted(staged["id"].tolist())

    for key, rows in (
        ("raw_my_new_data", ROWS),
        ("stg_my_new_data", ROWS),
        ("transformed_my_new_data", ROWS),
    ):
        record = seed_instance.fetch_materializations(AssetKey(key), limit=1).records[0]
        metadata = record.asset_materialization.metadata  # type: ignore[union-attr]
        assert metadata["dagster/row_count"].value == rows, key
        assert metadata["dagster/column_schema"].value.columns, key
    loader = seed_instance.fetch_materializations(AssetKey("stg_my_new_data"), limit=1).records[0]
    assert loader.asset_materialization.metadata["dagster/table_name"].value == "stg.my_new_data_staging"  # type: ignore[union-attr]


@asset
def frame_source() -> pd.DataFrame:
    return pd.DataFrame({"n": [1, 2, 3]})


@asset
def returns_its_frame(context, frame_source: pd.DataFrame) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """Loads a staging table and returns a different frame: the returned frame is the value."""
    load_to_stg_table(context=context, df=frame_source, target_table_name="returned_staging")
    return frame_source.assign(n=frame_source["n"] * 10)


@asset
def reads_returned(returns_its_frame: pd.DataFrame) -> pd.DataFrame:
    return returns_its_frame


def test_a_loader_that_returns_its_dataframe_hands_on_that_dataframe(seed_instance: DagsterInstance) -> None:
    assets = [frame_source, returns_its_frame, reads_returned]
    defs: Definitions = build_definitions(ScanResult(package="t", root=SEED, assets=assets), sensors=[])
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(instance=seed_instance)
    assert result.success
    assert result.output_for_node("reads_returned")["n"].tolist() == [10, 20, 30]


INLINE_DB = "inline_target.db"  # not the warehouse: the downstream step must read where the loader wrote


@asset
def inline_loader(context, frame_source: pd.DataFrame):  # type: ignore[no-untyped-def]  # no -> None: Dagster would make its output Nothing
    """The seed's loader style, with a SqlConnection object instead of a configured name."""
    connection = SqlConnection(driver="SQLite3", database=INLINE_DB, engine="odbc", password_env="INLINE_PW")
    load_to_stg_table(
        context=context, df=frame_source, target_table_name="inline_staging", connection=connection
    )


@asset
def reads_inline(inline_loader: pd.DataFrame) -> pd.DataFrame:
    return inline_loader


def test_a_loader_with_an_inline_connection_hands_on_its_table(
    seed_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INLINE_PW", "from-the-environment")  # the downstream step resolves it again
    assets = [frame_source, inline_loader, reads_inline]
    defs = build_definitions(ScanResult(package="t", root=SEED, assets=assets), sensors=[])
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(instance=seed_instance)
    assert result.success
    assert result.output_for_node("reads_inline")["n"].tolist() == [1, 2, 3]
    with pytest.raises(SqlError):  # the rows are in the inline connection's database, not the warehouse
        read_stg_table("inline_staging")


@asset
def inline_loader_with_password(context, frame_source: pd.DataFrame):  # type: ignore[no-untyped-def]
    connection = SqlConnection(driver="SQLite3", database=INLINE_DB, engine="odbc", password="s3cret")
    load_to_stg_table(
        context=context, df=frame_source, target_table_name="secret_staging", connection=connection
    )


@asset
def reads_secret(inline_loader_with_password: pd.DataFrame) -> pd.DataFrame:
    return inline_loader_with_password


def test_an_inline_literal_password_is_never_stored_and_the_reader_says_what_to_do(
    seed_instance: DagsterInstance,
) -> None:
    assets = [frame_source, inline_loader_with_password, reads_secret]
    defs = build_definitions(ScanResult(package="t", root=SEED, assets=assets), sensors=[])
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=seed_instance, raise_on_error=False
    )
    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert [e.step_key for e in failures] == ["reads_secret"]
    message = failures[0].step_failure_data.error.to_string()  # type: ignore[union-attr]  # with its cause
    assert "literal password" in message and "password_env" in message
    stored = Path(seed_instance.storage_directory()) / "inline_loader_with_password"
    assert stored.exists() and b"s3cret" not in stored.read_bytes()
