"""The check reporter waits quietly for a webserver that is not up yet, then delivers what is pending."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog
import uvicorn
from dagster import AssetCheckKey, AssetKey, DagsterInstance
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.test_utils import instance_for_test
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster_webserver.webserver import DagsterWebserver

from libs.common.events import CHECK_NAMES, CheckName, CheckResult, dagster_check_name
from libs.common.redis_server import free_port
from libs.common.settings import load_settings
from libs.common.store import Store
from libs.common.testing import wait_for
from services.discovery.webserver import WebserverClient
from services.health.dagster_checks import DagsterCheckReporter
from services.health.service import HealthService
from services.health.settings import HealthWorkerSettings
from services.health.store import open_store
from tests.services.health.conftest import T0, Clock


@pytest.fixture
def hsettings(tmp_path: Path) -> HealthWorkerSettings:
    return load_settings(HealthWorkerSettings, dagster_home=str(tmp_path), stores={"data_dir": str(tmp_path)})


@pytest.fixture
def store(hsettings: HealthWorkerSettings) -> Iterator[Store]:
    s = open_store(hsettings)
    yield s
    s.close()


class Webserver:
    def __init__(self, port: int) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posts.append((self.path, body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_results_wait_quietly_for_a_webserver_that_starts_later() -> None:
    port = free_port()
    reporter = DagsterCheckReporter(f"http://127.0.0.1:{port}").start()
    result = CheckResult(check="freshness", outcome="warn", reason="late")
    with structlog.testing.capture_logs() as logs:
        reporter.submit("raw/orders", [result])
        wait_for(lambda: reporter._thread.is_alive(), what="reporter thread")
        threading.Event().wait(3.0)  # longer than the 3 attempts of a post (0.5 s + 1 s backoff)
        server = Webserver(port)
        try:
            wait_for(
                lambda: len(server.posts) == 1, what="the pending result posted once the webserver answers"
            )
        finally:
            reporter.stop()
            server.server.shutdown()
    assert server.posts[0][0] == "/report_asset_check/raw/orders"
    assert server.posts[0][1]["check_name"] == "ams_freshness"
    assert not [e for e in logs if e["log_level"] in ("warning", "error")], logs


TEAM_DEFINITIONS = """
import dagster as dg

from orchestrator import with_health_checks


@dg.asset(
    key=["finance", "ledger"],
    check_specs=[dg.AssetCheckSpec("freshness", asset=["finance", "ledger"])],
)
def ledger() -> dg.MaterializeResult:
    return dg.MaterializeResult(check_results=[dg.AssetCheckResult(check_name="freshness", passed=True)])


defs = with_health_checks(dg.Definitions(assets=[ledger]))
"""


@contextmanager
def dagster_webserver(module: Path, home: Path) -> Iterator[tuple[str, DagsterInstance]]:
    """Dagster's own webserver app (its /graphql and /report_asset_check/ endpoints) on a loopback port, for
    the definitions in `module`, loaded in-process on a temporary instance."""
    home.mkdir()
    with (
        instance_for_test(temp_dir=str(home)) as instance,
        WorkspaceProcessContext(
            instance,
            InProcessWorkspaceLoadTarget(
                InProcessCodeLocationOrigin(
                    LoadableTargetOrigin(python_file=str(module), attribute="defs"), location_name="finance"
                )
            ),
        ) as context,
    ):
        app = DagsterWebserver(context).create_asgi_app()
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            wait_for(lambda: server.started, what="the Dagster webserver listening")
            yield f"http://127.0.0.1:{port}", instance
        finally:
            server.should_exit = True
            thread.join(10)


def test_a_teams_own_check_named_like_ours_gets_none_of_our_results(
    tmp_path: Path, store: Store, hsettings: HealthWorkerSettings, ev: Any
) -> None:
    module = tmp_path / "team_definitions.py"
    module.write_text(TEAM_DEFINITIONS)
    ledger = AssetKey(["finance", "ledger"])
    with dagster_webserver(module, tmp_path / "dagster_home") as (url, instance):
        # The spec as discovery reads it from this webserver: the team's `freshness` beside our six.
        client = WebserverClient(url)
        try:
            (entry,) = client.workspace()
            (spec,) = client.read_location(entry).snapshot.assets
        finally:
            client.close()
        assert spec.checks == sorted(["freshness", *map(dagster_check_name, CHECK_NAMES)])

        reporter = DagsterCheckReporter(url).start()
        try:
            engine = HealthService(store, hsettings, clock=Clock(T0 + 100), report=reporter.submit)
            engine.handle(ev.deliveries(ev.spec(spec.key, **spec.model_dump(exclude={"key"}))))
            engine.handle(ev.deliveries(ev.run("r1", "FAILURE", [spec.key], start=T0, end=T0 + 60)))

            def history(name: str) -> list[Any]:
                key = AssetCheckKey(ledger, name)
                return list(instance.event_log_storage.get_asset_check_execution_history(key, limit=10))

            wait_for(
                lambda: (
                    [r.status for r in history(dagster_check_name(CheckName.EXECUTION))[:1]]
                    == [AssetCheckExecutionRecordStatus.FAILED]
                ),
                what="the failed run reported to Dagster",
            )
            wait_for(
                lambda: all(history(dagster_check_name(c)) for c in CHECK_NAMES),
                what="our six results recorded by Dagster",
            )
        finally:
            reporter.stop()
        assert history("freshness") == []  # the team's own check: no evaluation of ours lands on it
        ours = history(dagster_check_name(CheckName.FRESHNESS))[0].event
        assert ours is not None and ours.dagster_event is not None
        assert ours.dagster_event.event_specific_data.check_name == "ams_freshness"
