"""Discovery benchmark: 10,000 generated assets.

Measured in one run, on this machine:
  dagster_load_s  Dagster building the Definitions of the assets (decorators, Definitions, asset graph)
  cold_s          discovery's cold registration: the catalog snapshot of those Definitions
                  (orchestrator.catalog.build_catalog) + registration into an empty metadata.db, with the
                  AssetChanged events staged in the outbox (what the worker and discover-assets do)
  rescan_s        registering the same, unchanged snapshot again (it must write nothing); also
                  rescan_by_content_s: the same assets under another producer fingerprint (all hashed)
  list_s / details_s / startup_s   `asset-manager list-assets`, `asset-manager asset-details KEY` and
                  `asset-manager --help` as processes (median of several runs), against that store

  graphql_*       discovery from a running Dagster: `dagster-webserver` serving a code location of the same
                  assets; dagster_graphql_s is Dagster's own answer time for the asset-nodes query discovery
                  sends (the median of three requests, the body read but not parsed), graphql_cold_s a cold
                  poll (workspace query + that query + parsing + registration into an empty metadata.db),
                  graphql_poll_s an unchanged poll (the workspace query only; nothing read or written),
                  graphql_collect_after_s a full garbage collection right after the cold poll (which runs with
                  the collector paused: what the pause put off, at most; not part of graphql_cold_s)

Prints one JSON object on its last line: assets, dagster_load_s, cold_s, cold_ratio (cold / dagster load),
rescan_ratio (rescan / cold), list_ratio and details_ratio (command / CLI start-up), graphql_cold_ratio
(graphql_cold_s / dagster_graphql_s), graphql_poll_ratio (graphql_poll_s / graphql_cold_s), and the parts.
Targets: cold_ratio <= 1.2, rescan_ratio <= 0.1, list_ratio and details_ratio <= 2, graphql_cold_ratio <= 1.5,
graphql_poll_ratio <= 0.05.
--graphql-only measures only the graphql_* figures; --graphql-rounds N takes N (Dagster answer, cold poll)
pairs against the same webserver (each pair under the same load; the ratio is the median of their ratios).
--profile prints pyinstrument profiles (stderr) of cold registration and of an extra, unmeasured cold poll.
Usage: python bench/discovery.py [--assets N] [--profile] [--no-graphql | --graphql-only] [--graphql-rounds N]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EXE = Path(sys.executable).with_name("asset-manager")


def build_definitions(n: int) -> Any:
    """Definitions of `n` assets in 50 groups, with owners, tags, kinds, metadata and a layered lineage."""
    import dagster as dg

    assets = []
    for i in range(n):
        deps = [f"asset_{j:05d}" for j in (i - 1 - (i % 7), i - 50) if 0 <= j < i and i % 10]
        owners = [f"owner{i % 37}@example.com"] if i % 5 else ([f"team:team{i % 11}"] if i % 2 else [])

        @dg.asset(
            name=f"asset_{i:05d}",
            group_name=f"group_{i % 50:02d}",
            description=None if i % 13 == 0 else f"Generated asset number {i}.",
            owners=owners,
            tags={"domain": f"domain{i % 9}", "source": f"source{i % 17}", "type": "generated"},
            kinds={"pandas"} if i % 3 else {"pandas", "sql"},
            metadata={"target_schema": "stg", "index": i},
            code_version=str(i % 4),
            deps=deps,
        )
        def _generated() -> None: ...

        assets.append(_generated)
    defs = dg.Definitions(assets=assets)
    defs.resolve_asset_graph()
    return defs


def timed(func: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = func(*args, **kwargs)
    return time.perf_counter() - started, result


def run_cli(args: list[str], env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run(
            [str(EXE), *args], env=env, capture_output=True, text=True, cwd=env["DAGSTER_HOME"]
        )
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"asset-manager {' '.join(args)} failed: {done.stderr.strip()}")
    return statistics.median(times)


GRAPHQL_MODULE = """
import sys
sys.path.insert(0, {bench!r})
from discovery import build_definitions

