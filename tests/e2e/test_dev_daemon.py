"""Issue 18's acceptance under `asset-manager dev`, default thresholds: the Dagster daemon stops working, a
signed notice reaches a real receiver within the documented time (README "what pages whom": the alerts
worker's `publisher:<location>` / `heartbeat`, < 80 s after the publisher's last heartbeat); it works again,
every notice is resolved.

`dagster dev` (which `asset-manager dev` runs) ends the whole development system when its daemon process
exits: a daemon that dies is seen at once in the terminal, nothing is left running to page anybody. What goes
unseen is a daemon that is alive but does nothing (hung on a lock or a call, paused): here it is paused with
SIGSTOP, the process the user would find stuck, and resumed with SIGCONT.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import psutil
import pytest
import redis

from libs.common.redis_server import free_port
from libs.common.testing import read_store, wait_for
from services.alerts.testing import RecordingReceiver
from services.alerts.watch import HEARTBEAT_TYPE, entry_time

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
LOCATION = "orchestrator"  # config/workspace.yaml's code location, the default `dagster.code_location`
PUBLISHER = f"publisher:{LOCATION}"
SECRET = "whsec_" + "ZGV2LWRhZW1vbi1lMmUtb25seS1zZWNyZXQ="
# README "what pages whom": the publisher's notice comes less than this long after its last heartbeat
# (alerts.publisher_heartbeat_min_s 60 s + one publisher_watch_interval_s 15 s + incident_wait_s 2 s).
DOCUMENTED_S = 80.0


class Dev:
    """`asset-manager dev` on a temporary DAGSTER_HOME, the test's Redis, free ports, one webhook receiver."""

    def __init__(self, tmp_path: Path, redis_url: str, receiver: RecordingReceiver) -> None:
        self.home = tmp_path / "home"
        self.receiver = receiver
        self.redis_url = redis_url
        self.prefix = f"e2e-dev-{uuid.uuid4().hex[:8]}"
        self.ports = {name: free_port() for name in ("discovery", "health", "alerts", "dagster")}
        self.log_path = tmp_path / "dev.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AMS_") or k == "AMS_FAIL_ON_SKIP"},
            "DAGSTER_HOME": str(self.home),
            "AMS_REDIS__URL": redis_url,
            "AMS_BUS__PREFIX": self.prefix,
            "AMS_LOGGING__FILE": str(tmp_path / "system.log"),
            "AMS_ALERTS__RECEIVERS": json.dumps(
                [{"name": "ops", "kind": "webhook", "url": receiver.url, "secret_env": "E2E_WEBHOOK_SECRET"}]
            ),
            "E2E_WEBHOOK_SECRET": SECRET,
            **{f"AMS_SERVICES__{n.upper()}__PORT": str(p) for n, p in self.ports.items() if n != "dagster"},
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "asset_manager.cli", "dev", "--port", str(self.ports["dagster"])],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                return self.process.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode

    def daemon(self) -> psutil.Process:
        """The `dagster-daemon run` process `dagster dev` started."""
        assert self.process is not None
        found = [
            p
            for p in psutil.Process(self.process.pid).children(recursive=True)
            if "dagster._daemon" in p.cmdline() and "run" in p.cmdline()
        ]
        assert len(found) == 1, [p.cmdline() for p in psutil.Process(self.process.pid).children(True)]
        return found[0]

    def status(self) -> dict[str, str]:
        rows = read_store(self.home / "health.db", "SELECT object_key, status FROM automation_objects")
        return {r["object_key"]: r["status"] for r in rows}

    def last_heartbeat(self) -> float:
        """When Redis stored the publisher's newest heartbeat (the time the documented delay counts from)."""
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            entries = cast(
                "list[tuple[str, dict[str, str]]]", client.xrevrange(f"{self.prefix}:automation", count=2000)
            )
            for entry_id, fields in entries:
                if fields.get("type") == HEARTBEAT_TYPE:
                    return entry_time(entry_id)
        finally:
            client.close()
        raise AssertionError("no publisher heartbeat on the automation stream")

    def notices(self) -> list[tuple[float, dict[str, Any]]]:
        """(arrival time, verified notice) of every notice the receiver accepted, in order."""
        out = []
        for received in self.receiver.accepted():
            payload: dict[str, Any] = RecordingReceiver.verify(received, SECRET)
            assert received.webhook_id == payload["data"]["notification_id"]
            out.append((received.at, payload["data"]))
        return out

    def log(self) -> str:
        told = [(d["kind"], d["asset_key"], d["check"], d["reason"]) for _, d in self.notices()]
        return (
            f"{self.log_path.read_text(errors='replace')[-5000:]}\nnotices: {told}\nstatus: {self.status()}"
        )


