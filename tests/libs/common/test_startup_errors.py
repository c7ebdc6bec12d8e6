"""One start-up error format for every worker: one line naming the problem and the field, file or variable;
exit code 2 for the configuration, 1 for the environment. Each case is a real `python -m services.<name>`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.common.redis_server import LocalRedis, free_port
from libs.common.settings import PROJECT_ROOT


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[LocalRedis]:
    with LocalRedis(password="right-pw-0123", directory=tmp_path / "secured") as server:
        yield server


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_every_start_up_problem_is_one_line_with_its_exit_code(
    tmp_path: Path, redis_url: str, secured: LocalRedis, taken_port: int
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AMS_") and k != "ENVIRONMENT"}
    base.update(
        {
            "DAGSTER_HOME": str(tmp_path / "home"),
            "AMS_REDIS__URL": redis_url,
            "AMS_BUS__PREFIX": "startup-test",
            "AMS_LOGGING__FILE": "",
            "AMS_LOGGING__LEVEL": "WARNING",
            "AMS_SERVICES__DISCOVERY__PORT": str(free_port()),
            "AMS_SERVICES__HEALTH__PORT": str(free_port()),
            "AMS_SERVICES__ALERTS__PORT": str(free_port()),
            "PYTHONPATH": str(PROJECT_ROOT),
        }
    )
    receiver = [{"name": "hook", "url": "http://127.0.0.1:9/x", "secret_env": "AMS_TEST_UNSET_WHSEC"}]
    cases: dict[str, tuple[str, dict[str, str], int, list[str]]] = {
        # (service, environment, exit code, texts the one line holds)
        **{
            f"bad value ({s})": (
                s,
                {"AMS_BUS__BATCH_SIZE": "0"},
                2,
                ["bus.batch_size", "AMS_BUS__BATCH_SIZE"],
            )
            for s in ("discovery", "health", "alerts")
        },
        "environment": (
            "health",
            {"ENVIRONMENT": "nonsense"},
            2,
            ["'nonsense'", "environment variable ENVIRONMENT"],
        ),
        "secret unset": (
            "alerts",
            {"AMS_ALERTS__RECEIVERS": json.dumps(receiver)},
            2,
            ["alerts.receivers.0.secret_env", "AMS_TEST_UNSET_WHSEC", "is not set"],
        ),
        "port in use": (
            "health",
            {"AMS_SERVICES__HEALTH__PORT": str(taken_port)},
            1,
            [f":{taken_port}", "services.health.port", "in use"],
        ),
        "no password": ("discovery", {"AMS_REDIS__URL": secured.url}, 1, ["refused the credentials"]),
        "wrong password": (
            "alerts",
            {"AMS_REDIS__URL": secured.url, "AMS_REDIS__PASSWORD": "wrong"},
            1,
            ["refused the credentials"],
        ),
    }
    # All at once: each process pays its imports, none waits for another.
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            env={**base, **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for name, (service, extra, _, _) in cases.items()
    }
    failures = []
    for name, process in processes.items():
        try:
            out, err = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        service, _, code, texts = cases[name]
        lines = [line for line in err.splitlines() if line.strip()]
        ok = (
            process.returncode == code
            and len(lines) == 1
            and lines[0].startswith(f"{service}: error: ")
            and all(t in lines[0] for t in texts)
            and "right-pw-0123" not in err + out
        )
        if not ok:
            failures.append(f"{name}: exit {process.returncode} (want {code}), stderr={err[-1500:]!r}")
    assert not failures, "\n".join(failures)
