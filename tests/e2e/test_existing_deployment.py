"""Attached to a Dagster deployment a team already runs: ONE `dagster dev` on a workspace of two code
locations (this project's, which only adds the publishing sensor, and `finance`, a separate package under
tests/e2e/finance_location that knows nothing of this project), the three workers as processes on real
Redis, a real HTTP receiver on loopback.

Checks, in order: every asset of both locations registered from the webserver with its location, owners,
tags, kinds and the lineage across locations; a failing materialization launched in the finance location
opens an alert naming its owner and location, delivered as a signed webhook; the recovery resolves it; an
edit of the finance code and a reload of that location are versioned by the next poll.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from libs.common.redis_server import free_port
from libs.common.testing import ServiceProcess, read_store, wait_for, worker_env
from services.alerts.testing import RecordingReceiver

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
FINANCE_SOURCE = Path(__file__).resolve().parent / "finance_location"
SECRET = "whsec_" + "ZXhpc3RpbmctZGVwbG95bWVudC1lMmUtb25seQ=="
ENTRIES = "finance/ledger/entries"

WORKSPACE = """
load_from:
  - python_module:
      module_name: orchestrator.definitions
      attribute: defs
      location_name: orchestrator
      working_directory: {root}
  - python_module:
      module_name: finance_pipelines.definitions
      attribute: defs
      location_name: finance
      working_directory: {finance}
"""

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}
"""
RUN_STATUS = "query Status($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
RELOAD = """
mutation Reload($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) { __typename } }
"""


