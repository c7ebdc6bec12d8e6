from __future__ import annotations

import sqlite3
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.store import Migration, Store, StoreError, event_key, sqlite_path, stored_event_id

MIGRATIONS = [
    Migration(1, "items", "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"),
    Migration(
        2, "items_note", "ALTER TABLE items ADD COLUMN note TEXT;\nCREATE INDEX items_name ON items (name);"
    ),
]


def test_url_forms() -> None:
    assert sqlite_path("sqlite:////abs/x.db") == Path("/abs/x.db")
    assert sqlite_path("/abs/y.db") == Path("/abs/y.db")
    with pytest.raises(StoreError, match="postgresql"):
        sqlite_path("postgresql://h/db")


def test_migrations_apply_once_in_order(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    store = Store(url, MIGRATIONS[:1])
    assert store.schema_version() == 1
    store.close()
    store = Store(url, MIGRATIONS)
    assert store.schema_version() == 2
    assert store.migrate() == []
    mode = store.connection().execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store.close()
    with pytest.raises(StoreError, match="newer than this code"):
        Store(url, MIGRATIONS[:1])


def test_failed_write_rolls_back(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "x.db"), MIGRATIONS)
    with pytest.raises(sqlite3.IntegrityError), store.write() as tx:
        tx.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
        tx.execute("INSERT INTO items (id, name) VALUES (1, 'dup')")
    assert store.connection().execute("SELECT COUNT(*) FROM items").fetchone()[0] == 0


def test_claim_events_dedupes_within_and_across_transactions(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "x.db"), MIGRATIONS)
    with store.write() as tx:
        assert Store.claim_events(tx, ["a", "b", "a"]) == {"a", "b"}
    with store.write() as tx:
        assert Store.claim_events(tx, ["b", "c"]) == {"c"}
    with pytest.raises(RuntimeError), store.write() as tx:
        Store.claim_events(tx, ["d"])
        raise RuntimeError("handler failed after claiming")
    with store.write() as tx:  # the rolled-back claim is not remembered
        assert Store.claim_events(tx, ["d"]) == {"d"}


def test_forgotten_events_are_new_again(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "x.db"), MIGRATIONS)
    ids = [str(uuid.uuid4()) for _ in range(600)] + ["plain-a", "plain-b"]  # compact keys and text keys
    with store.write() as tx:
        assert Store.claim_events(tx, ids) == set(ids)
    forgotten = [*ids[::2], "plain-b", "never-claimed"]
    with store.write() as tx:
        assert Store.forget_events(tx, forgotten) == len(forgotten) - 1
    with store.write() as tx:
        assert Store.claim_events(tx, ids) == set(forgotten) - {"never-claimed"}


def test_claim_new_keeps_the_first_copy_of_each_new_event_in_order(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "x.db"), MIGRATIONS)
    with store.write() as tx:
        Store.claim_events(tx, ["seen"])
    batch = [("b", 1), ("seen", 2), ("a", 3), ("b", 4), ("c", 5), ("a", 6)]
    with store.write() as tx:
        assert Store.claim_new(tx, batch, lambda item: item[0]) == [("b", 1), ("a", 3), ("c", 5)]
    with store.write() as tx:
        assert Store.claim_new(tx, batch, lambda item: item[0]) == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcdefgh"), max_size=8), max_size=8))
