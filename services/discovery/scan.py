"""Load a code location's definitions in-process and turn them into a catalog snapshot.

Used by the periodic rescan, by discovery requests and by `asset-manager discover-assets`. Dagster and the
orchestrator are imported lazily, inside the functions: the worker starts (and serves its registry) even when
the code location is broken; the failure is reported as a problem of the scan instead.

The snapshot is built by the orchestrator's own `orchestrator.catalog.build_catalog` (the Dagster side, the
same code the publishing sensor runs), so the worker's snapshot and the sensor's are the same.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libs.common.events import CatalogSnapshotData


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


def catalog_builder() -> Callable[..., CatalogSnapshotData]:
    """The orchestrator's `build_catalog`: the sensor's own builder, so both snapshots agree (fingerprints
    too)."""
    builder: Callable[..., CatalogSnapshotData] = importlib.import_module(
        "orchestrator.catalog"
    ).build_catalog
    return builder


def source_signature(module: str) -> tuple[tuple[str, int, int], ...] | None:
    """(path, mtime, size) of every .py file of `module`'s top-level package, without importing it."""
    top = module.split(".", 1)[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = [Path(p) for p in (spec.submodule_search_locations or [])]
    files = [f for root in roots for f in root.rglob("*.py")] if roots else [Path(spec.origin or "")]
    out = []
    for file in sorted(files):
        try:
            stat = file.stat()
        except OSError:
            continue
        out.append((str(file), stat.st_mtime_ns, stat.st_size))
    return tuple(out)


def definitions_loader(target: str) -> Loader:
    """A loader for the Definitions at `module:attribute` (default attribute `defs`), re-imported each call.

    The module may report its scan as `scanned_modules` and `load_problems` (orchestrator.definitions does);
    the snapshot is built by `catalog_builder()`. A load is reused while no `.py` file of the package changed
    (files outside it, such as YAML the definitions read, are not watched: a restart or an edit re-reads).
    """
    module_name, _, attribute = target.partition(":")
    cache: dict[str, Any] = {}

    def load(code_location: str) -> tuple[CatalogSnapshotData, list[str]]:
        # Re-importing thousands of asset definitions costs seconds of CPU: when no source file of the
        # package changed since the last successful load, that load's result stands.
        signature = source_signature(module_name)
        if signature is not None and cache.get("signature") == (signature, code_location):
            return cache["result"]  # type: ignore[no-any-return]
        fresh_import(module_name)
        module = importlib.import_module(module_name)
        defs = getattr(module, attribute or "defs")
        if callable(defs) and not hasattr(defs, "resolve_asset_graph"):
            defs = defs()
        modules = [str(m) for m in getattr(module, "scanned_modules", [])]
        reported = getattr(module, "load_problems", None)
        problems = [str(p) for p in reported] if reported is not None else None
        snapshot = catalog_builder()(defs, code_location, problems=problems)
        cache.update(signature=(signature, code_location), result=(snapshot, modules))
        return snapshot, modules

    return load


Loader = Callable[[str], tuple[CatalogSnapshotData, list[str]]]


def scan(code_location: str, loader: Loader) -> ScanResult:
    """Load `code_location` in-process; never raises for a broken code location (it becomes a problem)."""
    started = time.perf_counter()
    try:
        snapshot, modules = loader(code_location)
    except Exception as exc:  # a broken code location is a finding, not a crash
        return ScanResult(
            code_location, None, [], [_problem(code_location, exc)], time.perf_counter() - started
        )
    return ScanResult(
        code_location, snapshot, modules, list(snapshot.problems), time.perf_counter() - started
    )
