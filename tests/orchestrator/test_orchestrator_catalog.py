"""The catalog snapshot: what each asset's spec carries, and a fingerprint that moves only with content."""

from __future__ import annotations

import json
import math
from datetime import timedelta

from dagster import (
    AssetKey,
    DailyPartitionsDefinition,
    Definitions,
    FreshnessPolicy,
    MetadataValue,
    TableColumn,
    TableSchema,
    asset,
)

from orchestrator.catalog import build_catalog, json_safe, json_safe_metadata
from orchestrator.checks import build_health_checks


@asset(
    group_name="g",
    owners=["a@example.com", "team:data"],
    tags={"domain": "sales"},
    kinds={"pandas", "postgres"},
    metadata={
        "schema": TableSchema(columns=[TableColumn("id", "int")]),
        "n": 3,
        "url": MetadataValue.url("http://x"),
    },
    code_version="7",
    partitions_def=DailyPartitionsDefinition(start_date="2024-01-01"),
    freshness_policy=FreshnessPolicy.time_window(
        fail_window=timedelta(hours=2), warn_window=timedelta(hours=1)
    ),
    deps=["somewhere_else"],
)
def rich() -> None:
    """Has everything."""


@asset(deps=[rich])
def child() -> None:
    pass


def test_spec_fields() -> None:
    defs = Definitions(assets=[rich, child], asset_checks=build_health_checks([rich.key, child.key]))
    snapshot = build_catalog(defs, "loc")
    assert [a.key for a in snapshot.assets] == ["child", "rich"]  # the undefined dependency is no asset
    spec = snapshot.assets[1]
    assert spec.group == "g" and spec.description == "Has everything."
    assert spec.owners == ["a@example.com", "team:data"]
    assert spec.kinds == ["pandas", "postgres"]
    assert spec.tags == {"domain": "sales"}
    assert spec.metadata["n"] == 3 and spec.metadata["url"] == "http://x"
    assert spec.metadata["schema"] == [{"name": "id", "type": "int", "description": None}]
    assert spec.code_version == "7" and spec.partitioning and "Daily" in spec.partitioning
    assert spec.freshness == {"kind": "time_window", "fail_window_s": 7200.0, "warn_window_s": 3600.0}
    assert spec.upstream == ["somewhere_else"] and spec.downstream == ["child"]
    assert len(spec.checks) == 6 and spec.code_location == "loc"
    json.dumps(snapshot.model_dump(mode="json"))


def test_fingerprint_moves_with_content_only() -> None:
    one = build_catalog(Definitions(assets=[rich, child]), "loc")
    again = build_catalog(Definitions(assets=[child, rich]), "loc")
    assert one.fingerprint == again.fingerprint
    assert build_catalog(Definitions(assets=[rich]), "loc").fingerprint != one.fingerprint
    assert (
        build_catalog(Definitions(assets=[rich, child]), "loc", problems=["x: broken"]).fingerprint
        != one.fingerprint
    )


def test_json_safe_handles_what_metadata_holds() -> None:
    assert json_safe(float("nan")) == "nan" and json_safe(math.inf) == "inf"
    assert json_safe(AssetKey(["a", "b"])) == "a/b"
    assert json_safe({"k": (1, 2), "s": {3}}) == {"k": [1, 2], "s": [3]}
    assert len(str(json_safe("x" * 10_000))) < 5000
    metadata = {"md": MetadataValue.md("# hi"), "j": MetadataValue.json({"a": [1]}), "drop": 1}
    assert json_safe_metadata(metadata, exclude=["drop"]) == {"md": "# hi", "j": {"a": [1]}}


@asset(compute_kind="pandas")
def by_compute_kind() -> None:
    """The seed's style: compute_kind, which Dagster keeps on the op and reports as a kind."""


@asset(kinds={"python"}, tags={"dagster/kind/s3": "", "domain": "x"})
def by_kinds_and_tags() -> None:
    """kinds= and a kind tag together."""


def test_kinds_come_from_compute_kind_kinds_and_kind_tags() -> None:
    snapshot = build_catalog(Definitions(assets=[by_compute_kind, by_kinds_and_tags]), "loc")
    kinds = {a.key: a.kinds for a in snapshot.assets}
    assert kinds == {"by_compute_kind": ["pandas"], "by_kinds_and_tags": ["python", "s3"]}
    (tagged,) = (a for a in snapshot.assets if a.key == "by_kinds_and_tags")
    assert tagged.tags == {"domain": "x"}
    # the same through the repository (what the sensor builds its snapshot from)
    repo = Definitions(assets=[by_compute_kind]).get_repository_def()
    assert build_catalog(repo, "loc").assets[0].kinds == ["pandas"]