def test_claim_events_returns_exactly_the_ids_never_claimed_before(batches: list[list[str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(str(Path(tmp) / "x.db"), MIGRATIONS)
        claimed: set[str] = set()
        for batch in batches:
            with store.write() as tx:
                assert Store.claim_events(tx, batch) == set(batch) - claimed
            claimed |= set(batch)
            stored = {r[0] for r in store.connection().execute("SELECT event_id FROM processed_events")}
            assert stored == claimed  # a batch with a redelivery leaves no partial insert behind
        store.close()


def test_concurrent_immediate_writers_never_fail_on_lock_upgrade(tmp_path: Path) -> None:
    path = str(tmp_path / "x.db")
    Store(path, MIGRATIONS).close()
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        store = Store(path, MIGRATIONS)
        try:
            for i in range(100):
                with store.write() as tx:
                    n = tx.execute("SELECT COUNT(*) FROM items").fetchone()[0]
                    tx.execute("INSERT INTO items (id, name) VALUES (?, ?)", (offset + i, f"n{n}"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = Store(path, MIGRATIONS)
    assert store.connection().execute("SELECT COUNT(*) FROM items").fetchone()[0] == 400


def test_online_backup_is_consistent(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "x.db"), MIGRATIONS)
    with store.write() as tx:
        tx.executemany("INSERT INTO items (id, name) VALUES (?, ?)", [(i, "x") for i in range(50)])
    copy = store.backup(tmp_path / "backup" / "x.db")
    restored = Store(str(copy), MIGRATIONS)
    assert restored.connection().execute("SELECT COUNT(*) FROM items").fetchone()[0] == 50
    assert restored.schema_version() == 2


def test_ping_and_prune(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "x.db"), MIGRATIONS)
    store.ping()
    with store.write() as tx:
        Store.claim_events(tx, ["old"])
        tx.execute("UPDATE processed_events SET processed_at = 0")
        Store.claim_events(tx, ["new"])
    assert store.prune_processed(3600) == 1
    with pytest.raises(sqlite3.Error):
        Store(str(tmp_path / "missing" / "nothing.db"), migrate=False).ping()


def test_checkpoint_copies_the_log_while_a_writer_keeps_writing(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "x.db"), MIGRATIONS)
    with store.write() as tx:
        tx.executemany("INSERT INTO items (name) VALUES (?)", [(f"n{i}",) for i in range(2000)])
    frames, copied = store.checkpoint()
    assert frames > 0 and copied == frames
    # The checkpointer (a worker's background thread) does not block the writer, nor the writer it.
    checkpoints: list[tuple[int, int]] = []

    def checkpointer() -> None:
        other = Store(str(tmp_path / "x.db"), MIGRATIONS)
        checkpoints.extend(other.checkpoint() for _ in range(20))
        other.close()

    thread = threading.Thread(target=checkpointer)
    thread.start()
    for n in range(20):
        with store.write() as tx:
            tx.executemany("INSERT INTO items (name) VALUES (?)", [(f"m{n}-{i}",) for i in range(100)])
    thread.join(10)
    assert len(checkpoints) == 20
    assert store.connection().execute("SELECT COUNT(*) FROM items").fetchone()[0] == 4000
    store.close()


@given(
    st.one_of(
        st.uuids().map(str),
        st.uuids().map(lambda u: str(u).upper()),
        st.text(min_size=1, max_size=60),
        st.text(alphabet="0123456789abcdef-", min_size=36, max_size=36),
    )
)
def test_event_keys_are_distinct_and_lead_back_to_the_id(event_id: str) -> None:
    key = event_key(event_id)
    assert stored_event_id(key) == event_id
    assert isinstance(key, str) or len(key) == 16


def test_claims_recorded_before_the_compact_key_form_are_still_recognised(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = Store(str(path), MIGRATIONS)
    store.close()
    ids = [str(uuid.uuid4()) for _ in range(3)]
    legacy = sqlite3.connect(path)  # a store written by an earlier version: text keys, user_version 0
    legacy.executemany(
        "INSERT INTO processed_events (event_id, processed_at) VALUES (?, 1)", [(i,) for i in ids]
    )
    legacy.execute("INSERT INTO processed_events (event_id, processed_at) VALUES ('not-a-uuid', 1)")
    legacy.execute("PRAGMA user_version = 0")
    legacy.commit()
    legacy.close()
    store = Store(str(path), MIGRATIONS)
    with store.write() as tx:
        assert Store.claim_events(tx, [*ids, "not-a-uuid", "new"]) == {"new"}
    kinds = dict(
        store.connection()
        .execute("SELECT typeof(event_id), COUNT(*) FROM processed_events GROUP BY 1")
        .fetchall()
    )
    assert kinds == {"blob": 3, "text": 2}
    store.close()
