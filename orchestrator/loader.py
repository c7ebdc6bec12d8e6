"""Asset module discovery: import every module under `orchestrator/assets/` and collect its `all_assets`.

Convention (the README's "Creating New Assets"): ingestion assets in `assets/ingestion/`, loaders in
`assets/loaders/`, transformations directly in `assets/`; every module lists its definitions in a module-level
`all_assets` list. A module that fails to import, or has no usable `all_assets`, is reported as a
:class:`ModuleProblem` (module, file, error) and the other modules still load.

Modules and folders whose name starts with `_` or `.` are helpers, not asset modules, and are skipped.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import AssetsDefinition, AssetSpec, SourceAsset

ASSETS_PACKAGE = "orchestrator.assets"
# Everything `all_assets` may hold that Definitions(assets=...) accepts.
AssetLike = AssetsDefinition | AssetSpec | SourceAsset
_ASSET_TYPES = (AssetsDefinition, AssetSpec, SourceAsset)


@dataclass(frozen=True)
class ModuleProblem:
    """One asset module that could not contribute its assets."""

    module: str
    path: str
    error: str

    def __str__(self) -> str:
        return f"{self.module} ({self.path}): {self.error}"


@dataclass(frozen=True)
class ScanResult:
    """What a scan found: the assets, every module scanned (in order) and the problems."""

    package: str
    root: Path
    assets: list[AssetLike] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    problems: list[ModuleProblem] = field(default_factory=list)
    # module name -> keys of the assets it contributed (for `discover-assets --verbose`)
    assets_by_module: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def module_files(root: Path) -> list[Path]:
    """The asset module files under `root`, sorted, skipping `_`/`.`-prefixed files and folders."""
    found: list[Path] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part.startswith(("_", ".")) for part in rel.parts):
            continue
        found.append(path)
    return found


def _package_root(package: str, search_path: Path | None) -> Path:
    if search_path is not None and str(search_path) not in sys.path:
        sys.path.insert(0, str(search_path))
    importlib.invalidate_caches()
    pkg = importlib.import_module(package)
    paths = list(getattr(pkg, "__path__", []))
    if not paths:
        raise ValueError(f"{package} is a module, not a package")
    return Path(paths[0]).resolve()


def _error_text(exc: BaseException) -> str:
    # The innermost frame inside the module tells the user which line broke it.
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (line {frames[-1].lineno} of {Path(frames[-1].filename).name})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _collect(module_name: str, module: Any, path: Path) -> tuple[list[AssetLike], ModuleProblem | None]:
    if not hasattr(module, "all_assets"):
        return [], ModuleProblem(
            module_name, str(path), "no `all_assets` list: add `all_assets = [<your assets>]`"
        )
    items = module.all_assets
    if not isinstance(items, list | tuple):
        return [], ModuleProblem(
            module_name, str(path), f"`all_assets` must be a list, not {type(items).__name__}"
        )
    bad = [repr(item)[:80] for item in items if not isinstance(item, _ASSET_TYPES)]
    if bad:
        return [], ModuleProblem(
            module_name, str(path), f"`all_assets` holds objects that are not assets: {', '.join(bad)}"
        )
    return list(items), None


def _keys_of(item: AssetLike) -> list[str]:
    if isinstance(item, AssetsDefinition):
        return [k.to_user_string() for k in item.keys]
    return [item.key.to_user_string()]


def scan_asset_modules(package: str = ASSETS_PACKAGE, *, search_path: Path | None = None) -> ScanResult:
    """Import every asset module of `package` and collect their `all_assets`.

    `search_path` is put on `sys.path` first (tests scan a temporary package). A module is re-imported
    when its file changed since the last scan in this process, so a rescan sees edits.
    """
    root = _package_root(package, search_path)
    result = ScanResult(package=package, root=root)
    seen: dict[str, str] = {}
    for path in module_files(root):
        rel = path.relative_to(root).with_suffix("")
        module_name = ".".join((package, *rel.parts))
        result.modules.append(module_name)
        try:
            module = _import_fresh(module_name, path)
        except Exception as exc:  # any import error must not take the other modules down
            result.problems.append(ModuleProblem(module_name, str(path), _error_text(exc)))
            continue
        items, problem = _collect(module_name, module, path)
        if problem is not None:
            result.problems.append(problem)
            continue
        keys = [k for item in items for k in _keys_of(item)]
        clash = [f"{k} (also in {seen[k]})" for k in keys if k in seen]
        if clash:
            # Dagster would refuse the whole code location on a duplicate key: keep the first definition.
            result.problems.append(
                ModuleProblem(module_name, str(path), f"duplicate asset keys: {', '.join(clash)}")
            )
            continue
        seen.update(dict.fromkeys(keys, module_name))
        result.assets.extend(items)
        result.assets_by_module[module_name] = keys
    return result


def _import_fresh(module_name: str, path: Path) -> Any:
    module = sys.modules.get(module_name)
    if module is not None:
        cached = getattr(module, "__cached_mtime__", None)
        if cached == path.stat().st_mtime_ns:
            return module
        del sys.modules[module_name]
    module = importlib.import_module(module_name)
    setattr(module, "__cached_mtime__", path.stat().st_mtime_ns)  # noqa: B010 - our own marker
    return module


def asset_keys(assets: Sequence[AssetLike]) -> list[str]:
    """The user-facing keys of `assets`, in order."""
    return [k for item in assets for k in _keys_of(item)]


__all__ = [
    "ASSETS_PACKAGE",
    "AssetLike",
    "ModuleProblem",
    "ScanResult",
    "asset_keys",
    "module_files",
    "scan_asset_modules",
]
