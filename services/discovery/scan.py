"""Load a code location's definitions in-process and turn them into a catalog snapshot.

Used by the periodic rescan, by discovery requests and by `asset-manager discover-assets`. Dagster and the
orchestrator are imported lazily, inside the functions: the worker starts (and serves its registry) even when
the code location is broken; the failure is reported as a problem of the scan instead.

The orchestrator owns the definitive snapshot builder (`orchestrator.catalog.build_catalog`) and the module
loader (`orchestrator.loader`); when they are importable they are used, so the worker's snapshot and the
sensor's are the same. `snapshot_from_definitions` is the builder used when they are not (and by tests and
the benchmark, which build their own Definitions).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import JsonValue

from libs.common.events import AssetSpecData, CatalogSnapshotData


@dataclass
class ScanResult:
    """What a scan found: the snapshot (None when nothing could be loaded), modules scanned, problems."""

    code_location: str
    snapshot: CatalogSnapshotData | None
    modules: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when definitions loaded with no problem."""
        return self.snapshot is not None and not self.problems


def _jsonable(value: Any) -> JsonValue:
    """A metadata value as plain JSON (Dagster metadata values are wrapped objects)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    inner = getattr(value, "value", value)
    if inner is not value:
        return _jsonable(inner)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)


def _source(metadata: Mapping[str, Any]) -> tuple[str | None, int | None]:
    refs = metadata.get("dagster/code_references")
    for ref in getattr(refs, "code_references", None) or ():
        path = getattr(ref, "file_path", None)
        if path:
            return str(path), getattr(ref, "line_number", None)
    return None, None


def snapshot_from_definitions(defs: Any, code_location: str, problems: list[str] | None = None) -> CatalogSnapshotData:
    """Build the catalog snapshot of a `dagster.Definitions` (asset graph introspection, no execution)."""
    graph = defs.resolve_asset_graph()
    specs: list[AssetSpecData] = []
    for node in graph.asset_nodes:
        metadata = dict(node.metadata or {})
        if metadata.get("dagster/auto_created_stub_asset"):
            continue  # a placeholder Dagster made for an undefined dependency, not an asset of this location
        source_file, source_line = _source(metadata)
        metadata.pop("dagster/code_references", None)
        tags = {str(k): str(v) for k, v in (node.tags or {}).items() if not str(k).startswith("dagster/kind/")}
        freshness = getattr(node, "freshness_policy", None) or getattr(node, "legacy_freshness_policy", None)
        specs.append(
            AssetSpecData(
                key=node.key.to_user_string(),
                group=node.group_name,
                description=node.description,
                owners=list(node.owners or []),
                tags=tags,
                kinds=sorted(node.kinds or []),
                metadata={str(k): _jsonable(v) for k, v in metadata.items()},
                code_version=node.code_version,
                partitioning=str(node.partitions_def) if node.partitions_def is not None else None,
                source_file=source_file,
                source_line=source_line,
                code_location=code_location,
                upstream=sorted(k.to_user_string() for k in node.parent_keys),
                downstream=sorted(k.to_user_string() for k in node.child_keys),
                freshness={"policy": str(freshness)} if freshness is not None else None,
                checks=sorted(k.name for k in node.check_keys),
            )
        )
    specs.sort(key=lambda s: s.key)
    digest = hashlib.sha256(json.dumps([s.model_dump(mode="json") for s in specs], sort_keys=True).encode())
    return CatalogSnapshotData(
        code_location=code_location, fingerprint=digest.hexdigest()[:32], assets=specs, problems=list(problems or [])
    )


def _problem(where: str, exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" ({last[0].filename}:{last[0].lineno})" if last else ""
    return f"{where}: {type(exc).__name__}: {exc}{at}"


def fresh_import(module: str) -> None:
    """Forget `module`'s top-level package, so the next import reads the code as it is on disk now."""
    top = module.split(".", 1)[0]
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def definitions_loader(target: str) -> Loader:
    """A loader for the Definitions at `module:attribute` (default attribute `defs`), re-imported each call.

    When the module's package offers `orchestrator.loader`-style reporting (`scanned_modules` and
    `load_problems` on the definitions module, or `build_catalog` in a sibling `catalog` module), it is used,
    so the snapshot matches the one the orchestrator's sensor publishes.
    """
    module_name, _, attribute = target.partition(":")

    def load(code_location: str) -> tuple[CatalogSnapshotData, list[str]]:
        fresh_import(module_name)
        module = importlib.import_module(module_name)
        defs = getattr(module, attribute or "defs")
        if callable(defs) and not hasattr(defs, "resolve_asset_graph"):
            defs = defs()
        modules = [str(m) for m in getattr(module, "scanned_modules", [])]
        problems = [str(p) for p in getattr(module, "load_problems", [])]
        package = module_name.rpartition(".")[0]
        builder = None
        if package:
            try:
                builder = getattr(importlib.import_module(f"{package}.catalog"), "build_catalog", None)
            except ModuleNotFoundError:
                builder = None
        if builder is not None:
            snapshot: CatalogSnapshotData = builder(defs, code_location=code_location, problems=problems)
        else:
            snapshot = snapshot_from_definitions(defs, code_location, problems)
        return snapshot, modules

    return load


Loader = Callable[[str], tuple[CatalogSnapshotData, list[str]]]


def scan(code_location: str, loader: Loader) -> ScanResult:
    """Load `code_location` in-process; never raises for a broken code location (it becomes a problem)."""
    started = time.perf_counter()
    try:
        snapshot, modules = loader(code_location)
    except Exception as exc:  # a broken code location is a finding, not a crash
        return ScanResult(code_location, None, [], [_problem(code_location, exc)], time.perf_counter() - started)
    return ScanResult(code_location, snapshot, modules, list(snapshot.problems), time.perf_counter() - started)
