"""The Dockerfile (no engine here: its structure is checked) and the scripts the image runs."""

from __future__ import annotations

import http.server
import importlib.util
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from deploytools import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"


def stages() -> list[tuple[str, str, str]]:
    """(base image, stage name, body) of every build stage."""
    parts = re.split(r"^FROM\s+", DOCKERFILE, flags=re.M)[1:]
    found = []
    for part in parts:
        header, _, body = part.partition("\n")
        image, _, name = header.partition(" AS ")
        found.append((image.strip(), name.strip(), body))
    return found


def instructions(body: str) -> list[str]:
    """Instructions of a stage with continuation lines joined and comments dropped."""
    lines = [line for line in body.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def test_multi_stage_python_slim_final_stage_without_build_tools() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.1[1-9]-slim", DOCKERFILE, flags=re.M)
    image, name, body = all_stages[-1]
    assert image == "${PYTHON_IMAGE}" and name == "runtime"
    final = " ".join(instructions(body))
    for build_tool in ("build-essential", "gcc", "g++", "-dev ", "make ", "curl", "wget"):
        assert build_tool not in final, f"{build_tool!r} in the final stage"
    builder = " ".join(instructions(all_stages[0][2]))
    assert "build-essential" in builder


def test_final_stage_runs_as_non_root_with_a_healthcheck_and_entrypoint() -> None:
    final = instructions(stages()[-1][2])
    users = [i for i in final if i.startswith("USER ")]
    assert users and users[-1] != "USER root" and "0" not in users[-1].split()[1].split(":")
    assert "APP_UID=10001" in DOCKERFILE  # the uid the k8s securityContext runs as
    (healthcheck,) = [i for i in final if i.startswith("HEALTHCHECK ")]
    assert "/app/deploy/docker/healthcheck.py" in healthcheck
    (entrypoint,) = [i for i in final if i.startswith("ENTRYPOINT ")]
    assert "/app/deploy/docker/entrypoint.sh" in entrypoint
    assert any(i.startswith("CMD ") for i in final)


def test_odbc_driver_18_installed_the_microsoft_way() -> None:
    text = " ".join(instructions(DOCKERFILE))
    assert "packages.microsoft.com/config/debian/" in text and "packages-microsoft-prod.deb" in text
    assert "dpkg -i /tmp/packages-microsoft-prod.deb" in text
    assert "ACCEPT_EULA=Y apt-get install" in text and "msodbcsql18" in text and "unixodbc" in text
    assert 'odbcinst -q -d -n "ODBC Driver 18 for SQL Server"' in text


def test_copied_paths_exist_and_are_not_dockerignored() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for source in re.findall(r"^COPY (?!--from)(\S+(?: \S+)*) \S+$", DOCKERFILE, flags=re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
            assert path not in ignored, path
    for must in (".git", ".venv", "tests", ".env"):
        assert must in ignored


def test_deploy_extra_exists_in_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = " ".join(project["optional-dependencies"]["deploy"])
    assert "pip install \".[deploy]\"" in DOCKERFILE
    for package in ("dagster-postgres", "dagster-celery", "dagster-k8s"):
        assert package in extra


def test_entrypoint_installs_the_instance_config_and_execs(tmp_path: Path) -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    home = tmp_path / "home"
    source = tmp_path / "dagster.yaml"
    source.write_text("telemetry:\n  enabled: false\n")
    env = {"PATH": os.environ["PATH"], "DAGSTER_HOME": str(home), "DAGSTER_INSTANCE_CONFIG": str(source),
           "AMS_STORES__DATA_DIR": str(tmp_path / "stores")}
    proc = subprocess.run([str(ENTRYPOINT), "sh", "-c", 'echo "ran $0 $DAGSTER_HOME"', "child"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"ran child {home}"
    assert (home / "dagster.yaml").read_text() == source.read_text()
    assert (tmp_path / "stores").is_dir()
    # a second start with the same file in place (e.g. mounted read-only by the K8sRunLauncher) leaves it alone
    inode = (home / "dagster.yaml").stat().st_ino
    again = subprocess.run([str(ENTRYPOINT), "true"], env=env, capture_output=True, text=True, timeout=30)
    assert again.returncode == 0, again.stderr
    assert (home / "dagster.yaml").stat().st_ino == inode


def test_entrypoint_refuses_an_unreadable_instance_config(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "DAGSTER_HOME": str(tmp_path),
           "DAGSTER_INSTANCE_CONFIG": str(tmp_path / "missing.yaml")}
    proc = subprocess.run([str(ENTRYPOINT), "true"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 64
    assert "missing.yaml is not readable" in proc.stderr


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 200 if self.path == "/ok" else 503
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"status")

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def probe(*args: str, env: dict[str, str] | None = None) -> int:
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], capture_output=True, timeout=30,
                          env={"PATH": os.environ["PATH"], **(env or {})}).returncode


def test_healthcheck_passes_on_2xx_and_fails_otherwise(http_server: str) -> None:
    assert probe(f"{http_server}/ok") == 0
    assert probe(f"{http_server}/readyz") == 1
    assert probe(env={"AMS_HEALTHCHECK_URL": f"{http_server}/ok"}) == 0
    closed = http_server.rsplit(":", 1)[0] + ":1"
    assert probe(f"{closed}/healthz") == 1
    assert probe("not-a-url") == 2


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ams_healthcheck", HEALTHCHECK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("cmdline", "env", "expected"), [
    (["/opt/venv/bin/python", "-m", "services.health"], {}, "http://127.0.0.1:9102/healthz"),
    (["python", "-m", "services.alerts"], {"AMS_SERVICES__ALERTS__PORT": "9200"}, "http://127.0.0.1:9200/healthz"),
    (["/opt/venv/bin/python", "/opt/venv/bin/dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "w.yaml"], {},
     "http://127.0.0.1:3000/server_info"),
    (["/opt/venv/bin/python", "/opt/venv/bin/dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "x"],
     {}, ["dagster", "api", "grpc-health-check", "-p", "4000"]),
    (["/opt/venv/bin/python", "/opt/venv/bin/dagster-daemon", "run", "-w", "w.yaml"], {},
     ["dagster-daemon", "liveness-check"]),
    (["/opt/venv/bin/python", "-m", "dagster", "api", "grpc", "--socket", "/tmp/s"], {}, None),
    (["/usr/bin/tini", "--", "sh"], {}, None),
])
def test_healthcheck_finds_the_role_from_the_processes(cmdline: list[str], env: dict[str, str], expected: object) -> None:
    assert load_healthcheck().probe_for([["/usr/bin/tini", "--", "/app/deploy/docker/entrypoint.sh"], cmdline], env) == expected


def test_healthcheck_probes_a_running_worker_by_its_role(http_server: str) -> None:
    # this machine's processes include no worker on the probed port: the inferred probe must fail, not pass
    port = http_server.rsplit(":", 1)[1]
    module = load_healthcheck()
    url = module.probe_for([["python", "-m", "services.discovery"]], {"AMS_SERVICES__DISCOVERY__PORT": port})
    assert url == f"http://127.0.0.1:{port}/healthz"
    assert module.check_url(url, 5) == 1  # the test server answers 503 on /healthz
    assert module.check_url(f"{http_server}/ok", 5) == 0
