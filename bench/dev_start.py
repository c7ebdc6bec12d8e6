"""Start-up of `asset-manager dev` against `dagster dev` alone on the same code location, in the same run.

    .venv/bin/python bench/dev_start.py [--runs N] [--redis-url URL]

Each run starts, on a fresh DAGSTER_HOME and free ports, first `dagster dev -w config/workspace.yaml` and
times it from the command to the UI answering (GraphQL lists the code location's assets); then
`asset-manager dev` and times it to the same point and to every worker's /readyz answering 200. Runs
alternate so that a slow moment of the shared machine hits both. Redis is the given URL (the benchmark's
own embedded server otherwise), so both commands start with Redis already up, as `make dev` on a machine
with Redis does. The last line is one JSON object: medians of each figure and the ratio
`dev_ready_s / dagster_ui_s` (target ≤ 1.3).

Each `asset-manager dev` run then writes a new asset module under `orchestrator/assets/` (removed again
afterwards) and times it until the asset is both in the registry (`asset-manager list-assets`) and in the
webserver's asset graph: `new_asset_s` (target 15 s, no reload or command by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.redis_server import LocalRedis, free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QUERY = "{ assetNodes { id } }"
KEYS_QUERY = "{ assetNodes { assetKey { path } } }"
NEW_ASSET = """from dagster import asset


@asset(owners=["bench@example.com"])
def {name}() -> int:
    return 1


all_assets = [{name}]
"""


def ui_answers(port: int) -> bool:
    try:
        response = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": QUERY}, timeout=2)
        return response.status_code == 200 and bool(response.json()["data"]["assetNodes"])
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return False


def ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def base_env(home: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMS_", "DAGSTER_"))}
    env.update(
        {
            "DAGSTER_HOME": str(home),
            "AMS_REDIS__URL": redis_url,
            "AMS_LOGGING__FILE": "",
            "DEMO_SCHEDULE": "off",
        }
    )
    return env


def time_dagster(tmp: Path, redis_url: str, timeout_s: float) -> float:
    home = tmp / f"dagster-{time.monotonic_ns()}"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "config" / "dagster.yaml").read_text())
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        [
            str(BIN / "dagster"),
            "dev",
            "-w",
            str(ROOT / "config" / "workspace.yaml"),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
        ],
        cwd=ROOT,
        env=base_env(home, redis_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while not ui_answers(port):
            if process.poll() is not None or time.monotonic() - started > timeout_s:
                raise RuntimeError("dagster dev did not answer")
            time.sleep(0.2)
        return time.monotonic() - started
    finally:
        stop(process)


def in_graph(port: int, key: str) -> bool:
    try:
        response = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": KEYS_QUERY}, timeout=5)
        nodes = response.json()["data"]["assetNodes"]
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return False
    return any(n["assetKey"]["path"] == [key] for n in nodes)


def registered(env: dict[str, str], key: str) -> bool:
    result = subprocess.run(
        [str(BIN / "asset-manager"), "list-assets", "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode == 0 and any(a["key"] == key for a in json.loads(result.stdout or "[]"))


def time_new_asset(port: int, env: dict[str, str], timeout_s: float) -> float:
    """Seconds from writing a new asset module to the asset being registered and in the webserver."""
    name = f"bench_new_asset_{os.getpid()}_{time.monotonic_ns()}"
    path = ROOT / "orchestrator" / "assets" / f"{name}.py"
    path.write_text(NEW_ASSET.format(name=name))
    written = time.monotonic()
    try:
        while not (in_graph(port, name) and registered(env, name)):
            if time.monotonic() - written > timeout_s:
                raise RuntimeError(f"{name} was not registered and in the webserver within {timeout_s} s")
            time.sleep(0.2)
        return time.monotonic() - written
    finally:
        path.unlink()


def time_asset_manager(tmp: Path, redis_url: str, timeout_s: float) -> tuple[float, float, float]:
    home = tmp / f"ams-{time.monotonic_ns()}"
    port = free_port()
    ports = {name: free_port() for name in ("discovery", "health", "alerts")}
    env = base_env(home, redis_url) | {f"AMS_SERVICES__{n.upper()}__PORT": str(p) for n, p in ports.items()}
    urls = [f"http://127.0.0.1:{p}/readyz" for p in ports.values()]
    started = time.monotonic()
    process = subprocess.Popen(
        [str(BIN / "asset-manager"), "dev", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ui_s: float | None = None
    try:
        while True:
            if process.poll() is not None or time.monotonic() - started > timeout_s:
                raise RuntimeError("asset-manager dev did not come up")
            if ui_s is None and ui_answers(port):
                ui_s = time.monotonic() - started
            if ui_s is not None and all(ready(u) for u in urls):
                break
            time.sleep(0.2)
        ready_s = time.monotonic() - started
        assert ui_s is not None
        return ui_s, ready_s, time_new_asset(port, env, timeout_s)
    finally:
        stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--redis-url")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    server = None if args.redis_url else LocalRedis(port=free_port()).start()
    redis_url = args.redis_url or server.url  # type: ignore[union-attr]
    dagster_s, ui_s, ready_s, new_s = [], [], [], []
    try:
        with tempfile.TemporaryDirectory(prefix="dev-start-") as tmp:
            for i in range(args.runs):
                dagster_s.append(time_dagster(Path(tmp), redis_url, args.timeout))
                ui, all_ready, new_asset = time_asset_manager(Path(tmp), redis_url, args.timeout)
                ui_s.append(ui)
                ready_s.append(all_ready)
                new_s.append(new_asset)
                print(
                    f"run {i + 1}: dagster dev {dagster_s[-1]:.1f} s; asset-manager dev UI {ui:.1f} s, "
                    f"all ready {all_ready:.1f} s; a new asset registered and shown {new_asset:.1f} s",
                    file=sys.stderr,
                )
    finally:
        if server:
            server.stop()
    floor = statistics.median(dagster_s)
    print(
        json.dumps(
            {
                "runs": args.runs,
                "dagster_ui_s": round(floor, 2),
                "dev_ui_s": round(statistics.median(ui_s), 2),
                "dev_ready_s": round(statistics.median(ready_s), 2),
                "ratio_ready": round(statistics.median(ready_s) / floor, 2),
                "ratio_ui": round(statistics.median(ui_s) / floor, 2),
                "target_ratio": 1.3,
                "new_asset_s": round(statistics.median(new_s), 2),
                "new_asset_target_s": 15,
                "each": {
                    "dagster_ui_s": [round(x, 2) for x in dagster_s],
                    "dev_ui_s": [round(x, 2) for x in ui_s],
                    "dev_ready_s": [round(x, 2) for x in ready_s],
                    "new_asset_s": [round(x, 2) for x in new_s],
                },
            }
        )
    )


if __name__ == "__main__":
    main()
