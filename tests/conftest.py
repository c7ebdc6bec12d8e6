"""Shared fixtures: a real Redis for every test that touches streams, isolated settings and stores."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from asset_manager.settings import AppSettings
from libs.common.redis_server import LocalRedis
from libs.common.settings import load_settings

# `.ci/run` sets this so that a test skipped for a missing tool fails instead: CI never passes by skipping.
FAIL_ON_SKIP = os.environ.get("AMS_FAIL_ON_SKIP") == "1"


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """Every test leaves os.environ as it found it. Code under test may set variables in-process (the CLI
    reads the project's `.env` into os.environ, as Dagster's CLI does), and `monkeypatch.delenv` of a
    variable that was not set records nothing to undo: such a leak made later tests read ENVIRONMENT."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if FAIL_ON_SKIP and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, but AMS_FAIL_ON_SKIP=1 forbids skips: {report.longrepr}"


def _docker_redis() -> Iterator[str] | None:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return None
    from testcontainers.community.redis import RedisContainer

    def run() -> Iterator[str]:
        with RedisContainer("redis:7") as container:
            yield f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"

    return run()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: AMS_TEST_REDIS_URL, else a container when Docker answers, else a local child server."""
    if os.environ.get("AMS_TEST_REDIS_URL"):
        yield os.environ["AMS_TEST_REDIS_URL"]
        return
    containerised = _docker_redis()
    if containerised is not None:
        yield from containerised
        return
    with LocalRedis() as server:
        yield server.url


@pytest.fixture
def local_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    """A Redis server of this test's own, for tests that stop or restart it."""
    server = LocalRedis(directory=tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, protocol=2)
    yield client
    client.close()


@pytest.fixture
def bus_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A stream key prefix unique to this test; its keys are deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    yield prefix
    keys = list(redis_client.scan_iter(f"{prefix}:*"))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, bus_prefix: str, monkeypatch: pytest.MonkeyPatch) -> AppSettings:
    """Settings pointing at the test Redis, a unique prefix and a temporary DAGSTER_HOME."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name in list(os.environ):
        if name.startswith("AMS_") and name not in (
            "AMS_FAIL_ON_SKIP",
            "AMS_TEST_REDIS_URL",
            "AMS_CONFIG_DIR",
        ):
            monkeypatch.delenv(name)
    return load_settings(
        AppSettings,
        redis={"url": redis_url},
        bus={"prefix": bus_prefix, "block_ms": 200, "claim_idle_ms": 500, "claim_interval_s": 0.5},
        logging={"file": None, "format": "console", "level": "INFO"},
        dagster_home=str(home),
    )


def _postgres_server_url() -> str | None:
    """A PostgreSQL server URL (without database): AMS_TEST_POSTGRES_URL, else the local one if it answers."""
    import psycopg2

    candidates = [
        os.environ.get("AMS_TEST_POSTGRES_URL", ""),
        "postgresql://postgres@127.0.0.1:5432",
        "postgresql://root@127.0.0.1:5432",
    ]
    for base in filter(None, candidates):
        try:
            psycopg2.connect(f"{base.rstrip('/')}/postgres", connect_timeout=2).close()
            return base.rstrip("/")
        except psycopg2.Error:
            continue
    return None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL: the configured or local server, else a throwaway cluster from Debian's binaries."""
    import glob
    import shutil
    import subprocess

    url = _postgres_server_url()
    if url:
        yield url
        return
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("no PostgreSQL server answers and Debian's postgresql binaries are not installed")
    bindir = Path(bins[-1]).parent
    import tempfile

    # Not under pytest's tmp dir: its parents are private to root, and initdb runs as postgres.
    data = Path(tempfile.mkdtemp(prefix="ams-pgdata-"))
    from libs.common.redis_server import free_port

    port = free_port()
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        shutil.chown(data, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            f"-p {port} -k {data} -h 127.0.0.1",
            "-w",
            "start",
            "-l",
            str(data / "log"),
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh database on the test PostgreSQL server, dropped afterwards."""
    import psycopg2

    name = f"ams_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(f"{postgres_server}/postgres")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    yield f"{postgres_server}/{name}"
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()