class Deployment:
    """The team's `dagster dev` plus this project's workers, all configured through the environment."""

    def __init__(self, tmp_path: Path, redis_url: str, receiver: RecordingReceiver) -> None:
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.finance = tmp_path / "finance"  # a copy: the test edits it
        shutil.copytree(FINANCE_SOURCE, self.finance, ignore=shutil.ignore_patterns("__pycache__"))
        self.control = tmp_path / "finance_control"
        self.control.mkdir()
        (tmp_path / "workspace.yaml").write_text(WORKSPACE.format(root=ROOT, finance=self.finance))
        self.workspace = tmp_path / "workspace.yaml"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs = tmp_path
        self.env = worker_env(
            self.home,
            redis_url,
            f"e2e-{uuid.uuid4().hex[:8]}",
            AMS_LOGGING__FORMAT="json",
            AMS_DAGSTER__URL=self.url,
            AMS_DAGSTER__CODE_LOCATION="orchestrator",
            AMS_SENSORS__MINIMUM_INTERVAL_S="1",
            AMS_DISCOVERY__POLL_INTERVAL_S="1",
            AMS_DISCOVERY__RESCAN_AT_START="false",
            AMS_ALERTS__FLAP_WINDOW_S="0",
            AMS_ALERTS__RECEIVERS=json.dumps(
                [{"name": "ops", "kind": "webhook", "url": receiver.url, "secret_env": "E2E_WEBHOOK_SECRET"}]
            ),
            E2E_WEBHOOK_SECRET=SECRET,
            FINANCE_CONTROL_DIR=str(self.control),
            PYTHONPATH=str(ROOT),
        )
        self.dagster: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, ServiceProcess] = {}

    def start(self) -> None:
        with (self.logs / "dagster.log").open("wb") as log:
            self.dagster = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dagster",
                    "dev",
                    "-w",
                    str(self.workspace),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                ],
                env=self.env,
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        for name in ("discovery", "health", "alerts"):
            self.workers[name] = ServiceProcess.service(name, self.env, self.logs / f"{name}.log")

    def stop(self) -> dict[str, int]:
        # dagster dev takes seconds to shut down: it stops while the workers do.
        if self.dagster is not None and self.dagster.poll() is None:
            os.killpg(self.dagster.pid, signal.SIGTERM)
        codes = {name: w.stop() for name, w in self.workers.items()}
        if self.dagster is not None:
            try:
                self.dagster.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.dagster.pid, signal.SIGKILL)
                self.dagster.wait(10)
        return codes

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60
        ).json()
        assert answer.get("data") is not None, answer
        return answer["data"]

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/server_info", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def launch(self, location: str, key: list[str]) -> str:
        params = {
            "selector": {
                "repositoryLocationName": location,
                "repositoryName": "__repository__",
                "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": key}],
            },
            "mode": "default",
            # One process per run, not one per step: how the step runs is not what this test is about,
            # and a process per step costs seconds on a busy machine.
            "runConfigData": {"execution": {"config": {"in_process": {}}}},
        }
        result = self.graphql(LAUNCH, params=params)["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return str(result["run"]["runId"])

    def run_status(self, run_id: str) -> str | None:
        status = self.graphql(RUN_STATUS, id=run_id)["runOrError"].get("status")
        return str(status) if status else None

    def log(self) -> str:
        parts = [f"--- {name}\n{w.output(2000)}" for name, w in self.workers.items()]
        dagster = (self.logs / "dagster.log").read_text(errors="replace")[-3000:]
        return "\n".join([*parts, f"--- dagster\n{dagster}"])


@pytest.fixture
def receiver() -> Iterator[RecordingReceiver]:
    with RecordingReceiver() as server:
        yield server


@pytest.fixture
def deployment(tmp_path: Path, redis_url: str, receiver: RecordingReceiver) -> Iterator[Deployment]:
    d = Deployment(tmp_path, redis_url, receiver)
    try:
        d.start()
        wait_for(
            lambda: d.answers() and all(w.answers() and w.ready() for w in d.workers.values()),
            240,
            "dagster dev and the three workers",
            d.log,
        )
        yield d
    finally:
        codes = d.stop()
    assert codes == {"discovery": 0, "health": 0, "alerts": 0}, codes


def webhook(receiver: RecordingReceiver, status: str, asset: str, check: str = "execution_status") -> Any:
    for request in receiver.accepted():
        data = json.loads(request.body).get("data", {})
        if (data.get("status"), data.get("asset_key"), data.get("check")) == (status, asset, check):
            return request, json.loads(request.body)
    return None


def test_second_location_registered_alerted_resolved_and_versioned(
    deployment: Deployment, receiver: RecordingReceiver
) -> None:
    from services.discovery import queries

    d = deployment
    metadata_db, monitor_db = d.home / "metadata.db", d.home / "monitor.db"

    def registry() -> dict[str, sqlite3.Row]:
        return {r["key"]: r for r in read_store(metadata_db, "SELECT * FROM assets WHERE retired_at IS NULL")}

    # 1. Both locations registered from the webserver, each asset under its own location.
    expected = {
        "finance/bank_feed",
        ENTRIES,
        "finance/revenue",
        "finance/costs",
        "finance/daily_balances",
        "raw_orders",
        "stg_orders",
    }
    found = wait_for(
        lambda: (lambda r: r if expected <= set(r) else None)(registry()),
        120,
        "both locations in metadata.db",
        d.log,
    )
    assert {k: found[k]["code_location"] for k in expected} == {
        k: ("orchestrator" if "/" not in k else "finance") for k in expected
    }
    entries = found[ENTRIES]
    assert json.loads(entries["owners"]) == ["controller@example.com", "team:finance"]
    assert json.loads(entries["tags"]) == {"domain": "finance", "tier": "gold"}
    assert json.loads(entries["kinds"]) == ["python", "snowflake"]
    assert json.loads(entries["upstream"]) == ["finance/bank_feed", "stg_orders"]  # across locations
    assert found["finance/daily_balances"]["partitioning"].startswith("Daily")
    assert json.loads(found["finance/revenue"]["upstream"]) == [ENTRIES]  # the multi-asset's two specs
    assert json.loads(found["finance/costs"]["kinds"]) == ["dbt"]
    assert json.loads(found["finance/revenue"]["job_names"]) == ["month_end_close"]
    assert json.loads(entries["job_names"]) == [] and entries["repository"] == "__repository__"
    conn = sqlite3.connect(metadata_db)
    conn.row_factory = sqlite3.Row
    try:
        assert ENTRIES in [k for k, _ in queries.downstream_of(conn, "stg_orders")]
        sources = {r["code_location"]: r for r in queries.code_locations(conn)}
        assert set(sources) >= {"orchestrator", "finance"}
    finally:
        conn.close()

    # 2. A failing materialization launched in the finance location: a signed webhook names owner, location.
    (d.control / "fail").write_text("")
    failed_run = d.launch("finance", ["finance", "ledger", "entries"])
    wait_for(lambda: d.run_status(failed_run) == "FAILURE", 180, "the finance run failed", d.log)
    firing = wait_for(lambda: webhook(receiver, "firing", ENTRIES), 120, "firing webhook", d.log)
    request, body = firing
    verified = Webhook(SECRET).verify(request.body, request.headers)
    assert verified["data"]["asset_key"] == ENTRIES
    assert body["data"]["code_location"] == "finance"
    assert "team:finance" in body["data"]["owners"] and "ledger database refused" in json.dumps(body["data"])
    (alert,) = read_store(
        monitor_db, "SELECT code_location FROM alerts WHERE asset_key = ? AND resolved_at IS NULL", ENTRIES
    )
    assert alert["code_location"] == "finance"  # what `asset-manager alerts` lists as its location

    # 3. Recovery resolves it.
    (d.control / "fail").unlink()
    good_run = d.launch("finance", ["finance", "ledger", "entries"])
    wait_for(lambda: d.run_status(good_run) == "SUCCESS", 180, "the finance run succeeded", d.log)
    resolved = wait_for(lambda: webhook(receiver, "resolved", ENTRIES), 120, "resolved webhook", d.log)
    Webhook(SECRET).verify(resolved[0].body, resolved[0].headers)
    assert resolved[1]["data"]["code_location"] == "finance"

    # 4. The finance team edits its code and reloads its location: the next poll versions the change.
    ledger = d.finance / "finance_pipelines" / "ledger.py"
    ledger.write_text(ledger.read_text().replace('"tier": "gold"', '"tier": "platinum"'))
    assert (
        d.graphql(RELOAD, name="finance")["reloadRepositoryLocation"]["__typename"]
        == "WorkspaceLocationEntry"
    )
    version = wait_for(
        lambda: read_store(
            metadata_db, "SELECT version, changes FROM asset_versions WHERE key = ? AND version = 2", ENTRIES
        ),
        60,
        "finance/ledger/entries v2",
        d.log,
    )[0]
    assert json.loads(version["changes"]) == {
        "tags": {
            "old": {"domain": "finance", "tier": "gold"},
            "new": {"domain": "finance", "tier": "platinum"},
        }
    }
    assert registry()["stg_orders"]["version"] == 1  # the other location was not touched
