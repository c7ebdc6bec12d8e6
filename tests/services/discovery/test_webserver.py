"""Discovery from a running Dagster: a real `dagster-webserver` on a workspace of two code locations (one
good, one that fails to load), real SQLite registry files. Covers reading every location, cheap unchanged
polls, a reload after an edit, a location in error, a location removed from the workspace, and a webserver
that is unreachable, silent or answers something else: the registry is kept and nothing is retired."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from libs.common.redis_server import free_port
from libs.common.store import Store
from libs.common.testing import wait_for
from services.discovery import queries
from services.discovery.service import START_PATIENCE_S, WorkspaceSync, sync_from_dagster
from services.discovery.store import MIGRATIONS
from services.discovery.webserver import DagsterUnavailable, LocationEntry, LocationRead, WebserverClient

ROOT = Path(__file__).resolve().parents[3]

SALES = """
import dagster as dg

@dg.asset(key_prefix=["sales"], group_name="sales", owners=["team:sales"], tags={{"domain": "sales"}},
          kinds={{"postgres"}}, description="{description}", code_version="{version}",
          metadata={{"rows_expected": 100, "owner_note": "nightly"}})
def orders() -> None: ...

@dg.asset(key=["sales", "report"], deps=[orders], owners=["ana@example.com"], group_name="sales",
          partitions_def=dg.DailyPartitionsDefinition(start_date="2025-01-01"))
def report() -> None: ...

nightly = dg.define_asset_job("nightly_sales", selection=[orders])
defs = dg.Definitions(assets=[orders, report], jobs=[nightly])
"""

WORKSPACE = """
load_from:
{entries}
"""

ENTRY = """  - python_module:
      module_name: {module}
      attribute: defs
      location_name: {name}
      working_directory: {directory}
