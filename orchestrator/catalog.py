"""The catalog snapshot: every asset definition of a code location as `AssetSpecData`, with a fingerprint.

`build_catalog(defs_or_repository, code_location)` is used by the publishing sensor (a `catalog.snapshot`
event whenever the fingerprint changes) and by `asset-manager discover-assets`. The fingerprint is a hash of
the canonical JSON of the snapshot, so it changes exactly when something a consumer can see changes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from datetime import date, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    AssetsDefinition,
    CodeReferencesMetadataValue,
    Definitions,
    LocalFileCodeReference,
    MetadataValue,
    RepositoryDefinition,
    TableSchema,
)
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetNode
from pydantic import BaseModel, JsonValue

from libs.common.events import (
    AssetSpecData,
    CatalogSnapshotData,
    Column,
    snapshot_fingerprint,
    user_job_names,
)
from libs.common.settings import PROJECT_ROOT
from libs.common.text import clip

# Definitions metadata key under which definitions.py records the asset-module problems of the scan.
PROBLEMS_METADATA_KEY = "ams/asset_module_problems"
CODE_REFERENCES_KEY = "dagster/code_references"
STUB_METADATA_KEY = "dagster/auto_created_stub_asset"
KIND_TAG_PREFIX = "dagster/kind/"
COMPUTE_KIND_TAG = "dagster/compute_kind"
# Long strings (markdown previews) are cut so one event stays small.
MAX_TEXT = 4000


def key_string(key: AssetKey) -> str:
    """The string form of an asset key used in every event (`a/b` for a multi-part key)."""
    return key.to_user_string()


def json_safe(value: Any, *, _depth: int = 0) -> JsonValue:
    """`value` (metadata values, Dagster records, dates, ...) as plain JSON data."""
    if _depth > 20:
        return clip(str(value), MAX_TEXT)
    if isinstance(value, MetadataValue):
        value = value.value
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return clip(value, MAX_TEXT)
    if isinstance(value, AssetKey):
        return key_string(value)
    if isinstance(value, TableSchema):
        return [c.model_dump() for c in columns_of(value)]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Enum):
        return json_safe(value.value, _depth=_depth + 1)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, _depth=_depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [json_safe(v, _depth=_depth + 1) for v in items]
    if isinstance(value, BaseModel):
        return json_safe(value.model_dump(), _depth=_depth + 1)
    if is_dataclass(value) and not isinstance(value, type):
        return json_safe(asdict(value), _depth=_depth + 1)
    as_dict = getattr(value, "_asdict", None)
    if callable(as_dict):  # NamedTuple-based Dagster records
        return json_safe(as_dict(), _depth=_depth + 1)
    data = getattr(value, "data", None)
    if isinstance(data, Mapping):  # TableRecord
        return json_safe(data, _depth=_depth + 1)
    return clip(str(value), MAX_TEXT)


def json_safe_metadata(metadata: Mapping[str, Any], *, exclude: Iterable[str] = ()) -> dict[str, JsonValue]:
    """A metadata mapping as JSON data, without the keys in `exclude`."""
    skip = set(exclude)
    return {str(k): json_safe(v) for k, v in metadata.items() if k not in skip}


def columns_of(schema: TableSchema) -> list[Column]:
    """The columns of a Dagster TableSchema as event `Column`s."""
    return [Column(name=c.name, type=c.type or "", description=c.description) for c in schema.columns]


def _source_of(metadata: Mapping[str, Any]) -> tuple[str | None, int | None]:
    refs = metadata.get(CODE_REFERENCES_KEY)
    if not isinstance(refs, CodeReferencesMetadataValue):
        return None, None
    for ref in refs.code_references:
        if isinstance(ref, LocalFileCodeReference):
            path = Path(ref.file_path)
            try:
                shown = str(path.resolve().relative_to(PROJECT_ROOT))
            except ValueError:
                shown = str(path)
            return shown, ref.line_number
    return None, None


def _freshness_of(node: BaseAssetNode) -> dict[str, JsonValue] | None:
    # Dagster >= 1.11 policies (time window / cron); the legacy policy of older code otherwise.
    from dagster._core.definitions.freshness import CronFreshnessPolicy, TimeWindowFreshnessPolicy

    policy = node.freshness_policy_or_from_metadata
    if isinstance(policy, TimeWindowFreshnessPolicy):
        warn = policy.warn_window.to_timedelta() if policy.warn_window else None
        return {
            "kind": "time_window",
            "fail_window_s": policy.fail_window.to_timedelta().total_seconds(),
            "warn_window_s": warn.total_seconds() if warn else None,
        }
    if isinstance(policy, CronFreshnessPolicy):
        return {
            "kind": "cron",
            "deadline_cron": policy.deadline_cron,
            "lower_bound_delta_s": policy.lower_bound_delta.total_seconds(),
            "timezone": policy.timezone,
        }
    legacy = node.legacy_freshness_policy
    if legacy is not None:
        return {
            "kind": "legacy",
            "maximum_lag_minutes": legacy.maximum_lag_minutes,
            "cron_schedule": legacy.cron_schedule,
            "cron_schedule_timezone": legacy.cron_schedule_timezone,
        }
    return None


def kinds_of(node: BaseAssetNode, tags: Mapping[str, str]) -> list[str]:
    """The asset's kinds as Dagster shows them: `kinds=`, `dagster/kind/<kind>` tags and `compute_kind=`.

    `compute_kind` is not an asset tag: Dagster keeps it on the op (`dagster/compute_kind`) and reports it as
    a kind (GraphQL `kinds`), so it is read from there as well.
    """
    found = {k.removeprefix(KIND_TAG_PREFIX) for k in tags if k.startswith(KIND_TAG_PREFIX)}
    found.update(str(k) for k in getattr(node, "kinds", ()) or ())
    if COMPUTE_KIND_TAG in tags:
        found.add(tags[COMPUTE_KIND_TAG])
    assets_def = getattr(node, "assets_def", None)  # local graphs; remote nodes carry kinds as tags
    if isinstance(assets_def, AssetsDefinition) and assets_def.is_executable:
        op_tags = assets_def.node_def.tags or {}
        if op_tags.get(COMPUTE_KIND_TAG):
            found.add(str(op_tags[COMPUTE_KIND_TAG]))
    return sorted(k for k in found if k)


def spec_of(
    node: BaseAssetNode,
    code_location: str,
    *,
    job_names: Iterable[str] = (),
    repository: str | None = None,
) -> AssetSpecData:
    """One asset node of the graph as `AssetSpecData` (`job_names`: every job that runs it, `jobs_by_key`)."""
    tags = {str(k): str(v) for k, v in node.tags.items()}
    kinds = kinds_of(node, tags)
    plain_tags = {k: v for k, v in sorted(tags.items()) if not k.startswith(KIND_TAG_PREFIX)}
    source_file, source_line = _source_of(node.metadata)
    return AssetSpecData(
        key=key_string(node.key),
        group=node.group_name,
        description=node.description,
        owners=list(node.owners),
        tags=plain_tags,
        kinds=kinds,
        metadata=json_safe_metadata(node.metadata, exclude=(CODE_REFERENCES_KEY,)),
        code_version=node.code_version,
        partitioning=str(node.partitions_def) if node.partitions_def is not None else None,
        source_file=source_file,
        source_line=source_line,
        code_location=code_location,
        upstream=sorted(key_string(k) for k in node.parent_keys),
        downstream=sorted(key_string(k) for k in node.child_keys),
        freshness=_freshness_of(node),
        checks=sorted(k.name for k in node.check_keys),
        job_names=user_job_names(job_names),
        repository=repository,
    )


def jobs_by_key(repository: RepositoryDefinition) -> dict[AssetKey, list[str]]:
    """The names of the team's jobs that hold each asset, as Dagster's GraphQL `jobNames` gives them (the
    assets a job selects and the external ones it reads), so that both sources of a snapshot agree.

    Dagster's implicit asset jobs are not built: `user_job_names` drops them anyway, and building the one
    that holds every asset took 29 s for 10,000 assets (`bench/discovery.py`), twice Dagster's own load."""
    out: dict[AssetKey, list[str]] = {}
    for name in user_job_names(repository.job_names):
        job = repository.get_job(name)
        layer = job.asset_layer
        for key in {*layer.external_job_asset_keys, *layer.selected_asset_keys}:
            out.setdefault(key, []).append(job.name)
    return out


