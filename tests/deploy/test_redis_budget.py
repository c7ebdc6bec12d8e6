"""Redis's memory in production: the streams at their configured cap, measured with real entries in a real
Redis, fit inside maxmemory with room left for Celery's broker and results (docker-compose.prod.yml, k8s)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from deploytools import COMPOSE_PROD, compose_config, kustomize, prod_secrets

from libs.common.bus import Bus
from libs.common.events import STREAMS, AssetMaterialized, Column, MaterializationData, new_event
from libs.common.settings import Settings, load_settings

# Of maxmemory, what the streams may fill at their cap: the rest is Celery's (queues, results) and headroom.
STREAM_SHARE = 0.75
SAMPLE = 2000


def as_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)(kb|mb|gb)", value.lower())
    assert match, value
    return int(match.group(1)) * {"kb": 2**10, "mb": 2**20, "gb": 2**30}[match.group(2)]


@pytest.fixture(scope="module")
def entry_bytes(redis_url: str) -> Iterator[float]:
    """Redis memory per stream entry of the largest common event (a materialization with a 12-column schema
    and metadata), as MEMORY USAGE reports it for a stream of SAMPLE such entries."""
    prefix = f"budget-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    bus = Bus(client, load_settings(Settings, bus={"prefix": prefix}).bus)
    events = [
        new_event(
            AssetMaterialized,
            "asset.materialized",
            identity=f"m{i}",
            source="orchestrator",
            data=MaterializationData(
                asset_key=f"stg/orders_{i % 50}",
                run_id=uuid.uuid4().hex,
                storage_id=i,
                row_count=1000 + i,
                duration_s=1.5,
                column_schema=[Column(name=f"column_{k}", type="int64") for k in range(12)],
                metadata={"dagster/uri": "file:///var/lib/ams/shared/x", "rows": 12},
            ),
        )
        for i in range(SAMPLE)
    ]
    bus.publish_many("assets", events)
    usage = client.memory_usage(bus.key("assets"), samples=0)
    yield float(usage) / SAMPLE
    client.delete(bus.key("assets"))
    client.close()


def compose_budget(tmp_path: Path) -> tuple[int, int]:
    prod = compose_config(COMPOSE_PROD, env_file=prod_secrets(tmp_path)[0])
    command = " ".join(prod["services"]["redis"]["command"])
    maxmemory = as_bytes(re.search(r"--maxmemory (\S+)", command).group(1))  # type: ignore[union-attr]
    maxlens = {
        int(s["environment"]["AMS_BUS__MAXLEN"])
        for s in prod["services"].values()
        if "AMS_BUS__MAXLEN" in (s.get("environment") or {})
    }
    (maxlen,) = maxlens
    return maxmemory, maxlen


def k8s_budget(docs: list[dict[str, Any]]) -> tuple[int, int]:
    (redis_set,) = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "redis"]
    args = " ".join(redis_set["spec"]["template"]["spec"]["containers"][0]["args"])
    maxmemory = as_bytes(re.search(r"--maxmemory (\S+)", args).group(1))  # type: ignore[union-attr]
    (env,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("ams-env")]
    return maxmemory, int(env["data"]["AMS_BUS__MAXLEN"])


@pytest.mark.parametrize("where", ["docker-compose.prod.yml", "k8s/overlays/prod", "k8s/overlays/dev"])
def test_streams_at_their_cap_fit_redis_maxmemory(where: str, entry_bytes: float, tmp_path: Path) -> None:
    maxmemory, maxlen = (
        compose_budget(tmp_path) if where.endswith(".yml") else k8s_budget(kustomize(where.split("/")[-1]))
    )
    # every stream and its dead-letter stream, all full of the largest common entry
    streams = 2 * len(STREAMS)
    needed = streams * maxlen * entry_bytes
    assert needed <= STREAM_SHARE * maxmemory, (
        f"{where}: {streams} streams x {maxlen} entries x {entry_bytes:.0f} B = {needed / 2**20:.0f} MiB "
        f"> {STREAM_SHARE:.0%} of maxmemory {maxmemory / 2**20:.0f} MiB"
    )
    # and the cap still leaves a backlog well above the consumer-lag alert's threshold before trimming
    rules = yaml.safe_load(
        Path(__file__).parents[2].joinpath("deploy/prometheus/rules/ams-alerts.yml").read_text()
    )
    (lag,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "AmsConsumerLagHigh"]
    threshold = int(re.search(r">\s*(\d+)", lag["expr"]).group(1))  # type: ignore[union-attr]
    assert maxlen >= 4 * threshold
