"""Issue 18's first acceptance with a real daemon: `dagster-daemon run` as a process on a temporary
DAGSTER_HOME and a workspace of one code location (tests/e2e/automation_location: the publishing sensor, a
sensor and an every-minute schedule that raise while their flag file exists), the health and alerts workers as
processes on real Redis, a real HTTP receiver verifying the Standard Webhooks signatures.

The sensor's ticks fail (many of them, one a second): exactly one firing notice naming the sensor, its code
location, its owner and the error, nothing more while it keeps failing; its flag removed, the next tick skips
and one resolved notice follows. The schedule, likewise: its first tick (the next minute) fails, one firing
notice; fixed, the next minute's tick resolves it. Cron has no unit below the minute and Dagster's scheduler
runs a schedule only at its cron times, so the schedule's half takes one to two minutes of real time; the
sensor's half runs meanwhile.
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
        wait_for(
            lambda: all(w.answers() and w.ready() for w in self.workers.values()),
            120,
            "health and alerts workers ready",
            self.log,
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
    """Start the workers with extra settings (environment variables); stopped, daemon included, at the end."""
    started: list[Deployment] = []
    with RecordingReceiver() as receiver:

        def start(extra: dict[str, str]) -> Deployment:
            d = Deployment(tmp_path, redis_url, receiver)
            d.env.update(extra)
            started.append(d)
            d.start_workers()
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


def hold(deployment: Deployment, expected: dict[str, list[str]]) -> None:
    """Wait until the receiver holds `expected` (kinds per key, nothing else), then a window without more."""

    def now() -> dict[str, list[str]]:
        got: dict[str, list[str]] = {}
        for d in deployment.notices():
            got.setdefault(d["asset_key"], []).append(d["kind"])
        return got

    wait_for(lambda: now() == expected, 180, f"notices {expected}", deployment.log)
    end = time.monotonic() + QUIET_S
    while time.monotonic() < end:
        assert now() == expected, deployment.log()
        time.sleep(0.2)


def test_failing_sensor_and_schedule_alert_once_and_resolve_with_a_real_daemon(
    deploy: Callable[[dict[str, str]], Deployment],
) -> None:
    deployment = deploy({})
    deployment.flag(SENSOR_FLAG, True)
    deployment.flag(SCHEDULE_FLAG, True)
    deployment.start_daemon()

    # The sensor fails on every tick: one firing notice, naming it, its location, owner and error.
    wait_for(
        lambda: SENSOR in {d["asset_key"] for d in deployment.notices()},
        240,
        "the failing sensor's notice",
        deployment.log,
    )
    (firing,) = deployment.notices(SENSOR)
    assert (firing["kind"], firing["status"], firing["check"]) == ("firing", "firing", "tick_failures")
    assert (firing["object_kind"], firing["code_location"]) == ("sensor", LOCATION)
    assert firing["owners"] == OWNERS
    assert SENSOR_ERROR in firing["reason"] and "flaky_sensor" in firing["title"], firing

    # It keeps failing, tick after tick: health counts them, nobody is told again.
    wait_for(lambda: deployment.failed_ticks(SENSOR) >= 5, 120, "five failed sensor ticks", deployment.log)
    assert kinds(deployment, SENSOR) == ["firing"], deployment.log()

    # Fixed: the next tick skips, one resolved notice.
    deployment.flag(SENSOR_FLAG, False)
    wait_for(
        lambda: kinds(deployment, SENSOR) == ["firing", "resolved"],
        120,
        "the sensor resolved",
        deployment.log,
    )
    resolved = deployment.notices(SENSOR)[1]
    assert (resolved["status"], resolved["incident_id"]) == ("resolved", firing["incident_id"])

    # The schedule's first tick (the next minute after the daemon started it) fails: one firing notice.
    wait_for(
        lambda: kinds(deployment, SCHEDULE) == ["firing"],
        180,
        "the failing schedule's notice",
        deployment.log,
    )
    (scheduled,) = deployment.notices(SCHEDULE)
    assert (scheduled["check"], scheduled["object_kind"]) == ("tick_failures", "schedule")
    assert scheduled["code_location"] == LOCATION
    assert SCHEDULE_ERROR in scheduled["reason"] and "flaky_schedule" in scheduled["title"], scheduled

    # Fixed: the next minute's tick skips, one resolved notice.
    deployment.flag(SCHEDULE_FLAG, False)
    hold(deployment, {SENSOR: ["firing", "resolved"], SCHEDULE: ["firing", "resolved"]})
    assert deployment.notices(SCHEDULE)[1]["incident_id"] == scheduled["incident_id"]
    # Every request was accepted once: nothing refused, retried or delivered twice.
    assert len(deployment.receiver.requests) == len(deployment.receiver.accepted()) == 4


# The documented times are the defaults' (README "what pages whom": the publisher's notice < 80 s, the
# daemons' after 120 s); shortened here so that the test takes about a minute of silence, the same rules
# otherwise.
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


def test_stopping_the_daemon_is_noticed_and_restarting_it_resolves(
    deploy: Callable[[dict[str, str]], Deployment],
) -> None:
    deployment = deploy(SHORT)
    watched = {f"publisher:{LOCATION}", "daemon:SENSOR", "daemon:SCHEDULER", SENSOR}
    deployment.start_daemon()
    wait_for(lambda: healthy(deployment, watched), 240, "the daemon's objects HEALTHY", deployment.log)
    assert deployment.notices() == [], deployment.log()

    # The daemon stops, the publisher with it: the alerts worker notices the silent publisher by itself,
    # health the silent daemons.
    deployment.stop_daemon()
    stopped_at = time.monotonic()
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
        180,
        "the daemons' notices",
        deployment.log,
    )
    daemons_s = time.monotonic() - stopped_at
    daemon = next(
        d
        for d in deployment.notices()
        if "daemon:SENSOR" in {d["asset_key"], *(m["asset_key"] for m in d["members"])}
    )
    assert "is dagster-daemon running?" in json.dumps(daemon), daemon

    # Restarted: every incident that was announced is resolved, once.
    deployment.start_daemon()

    def incidents() -> dict[int | None, list[str]]:
        told: dict[int | None, list[str]] = {}
        for d in deployment.notices():
            told.setdefault(d["incident_id"] if d["incident_id"] is not None else d["asset_key"], []).append(
                d["kind"]
            )
        return told

    wait_for(
        lambda: all(k[-1] == "resolved" for k in incidents().values()),
        240,
        "every incident resolved",
        deployment.log,
    )
    monitor = deployment.home / "monitor.db"
    wait_for(
        lambda: not read_store(monitor, "SELECT 1 FROM alerts WHERE status = 'firing'"),
        60,
        "no alert firing",
        deployment.log,
    )
    # Each incident announced once and resolved once, each caused by the silent daemon or publisher: a sensor
    # is never the root (its lateness names the daemon, and counts again from the daemon's return).
    roots = {d["asset_key"] for d in deployment.notices() if d["kind"] == "firing"}
    assert all(k.startswith(("daemon:", "publisher:")) for k in roots), incidents()
    for told in incidents().values():
        assert told.count("firing") == 1 and told.count("resolved") == 1, incidents()
    print(f"publisher notice after {publisher_s:.1f} s, daemons' after {daemons_s:.1f} s; {incidents()}")
