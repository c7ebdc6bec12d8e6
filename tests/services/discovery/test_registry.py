"""Registry tests on real Dagster Definitions and real SQLite files (no Redis)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.events import AssetSpecData, CatalogSnapshotData
from libs.common.store import Store
from orchestrator.catalog import build_catalog
from services.discovery import queries
from services.discovery.registry import (
    DEFINITION_FIELDS,
    UNRECORDED,
    Change,
    diff,
    downstream_of,
    fingerprint,
    normalise,
    register_snapshot,
    to_events,
    upstream_first,
    upstream_of,
)
from services.discovery.store import MIGRATIONS

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'metadata.db'}", MIGRATIONS)


def make_defs(*, description: str = "Raw orders.", with_loader: bool = True) -> dg.Definitions:
    @dg.asset(
        name="raw_orders",
        group_name="stg__ingestion",
        description=description,
        kinds={"pandas"},
        owners=["ana@example.com"],
        tags={"domain": "sales", "source": "ERP"},
        metadata={"target_schema": "stg"},
    )
    def raw_orders() -> None: ...

    @dg.asset(name="stg_orders", deps=["raw_orders"], group_name="stg__loaders", owners=["team:data"])
    def stg_orders() -> None: ...

    @dg.asset(name="orders_report", deps=["stg_orders"], group_name="transformed_data")
    def orders_report() -> None: ...

    assets: list[Any] = [raw_orders, orders_report]
    if with_loader:
        assets.insert(1, stg_orders)
    return dg.Definitions(assets=assets)


def snap(defs: dg.Definitions) -> CatalogSnapshotData:
    return build_catalog(defs, "orchestrator")


def register(store: Store, snapshot: CatalogSnapshotData, now: datetime) -> list[Any]:
    with store.write() as conn:
        return register_snapshot(conn, snapshot, now)


def test_register_change_retire_return_history(store: Store) -> None:
    first = register(store, snap(make_defs()), T0)
    assert sorted((c.kind, c.key, c.version) for c in first) == [
        ("registered", "orders_report", 1),
        ("registered", "raw_orders", 1),
        ("registered", "stg_orders", 1),
    ]
    changed = register(
        store, snap(make_defs(description="Raw orders from the ERP.")), T0 + timedelta(minutes=1)
    )
    assert [(c.kind, c.key, c.version) for c in changed] == [("changed", "raw_orders", 2)]
    assert changed[0].changes == {"description": {"old": "Raw orders.", "new": "Raw orders from the ERP."}}

    removed = register(
        store,
        snap(make_defs(description="Raw orders from the ERP.", with_loader=False)),
        T0 + timedelta(minutes=2),
    )
    # orders_report no longer depends on anything registered, but its own definition (deps=["stg_orders"])
    # is unchanged: only stg_orders is retired.
    assert [(c.kind, c.key, c.version) for c in removed] == [("retired", "stg_orders", 1)]

    back = register(store, snap(make_defs(description="Raw orders from the ERP.")), T0 + timedelta(minutes=3))
    assert [(c.kind, c.key, c.version) for c in back] == [("returned", "stg_orders", 2)]
    assert back[0].changes["retired_at"]["new"] is None

    with store.read() as conn:
        raw = queries.history(conn, "raw_orders")
        stg = queries.history(conn, "stg_orders")
        report = queries.history(conn, "orders_report")
    assert [(h["version"], h["change"]) for h in raw] == [(1, "registered"), (2, "changed")]
    assert [(h["version"], h["change"], h["retired_at"] is not None) for h in stg] == [
        (1, "registered", True),
        (2, "returned", False),
    ]
    assert [(h["version"], h["change"]) for h in report] == [(1, "registered")]


def test_unchanged_snapshot_writes_nothing(store: Store) -> None:
    snapshot = snap(make_defs())
    register(store, snapshot, T0)
    conn = store.connection()
    before = conn.total_changes
    counts = [
        conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        for t in ("assets", "asset_versions", "asset_deps")
    ]
    assert register(store, snap(make_defs()), T0 + timedelta(hours=1)) == []
    assert conn.total_changes == before
    after = [
        conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        for t in ("assets", "asset_versions", "asset_deps")
    ]
    assert after == counts


def test_lineage_any_depth_and_downstream_in_spec(store: Store) -> None:
    changes = register(store, snap(make_defs()), T0)
    by_key = {c.key: c for c in changes}
    assert by_key["raw_orders"].spec.downstream == ["stg_orders"]
    with store.read() as conn:
        assert downstream_of(conn, "raw_orders") == [("stg_orders", 1), ("orders_report", 2)]
        assert upstream_of(conn, "orders_report") == [("stg_orders", 1), ("raw_orders", 2)]
        assert upstream_of(conn, "raw_orders") == []


def test_line_move_updates_row_without_version(store: Store) -> None:
    spec = AssetSpecData(key="a", group="g", source_file="x.py", source_line=3, code_location="loc")
    register(store, CatalogSnapshotData(code_location="loc", fingerprint="1", assets=[spec]), T0)
    moved = spec.model_copy(update={"source_line": 10})
    assert (
        register(store, CatalogSnapshotData(code_location="loc", fingerprint="2", assets=[moved]), T0) == []
    )
    with store.read() as conn:
        asset = queries.get_asset(conn, "a")
    assert asset is not None and asset["source_line"] == 10 and asset["version"] == 1


def test_snapshot_with_problems_retires_nothing(store: Store) -> None:
    a = AssetSpecData(key="a", code_location="loc")
    b = AssetSpecData(key="b", code_location="loc")
    register(store, CatalogSnapshotData(code_location="loc", fingerprint="1", assets=[a, b]), T0)
    broken = CatalogSnapshotData(
        code_location="loc", fingerprint="2", assets=[a], problems=["assets/b.py: SyntaxError"]
    )
    assert register(store, broken, T0) == []
    with store.read() as conn:
        assert [r["key"] for r in queries.list_assets(conn)] == ["a", "b"]
        assert queries.code_locations(conn)[0]["problems"] == ["assets/b.py: SyntaxError"]


def test_lineage_survives_cycles(store: Store) -> None:
    a = AssetSpecData(key="a", upstream=["b"])
    b = AssetSpecData(key="b", upstream=["a"])
    register(store, CatalogSnapshotData(code_location="loc", fingerprint="1", assets=[a, b]), T0)
    with store.read() as conn:
        assert upstream_of(conn, "a") == [("b", 1)]
        assert downstream_of(conn, "a") == [("b", 1)]


def test_changes_come_upstream_first(store: Store) -> None:
    """Consumers apply the events in order: a downstream asset registered with its upstream in one snapshot
    must come after it (keys sorting the other way made health see an unregistered upstream)."""
    specs = [
        AssetSpecData(key="a/report", upstream=["z/orders"]),
        AssetSpecData(key="m/orders", upstream=["z/raw"]),
        AssetSpecData(key="z/orders", upstream=["z/raw", "elsewhere/x"]),
        AssetSpecData(key="z/raw"),
    ]
    changes = register(store, CatalogSnapshotData(code_location="loc", fingerprint="1", assets=specs), T0)
    assert [c.key for c in changes] == ["z/raw", "m/orders", "z/orders", "a/report"]
    cycle = [
        AssetSpecData(key="a", upstream=["b"]),
        AssetSpecData(key="b", upstream=["a"]),
        AssetSpecData(key="c", upstream=["b"]),
    ]
    ordered = upstream_first([Change("registered", s.key, 1, s) for s in cycle])
    assert [c.key for c in ordered] == ["a", "b", "c"]


@given(st.lists(st.sets(st.integers(0, 11), max_size=3), min_size=1, max_size=12))
@settings(max_examples=100, deadline=None)
def test_upstream_first_is_a_permutation_with_every_acyclic_upstream_first(ups: list[set[int]]) -> None:
    specs = [AssetSpecData(key=f"k{i}", upstream=[f"k{u}" for u in sorted(us)]) for i, us in enumerate(ups)]
    ordered = [c.key for c in upstream_first([Change("registered", s.key, 1, s) for s in specs])]
    assert sorted(ordered) == sorted(s.key for s in specs)
    # Edges from a lower to a higher index form a DAG: those are always respected.
    for i, us in enumerate(ups):
        for u in us:
            if u < i and u < len(ups):
                assert ordered.index(f"k{u}") < ordered.index(f"k{i}")


def test_events_are_deterministic(store: Store) -> None:
    changes = register(store, snap(make_defs()), T0)
    ids = [e.id for e in to_events(changes)]
    assert ids == [e.id for e in to_events(changes)]
    assert {e.type for e in to_events(changes)} == {"asset.registered"}
    assert all(e.data.spec.code_location == "orchestrator" for e in to_events(changes))


def test_sql_in_keys_is_just_a_key(store: Store) -> None:
    hostile = "x'; DROP TABLE assets; --"
    register(
        store,
        CatalogSnapshotData(code_location="loc", fingerprint="1", assets=[AssetSpecData(key=hostile)]),
        T0,
    )
    with store.read() as conn:
        assert queries.get_asset(conn, hostile) is not None
        assert queries.get_asset(conn, "' OR 1=1 --") is None
        assert queries.list_assets(conn, tags={"a' OR '1'='1": "x"}) == []


spec_strategy = st.builds(
    AssetSpecData,
    key=st.sampled_from(["a", "b", "c"]),
    group=st.none() | st.sampled_from(["g1", "g2"]),
    description=st.none() | st.text(max_size=5),
    owners=st.lists(st.sampled_from(["x@y.z", "team:t"]), max_size=2),
    tags=st.dictionaries(st.sampled_from(["k1", "k2"]), st.text(max_size=3), max_size=2),
    upstream=st.lists(st.sampled_from(["a", "b", "c"]), max_size=2),
)


@given(st.lists(spec_strategy, max_size=3), st.lists(spec_strategy, max_size=3))
@settings(max_examples=60, deadline=None)
def test_fingerprint_and_diff_agree(left: list[AssetSpecData], right: list[AssetSpecData]) -> None:
    for x in left:
        for y in right:
            nx, ny = normalise(x), normalise(y)
            same = fingerprint(nx) == fingerprint(ny)
            assert same == (diff(nx.model_dump(), ny.model_dump()) == {})
            assert fingerprint(
                normalise(x.model_copy(update={"owners": list(reversed(x.owners))}))
            ) == fingerprint(nx)


@given(st.lists(st.lists(spec_strategy, max_size=3, unique_by=lambda s: s.key), min_size=1, max_size=4))
@settings(max_examples=25, deadline=None)
def test_any_sequence_of_snapshots_then_repeat_writes_nothing(
    tmp_path_factory: pytest.TempPathFactory, snapshots: list[list[AssetSpecData]]
) -> None:
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('h') / 'm.db'}", MIGRATIONS)
    try:
        for i, assets in enumerate(snapshots):
            snapshot = CatalogSnapshotData(code_location="loc", fingerprint=str(i), assets=assets)
            register(store, snapshot, T0 + timedelta(seconds=i))
            before = store.connection().total_changes
            assert register(store, snapshot, T0 + timedelta(seconds=i, milliseconds=1)) == []
            assert store.connection().total_changes == before
            with store.read() as conn:
                active = {r["key"]: r for r in queries.list_assets(conn)}
            assert set(active) == {a.key for a in assets}
            for a in assets:
                assert active[a.key]["version"] == len(queries.history(store.connection(), a.key))
    finally:
        store.close()


def test_only_downstream_moved_records_only_the_producer_fingerprint(store: Store) -> None:
    a = AssetSpecData(key="a", code_location="loc", downstream=["b"])
    register(store, CatalogSnapshotData(code_location="loc", fingerprint="f1", assets=[a]), T0)
    conn = store.connection()
    total = conn.total_changes
    moved = a.model_copy(update={"downstream": ["b", "c"]})
    assert (
        register(
            store,
            CatalogSnapshotData(code_location="loc", fingerprint="f2", assets=[moved]),
            T0 + timedelta(1),
        )
        == []
    )
    assert conn.total_changes == total + 1  # the code location's producer fingerprint, nothing else
    assert conn.execute("SELECT snapshot_fingerprint FROM code_locations").fetchone()[0] == "f2"
    total = conn.total_changes
    assert (
        register(
            store,
            CatalogSnapshotData(code_location="loc", fingerprint="f2", assets=[moved]),
            T0 + timedelta(2),
        )
        == []
    )
    assert conn.total_changes == total


def test_tag_order_makes_no_version(store: Store) -> None:
    a = AssetSpecData(key="a", tags={"x": "1", "y": "2"}, metadata={"m": {"b": 1, "a": 2}})
    register(store, CatalogSnapshotData(code_location="loc", fingerprint="1", assets=[a]), T0)
    b = AssetSpecData(key="a", tags={"y": "2", "x": "1"}, metadata={"m": {"a": 2, "b": 1}})
    assert register(store, CatalogSnapshotData(code_location="loc", fingerprint="2", assets=[b]), T0) == []


def jobs_defs(
    *, nightly: tuple[str, ...] = ("raw_orders", "stg_orders"), description: str = "Raw orders."
) -> Any:
    defs = make_defs(description=description)
    jobs = [dg.define_asset_job("nightly", selection=list(nightly))] if nightly else []
    return dg.Definitions(assets=list(defs.assets or []), jobs=jobs)


def test_job_names_and_repository_are_stored_versioned_and_filterable(store: Store) -> None:
    register(store, snap(jobs_defs()), T0)
    with store.read() as conn:
        raw = queries.get_asset(conn, "raw_orders")
        report = queries.get_asset(conn, "orders_report")
        in_nightly = [a["key"] for a in queries.list_assets(conn, job="nightly", light=True)]
        known_jobs = queries.distinct_values(conn)["job"]
    assert raw is not None and raw["job_names"] == ["nightly"] and raw["repository"] == "__repository__"
    assert report is not None and report["job_names"] == []  # Dagster's implicit __ASSET_JOB is left out
    assert in_nightly == ["raw_orders", "stg_orders"] and known_jobs == {"nightly"}

    # The job no longer selects stg_orders: a new version of stg_orders alone, its diff the job names.
    changes = register(store, snap(jobs_defs(nightly=("raw_orders",))), T0 + timedelta(minutes=1))
    assert [(c.key, c.version, c.changes) for c in changes] == [
        ("stg_orders", 2, {"job_names": {"old": ["nightly"], "new": []}})
    ]
    assert changes[0].spec.job_names == [] and changes[0].spec.repository == "__repository__"


def _register_as_before_migration_3(conn: Any, snapshot: CatalogSnapshotData, now: datetime) -> None:
    """What the registry stored before job names and the repository were recorded (migrations 1-2): the
    row without them, its fingerprint over the definition fields of then."""
    old_fields = set(DEFINITION_FIELDS) - set(UNRECORDED)
    for raw in snapshot.assets:
        spec = normalise(raw)
        old_fp = hashlib.sha256(spec.model_dump_json(include=old_fields).encode()).hexdigest()[:32]
        columns = (
            spec.code_location, spec.group, spec.description, json.dumps(spec.owners), json.dumps(spec.tags),
            json.dumps(spec.kinds), json.dumps(spec.metadata), spec.code_version, spec.partitioning,
            spec.source_file, spec.source_line, json.dumps(spec.upstream), None, json.dumps(spec.checks),
        )  # fmt: skip
        conn.execute(
            "INSERT INTO assets (key, code_location, group_name, description, owners, tags, kinds, metadata, "
            "code_version, partitioning, source_file, source_line, upstream, freshness, checks, fingerprint, "
            "row_hash, version, first_seen, last_seen, retired_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, NULL, ?)",
            (spec.key, *columns, old_fp, f"{old_fp}-row", now.timestamp(), now.timestamp(), now.timestamp()),
        )
        conn.execute(
            "INSERT INTO asset_versions (key, version, change_type, fingerprint, spec, changes, recorded_at) "
            "VALUES (?, 1, 'registered', ?, ?, '{}', ?)",
            (spec.key, old_fp, spec.model_dump_json(include=old_fields), now.timestamp()),
        )
    conn.execute(
        "INSERT INTO code_locations (name, fingerprint, snapshot_fingerprint, asset_count, problems, "
        "changed_at) VALUES (?, 'old-location-hash', ?, ?, '[]', ?)",
        (snapshot.code_location, snapshot.fingerprint, len(snapshot.assets), now.timestamp()),
    )


def test_upgrade_records_job_names_and_repository_without_a_version(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'metadata.db'}"
    before = Store(url, MIGRATIONS[:2])  # a registry of the previous release, with its assets
    with before.write() as conn:
        _register_as_before_migration_3(conn, snap(jobs_defs()), T0)
    before.close()

    store = Store(url, MIGRATIONS)  # the upgrade: migration 3
    try:
        with store.read() as conn:
            old = queries.get_asset(conn, "raw_orders")
        assert old is not None and old["job_names"] == [] and old["repository"] is None  # not recorded yet
        # The first snapshot after the upgrade (the same definitions): no version, no event, both filled in.
        assert register(store, snap(jobs_defs()), T0 + timedelta(hours=1)) == []
        with store.read() as conn:
            raw = queries.get_asset(conn, "raw_orders")
            assert raw is not None and raw["version"] == 1
            assert raw["job_names"] == ["nightly"] and raw["repository"] == "__repository__"
            assert [h["version"] for h in queries.history(conn, "raw_orders")] == [1]
        assert register(store, snap(jobs_defs()), T0 + timedelta(hours=2)) == []  # settled: nothing to do
        # From now on they are versioned as any other field.
        changes = register(store, snap(jobs_defs(nightly=("raw_orders",))), T0 + timedelta(hours=3))
        assert [(c.key, set(c.changes)) for c in changes] == [("stg_orders", {"job_names"})]
    finally:
        store.close()


def test_upgrade_with_a_real_change_versions_only_that_change(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'metadata.db'}"
    before = Store(url, MIGRATIONS[:2])
    with before.write() as conn:
        _register_as_before_migration_3(conn, snap(jobs_defs()), T0)
    before.close()
    store = Store(url, MIGRATIONS)
    try:
        changes = register(store, snap(jobs_defs(description="Raw orders, deduplicated.")), T0)
        assert [(c.key, c.version, set(c.changes)) for c in changes] == [("raw_orders", 2, {"description"})]
        assert changes[0].spec.job_names == [
            "nightly"
        ]  # recorded with the new version, not shown as a change
    finally:
        store.close()


def test_light_listing_is_the_full_one_narrowed_and_its_rows_are_independent(store: Store) -> None:
    same: dict[str, Any] = {"owners": ["team:x"], "kinds": ["python"], "tags": {"d": "s"}}
    assets = [AssetSpecData(key=k, owners=["team:x"], kinds=["python"], tags={"d": "s"}) for k in "ab"]
    register(store, CatalogSnapshotData(code_location="loc", fingerprint="1", assets=assets), T0)
    with store.read() as conn:
        full = queries.list_assets(conn)
        light = queries.list_assets(conn, light=True)
    assert [{k: row[k] for k in light[0]} for row in full] == light
    # Equal texts are decoded once, yet a row's lists and mapping are its own.
    light[0]["owners"].append("y")
    light[0]["kinds"].clear()
    light[0]["tags"]["e"] = "t"
    assert {k: light[1][k] for k in same} == same