@pytest.fixture
def dev(tmp_path: Path, redis_url: str) -> Iterator[Dev]:
    with RecordingReceiver() as receiver:
        system = Dev(tmp_path, redis_url, receiver)
        system.start()
        try:
            yield system
        finally:
            for process in psutil.Process(system.process.pid).children(True) if system.process else []:
                if process.status() == psutil.STATUS_STOPPED:
                    process.send_signal(signal.SIGCONT)  # a failed test must not leave a frozen daemon
            code = system.stop()
            client = redis.Redis.from_url(redis_url)
            keys = list(client.scan_iter(f"{system.prefix}:*"))
            if keys:
                client.delete(*keys)
            client.close()
        assert code == 0, system.log()


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_stopped_daemon_under_asset_manager_dev_is_noticed_and_resolved_when_it_resumes(dev: Dev) -> None:
    urls = [f"http://127.0.0.1:{dev.ports[n]}/metrics" for n in ("discovery", "health", "alerts")]
    wait_for(lambda: all(answers(u) for u in urls), 180, "the workers answering", dev.log)
    watched = {PUBLISHER, "daemon:SENSOR", "daemon:SCHEDULER"}
    wait_for(
        lambda: all(dev.status().get(k) == "HEALTHY" for k in watched),
        240,
        f"{sorted(watched)} HEALTHY",
        dev.log,
    )
    assert dev.notices() == [], dev.log()

    daemon = dev.daemon()
    daemon.send_signal(signal.SIGSTOP)
    # A tick the code server was evaluating when the daemon stopped may still write its heartbeat.
    time.sleep(2)
    last = dev.last_heartbeat()

    def announced() -> list[dict[str, Any]]:
        return [d for _, d in dev.notices() if d["asset_key"] == PUBLISHER]

    wait_for(
        announced, max(1.0, last + DOCUMENTED_S - time.time()), "the stopped publisher's notice", dev.log
    )
    ((at, notice),) = [(t, d) for t, d in dev.notices() if d["asset_key"] == PUBLISHER]
    assert (notice["kind"], notice["object_kind"], notice["code_location"]) == (
        "firing",
        "publisher",
        LOCATION,
    )
    assert "heartbeat" in notice["reason"], notice
    assert dev.daemon().status() == psutil.STATUS_STOPPED  # still paused: nothing else resolved it

    daemon.send_signal(signal.SIGCONT)

    def incidents() -> dict[Any, list[str]]:
        told: dict[Any, list[str]] = {}
        for _, d in dev.notices():
            told.setdefault(d["incident_id"] if d["incident_id"] is not None else d["asset_key"], []).append(
                d["kind"]
            )
        return told

    wait_for(
        lambda: all(kinds[-1] == "resolved" for kinds in incidents().values()),
        180,
        "every incident resolved",
        dev.log,
    )
    monitor = dev.home / "monitor.db"
    wait_for(
        lambda: not read_store(monitor, "SELECT 1 FROM alerts WHERE status = 'firing'"),
        60,
        "no alert firing",
        dev.log,
    )
    for kinds in incidents().values():
        assert kinds.count("firing") == 1 and kinds.count("resolved") == 1, incidents()
    print(f"publisher notice {at - last:.1f} s after its last heartbeat; incidents {incidents()}")