"""

RELOAD = """
mutation Reload($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) { __typename }
}
"""


@dataclass
class Webserver:
    url: str
    code: Path
    sales: str
    broken: str
    workspace: Path
    log: Path

    def write_sales(
        self, description: str = "Orders of the shop.", version: str = "1", *, broken: bool = False
    ) -> None:
        text = (
            "raise ImportError('sales database driver missing')\n"
            if broken
            else textwrap.dedent(SALES.format(description=description, version=version))
        )
        (self.code / self.sales / "definitions.py").write_text(text)

    def write_workspace(self, *, with_sales: bool = True) -> None:
        entries = [(self.broken, "broken")] + ([(self.sales, "sales")] if with_sales else [])
        self.workspace.write_text(
            WORKSPACE.format(
                entries="".join(
                    ENTRY.format(module=f"{pkg}.definitions", name=name, directory=self.code)
                    for pkg, name in entries
                )
            )
        )

    def graphql(self, query: str, **variables: str) -> dict[str, object]:
        answer: dict[str, object] = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60
        ).json()
        return answer

    def reload(self, name: str) -> None:
        assert self.graphql(RELOAD, name=name)["data"] is not None

    def reload_workspace(self) -> None:
        self.graphql("mutation { reloadWorkspace { __typename } }")

    def loaded(self, name: str) -> bool:
        try:
            entries = WebserverClient(self.url, retries=1).workspace()
        except DagsterUnavailable:
            return False
        return any(e.name == name and e.status == "LOADED" for e in entries)


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webserver]:
    """`dagster-webserver` (no daemon) on a workspace of a good location (`sales`) and a broken one."""
    tmp = tmp_path_factory.mktemp("webserver")
    suffix = uuid.uuid4().hex[:8]
    server = Webserver(
        url="",
        code=tmp / "code",
        sales=f"sales_{suffix}",
        broken=f"broken_{suffix}",
        workspace=tmp / "workspace.yaml",
        log=tmp / "webserver.log",
    )
    for package in (server.sales, server.broken):
        (server.code / package).mkdir(parents=True)
        (server.code / package / "__init__.py").write_text("")
    (server.code / server.broken / "definitions.py").write_text("import nothing_by_this_name  # noqa\n")
    server.write_sales()
    server.write_workspace()
    (tmp / "home").mkdir()
    port = free_port()
    server.url = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AMS_")},
        "DAGSTER_HOME": str(tmp / "home"),
        "PYTHONPATH": os.pathsep.join([str(server.code), str(ROOT)]),
    }
    with server.log.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster_webserver",
                "-w",
                str(server.workspace),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env=env,
            cwd=tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: server.loaded("sales"),
            120,
            "dagster-webserver with the sales location",
            lambda: server.log.read_text(errors="replace")[-3000:],
        )
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)  # nothing to keep: do not wait for the code servers' graceful shutdown
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


class CountingClient(WebserverClient):
    """The real client, counting the locations it reads (to show unchanged locations are not re-read)."""

    def __init__(self, url: str, **kwargs: float) -> None:
        super().__init__(url, **kwargs)  # type: ignore[arg-type]
        self.reads: list[str] = []

    def read_location(self, entry: LocationEntry) -> LocationRead:
        self.reads.append(entry.name)
        return super().read_location(entry)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'metadata.db'}", MIGRATIONS)
    yield s
    s.close()


def active(store: Store, location: str | None = None) -> dict[str, dict[str, object]]:
    with store.read() as conn:
        return {
            a["key"]: a
            for a in queries.list_assets(conn)
            if location is None or a["code_location"] == location
        }


def test_every_location_registered_then_only_changed_ones_reread(webserver: Webserver, store: Store) -> None:
    client = CountingClient(webserver.url)
    sync = WorkspaceSync(store, client)

    # 1. Both locations listed; the good one registered with its fields, the broken one reported.
    report = sync.poll()
    by_name = {loc.name: loc for loc in report.locations}
    assert by_name["sales"].status == "registered" and by_name["sales"].assets == 2
    assert by_name["broken"].status == "error"
    assert "nothing_by_this_name" in by_name["broken"].problems[0]
    assets = active(store, "sales")
    assert set(assets) == {"sales/orders", "sales/report"}
    orders, report_asset = assets["sales/orders"], assets["sales/report"]
    assert orders["owners"] == ["team:sales"] and orders["kinds"] == ["postgres"]
    assert orders["tags"] == {"domain": "sales"} and orders["group"] == "sales"
    assert orders["code_version"] == "1" and orders["metadata"] == {
        "owner_note": "nightly",
        "rows_expected": 100,
    }
    assert report_asset["upstream"] == ["sales/orders"] and report_asset["owners"] == ["ana@example.com"]
    assert orders["job_names"] == ["nightly_sales"] and report_asset["job_names"] == []
    assert orders["repository"] == report_asset["repository"] == "__repository__"
    assert "Daily" in str(report_asset["partitioning"])
    with store.read() as conn:
        locations = {loc["code_location"]: loc for loc in queries.code_locations(conn)}
        orders_details = queries.get_asset(conn, "sales/orders")
    assert orders_details is not None and orders_details["downstream"] == ["sales/report"]
    assert "nothing_by_this_name" in locations["broken"]["problems"][0]

    # 2. Nothing reloaded: one workspace query, no location read again, nothing written.
    client.reads.clear()
    report = sync.poll()
    assert client.reads == []
    assert {loc.name: loc.status for loc in report.locations} == {"sales": "unchanged", "broken": "unchanged"}

    # 3. An edit and a reload of one location: only it is read, the change versioned with its diff.
    webserver.write_sales(description="Orders of the shop, net of returns.", version="2")
    webserver.reload("sales")
    wait_for(lambda: webserver.loaded("sales"), 60, "sales reloaded")
    client.reads.clear()
    report = sync.poll()
    assert client.reads == ["sales"]
    changed = {c.key: c for c in report.changes}
    assert changed["sales/orders"].kind == "changed" and changed["sales/orders"].version == 2
    assert set(changed["sales/orders"].changes) == {"description", "code_version"}
    assert "sales/report" not in changed

    # 4. The location breaks: its problem is recorded, its assets stay registered (nothing retired).
    webserver.write_sales(broken=True)
    webserver.reload("sales")
    wait_for(lambda: any(e.name == "sales" and e.error for e in client.workspace()), 60, "sales in error")
    report = sync.poll()
    sales = next(loc for loc in report.locations if loc.name == "sales")
    assert sales.status == "error" and "sales database driver missing" in sales.problems[0]
    assert not report.changes
    assert set(active(store, "sales")) == {"sales/orders", "sales/report"}

    # 5. The location is removed from the workspace: its assets are retired (kept, with history).
    webserver.write_sales()
    webserver.write_workspace(with_sales=False)
    webserver.reload_workspace()
    wait_for(lambda: {e.name for e in client.workspace()} == {"broken"}, 60, "sales gone from the workspace")
    report = sync.poll()
    gone = next(loc for loc in report.locations if loc.name == "sales")
    assert gone.status == "gone"
    assert {c.key: c.kind for c in report.changes} == {"sales/orders": "retired", "sales/report": "retired"}
    assert active(store, "sales") == {}
    webserver.write_workspace()
    webserver.reload_workspace()
    wait_for(lambda: webserver.loaded("sales"), 60, "sales back in the workspace")


def silent_server() -> tuple[socket.socket, int]:
    """A loopback TCP server that accepts connections and never answers (a hung webserver)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return listener, listener.getsockname()[1]


