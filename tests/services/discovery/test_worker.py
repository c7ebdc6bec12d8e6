"""The discovery worker as a real process on real Redis, loading a real Dagster code location."""

from __future__ import annotations

import os
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from libs.common.bus import Bus, connect
from libs.common.events import (
    ASSET_CHANGES,
    CATALOG,
    AssetChanged,
    CatalogSnapshot,
    DiscoveryRequestData,
    DiscoveryRequested,
    new_event,
    parse_event,
)
from libs.common.redis_server import free_port
from libs.common.testing import ServiceProcess, wait_for
from services.discovery.scan import definitions_loader
from services.discovery.settings import DiscoveryWorkerSettings

ROOT = Path(__file__).resolve().parents[3]

CODE = """
import dagster as dg

@dg.asset(group_name="stg__ingestion", owners=["ana@example.com"], tags={{"domain": "sales"}},
          description="{description}")
def raw_orders() -> None: ...

@dg.asset(deps=[raw_orders], group_name="stg__loaders")
def stg_orders() -> None: ...

@dg.asset(deps=[stg_orders], group_name="transformed_data")
def orders_report() -> None: ...

defs = dg.Definitions(assets=[raw_orders, stg_orders, orders_report])
"""


def write_location(directory: Path, package: str, description: str) -> None:
    pkg = directory / package
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "definitions.py").write_text(textwrap.dedent(CODE.format(description=description)))


@pytest.fixture
def location(tmp_path: Path) -> tuple[Path, str]:
    package = f"loc_{uuid.uuid4().hex[:8]}"
    write_location(tmp_path, package, "Raw orders.")
    return tmp_path, package


@pytest.fixture
def worker(
    request: pytest.FixtureRequest,
    settings: DiscoveryWorkerSettings,
    location: tuple[Path, str],
    tmp_path: Path,
) -> Iterator[ServiceProcess]:
    directory, package = location
    extra_env: dict[str, str] = getattr(request, "param", {})
    port = free_port()
    env = {
        **os.environ,
        "AMS_REDIS__URL": settings.redis.url,
        "AMS_BUS__PREFIX": settings.bus.prefix,
        "AMS_BUS__BLOCK_MS": "200",
        "AMS_SERVICES__DISCOVERY__PORT": str(port),
        "AMS_DAGSTER__CODE_LOCATION": "testloc",
        "AMS_DISCOVERY__DEFINITIONS": f"{package}.definitions:defs",
        "AMS_DISCOVERY__RESCAN_AT_START": "false",
        "AMS_LOGGING__FORMAT": "json",
        "DAGSTER_HOME": str(settings.dagster_home),
        "PYTHONPATH": os.pathsep.join([str(directory), str(ROOT)]),
        **extra_env,
    }
    env.pop("AMS_LOGGING__FILE", None)
    process = ServiceProcess(
        [sys.executable, "-m", "services.discovery"],
        env,
        port=port,
        log=tmp_path / "worker.log",
        cwd=tmp_path,
    ).start()
    wait_for(process.answers, what="discovery /healthz")
    yield process
    assert process.stop() == 0, process.output()


def changes(client: redis.Redis, settings: DiscoveryWorkerSettings) -> list[AssetChanged]:
    out = []
    for _, fields in client.xrange(f"{settings.bus.prefix}:{ASSET_CHANGES}"):
        event = parse_event(fields[b"event"])
        assert isinstance(event, AssetChanged)
        out.append(event)
    return out


