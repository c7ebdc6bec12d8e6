"""Fixtures for CLI tests: an isolated environment (stores, config, ports) and a real Dagster code
location."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from asset_manager.cli import main
from libs.common.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).with_name("asset-manager")

CODE = """
import dagster as dg

@dg.asset(group_name="stg__ingestion", owners=["ana@example.com"],
          tags={{"domain": "sales", "source": "ERP"}}, kinds={{"pandas"}}, description="{description}")
def raw_orders() -> None: ...

@dg.asset(deps=[raw_orders], group_name="stg__loaders", owners=["team:data"], tags={{"domain": "sales"}},
          kinds={{"pandas"}}, description="Staged orders.")
def stg_orders() -> None: ...

@dg.asset(deps=[stg_orders], group_name="transformed_data", tags={{"domain": "finance"}})
def orders_report() -> None: ...
{extra}
nightly = dg.define_asset_job("nightly_orders", selection=[raw_orders, stg_orders])
defs = dg.Definitions(assets=[raw_orders, stg_orders, orders_report{extra_names}], jobs=[nightly])
"""


@dataclass
class Cli:
    home: Path
    location_dir: Path
    package: str
    env: dict[str, str]
    capsys: pytest.CaptureFixture[str]

    def run(self, *args: str) -> tuple[int, str, str]:
        """Run the real command in-process (main(), as the console script does)."""
        self.capsys.readouterr()
        code = main(list(args))
        out, err = self.capsys.readouterr()
        return code, out, err

    def run_process(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `.venv/bin/asset-manager` as a process (stdout and stderr piped)."""
        return subprocess.run(
            [str(EXE), *args], env=self.env, capture_output=True, text=True, timeout=120, cwd=self.home
        )

    def write_location(
        self, description: str = "Raw orders.", *, with_extra: bool = False, broken: bool = False
    ) -> None:
        pkg = self.location_dir / self.package
        pkg.mkdir(exist_ok=True)
        (pkg / "__init__.py").write_text("")
        if broken:
            (pkg / "definitions.py").write_text(
                "import dagster as dg\nraise ImportError('no module named sqlx')\n"
            )
            return
        extra = (
            "\n@dg.asset(group_name='transformed_data')\ndef extra_asset() -> None: ...\n"
            if with_extra
            else ""
        )
        (pkg / "definitions.py").write_text(
            textwrap.dedent(
                CODE.format(
                    description=description, extra=extra, extra_names=", extra_asset" if with_extra else ""
                )
            )
        )

    @property
    def metadata_db(self) -> Path:
        return self.home / "metadata.db"


@pytest.fixture
def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str
) -> Iterator[Cli]:
    home = tmp_path / "home"
    home.mkdir()
    location_dir = tmp_path / "code"
    location_dir.mkdir()
    package = f"cliloc_{uuid.uuid4().hex[:8]}"
    for name in list(os.environ):
        if name.startswith("AMS_") and name not in ("AMS_FAIL_ON_SKIP", "AMS_TEST_REDIS_URL"):
            monkeypatch.delenv(name)
    values = {
        "DAGSTER_HOME": str(home),
        "AMS_REDIS__URL": redis_url,
        "AMS_BUS__PREFIX": f"cli-{uuid.uuid4().hex[:8]}",
        "AMS_DISCOVERY__DEFINITIONS": f"{package}.definitions:defs",
        "AMS_DAGSTER__CODE_LOCATION": "orchestrator",
        "AMS_LOGGING__LEVEL": "WARNING",
        # Nothing listens on these: tests never depend on what else runs on this machine.
        "AMS_SERVICES__DISCOVERY__PORT": str(free_port()),
        "AMS_SERVICES__HEALTH__PORT": str(free_port()),
        "AMS_SERVICES__ALERTS__PORT": str(free_port()),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(location_dir))
    monkeypatch.chdir(home)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(location_dir), str(ROOT)])}
    c = Cli(home, location_dir, package, env, capsys)
    c.write_location()
    # discover-assets re-imports the code location in-process; give later tests the modules they imported.
    kept = {n: m for n, m in sys.modules.items() if n == "orchestrator" or n.startswith("orchestrator.")}
    yield c
    for name in [
        n
        for n in sys.modules
        if n in (package, "orchestrator") or n.startswith((package + ".", "orchestrator."))
    ]:
        del sys.modules[name]
    sys.modules.update(kept)


@pytest.fixture
def registered(cli: Cli) -> Cli:
    code, out, err = cli.run("discover-assets")
    assert code == 0, (out, err)
    return cli
