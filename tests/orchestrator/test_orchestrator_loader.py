"""Asset module discovery: new README-style files are picked up, broken modules are reported, not fatal."""

from __future__ import annotations

import re
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, Definitions

from libs.common.settings import PROJECT_ROOT
from orchestrator.catalog import build_catalog
from orchestrator.definitions import build_definitions
from orchestrator.loader import module_files, scan_asset_modules
from orchestrator.shared.demo_source import create_demo_source, default_demo_source_path


def readme_examples() -> dict[str, str]:
    """The README's asset examples: python blocks whose first line names a file under orchestrator/assets/."""
    readme = PROJECT_ROOT / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    found: dict[str, str] = {}
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        first = block.lstrip().splitlines()[0] if block.strip() else ""
        match = re.match(r"#\s*(orchestrator/assets/\S+\.py)\s*$", first)
        if match:
            found[match.group(1)] = block
    assert found, (
        "README.md shows no asset module example (a python block starting `# orchestrator/assets/...`)"
    )
    return found


@pytest.fixture
def temp_package(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An empty asset package `<name>.assets` (with ingestion/ and loaders/) importable from tmp_path."""
    name = f"ams_tmp_{uuid.uuid4().hex[:8]}"
    assets = tmp_path / name / "assets"
    for folder in (assets, assets / "ingestion", assets / "loaders"):
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
    (tmp_path / name / "__init__.py").write_text("")
    yield f"{name}.assets", tmp_path
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def write(root: Path, package: str, rel: str, code: str) -> Path:
    path = root / package.replace(".", "/") / rel
    path.write_text(textwrap.dedent(code))
    return path


def test_the_project_assets_load_without_problems() -> None:
    scan = scan_asset_modules()
    assert scan.problems == []
    assert {
        "orchestrator.assets.ingestion.orders_ingestion",
        "orchestrator.assets.customer_orders_transform",
    } <= set(scan.modules)
    keys = {k for keys in scan.assets_by_module.values() for k in keys}
    assert {"raw_orders", "stg_orders", "transformed_customer_orders"} <= keys


def test_readme_asset_files_are_discovered_with_no_other_edit(
    temp_package: tuple[str, Path], dagster_instance: DagsterInstance
) -> None:
    package, root = temp_package
    first = scan_asset_modules(package, search_path=root)
    assert first.assets == [] and first.problems == []

    examples = readme_examples()
    assert {p.split("/")[2] for p in examples} >= {"ingestion", "loaders"}  # one file per layer
    for rel_path, code in examples.items():
        write(root, package, rel_path.removeprefix("orchestrator/assets/"), code)

    scan = scan_asset_modules(package, search_path=root)
    assert scan.problems == [], [str(p) for p in scan.problems]
    defs = build_definitions(scan, sensors=[])
    Definitions.validate_loadable(defs)
    keys = {a.key for a in build_catalog(defs, "tmp").assets}
    assert {"raw_my_new_data", "stg_my_new_data", "transformed_my_new_data"} <= keys
    assert len(keys) == len(examples)

    # ... and they work: materialized against the demo source `asset-manager init` creates.
    create_demo_source(default_demo_source_path())
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(instance=dagster_instance)
    assert result.success
    for key in keys:
        record = dagster_instance.fetch_materializations(AssetKey(key), limit=1).records[0]
        assert "dagster/row_count" in record.asset_materialization.metadata  # type: ignore[union-attr]


def test_a_broken_module_is_reported_and_the_rest_still_load(temp_package: tuple[str, Path]) -> None:
    package, root = temp_package
    write(
        root,
        package,
        "ingestion/good_ingestion.py",
        """
        from dagster import asset

        @asset(group_name="stg__ingestion", kinds={"python"})
        def raw_good() -> int:
            return 1

        all_assets = [raw_good]
    """,
    )
    broken = write(
        root,
        package,
        "ingestion/broken_ingestion.py",
        """
        from dagster import asset
        import this_module_does_not_exist_anywhere

        all_assets = []
    """,
    )
    write(root, package, "loaders/syntax_loader.py", "def broken(:\n    pass\n")
    write(
        root,
        package,
        "no_list_transform.py",
        """
        from dagster import asset

        @asset
        def transformed_orphan() -> int:
            return 2
    """,
    )
    write(root, package, "not_assets_transform.py", "all_assets = ['raw_good']\n")
    write(root, package, "_helpers.py", "raise RuntimeError('helpers are never imported as asset modules')\n")

    scan = scan_asset_modules(package, search_path=root)
    problems = {p.module.rsplit(".", 1)[-1]: p for p in scan.problems}
    assert set(problems) == {"broken_ingestion", "syntax_loader", "no_list_transform", "not_assets_transform"}
    assert "ModuleNotFoundError" in problems["broken_ingestion"].error
    assert "this_module_does_not_exist_anywhere" in problems["broken_ingestion"].error
    assert problems["broken_ingestion"].path == str(broken)
    assert "SyntaxError" in problems["syntax_loader"].error
    assert "all_assets" in problems["no_list_transform"].error
    assert "not assets" in problems["not_assets_transform"].error
    assert [k for keys in scan.assets_by_module.values() for k in keys] == ["raw_good"]

    defs = build_definitions(scan, sensors=[])
    Definitions.validate_loadable(defs)
    snapshot = build_catalog(defs, "tmp")
    assert [a.key for a in snapshot.assets] == ["raw_good"]
    assert len(snapshot.problems) == 4
    assert any("broken_ingestion" in p and "ModuleNotFoundError" in p for p in snapshot.problems)


def test_duplicate_keys_are_a_problem_not_a_crash(temp_package: tuple[str, Path]) -> None:
    package, root = temp_package
    code = """
        from dagster import asset

        @asset
        def raw_twice() -> int:
            return 1

        all_assets = [raw_twice]
    """
    write(root, package, "ingestion/a_ingestion.py", code)
    write(root, package, "ingestion/b_ingestion.py", code)
    scan = scan_asset_modules(package, search_path=root)
    assert len(scan.assets) == 1
    assert len(scan.problems) == 1 and "duplicate asset keys: raw_twice" in scan.problems[0].error
    Definitions.validate_loadable(build_definitions(scan, sensors=[]))


def test_a_rescan_sees_an_edited_and_a_fixed_module(temp_package: tuple[str, Path]) -> None:
    package, root = temp_package
    path = write(root, package, "ingestion/edit_ingestion.py", "import nope_not_here\nall_assets = []\n")
    assert len(scan_asset_modules(package, search_path=root).problems) == 1
    path.write_text(
        "from dagster import asset\n\n@asset\ndef raw_fixed() -> int:\n    return 1\n\n"
        "all_assets = [raw_fixed]\n"
    )
    scan = scan_asset_modules(package, search_path=root)
    assert scan.problems == [] and scan.assets_by_module == {
        f"{package}.ingestion.edit_ingestion": ["raw_fixed"]
    }


def test_module_files_skip_private_files_and_folders(tmp_path: Path) -> None:
    for rel in ("a.py", "_b.py", "sub/c.py", "_private/d.py", ".hidden/e.py", "sub/__init__.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert [p.relative_to(tmp_path).as_posix() for p in module_files(tmp_path)] == ["a.py", "sub/c.py"]
