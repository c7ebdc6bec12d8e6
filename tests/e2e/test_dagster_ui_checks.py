"""The health checks in the Dagster UI, end to end: `dagster dev` with a code location that declares the
checks and runs the event-publishing sensor, real Redis, the health worker as a process. A failing and a
volume-anomalous materialization show up as failed checks in Dagster's GraphQL API, then pass again after
recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.common.redis_server import free_port
from libs.common.testing import wait_for, worker_env

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]

CODE = """
import os
from pathlib import Path

import dagster as dg

from orchestrator.checks import build_health_checks
from orchestrator.sensors import build_event_sensor

MODE = Path(os.environ["E2E_MODE_FILE"])


@dg.asset(group_name="e2e")
def e2e_orders() -> dg.MaterializeResult:
    mode, _, rows = MODE.read_text().partition(":")
    if mode == "fail":
        raise RuntimeError("source database unreachable")
    return dg.MaterializeResult(metadata={"dagster/row_count": int(rows)})


defs = dg.Definitions(
    assets=[e2e_orders],
    asset_checks=build_health_checks([e2e_orders.key]),
    sensors=[build_event_sensor(minimum_interval_s=1)],
)
"""

QUERY = """
query Checks($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks { name executionForLatestMaterialization { status evaluation { success severity } } }
        }
      }
    }
  }
}
"""


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class System:
    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.package = f"e2e_checks_{uuid.uuid4().hex[:8]}"
        self.code_dir = tmp_path / "code"
        (self.code_dir / self.package).mkdir(parents=True)
        (self.code_dir / self.package / "__init__.py").write_text("")
        (self.code_dir / self.package / "definitions.py").write_text(textwrap.dedent(CODE))
        self.mode_file = tmp_path / "mode"
        self.mode("ok", 1000)
        self.dagster_port = free_port()
        self.health_port = free_port()
        self.url = f"http://127.0.0.1:{self.dagster_port}"
        self.logs = tmp_path
        self.env = worker_env(
            self.home,
            redis_url,
            f"e2e-{uuid.uuid4().hex[:8]}",
            AMS_LOGGING__FORMAT="json",
            AMS_SERVICES__HEALTH__PORT=str(self.health_port),
            AMS_DAGSTER__URL=self.url,
            # a short history is enough to judge volume in a test
            AMS_HEALTH__DEFAULTS__VOLUME_MIN_TRAINING_SIZE="3",
            E2E_MODE_FILE=str(self.mode_file),
            PYTHONPATH=os.pathsep.join([str(self.code_dir), str(ROOT)]),
        )
        self.processes: list[subprocess.Popen[bytes]] = []

    def mode(self, mode: str, rows: int = 0) -> None:
        self.mode_file.write_text(f"{mode}:{rows}")

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        process = subprocess.Popen(
            args, env=self.env, cwd=self.home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)

    def checks(self) -> dict[str, tuple[str | None, bool | None, str | None]]:
        reply = httpx.post(
            f"{self.url}/graphql",
            json={"query": QUERY, "variables": {"key": {"path": ["e2e_orders"]}}},
            timeout=10,
        ).json()
        node = reply["data"]["assetNodeOrError"]
        out: dict[str, tuple[str | None, bool | None, str | None]] = {}
        for check in node["assetChecksOrError"]["checks"]:
            execution = check["executionForLatestMaterialization"]
            evaluation = (execution or {}).get("evaluation") or {}
            out[check["name"]] = (
                (execution or {}).get("status"),
                evaluation.get("success"),
                evaluation.get("severity"),
            )
        return out


@pytest.fixture
def system(tmp_path: Path, redis_url: str) -> Iterator[System]:
    s = System(tmp_path, redis_url)
    try:
        s.start("health", [sys.executable, "-m", "services.health"])
        s.start(
            "dagster",
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-m",
                f"{s.package}.definitions",
                "-p",
                str(s.dagster_port),
                "-h",
                "127.0.0.1",
            ],
        )
        wait_for(
            lambda: answers(f"{s.url}/server_info") and answers(f"http://127.0.0.1:{s.health_port}/healthz"),
            180,
            "dagster dev and the health worker",
            lambda: s.log("dagster") + s.log("health"),
        )
        yield s
    finally:
        s.stop()


def test_failed_and_anomalous_materializations_show_as_failed_checks_then_recover(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    monkeypatch.setenv("DAGSTER_HOME", str(system.home))
    monkeypatch.setenv("E2E_MODE_FILE", str(system.mode_file))
    monkeypatch.syspath_prepend(str(system.code_dir))
    module: Any = __import__(f"{system.package}.definitions", fromlist=["e2e_orders"])
    instance = dg.DagsterInstance.get()

    def run(mode: str, rows: int = 0) -> None:
        system.mode(mode, rows)
        result = dg.materialize([module.e2e_orders], instance=instance, raise_on_error=False)
        assert result.success == (mode != "fail")

    def diagnose() -> str:
        return (
            f"checks: {system.checks()}\n--- health\n{system.log('health')}\n"
            f"--- dagster\n{system.log('dagster')}"
        )

    def check_is(name: str, success: bool) -> Callable[[], bool]:
        return lambda: system.checks().get(name, (None, None, None))[1] is success

    for rows in (1000, 1012, 993, 1005):
        run("ok", rows)
    wait_for(
        lambda: all(v[1] is True for v in system.checks().values()) and len(system.checks()) == 6,
        120,
        "every check passed in Dagster",
        diagnose,
    )

    run("ok", 250_000)  # a volume anomaly
    wait_for(check_is("ams_volume_anomaly", False), 120, "volume_anomaly failed in Dagster", diagnose)
    assert system.checks()["ams_volume_anomaly"][2] == "ERROR"
    assert system.checks()["ams_execution_status"][1] is True

    run("fail")  # a failing materialization
    wait_for(check_is("ams_execution_status", False), 120, "execution_status failed in Dagster", diagnose)
    assert system.checks()["ams_execution_status"][2] == "ERROR"

    run("ok", 1001)  # recovery
    wait_for(
        lambda: check_is("ams_execution_status", True)() and check_is("ams_volume_anomaly", True)(),
        120,
        "checks passing again after recovery",
        diagnose,
    )
    assert all(v[1] is True for v in system.checks().values()), system.checks()
