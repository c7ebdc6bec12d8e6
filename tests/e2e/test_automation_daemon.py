"""Issue 18's first acceptance with a real daemon: `dagster-daemon run` as a process on a temporary
DAGSTER_HOME and a workspace of one code location (tests/e2e/automation_location: the publishing sensor, a
sensor and an every-minute schedule that raise while their flag file exists), the health and alerts workers as
processes on real Redis, a real HTTP receiver verifying the Standard Webhooks signatures. One daemon session:

- the sensor's ticks fail (tick after tick): exactly one firing notice naming the sensor, its code
  location, its owner and the error, nothing more while it keeps failing; its flag removed, the next tick
  skips and one resolved notice follows;
- the schedule, likewise. Dagster's scheduler runs a schedule only at its cron times (cron has no unit below
  the minute), waking at each minute boundary, and evaluates on its first pass the cron ticks since the
  schedule's start. So the test declares the schedule's state before the daemon starts, as the daemon itself
  would, started a minute ago: the daemon's first pass runs the missed tick at once (it fails); fixed, the
  next cron tick skips and resolves it — the next minute, or the restarted daemon's first pass;
- meanwhile the daemon is stopped (SIGTERM) and started again, with shortened thresholds (the defaults and
  `asset-manager dev` are tests/e2e/test_dev_daemon.py's): the alerts worker notices the silent publisher by
  itself, health the silent daemons; restarted, every incident resolves once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance

# No public names (read in dagster 1.13): the schedule's state as the scheduler records it.
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.scheduler.instigation import InstigatorState, InstigatorStatus, ScheduleInstigatorData
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

from libs.common.testing import ServiceProcess, read_store, wait_for
from services.alerts.testing import RecordingReceiver
from tests.e2e.automation_location.definitions import (
    FLAGS,
    OWNERS,
    SCHEDULE_ERROR,
    SCHEDULE_FLAG,
    SENSOR_ERROR,
    SENSOR_FLAG,
)

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
LOCATION = "automation_e2e"
SENSOR = f"sensor:{LOCATION}/flaky_sensor"
SCHEDULE = f"schedule:{LOCATION}/flaky_schedule"
SECRET = "whsec_" + "YXV0b21hdGlvbi1kYWVtb24tZTJlLW9ubHk="
# After a notice, how long nothing more may arrive (a window, not a timing assertion).
QUIET_S = 4.0
WORKSPACE = """
load_from:
  - python_module:
      module_name: tests.e2e.automation_location.definitions
      attribute: defs
      location_name: {location}
      working_directory: {root}
