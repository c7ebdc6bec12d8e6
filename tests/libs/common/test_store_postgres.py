"""The store API on a real PostgreSQL: migrations, dedupe, single-writer transactions across connections."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from libs.common import outbox
from libs.common.pg import translate
from libs.common.store import Migration, Store, StoreError

MIGRATIONS = [
    Migration(
        1,
        "items",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL) WITHOUT ROWID;",
    ),
    Migration(2, "counter", "CREATE TABLE counter (k TEXT PRIMARY KEY, n INTEGER NOT NULL);"),
]


def test_translate() -> None:
    assert (
        translate("SELECT * FROM t WHERE a = ? AND b LIKE '%?%'")
        == "SELECT * FROM t WHERE a = %s AND b LIKE '%%?%%'"
    )
    assert (
        translate("INSERT OR IGNORE INTO t (a) VALUES (?)")
        == "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING"
    )
    assert translate("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, x REAL, b BLOB)") == (
        "CREATE TABLE t (id BIGSERIAL PRIMARY KEY, x DOUBLE PRECISION, b BYTEA)"
    )


def test_migrations_dedupe_and_rows(postgres_url: str) -> None:
    store = Store(postgres_url, MIGRATIONS)
    assert store.dialect == "postgresql" and store.schema_version() == 2
    assert Store(postgres_url, MIGRATIONS).migrate() == []
    with store.write() as tx:
        tx.executemany(
            "INSERT INTO items (id, name, score) VALUES (?, ?, ?)", [(1, "a", 1.5), (2, "b", None)]
        )
        assert Store.claim_events(tx, ["e1", "e2", "e1"]) == {"e1", "e2"}
    with store.write() as tx:
        assert Store.claim_events(tx, ["e2", "e3"]) == {"e3"}
    row = store.connection().execute("SELECT id, name, score FROM items WHERE id = ?", (1,)).fetchone()
    assert row["name"] == "a" and row[0] == 1 and row["score"] == 1.5
    with pytest.raises(sqlite3.IntegrityError), store.write() as tx:
        tx.execute("INSERT INTO items (id, name) VALUES (?, ?)", (1, "dup"))
    assert store.connection().execute("SELECT COUNT(*) FROM items").fetchone()[0] == 2
    store.ping()
    with pytest.raises(StoreError, match="pg_dump"):
        store.backup(__import__("pathlib").Path("/tmp/x.db"))
    store.close()


def test_writers_are_serialised_across_connections(postgres_url: str) -> None:
    Store(postgres_url, MIGRATIONS).close()
    errors: list[BaseException] = []

    def bump() -> None:
        store = Store(postgres_url, MIGRATIONS)
        try:
            for _ in range(25):
                with store.write() as tx:  # read-modify-write: lost updates if writers were not serialised
                    row = tx.execute("SELECT n FROM counter WHERE k = ?", ("x",)).fetchone()
                    if row is None:
                        tx.execute("INSERT INTO counter (k, n) VALUES (?, ?)", ("x", 1))
                    else:
                        tx.execute("UPDATE counter SET n = ? WHERE k = ?", (row[0] + 1, "x"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = Store(postgres_url, MIGRATIONS)
    assert store.connection().execute("SELECT n FROM counter WHERE k = ?", ("x",)).fetchone()[0] == 100


def test_outbox_on_postgres(postgres_url: str) -> None:
    store = Store(postgres_url, MIGRATIONS)
    from libs.common.events import RunData, RunEvent, new_event

    event = new_event(
        RunEvent,
        "run.failed",
        identity="x",
        source="t",
        data=RunData(run_id="x", job_name="j", status="FAILURE"),
    )
    with store.write() as tx:
        outbox.stage(tx, "runs", [event])
    assert outbox.pending(store) == 1


def test_unreachable_postgres_is_an_operational_error() -> None:
    with pytest.raises(sqlite3.OperationalError, match="cannot connect"):
        Store("postgresql://nobody@127.0.0.1:1/nothing", MIGRATIONS)
