"""create_demo_source: a deterministic, realistic SQLite source that the README-style assets ingest."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from orchestrator.settings import OrchestratorSettings
from orchestrator.shared.demo_source import create_demo_source, default_demo_source_path
from orchestrator.shared.ingest_utils import ingest_from_sql
from orchestrator.shared.load_to_sql_utils import load_to_stg_table, read_stg_table, sanitize_dataframe
from orchestrator.shared.load_window import get_load_window


def _dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(path) as raw:
        return {
            t: raw.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("customers", "products", "orders")
        }


def test_contents(tmp_path: Path, demo_now: dt.datetime) -> None:
    path = create_demo_source(tmp_path / "src.db", rows=400, seed=1, days=10, now=demo_now)
    data = _dump(path)
    assert len(data["orders"]) == 400 and len(data["customers"]) == 80 and len(data["products"]) == 12
    with sqlite3.connect(path) as raw:
        lo, hi = raw.execute("SELECT MIN(created_date), MAX(created_date) FROM orders").fetchone()
        nulls = raw.execute(
            "SELECT SUM(discount IS NULL), SUM(shipped_at IS NULL), SUM(notes IS NULL), SUM(notes = '')"
            " FROM orders"
        ).fetchone()
        email_nulls = raw.execute("SELECT SUM(email IS NULL) FROM customers").fetchone()[0]
        orphans = raw.execute(
            "SELECT COUNT(*) FROM orders o LEFT JOIN customers c USING (customer_id)"
            " WHERE c.customer_id IS NULL"
        ).fetchone()[0]
        names = "".join(r[0] for r in raw.execute("SELECT name FROM customers"))
    start = (demo_now - dt.timedelta(days=10)).replace(tzinfo=None)
    assert start.isoformat(" ") <= lo and hi < demo_now.replace(tzinfo=None).isoformat(" ")
    assert all(n > 0 for n in nulls) and email_nulls > 0 and orphans == 0
    assert any(not ch.isascii() for ch in names)
    # Every day of the span has orders, so any one-day window has data.
    with sqlite3.connect(path) as raw:
        days = raw.execute("SELECT COUNT(DISTINCT substr(created_date, 1, 10)) FROM orders").fetchone()[0]
    assert days >= 10


def test_deterministic_and_not_overwritten(tmp_path: Path, demo_now: dt.datetime) -> None:
    a = create_demo_source(tmp_path / "a.db", seed=5, now=demo_now)
    b = create_demo_source(tmp_path / "b.db", seed=5, now=demo_now)
    assert _dump(a) == _dump(b)
    assert _dump(create_demo_source(tmp_path / "c.db", seed=6, now=demo_now)) != _dump(a)
    before = _dump(a)
    assert create_demo_source(a, seed=99, rows=3, now=demo_now) == a.resolve() and _dump(a) == before
    create_demo_source(a, seed=99, rows=3, now=demo_now, overwrite=True)
    assert len(_dump(a)["orders"]) == 3
    assert not list(tmp_path.glob(".*.tmp"))
    empty = create_demo_source(tmp_path / "empty.db", rows=0, now=demo_now)
    assert _dump(empty) == {"customers": [], "products": [], "orders": []}
    with pytest.raises(ValueError):
        create_demo_source(tmp_path / "bad.db", rows=-1)


def test_default_path(shared_settings: OrchestratorSettings) -> None:
    assert default_demo_source_path(shared_settings) == shared_settings.dagster_home / "demo_source.db"


def test_readme_pipeline_raw_to_stg(
    shared_settings: OrchestratorSettings, demo_db: Path, demo_now: dt.datetime
) -> None:
    """The README's ingestion + loader pattern, on the configured demo_source and warehouse connections."""
    start, end = get_load_window(now=demo_now, settings=shared_settings)
    raw = ingest_from_sql(
        connection="demo_source",
        query="SELECT * FROM orders WHERE created_date >= ? AND created_date < ?",
        date_params=[start, end],
        settings=shared_settings,
    )
    assert len(raw) > 0
    # Schema change handling (README): add a default for a column the source dropped.
    if "legacy_code" not in raw.columns:
        raw["legacy_code"] = None
    result = load_to_stg_table(None, sanitize_dataframe(raw), "orders_staging", settings=shared_settings)
    assert result.rows == len(raw)
    staged = read_stg_table("orders_staging", settings=shared_settings)
    assert staged["order_id"].tolist() == raw["order_id"].tolist()
    assert list(staged.columns) == list(raw.columns)