def test_snapshot_to_asset_changes_and_redelivery(
    settings: DiscoveryWorkerSettings,
    redis_client: redis.Redis,
    worker: ServiceProcess,
    location: tuple[Path, str],
) -> None:
    directory, package = location
    sys.path.insert(0, str(directory))
    try:
        snapshot, _ = definitions_loader(f"{package}.definitions:defs")("testloc")
    finally:
        sys.path.remove(str(directory))
    bus = Bus(connect(settings.redis), settings.bus)
    event = new_event(
        CatalogSnapshot,
        "catalog.snapshot",
        identity=f"testloc|{snapshot.fingerprint}",
        data=snapshot,
        source="test",
    )
    bus.publish_many(CATALOG, [event])
    wait_for(lambda: len(changes(redis_client, settings)) == 3, what="3 asset-changes events")
    got = {e.data.spec.key: e for e in changes(redis_client, settings)}
    assert {e.type for e in got.values()} == {"asset.registered"}
    assert got["raw_orders"].data.spec.owners == ["ana@example.com"]
    assert got["raw_orders"].data.spec.downstream == ["stg_orders"]
    assert got["orders_report"].data.spec.upstream == ["stg_orders"]

    # The same event again (a redelivery), and the same content under another id: nothing new.
    bus.publish_many(CATALOG, [event])
    again = new_event(
        CatalogSnapshot, "catalog.snapshot", identity="testloc|other", data=snapshot, source="test"
    )
    bus.publish_many(CATALOG, [again])
    bus = Bus(redis_client, settings.bus)
    wait_for(lambda: bus.unsettled("discovery", [CATALOG]) == 0, what="catalog consumed")
    assert len(changes(redis_client, settings)) == 3

    # A discovery request makes the worker load the (edited) code location itself.
    write_location(directory, package, "Raw orders from the ERP.")
    request = new_event(
        DiscoveryRequested,
        "catalog.discovery_requested",
        identity=str(uuid.uuid4()),
        data=DiscoveryRequestData(code_location="testloc", requested_by="test"),
        source="test",
    )
    bus.publish_many(CATALOG, [request])
    wait_for(lambda: len(changes(redis_client, settings)) == 4, what="asset.changed event")
    last = changes(redis_client, settings)[-1]
    assert last.type == "asset.changed" and last.data.version == 2
    assert last.data.changes == {"description": {"old": "Raw orders.", "new": "Raw orders from the ERP."}}

    metrics = worker.metrics()
    assert 'ams_discovery_versions_created_total{kind="registered"} 3.0' in metrics
    assert 'ams_discovery_registered_assets_by_ownership{ownership="owned"} 1.0' in metrics
    assert "ams_discovery_duration_seconds_bucket" in metrics
    bus.client.close()


def test_broken_code_location_is_reported_and_worker_keeps_running(
    settings: DiscoveryWorkerSettings,
    redis_client: redis.Redis,
    worker: ServiceProcess,
    location: tuple[Path, str],
) -> None:
    directory, package = location
    (directory / package / "definitions.py").write_text("import dagster as dg\nraise RuntimeError('boom')\n")
    bus = Bus(connect(settings.redis), settings.bus)
    request = new_event(
        DiscoveryRequested,
        "catalog.discovery_requested",
        identity=str(uuid.uuid4()),
        data=DiscoveryRequestData(code_location="testloc"),
        source="test",
    )
    bus.publish_many(CATALOG, [request])
    wait_for(
        lambda: 'ams_discovery_scan_problems{code_location="testloc"} 1.0' in worker.metrics(),
        what="problem metric",
    )
    assert worker.answers() and worker.ready()
    assert changes(redis_client, settings) == []
    bus.client.close()


@pytest.mark.parametrize("worker", [{"AMS_DISCOVERY__RESCAN_AT_START": "true"}], indirect=True)
def test_rescan_job_registers_the_code_location(
    settings: DiscoveryWorkerSettings, redis_client: redis.Redis, worker: ServiceProcess
) -> None:
    # Nothing is published: the periodic rescan (run once at start) loads the code location itself.
    wait_for(lambda: len(changes(redis_client, settings)) == 3, what="3 asset.registered from the rescan")
    assert {e.data.spec.code_location for e in changes(redis_client, settings)} == {"testloc"}
    metrics = worker.metrics()
    assert 'ams_discovery_duration_seconds_count{trigger="rescan"} 1.0' in metrics