defs = build_definitions({n})
"""


def measure_graphql(n: int, tmp: Path, *, rounds: int = 1, profile: bool = False) -> dict[str, Any]:
    """Discovery through a real dagster-webserver serving `n` generated assets, against Dagster's answer
    (`rounds` times against the same webserver; medians)."""
    import signal

    import httpx

    from libs.common.redis_server import free_port
    from libs.common.store import Store
    from libs.common.testing import wait_for
    from services.discovery.service import WorkspaceSync
    from services.discovery.store import MIGRATIONS
    from services.discovery.webserver import ASSET_NODES_QUERY, DagsterUnavailable, WebserverClient

    code = tmp / "graphql_code"
    code.mkdir()
    # Building thousands of assets can take longer than the code server's default 180 s start-up limit.
    (tmp / "dagster.yaml").write_text("code_servers:\n  local_startup_timeout: 1800\n")
    (code / "bench_generated.py").write_text(GRAPHQL_MODULE.format(bench=str(ROOT / "bench"), n=n))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DAGSTER_HOME": str(tmp), "PYTHONPATH": os.pathsep.join([str(code), str(ROOT)])}
    log = (tmp / "webserver.log").open("wb")
    args = [
        sys.executable,
        "-m",
        "dagster_webserver",
        "-m",
        "bench_generated",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    server = subprocess.Popen(
        args, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    client = WebserverClient(url, timeout_s=600, retries=1)

    def loaded() -> bool:
        try:
            entries = client.workspace()
        except DagsterUnavailable:
            return False
        for entry in entries:
            if entry.error:
                raise SystemExit(f"the generated code location failed to load: {entry.error}")
        return any(e.status == "LOADED" and e.repositories for e in entries)

    try:
        wait_for(
            loaded,
            1800,
            "dagster-webserver with the generated location",
            lambda: (tmp / "webserver.log").read_text(errors="replace")[-2000:],
        )
        (entry,) = client.workspace()
        selector = {"repositoryLocationName": entry.name, "repositoryName": entry.repositories[0]}
        raw = httpx.Client(timeout=600)

        def dagster_answer() -> float:
            started = time.perf_counter()
            body = {"query": ASSET_NODES_QUERY, "variables": {"selector": selector}}
            response = raw.post(f"{url}/graphql", json=body)
            response.read()
            assert response.status_code == 200
            return time.perf_counter() - started

        dagster_answer()  # Dagster's own caches warm, as they are for the poll below
        answers: list[float] = []
        colds: list[float] = []
        collects: list[float] = []
        for _ in range(rounds):
            # Each round: Dagster's answer (median of three), then a cold poll into an empty store, so that
            # on a shared machine each ratio compares two times taken under the same load.
            answers.append(statistics.median(dagster_answer() for _ in range(3)))
            store = Store(f"sqlite:///{tmp / f'graphql-metadata-{len(colds)}.db'}", MIGRATIONS)
            sync = WorkspaceSync(store, client)
            cold_s, report = timed(sync.poll)
            colds.append(cold_s)
            assert len(report.changes) == n, len(report.changes)
            # The poll runs with the collector paused; the collection it put off comes due afterwards. Taken
            # here (a full one: an upper bound), so that it is reported and not charged to the next answer.
            collects.append(timed(gc.collect)[0])
            poll_s, again = timed(sync.poll)
            assert again.changes == [] and [loc.status for loc in again.locations] == ["unchanged"]
            store.close()
        if profile:
            from pyinstrument import Profiler

            store = Store(f"sqlite:///{tmp / 'graphql-metadata-profiled.db'}", MIGRATIONS)
            profiler = Profiler()
            profiler.start()
            WorkspaceSync(store, client).poll()  # not measured: the profiler slows it down
            profiler.stop()
            print(profiler.output_text(unicode=False, color=False), file=sys.stderr)
            store.close()
        raw.close()
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
        log.close()
    ratios = [cold / answer for cold, answer in zip(colds, answers, strict=True)]
    result: dict[str, Any] = {
        "dagster_graphql_s": round(statistics.median(answers), 3),
        "graphql_cold_s": round(statistics.median(colds), 3),
        "graphql_cold_ratio": round(statistics.median(ratios), 3),
        "graphql_poll_s": round(poll_s, 4),
        "graphql_poll_ratio": round(poll_s / colds[-1], 4),
        "graphql_collect_after_s": round(statistics.median(collects), 3),
    }
    if rounds > 1:
        result["graphql_cold_ratios"] = [round(r, 3) for r in ratios]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each CLI command (median)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print pyinstrument profiles of cold registration and of a cold GraphQL poll (not measured)",
    )
    parser.add_argument("--no-graphql", action="store_true", help="skip discovery through dagster-webserver")
    parser.add_argument(
        "--graphql-only", action="store_true", help="only discovery through dagster-webserver (graphql_*)"
    )
    parser.add_argument(
        "--graphql-rounds",
        type=int,
        default=1,
        help="Dagster answers + cold polls against the same webserver (medians; per-round ratios listed)",
    )
    options = parser.parse_args()
    warnings.simplefilter("ignore")

    from asset_manager.settings import AppSettings
    from libs.common.log import configure_logging
    from libs.common.settings import StoreName, load_settings
    from libs.common.store import Store
    from orchestrator.catalog import build_catalog
    from services.discovery.service import register
    from services.discovery.store import MIGRATIONS

    with tempfile.TemporaryDirectory(prefix="bench-discovery-") as tmp:
        home = Path(tmp)
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "AMS_LOGGING__FILE": "",
            "AMS_LOGGING__LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        os.environ.update({"DAGSTER_HOME": str(home)})
        settings = load_settings(
            AppSettings, dagster_home=str(home), logging={"file": None, "level": "WARNING"}
        )
        configure_logging(settings)
        if options.graphql_only:
            graphql = measure_graphql(
                options.assets, home, rounds=options.graphql_rounds, profile=options.profile
            )
            print(json.dumps({"assets": options.assets, **graphql}))
            return 0

        dagster_load_s, defs = timed(build_definitions, options.assets)
        store = Store(
            settings.store_url(StoreName.METADATA), MIGRATIONS, synchronous=settings.stores.synchronous
        )

        profiler = None
        if options.profile:
            from pyinstrument import Profiler

            profiler = Profiler()
            profiler.start()
        snapshot_s, snapshot = timed(build_catalog, defs, "orchestrator")
        register_s, outcome = timed(register, store, snapshot, trigger="bench")
        if profiler is not None:
            profiler.stop()
            print(profiler.output_text(unicode=False, color=False), file=sys.stderr)
        cold_s = snapshot_s + register_s
        assert len(outcome.changes) == options.assets, len(outcome.changes)

        sqlite = cast(sqlite3.Connection, store.connection())  # a SQLite store here: total_changes exists
        before = sqlite.total_changes
        rescan_s, again = timed(register, store, snapshot, trigger="bench")
        assert again.changes == [] and sqlite.total_changes == before, "unchanged rescan wrote"
        rescan_full_s, _ = timed(
            lambda: register(store, build_catalog(defs, "orchestrator"), trigger="bench")
        )
        # The same content under another producer fingerprint: every asset is hashed and compared.
        relabelled = snapshot.model_copy(update={"fingerprint": "relabelled"})
        rescan_content_s, again = timed(register, store, relabelled, trigger="bench")
        assert again.changes == []
        store.close()

        startup_s = run_cli(["--help"], env, options.repeat)
        list_s = run_cli(["list-assets"], env, options.repeat)
        list_json_s = run_cli(["list-assets", "--format", "json"], env, options.repeat)
        key = f"asset_{options.assets // 2:05d}"
        details_s = run_cli(["asset-details", key], env, options.repeat)
        graphql = (
            {}
            if options.no_graphql
            else measure_graphql(options.assets, home, rounds=options.graphql_rounds, profile=options.profile)
        )

    result = {
        "assets": options.assets,
        "dagster_load_s": round(dagster_load_s, 3),
        "cold_s": round(cold_s, 3),
        "cold_ratio": round(cold_s / dagster_load_s, 3),
        "rescan_ratio": round(rescan_s / cold_s, 4),
        "list_ratio": round(list_s / startup_s, 3),
        "details_ratio": round(details_s / startup_s, 3),
        "snapshot_s": round(snapshot_s, 3),
        "register_cold_s": round(register_s, 3),
        "rescan_s": round(rescan_s, 4),
        "rescan_with_snapshot_s": round(rescan_full_s, 3),
        "rescan_by_content_s": round(rescan_content_s, 3),
        "rescan_by_content_ratio": round(rescan_content_s / cold_s, 4),
        "startup_s": round(startup_s, 3),
        "list_s": round(list_s, 3),
        "list_json_s": round(list_json_s, 3),
        "details_s": round(details_s, 3),
        **graphql,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
