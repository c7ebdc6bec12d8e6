"""Helpers for tests and benchmarks of every part: deadline-bounded waiting (never a fixed sleep)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from libs.common.redis_server import free_port
from libs.common.settings import PROJECT_ROOT

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    timeout_s: float = 30.0,
    what: str = "condition",
    diagnose: Callable[[], str] = lambda: "",
) -> T:
    """Poll `condition` until it returns something truthy (returned); AssertionError at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s\n{diagnose()}".rstrip())
        time.sleep(0.1)


def worker_env(home: Path, redis_url: str, prefix: str, **settings: str) -> dict[str, str]:
    """The environment of workers started as processes, configured as a deployment configures them: this
    process's environment without its AMS_* variables (the suite's own must not change a worker;
    AMS_FAIL_ON_SKIP stays), the stores under `home` (DAGSTER_HOME), Redis at `redis_url`, the streams under
    `prefix`, reads blocking 200 ms (a worker stops promptly), then `settings` (AMS_... and any other)."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("AMS_") or k == "AMS_FAIL_ON_SKIP"},
        "DAGSTER_HOME": str(home),
        "AMS_REDIS__URL": redis_url,
        "AMS_BUS__PREFIX": prefix,
        "AMS_BUS__BLOCK_MS": "200",
        **settings,
    }


class ServiceProcess:
    """A worker (`python -m services.<name>`, or any script) as a child process with its own log file: what
    the end-to-end tests, fault tests and benchmarks start, kill and restart."""

    def __init__(
        self, args: list[str], env: dict[str, str], *, port: int, log: Path, cwd: Path = PROJECT_ROOT
    ) -> None:
        self.args = args
        self.env = env
        self.port = port
        self.log = log
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def service(cls, name: str, env: dict[str, str], log: Path, *, port: int | None = None) -> ServiceProcess:
        """`python -m services.<name>` on `port` (AMS_SERVICES__<NAME>__PORT, a free one by default),
        started."""
        port = port or free_port()
        env = {**env, f"AMS_SERVICES__{name.upper()}__PORT": str(port)}
        return cls([sys.executable, "-m", f"services.{name}"], env, port=port, log=log).start()

    def start(self) -> ServiceProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.args, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def output(self, tail: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-tail:] if self.log.exists() else ""

    def get(self, path: str) -> httpx.Response | None:
        """GET on the service surface; None while nothing answers."""
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=2)
        except httpx.HTTPError:
            return None

    def answers(self) -> bool:
        """/healthz is 200; AssertionError (with the log) if the process exited by itself."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.args[-1]} exited with {self.process.returncode}:\n{self.output()}")
        response = self.get("/healthz")
        return response is not None and response.status_code == 200

    def ready(self) -> bool:
        response = self.get("/readyz")
        return response is not None and response.status_code == 200

    def metrics(self) -> str:
        response = self.get("/metrics")
        return response.text if response is not None else ""

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)


def read_store(db: Path, sql: str, *params: Any) -> list[sqlite3.Row]:
    """Rows of `sql` in the SQLite store `db`, read from outside its worker; [] while the file or its tables
    do not exist yet (a worker starting)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return list(conn.execute(sql, params))
    except sqlite3.OperationalError:  # not migrated yet
        return []
    finally:
        conn.close()
