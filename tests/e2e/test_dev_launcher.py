"""`asset-manager dev` brings the whole system up (Redis, three workers, dagster dev) and Ctrl-C stops it.

Here with a configured Redis that does not answer, so that dev starts its own; with the suite's Redis
configured, test_quick_start.py starts dev and checks the same clean stop at its end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from libs.common.redis_server import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_dev_starts_everything_and_stops_cleanly(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("discovery", "health", "alerts", "dagster")}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AMS_") or k == "AMS_FAIL_ON_SKIP"},
        "DAGSTER_HOME": str(tmp_path / "home"),
        # a URL where nothing answers, so dev starts its own
        "AMS_REDIS__URL": f"redis://127.0.0.1:{free_port()}/0",
        "AMS_LOGGING__FILE": str(tmp_path / "system.log"),
        **{f"AMS_SERVICES__{n.upper()}__PORT": str(p) for n, p in ports.items() if n != "dagster"},
    }
    launcher = subprocess.Popen(
        [sys.executable, "-m", "asset_manager.cli", "dev", "--port", str(ports["dagster"])],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    urls = [f"http://127.0.0.1:{ports[n]}/metrics" for n in ("discovery", "health", "alerts")]
    urls.append(f"http://127.0.0.1:{ports['dagster']}/server_info")
    try:
        deadline = time.monotonic() + 180
        while not all(answers(u) for u in urls):
            assert launcher.poll() is None, launcher.stdout.read().decode(errors="replace")[-4000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"not all of {urls} answered"
            time.sleep(1)
        children = psutil.Process(launcher.pid).children(recursive=True)
        assert len(children) >= 4
    finally:
        launcher.send_signal(signal.SIGINT)
        code = launcher.wait(60)
    output = launcher.stdout.read().decode(errors="replace")  # type: ignore[union-attr]
    assert code == 0, output[-4000:]
    assert "stopped" in output
    assert "started" in output and "does not answer" in output
    gone = psutil.wait_procs([c for c in children if c.is_running()], timeout=20)[1]
    assert not gone, f"left running: {gone}"