"""


class Deployment:
    """`dagster-daemon run` on its own instance, the health and alerts workers, one receiver."""

    def __init__(self, tmp_path: Path, redis_url: str, receiver: RecordingReceiver) -> None:
        self.home = tmp_path / "home"
        self.home.mkdir()
        (self.home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.flags = tmp_path / "flags"
        self.flags.mkdir()
        self.workspace = tmp_path / "workspace.yaml"
        self.workspace.write_text(WORKSPACE.format(location=LOCATION, root=ROOT))
        self.logs = tmp_path
        self.receiver = receiver
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AMS_") or k == "AMS_FAIL_ON_SKIP"},
            "DAGSTER_HOME": str(self.home),
            "AMS_REDIS__URL": redis_url,
            "AMS_BUS__PREFIX": f"e2e-{uuid.uuid4().hex[:8]}",
            "AMS_BUS__BLOCK_MS": "200",
            "AMS_LOGGING__FORMAT": "json",
            "AMS_DAGSTER__CODE_LOCATION": LOCATION,
            "AMS_SENSORS__MINIMUM_INTERVAL_S": "1",
            "AMS_ALERTS__FLAP_WINDOW_S": "0",
            "AMS_ALERTS__RECEIVERS": json.dumps(
                [{"name": "ops", "kind": "webhook", "url": receiver.url, "secret_env": "E2E_WEBHOOK_SECRET"}]
            ),
            "E2E_WEBHOOK_SECRET": SECRET,
            FLAGS: str(self.flags),
            "PYTHONPATH": str(ROOT),
        }
        self.daemon: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, ServiceProcess] = {}

    def start_workers(self) -> None:
        for name in ("health", "alerts"):
            self.workers[name] = ServiceProcess.service(name, self.env, self.logs / f"{name}.log")

    def wait_ready(self) -> None:
        wait_for(
            lambda: all(w.answers() and w.ready() for w in self.workers.values()),
            120,
            "health and alerts workers ready",
            self.log,
        )

    def declare_schedule(self, started_at: float) -> None:
        """Record flaky_schedule's state as the scheduler does when it first sees a schedule running by
        default, but started at `started_at` (the workspace loaded here as the daemon loads it: same
        origin)."""
        with (
            DagsterInstance.from_config(str(self.home)) as instance,
            WorkspaceProcessContext(instance, WorkspaceFileTarget([str(self.workspace)])) as context,
        ):
            location = context.create_request_context().get_code_location(LOCATION)
            (repository,) = location.get_repositories().values()
            schedule = repository.get_schedule("flaky_schedule")
            instance.add_instigator_state(
                InstigatorState(
                    schedule.get_remote_origin(),
                    InstigatorType.SCHEDULE,
                    InstigatorStatus.DECLARED_IN_CODE,
                    ScheduleInstigatorData(schedule.cron_schedule, started_at),
                )
            )

    def start_daemon(self) -> None:
        """`dagster-daemon run` (the sensor daemon, the scheduler and the others) in a process group."""
        with (self.logs / "daemon.log").open("ab") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "dagster._daemon", "run", "-w", str(self.workspace)],
                env=self.env,
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop_daemon(self) -> None:
        if self.daemon is None or self.daemon.poll() is not None:
            return
        os.killpg(self.daemon.pid, signal.SIGTERM)
        try:
            self.daemon.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.daemon.pid, signal.SIGKILL)
            self.daemon.wait(10)

    def stop(self) -> dict[str, int]:
        self.stop_daemon()
        return {name: w.stop() for name, w in self.workers.items()}

    def flag(self, name: str, on: bool) -> None:
        path = self.flags / name
        if on:
            path.touch()
        else:
            path.unlink()

    def notices(self, key: str | None = None) -> list[dict[str, Any]]:
        """The verified notices the receiver accepted (about `key`'s alert, when given), in order."""
        out = []
        for received in self.receiver.accepted():
            payload: dict[str, Any] = RecordingReceiver.verify(received, SECRET)
            assert received.webhook_id == payload["data"]["notification_id"]
            out.append(payload["data"])
        return [d for d in out if key is None or d["asset_key"] == key]

    def failed_ticks(self, key: str) -> int:
        """The failed ticks in a row health has folded for `key` (0 before it knows it)."""
        rows = read_store(
            self.home / "health.db", "SELECT state FROM automation_objects WHERE object_key = ?", key
        )
        return int(json.loads(rows[0]["state"]).get("failed_ticks", 0)) if rows else 0

    def log(self) -> str:
        parts = [f"--- {name}\n{w.output(2000)}" for name, w in self.workers.items()]
        daemon = (self.logs / "daemon.log").read_text(errors="replace")[-3000:]
        told = [(d["kind"], d["asset_key"], d["check"], d["reason"]) for d in self.notices()]
        return "\n".join([*parts, f"--- daemon\n{daemon}", f"notices: {told}"])


@pytest.fixture
def deploy(tmp_path: Path, redis_url: str) -> Iterator[Callable[[dict[str, str]], Deployment]]:
    """Start the workers with extra settings (environment variables), not waiting for them; stopped, daemon
    included, at the end."""
    started: list[Deployment] = []
    with RecordingReceiver() as receiver:

        def start(extra: dict[str, str]) -> Deployment:
            d = Deployment(tmp_path, redis_url, receiver)
            d.env.update(extra)
            started.append(d)
            d.start_workers()  # the test waits for them to be ready (wait_ready) when it needs them
            return d

        try:
            yield start
        finally:
            for d in started:
                codes = d.stop()
                assert codes == {"health": 0, "alerts": 0}, (
                    f"workers did not stop cleanly: {codes}\n{d.log()}"
                )


def kinds(deployment: Deployment, key: str) -> list[str]:
    return [d["kind"] for d in deployment.notices(key)]


# The documented times are the defaults' (README "what pages whom": the publisher's notice < 80 s, the
# daemons' after 120 s; shown under `asset-manager dev` by test_dev_daemon.py); shortened here so that the
# daemon's silence takes under a minute, the same rules otherwise.
SHORT = {
    "AMS_ALERTS__PUBLISHER_HEARTBEAT_MIN_S": "10",
    "AMS_ALERTS__PUBLISHER_WATCH_INTERVAL_S": "1",
    "AMS_HEALTH__EVALUATION_INTERVAL_S": "2",
    # Dagster writes a daemon's heartbeat every 30 s: the limit stays above that.
    "AMS_HEALTH__AUTOMATION__DAEMON_HEARTBEAT_MAX_S": "45",
}


def healthy(deployment: Deployment, keys: set[str]) -> bool:
    rows = read_store(deployment.home / "health.db", "SELECT object_key, status FROM automation_objects")
    status = {r["object_key"]: r["status"] for r in rows}
    return all(status.get(k) == "HEALTHY" for k in keys)


def incidents(deployment: Deployment) -> dict[int | str, list[dict[str, Any]]]:
    """The notices per incident (per key for a notice outside any), in order."""
    told: dict[int | str, list[dict[str, Any]]] = {}
    for d in deployment.notices():
        told.setdefault(d["incident_id"] if d["incident_id"] is not None else d["asset_key"], []).append(d)
    return told


def test_failing_sensor_and_schedule_and_a_stopped_daemon_alert_once_and_resolve_with_a_real_daemon(
    deploy: Callable[[dict[str, str]], Deployment],
) -> None:
    started = time.monotonic()
    marks: list[str] = []

    def mark(what: str) -> None:
        marks.append(f"{time.monotonic() - started:.1f} s {what}")

    deployment = deploy(SHORT)
    deployment.flag(SENSOR_FLAG, True)
    deployment.flag(SCHEDULE_FLAG, True)
    deployment.declare_schedule(time.time() - 60)  # one cron tick missed already (while the workers start)
    deployment.wait_ready()
    mark("schedule declared, workers ready")
    deployment.start_daemon()
    mark("daemon started")

    # The sensor fails on every tick: one firing notice, naming it, its location, owner and error.
    wait_for(
        lambda: SENSOR in {d["asset_key"] for d in deployment.notices()},
        120,
        "the failing sensor's notice",
        deployment.log,
    )
    (firing,) = deployment.notices(SENSOR)
    assert (firing["kind"], firing["status"], firing["check"]) == ("firing", "firing", "tick_failures")
    assert (firing["object_kind"], firing["code_location"]) == ("sensor", LOCATION)
    assert firing["owners"] == OWNERS
    assert SENSOR_ERROR in firing["reason"] and "flaky_sensor" in firing["title"], firing

    # The schedule's missed tick, run on the daemon's first pass, fails: one firing notice.
    wait_for(
        lambda: kinds(deployment, SCHEDULE) == ["firing"],
        120,
        "the failing schedule's notice",
        deployment.log,
    )
    mark("schedule and sensor notices")
    (scheduled,) = deployment.notices(SCHEDULE)
    assert (scheduled["check"], scheduled["object_kind"]) == ("tick_failures", "schedule")
    assert scheduled["code_location"] == LOCATION
    assert SCHEDULE_ERROR in scheduled["reason"] and "flaky_schedule" in scheduled["title"], scheduled
    # Fixed: its next cron tick (the next minute, or the restarted daemon's first pass) skips and resolves it.
    deployment.flag(SCHEDULE_FLAG, False)

    # The sensor keeps failing, tick after tick: health counts them, nobody is told again.
    wait_for(lambda: deployment.failed_ticks(SENSOR) >= 3, 120, "three failed sensor ticks", deployment.log)
    assert kinds(deployment, SENSOR) == ["firing"], deployment.log()

    # Fixed: the next tick skips, one resolved notice.
    deployment.flag(SENSOR_FLAG, False)
    wait_for(
        lambda: kinds(deployment, SENSOR) == ["firing", "resolved"],
        120,
        "the sensor resolved",
        deployment.log,
    )
    mark("sensor resolved")
    resolved = deployment.notices(SENSOR)[1]
    assert (resolved["status"], resolved["incident_id"]) == ("resolved", firing["incident_id"])

    # The daemon stops, the publisher with it: the alerts worker notices the silent publisher by itself,
    # health the silent daemons.
    watched = {f"publisher:{LOCATION}", "daemon:SENSOR", "daemon:SCHEDULER"}
    wait_for(lambda: healthy(deployment, watched), 60, "the daemon's objects HEALTHY", deployment.log)
    before = len(deployment.notices())
    deployment.stop_daemon()
    stopped_at = time.monotonic()
    mark("daemon stopped")
    wait_for(
        lambda: f"publisher:{LOCATION}" in {d["asset_key"] for d in deployment.notices()},
        120,
        "the silent publisher's notice",
        deployment.log,
    )
    publisher_s = time.monotonic() - stopped_at
    (notice,) = deployment.notices(f"publisher:{LOCATION}")
    assert (notice["kind"], notice["object_kind"]) == ("firing", "publisher"), notice

    def firing_keys() -> set[str]:
        keys = {d["asset_key"] for d in deployment.notices() if d["status"] == "firing"}
        return keys | {m["asset_key"] for d in deployment.notices() for m in d["members"]}

    wait_for(
        lambda: {"daemon:SENSOR", "daemon:SCHEDULER"} <= firing_keys(),
        120,
        "the daemons' notices",
        deployment.log,
    )
    daemons_s = time.monotonic() - stopped_at
    mark("daemons' notices")
    daemon = next(
        d
        for d in deployment.notices()
        if "daemon:SENSOR" in {d["asset_key"], *(m["asset_key"] for m in d["members"])}
    )
    assert "is dagster-daemon running?" in json.dumps(daemon), daemon

    # Restarted: every incident that was announced is resolved, once; the schedule's too.
    deployment.start_daemon()
    wait_for(
        lambda: all(told[-1]["kind"] == "resolved" for told in incidents(deployment).values()),
        120,
        "every incident resolved",
        deployment.log,
    )
    mark("every incident resolved")
    monitor = deployment.home / "monitor.db"
    wait_for(
        lambda: not read_store(monitor, "SELECT 1 FROM alerts WHERE status = 'firing'"),
        60,
        "no alert firing",
        deployment.log,
    )
    # Nothing more arrives (a window, not a timing assertion).
    settled = len(deployment.notices())
    time.sleep(QUIET_S)
    assert len(deployment.notices()) == settled, deployment.log()
    assert [d["kind"] for d in deployment.notices(SCHEDULE)] == ["firing", "resolved"]
    assert deployment.notices(SCHEDULE)[1]["incident_id"] == scheduled["incident_id"]
    # Each incident announced once and resolved once. Those the stop opened are caused by the silent daemon
    # or publisher: a sensor is never their root (its lateness names the daemon, and counts again from the
    # daemon's return).
    for told in incidents(deployment).values():
        assert [d["kind"] for d in told].count("firing") == 1, incidents(deployment)
        assert [d["kind"] for d in told].count("resolved") == 1, incidents(deployment)
    roots = {d["asset_key"]: d for d in deployment.notices()[before:] if d["kind"] == "firing"}
    assert all(k.startswith(("daemon:", "publisher:")) for k in roots), [
        (d["asset_key"], d["check"], d["reason"], d["members"]) for d in roots.values()
    ]
    # Every request was accepted once: nothing refused, retried or delivered twice.
    assert len(deployment.receiver.requests) == len(deployment.receiver.accepted())
    print(f"publisher notice after {publisher_s:.1f} s, daemons' after {daemons_s:.1f} s; {marks}")