def test_unreachable_silent_or_wrong_answers_keep_the_registry(webserver: Webserver, store: Store) -> None:
    assert sync_from_dagster(WorkspaceSync(store, WebserverClient(webserver.url))) is not None
    before = active(store)
    assert "sales/orders" in before

    listener, silent_port = silent_server()
    try:
        cases = {
            "unreachable": (WebserverClient(f"http://127.0.0.1:{free_port()}", retries=2), "cannot reach"),
            "timeout": (
                WebserverClient(f"http://127.0.0.1:{silent_port}", timeout_s=0.3, retries=2),
                "no answer within",
            ),
            "not graphql": (WebserverClient(f"{webserver.url}/no-such-page", retries=1), "answered HTTP 405"),
        }
        for name, (client, message) in cases.items():
            with pytest.raises(DagsterUnavailable, match=message):
                WorkspaceSync(store, client).poll()
            assert sync_from_dagster(WorkspaceSync(store, client)) is None, name
            assert active(store) == before, name
    finally:
        listener.close()
    # A GraphQL error from the real webserver is a clear message too.
    with pytest.raises(DagsterUnavailable, match=r"GraphQL errors: .*noSuchField"):
        WebserverClient(webserver.url).query("{ noSuchField }")


def test_a_webserver_not_up_yet_is_quiet_until_it_answered_once_or_patience_ran_out(store: Store) -> None:
    """Under `asset-manager dev` discovery starts before the webserver: refusals then are expected."""
    from structlog.testing import capture_logs

    sync = WorkspaceSync(store, WebserverClient(f"http://127.0.0.1:{free_port()}", retries=1))
    with capture_logs() as quiet:
        assert sync_from_dagster(sync) is None
    assert not [e for e in quiet if e["log_level"] == "warning"]
    sync.created -= START_PATIENCE_S  # still silent after the patience: named
    with capture_logs() as named:
        sync_from_dagster(sync)
    assert [e["event"] for e in named if e["log_level"] == "warning"] == ["dagster_unavailable"]
    late = WorkspaceSync(store, sync.client)
    late.answered = True  # it answered before and stopped: named at once
    with capture_logs() as stopped:
        sync_from_dagster(late)
    assert [e["event"] for e in stopped if e["log_level"] == "warning"] == ["dagster_unavailable"]