def _repository_of(defs_or_repository: Definitions | RepositoryDefinition) -> RepositoryDefinition:
    if isinstance(defs_or_repository, Definitions):
        return defs_or_repository.get_repository_def()
    return defs_or_repository


def _is_defined(node: BaseAssetNode) -> bool:
    # Dagster adds stub (and virtual) nodes for dependencies nobody defines: not assets of this location,
    # they only appear in the `upstream` of the assets that declare them.
    return not node.is_virtual and not node.metadata.get(STUB_METADATA_KEY)


def problems_of(metadata: Mapping[str, Any]) -> list[str]:
    """The asset-module problems definitions.py recorded in the Definitions metadata."""
    raw = json_safe(metadata.get(PROBLEMS_METADATA_KEY))
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return [raw]
    if not raw:
        return []
    return [str(p) for p in raw] if isinstance(raw, list) else [str(raw)]


def build_catalog(
    defs_or_repository: Definitions | RepositoryDefinition,
    code_location: str,
    *,
    problems: Iterable[str] | None = None,
) -> CatalogSnapshotData:
    """The snapshot of every asset defined in `defs_or_repository` (stubs of undefined upstreams excluded).

    `problems` defaults to the asset-module problems recorded in the definitions' metadata.
    """
    repository = _repository_of(defs_or_repository)
    graph, metadata = repository.asset_graph, repository.metadata or {}
    jobs = jobs_by_key(repository)
    nodes = sorted((n for n in graph.asset_nodes if _is_defined(n)), key=lambda n: key_string(n.key))
    assets = [
        spec_of(node, code_location, job_names=jobs.get(node.key, ()), repository=repository.name)
        for node in nodes
    ]
    found = sorted(problems if problems is not None else problems_of(metadata))
    return CatalogSnapshotData(
        code_location=code_location,
        fingerprint=snapshot_fingerprint(assets, found),
        assets=assets,
        problems=found,
    )