def test_discover_assets_reads_every_location_and_names_the_broken_one(
    webserver: Webserver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from asset_manager.cli import main

    for name in list(os.environ):
        if name.startswith("AMS_") and name not in ("AMS_FAIL_ON_SKIP", "AMS_TEST_REDIS_URL"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv(
        "AMS_REDIS__URL", f"redis://127.0.0.1:{free_port()}"
    )  # Redis down: changes wait in the outbox
    monkeypatch.setenv("AMS_DAGSTER__URL", webserver.url)
    monkeypatch.chdir(tmp_path)

    assert main(["discover-assets", "--test"]) == 1  # a location has problems
    out = capsys.readouterr().out
    assert "would register 2, change 0, bring back 0, retire 0" in out and "nothing was written" in out
    assert not (tmp_path / "metadata.db").exists()

    assert main(["discover-assets", "--verbose"]) == 1
    out = capsys.readouterr().out
    assert "code location sales: registered, 2 assets, 0 problems" in out
    assert "code location broken: error, 0 assets, 1 problems" in out
    assert "nothing_by_this_name" in out

    assert main(["list-assets", "--location", "sales", "--format", "csv"]) == 0
    listing = capsys.readouterr().out
    assert listing.splitlines()[0].startswith("key,location,")
    assert "sales/orders,sales," in listing and "sales/report,sales," in listing

    monkeypatch.setenv("AMS_DAGSTER__URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AMS_DAGSTER__RETRIES", "1")
    assert main(["discover-assets"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the Dagster webserver" in err and "registry was not changed" in err
    assert main(["list-assets", "--location", "sales", "--format", "csv"]) == 0
    assert "sales/orders,sales," in capsys.readouterr().out


JOBS_DEFINITIONS = """
import dagster as dg

feed = dg.AssetSpec(["bank", "feed"])  # external, upstream of the nightly job

@dg.asset(key=["finance", "entries"], deps=[feed])
def entries() -> None: ...

@dg.multi_asset(
    specs=[dg.AssetSpec(["finance", "ledger"], deps=[entries]), dg.AssetSpec(["finance", "fx"])],
    can_subset=True,
)
def books(): ...

@dg.asset(key=["finance", "adhoc"])
def adhoc() -> None: ...

nightly = dg.define_asset_job("nightly", selection=[entries, books])
month_end = dg.define_asset_job("month_end", selection=dg.AssetSelection.keys(["finance", "ledger"]))
defs = dg.Definitions(assets=[feed, entries, books, adhoc], jobs=[nightly, month_end])
"""


def test_job_names_and_repository_read_through_graphql_as_in_process(tmp_path: Path) -> None:
    """Dagster's own GraphQL schema (in-process) and the in-process catalog give the same job names and
    repository, so a location registered by either source gets no version from switching between them."""
    from dagster._core.test_utils import in_process_test_workspace, instance_for_test
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster_graphql.test.utils import execute_dagster_graphql

    from orchestrator.catalog import build_catalog
    from services.discovery.webserver import ASSET_NODES_QUERY, snapshot_from_nodes

    module = tmp_path / "jobs_definitions.py"
    module.write_text(JOBS_DEFINITIONS)
    (tmp_path / "home").mkdir()
    namespace: dict[str, object] = {}
    exec(compile(JOBS_DEFINITIONS, str(module), "exec"), namespace)
    in_process = build_catalog(namespace["defs"], "finance")  # type: ignore[arg-type]
    origin = LoadableTargetOrigin(python_file=str(module), attribute="defs")
    with (
        instance_for_test(temp_dir=str(tmp_path / "home")) as instance,
        in_process_test_workspace(instance, origin) as context,
    ):
        (location,) = context.code_location_names
        selector = {"repositoryLocationName": location, "repositoryName": "__repository__"}
        answer = execute_dagster_graphql(context, ASSET_NODES_QUERY, {"selector": selector})
    assert not answer.errors, answer.errors
    nodes = [("__repository__", n) for n in answer.data["repositoryOrError"]["assetNodes"]]
    through_graphql = snapshot_from_nodes("finance", nodes, [])

    def jobs(snapshot: object) -> dict[str, tuple[list[str], str | None]]:
        return {a.key: (a.job_names, a.repository) for a in snapshot.assets}  # type: ignore[attr-defined]

    assert (
        jobs(through_graphql)
        == jobs(in_process)
        == {
            "bank/feed": ([], "__repository__"),  # read by nightly, not run by it
            "finance/adhoc": ([], "__repository__"),  # only in Dagster's implicit __ASSET_JOB
            "finance/entries": (["nightly"], "__repository__"),
            "finance/fx": (["nightly"], "__repository__"),
            "finance/ledger": (["month_end", "nightly"], "__repository__"),
        }
    )
