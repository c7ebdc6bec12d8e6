"""Catalog and governance commands: list-assets, asset-details, discover-assets, asset-inventory,
ownership-report.

Reads go straight to the stores (read-only SQLite connections); `discover-assets` registers through the
discovery service's own registry code. Heavy modules (Dagster, the registry, Redis) are imported inside the
commands that need them, so listing commands start fast.
"""

from __future__ import annotations

import difflib
import sqlite3
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import typer

from asset_manager.commands.alerts import SinceOption, reliability_document, reliability_since
from asset_manager.errors import CliError
from asset_manager.output import (
    FormatOption,
    OutputFormat,
    OutputOption,
    Section,
    emit,
    safe_text,
    write_sections,
)
from asset_manager.stores import open_service_store, store_file
from libs.common.events import UNHEALTHY, HealthStatus
from libs.common.settings import StoreName
from libs.common.sql import Connection
from libs.common.store import Store, StoreError
from libs.common.text import clip

if TYPE_CHECKING:
    from asset_manager.settings import AppSettings

HEALTH_STATUSES = tuple(HealthStatus)


# -- stores ------------------------------------------------------------------------------------------------


def _settings() -> AppSettings:
    from asset_manager.settings import load_app_settings

    return load_app_settings()


@contextmanager
def read_store(
    settings: AppSettings, name: StoreName = StoreName.METADATA, *, required: bool = True
) -> Iterator[Connection | None]:
    """A read-only connection to one store (None when it does not exist and is not `required`)."""
    path = store_file(settings, name)
    if not path.exists():
        if required:
            raise CliError(
                f"{name} store not found at {path}: "
                "run `asset-manager init` then `asset-manager discover-assets`"
            )
        yield None
        return
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        conn.row_factory = sqlite3.Row
        conn.execute("SELECT 1 FROM schema_migrations LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        if not required:
            yield None
            return
        raise CliError(f"cannot read {name} store {path}: {exc}") from exc
    try:
        conn.execute("BEGIN")  # one snapshot for every query of the command
        yield conn
    except sqlite3.OperationalError as exc:
        raise CliError(f"cannot read {name} store {path}: {exc}") from exc
    finally:
        conn.close()


def _registry_ready(conn: Connection | None, settings: AppSettings) -> Connection:
    if conn is None:
        raise CliError("metadata store not found")
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'assets'").fetchone()
    if found is None:
        path = store_file(settings, StoreName.METADATA)
        raise CliError(f"{path} has no asset registry yet: run `asset-manager discover-assets`")
    return conn


@contextmanager
def _peer_store(settings: AppSettings, name: StoreName) -> Iterator[Store | None]:
    """Another service's store through its own store module (not migrated); None when it does not exist yet
    or cannot be opened (a damaged health.db must not keep `list-assets` from listing the registry)."""
    path = store_file(settings, name)
    if not path.exists():
        yield None
        return
    try:
        store = open_service_store(settings, name, migrate=False)
    except (StoreError, sqlite3.Error):
        yield None
        return
    try:
        yield store
    finally:
        store.close()


def health_by_asset(settings: AppSettings, key: str | None = None) -> dict[str, dict[str, Any]]:
    """Latest health per asset (status, reasons, evaluated_at, last_materialization) from health.db;
    empty before the health worker has written anything."""
    from services.health import queries as health_queries

    out: dict[str, dict[str, Any]] = {}
    with _peer_store(settings, StoreName.HEALTH) as store:
        if store is None:
            return out
        for asset_key, item in health_queries.statuses(store, key).items():
            out[asset_key] = item.model_dump(mode="json")
        last = health_queries.last_materializations(store, key)
    for asset_key, at in last.items():
        out.setdefault(asset_key, {"asset_key": asset_key, "status": "UNKNOWN"})["last_materialization"] = at
    return out


class CatalogHealth(NamedTuple):
    """What listings of the whole catalog show of health, per asset key."""

    status: dict[str, str]  # HEALTHY … UNKNOWN (a stored value this code does not know reads as UNKNOWN)
    last_materialization: dict[str, str]  # ISO 8601, UTC, as of the asset's last evaluation


def catalog_health(settings: AppSettings, *, last_materialization: bool = False) -> CatalogHealth:
    """Every evaluated asset's status (and, if asked, its last materialization), nothing else: at 50,000
    assets `health_by_asset` (reasons decoded, a model per asset) took seconds; this takes tens of
    milliseconds. Empty before the health worker has written anything."""
    from services.health import queries as health_queries

    last: dict[str, str] = {}
    with _peer_store(settings, StoreName.HEALTH) as store:
        if store is None:
            return CatalogHealth({}, {})
        stored = health_queries.status_by_asset(store)
        if last_materialization:
            last = health_queries.last_materializations(store)
    known = {status.value: status.value for status in HEALTH_STATUSES}
    return CatalogHealth({key: known.get(str(s).upper(), "UNKNOWN") for key, s in stored.items()}, last)


def history_chart(settings: AppSettings, key: str, limit: int = 60) -> list[dict[str, Any]]:
    """Row counts and run durations of the asset's recent history as terminal sparklines, from health.db."""
    from services.health import queries as health_queries

    with _peer_store(settings, StoreName.HEALTH) as store:
        if store is None:
            return []
        rows, durations = health_queries.series(health_queries.history(store, key, limit))
    chart = []
    for metric, values in (("row_count", rows), ("duration_s", durations)):
        if values:
            chart.append(
                {
                    "metric": metric,
                    "chart": health_queries.sparkline(values, width=60),
                    "points": len(values),
                    "min": round(min(values), 2),
                    "max": round(max(values), 2),
                    "last": round(values[-1], 2),
                }
            )
    return chart


def alerts_by_asset(settings: AppSettings, key: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Open (firing, acknowledged or silenced) alerts per asset from monitor.db via
    `services.alerts.queries`."""
    from services.alerts import queries as alert_queries

    out: dict[str, list[dict[str, Any]]] = {}
    with _peer_store(settings, StoreName.MONITOR) as store:
        if store is None:
            return out
        for alert in alert_queries.open_alerts(store, key):
            out.setdefault(str(alert["asset_key"]), []).append(dict(alert))
    return out


def _status(health: Mapping[str, Any] | None) -> str:
    if not health:
        return "UNKNOWN"
    status = str(health.get("status") or "UNKNOWN").upper()
    return status if status in HEALTH_STATUSES else "UNKNOWN"


def _last_materialization(health: Mapping[str, Any] | None) -> str | None:
    return str(health["last_materialization"]) if health and health.get("last_materialization") else None


# -- input checks ------------------------------------------------------------------------------------------


def did_you_mean(value: str, candidates: Sequence[str] | set[str]) -> str:
    """`" (did you mean 'x'?)"` for the closest candidate, or ''."""
    close = difflib.get_close_matches(value, sorted(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _printable(value: str) -> str:
    return clip(value.encode("unicode_escape").decode(), 200)


def parse_tags(tags: Sequence[str]) -> dict[str, str]:
    """`key=value` filters → dict; anything else is a CliError."""
    out: dict[str, str] = {}
    for raw in tags:
        key, sep, value = raw.partition("=")
        if not sep or not key.strip():
            raise CliError(f"bad --tag '{_printable(raw)}': expected key=value (e.g. --tag domain=sales)")
        out[key.strip()] = value.strip()
    return out


def _check_known(what: str, value: str | None, known: set[str]) -> None:
    if value is not None and value not in known and f"team:{value}" not in known:
        raise CliError(f"unknown {what} '{_printable(value)}'{did_you_mean(value, known)}")


# -- list-assets -------------------------------------------------------------------------------------------

LIST_COLUMNS = [
    "key",
    "location",
    "group",
    "owners",
    "kinds",
    "tags",
    "upstream",
    "version",
    "health",
    "status",
    "last_seen",
]


def list_assets(
    fmt: FormatOption = OutputFormat.table,
    output: OutputOption = None,
    group: Annotated[str | None, typer.Option("--group", "-g", help="Only assets of this group")] = None,
    owner: Annotated[
        str | None, typer.Option("--owner", help="Only assets owned by this email or team")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", "-t", help="key=value; repeat to require several")
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", "-k", help="Only assets of this kind (e.g. pandas)")
    ] = None,
    health: Annotated[
        str | None, typer.Option("--health", help="HEALTHY, WARNING, DEGRADED, FAILED or UNKNOWN")
    ] = None,
    retired: Annotated[
        bool, typer.Option("--retired", help="List retired assets instead of active ones")
    ] = False,
    location: Annotated[
        str | None, typer.Option("--location", "-l", help="Only assets of this code location")
    ] = None,
    job: Annotated[str | None, typer.Option("--job", "-j", help="Only assets this Dagster job runs")] = None,
) -> None:
    """List registered assets (filters combine with AND)."""
    from services.discovery import queries

    tags = parse_tags(tag or [])
    wanted_health = None
    if health is not None:
        wanted_health = health.strip().upper()
        if wanted_health not in HEALTH_STATUSES:
            raise CliError(
                f"unknown --health '{_printable(health)}'"
                f"{did_you_mean(wanted_health, set(HEALTH_STATUSES))}; "
                f"use one of {', '.join(HEALTH_STATUSES)}"
            )
    settings = _settings()
    with read_store(settings) as conn:
        conn = _registry_ready(conn, settings)
        if any(f is not None for f in (group, owner, kind, location, job)) or tags:
            known = queries.distinct_values(conn)
            _check_known("code location", location, known["location"])
            _check_known("job", job, known["job"])
            _check_known("group", group, known["group"])
            _check_known("owner", owner, known["owner"])
            _check_known("kind", kind, known["kind"])
            for tag_key in tags:
                _check_known("tag", tag_key, known["tag"])
        assets = queries.list_assets(
            conn,
            group=group,
            owner=owner,
            tags=tags,
            kind=kind,
            retired=retired,
            light=True,
            location=location,
            job=job,
        )
        upstream = queries.direct_upstream(conn) if assets else {}
    health_map = catalog_health(settings).status if assets else {}
    rows = []
    for asset in assets:
        key = asset["key"]
        status = health_map.get(key, "UNKNOWN")
        if wanted_health is not None and status != wanted_health:
            continue
        asset["upstream"] = upstream.get(key, [])
        asset["health"] = status
        asset["location"] = asset["code_location"]
        rows.append(asset)
    emit(rows, LIST_COLUMNS, fmt, output, title=f"{len(rows)} assets")


# -- asset-details -----------------------------------------------------------------------------------------


def asset_details(
    key: Annotated[str, typer.Argument(help="Asset key, e.g. raw_orders or path/to/asset")],
    fmt: FormatOption = OutputFormat.table,
    output: OutputOption = None,
) -> None:
    """Everything about one asset: spec, lineage up and down, version history, latest health, open alerts."""
    from services.discovery import queries

    settings = _settings()
    with read_store(settings) as conn:
        conn = _registry_ready(conn, settings)
        asset = queries.get_asset(conn, key)
        if asset is None:
            raise CliError(
                f"unknown asset key '{_printable(key)}'{did_you_mean(key, queries.all_keys(conn))}"
            )
        history = queries.history(conn, key)
        lineage = queries.lineage(conn, key)
    health = health_by_asset(settings, key).get(key)
    alerts = alerts_by_asset(settings, key).get(key, [])
    chart = history_chart(settings, key)
    spec_fields = [
        "key",
        "status",
        "code_location",
        "repository",
        "group",
        "description",
        "owners",
        "kinds",
        "tags",
        "metadata",
        "code_version",
        "partitioning",
        "freshness",
        "checks",
        "job_names",
        "source_file",
        "source_line",
        "upstream",
        "downstream",
        "version",
        "fingerprint",
        "first_seen",
        "last_seen",
        "retired_at",
    ]
    spec_rows = [{"field": name, "value": asset.get(name)} for name in spec_fields]
    up = [{"key": k, "depth": d} for k, d in lineage["upstream"]]
    down = [{"key": k, "depth": d} for k, d in lineage["downstream"]]
    hist = [{**h, "changed": sorted(h["changes"])} for h in history]
    health_row = {
        "status": _status(health),
        "last_materialization": _last_materialization(health),
        "reasons": (health or {}).get("reasons"),
        "evaluated_at": (health or {}).get("evaluated_at"),
    }
    alert_rows = [
        {
            "id": a.get("id"),
            "check": a.get("check"),
            "severity": a.get("severity"),
            "state": a.get("status"),
            "since": a.get("started_at"),
            "summary": a.get("summary"),
        }
        for a in alerts
    ]
    document = {
        **{name: asset.get(name) for name in spec_fields},
        "lineage": {"upstream": up, "downstream": down},
        "history": history,
        "health": health_row,
        "history_chart": chart,
        "open_alerts": alert_rows,
    }
    sections: list[Section] = [
        (f"asset {key}", spec_rows, ["field", "value"]),
        ("upstream (all depths)", up, ["key", "depth"]),
        ("downstream (all depths)", down, ["key", "depth"]),
        ("version history", hist, ["version", "change", "recorded_at", "changed", "retired_at"]),
        ("latest health", [health_row], ["status", "last_materialization", "evaluated_at", "reasons"]),
        (
            "row counts and durations, oldest → newest",
            chart,
            ["metric", "chart", "points", "min", "max", "last"],
        ),
        ("open alerts", alert_rows, ["id", "check", "severity", "state", "since", "summary"]),
    ]
    write_sections(document, sections, fmt, output)


# -- discover-assets ---------------------------------------------------------------------------------------


@contextmanager
def progress(description: str) -> Iterator[Any]:
    """A rich progress display on a terminal; nothing when stderr is piped."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        bar.add_task(description, total=None)
        yield bar


def _dry_run(settings: AppSettings, snapshot: Any) -> list[Any]:
    """The changes `snapshot` would make, computed on a scratch copy: the real store is not touched."""
    from services.discovery.registry import register_snapshot

    with _scratch_store(settings) as store, store.write() as conn:
        return register_snapshot(conn, snapshot)


SOURCES = ("auto", "dagster", "local")


def discover_assets(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="List every module scanned and every problem")
    ] = False,
    test: Annotated[
        bool, typer.Option("--test", help="Validate discovery and report; write nothing")
    ] = False,
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="dagster: every code location through the webserver at dagster.url; local: this "
            "project's code location loaded in-process; auto (default): dagster when dagster.url is set",
        ),
    ] = "auto",
) -> None:
    """Register the assets of the code location(s) (new versions, retirements) and publish the changes.

    Works whether or not the discovery worker runs. Exit 1 when a code location has problems or the
    webserver does not answer (then nothing is changed).
    """
    if source not in SOURCES:
        raise CliError(
            f"unknown --source '{_printable(source)}'{did_you_mean(source, set(SOURCES))}; "
            "use auto, dagster or local"
        )
    settings = _settings()
    _quiet_logging(settings)
    if source == "dagster" and not settings.dagster.url:
        raise CliError(
            "--source dagster needs the webserver's URL: set dagster.url in config/app_config.yaml "
            "(or AMS_DAGSTER__URL)"
        )
    if source == "dagster" or (source == "auto" and settings.dagster.url):
        _discover_from_dagster(settings, verbose, test)
        return
    from services.discovery.scan import definitions_loader, scan

    location = settings.dagster.code_location
    with progress(f"loading {settings.discovery.definitions}"):
        result = scan(location, definitions_loader(settings.discovery.definitions))
    out = typer.echo
    if verbose:
        out(f"modules scanned ({len(result.modules)}):")
        for module in result.modules:
            out(f"  {module}")
    snapshot = result.snapshot
    found = len(snapshot.assets) if snapshot else 0
    out(
        f"code location {location}: {len(result.modules)} modules, {found} assets, "
        f"{len(result.problems)} problems "
        f"({result.duration_s:.2f} s)"
    )
    if result.problems:
        out(f"problems ({len(result.problems)}):")
        for problem in result.problems if verbose else result.problems[:20]:
            out(f"  {problem}")
        if not verbose and len(result.problems) > 20:
            out(f"  ... {len(result.problems) - 20} more (use --verbose)")
    if snapshot is None:
        raise CliError(f"discovery failed: the code location {location} could not be loaded", code=1)

    if test:
        with progress("checking against the registry"):
            changes = _dry_run(settings, snapshot)
        _report_changes(changes, verbose, prefix="would ")
        out("test only: nothing was written")
    else:
        changes = _register(settings, snapshot, verbose)
    if result.problems:
        raise typer.Exit(1)


def _discover_from_dagster(settings: AppSettings, verbose: bool, test: bool) -> None:
    """Every code location of the running Dagster, read through the webserver's GraphQL API."""
    from services.discovery.service import WorkspaceSync
    from services.discovery.webserver import DagsterUnavailable, WebserverClient

    cfg = settings.dagster
    assert cfg.url is not None
    client = WebserverClient(cfg.url, timeout_s=cfg.timeout_s, retries=cfg.retries)
    out = typer.echo
    try:
        if test:
            with _scratch_store(settings) as scratch, progress(f"reading {cfg.url}"):
                report = WorkspaceSync(scratch, client, source="asset-manager").poll(
                    force=True, dry_run=scratch
                )
        else:
            store = _open_metadata(settings)
            try:
                with progress(f"reading {cfg.url}"):
                    report = WorkspaceSync(store, client, source="asset-manager").poll(
                        force=True, trigger="cli"
                    )
                _publish_outbox(settings, store)
            finally:
                store.close()
    except DagsterUnavailable as exc:
        raise CliError(
            f"discovery failed: {exc}; the registry was not changed (use --source local to load "
            f"this project's code location in-process)",
            code=1,
        ) from exc
    finally:
        client.close()
    out(f"Dagster webserver {cfg.url}: {len(report.locations)} code locations ({report.duration_s:.2f} s)")
    for loc in report.locations:
        out(f"code location {loc.name}: {loc.status}, {loc.assets} assets, {len(loc.problems)} problems")
        for problem in loc.problems if verbose else loc.problems[:5]:
            out(f"  problem: {problem if verbose else problem.splitlines()[0][:300]}")
    _report_changes(report.changes, verbose, prefix="would " if test else "")
    if test:
        out("test only: nothing was written")
    if report.problems:
        raise typer.Exit(1)


@contextmanager
def _scratch_store(settings: AppSettings) -> Iterator[Store]:
    """A throwaway copy of metadata.db to compute what a registration would change."""
    import tempfile

    from services.discovery.store import MIGRATIONS

    with tempfile.TemporaryDirectory(prefix="ams-discover-test-") as tmp:
        scratch = Path(tmp) / "metadata.db"
        source = store_file(settings, StoreName.METADATA)
        if source.exists():
            src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=5)
            dst = sqlite3.connect(scratch)
            try:
                src.backup(dst)
            finally:
                src.close()
                dst.close()
        store = Store(f"sqlite:///{scratch}", MIGRATIONS, synchronous="OFF")
        try:
            yield store
        finally:
            store.close()


def _quiet_logging(settings: AppSettings) -> None:
    """Service logs to stderr, warnings and worse only: the command's own output is the report."""
    from libs.common.log import configure_logging

    quiet = settings.logging.model_copy(update={"level": "WARNING", "file": None})
    configure_logging(settings.model_copy(update={"logging": quiet}), stream=sys.stderr)


def _report_changes(changes: Sequence[Any], verbose: bool, *, prefix: str = "") -> None:
    counts = {
        kind: sum(1 for c in changes if c.kind == kind)
        for kind in ("registered", "changed", "returned", "retired")
    }
    typer.echo(
        f"{prefix}register {counts['registered']}, change {counts['changed']}, "
        f"bring back {counts['returned']}, retire {counts['retired']}"
        if prefix
        else f"registered {counts['registered']}, changed {counts['changed']}, "
        f"returned {counts['returned']}, retired {counts['retired']}"
    )
    shown = changes if verbose else changes[:50]
    for change in shown:
        fields = f" ({', '.join(sorted(change.changes))})" if change.kind in ("changed", "returned") else ""
        typer.echo(safe_text(f"  {change.kind:<10} {change.key} v{change.version}{fields}"))
    if len(changes) > len(shown):
        typer.echo(f"  ... {len(changes) - len(shown)} more (use --verbose)")


def _open_metadata(settings: AppSettings) -> Store:
    from services.discovery.store import open_store

    try:
        return open_store(settings)
    except (StoreError, sqlite3.Error) as exc:
        raise CliError(f"cannot open the metadata store: {exc}") from exc


def _register(settings: AppSettings, snapshot: Any, verbose: bool) -> list[Any]:
    from services.discovery.service import register

    store = _open_metadata(settings)
    try:
        with progress(f"registering {len(snapshot.assets)} assets"):
            try:
                outcome = register(store, snapshot, trigger="cli", source="asset-manager")
            except sqlite3.OperationalError as exc:
                raise CliError(f"cannot write the metadata store {store.path}: {exc}") from exc
        _report_changes(outcome.changes, verbose)
        _publish_outbox(settings, store)
        return outcome.changes
    finally:
        store.close()


def _publish_outbox(settings: AppSettings, store: Store) -> None:
    """Publish the staged asset changes now; with Redis down they wait for the discovery worker."""
    from libs.common import outbox

    waiting = outbox.pending(store)
    if not waiting:
        return
    import redis

    from libs.common.bus import Bus, connect

    client = connect(settings.redis)
    try:
        published = outbox.flush(store, Bus(client, settings.bus))
        typer.echo(f"published {published} asset change events to {settings.bus.prefix}:asset-changes")
    except (redis.RedisError, OSError) as exc:
        typer.echo(
            f"Redis unreachable at {_redacted(settings.redis.url)} ({type(exc).__name__}): registration is "
            f"saved; {waiting} events wait in the metadata store's outbox and the discovery worker "
            "publishes them when it runs"
        )
    finally:
        client.close()


def _redacted(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


# -- asset-inventory ---------------------------------------------------------------------------------------

DIMENSIONS = ("group", "domain", "source", "kind")
INVENTORY_COLUMNS = [
    "dimension",
    "value",
    "assets",
    "healthy",
    "unhealthy",
    "unknown",
    "last_materialization",
]


def _dimension_values(asset: Mapping[str, Any], dimension: str) -> list[str]:
    if dimension == "group":
        return [asset.get("group") or "default"]
    if dimension == "kind":
        return list(asset.get("kinds") or []) or ["(none)"]
    value = (asset.get("tags") or {}).get(dimension)
    return [value] if value else ["(none)"]


def asset_inventory(
    fmt: FormatOption = OutputFormat.table,
    output: OutputOption = None,
    by: Annotated[str, typer.Option("--by", help="group, domain, source, kind or all")] = "all",
) -> None:
    """Counts of active assets by group, domain tag, source tag and kind, with health and last
    materialization."""
    from services.discovery import queries

    dimensions = DIMENSIONS if by == "all" else (by,)
    if by != "all" and by not in DIMENSIONS:
        raise CliError(
            f"unknown --by '{_printable(by)}'{did_you_mean(by, {*DIMENSIONS, 'all'})}; "
            "use group, domain, source, kind or all"
        )
    settings = _settings()
    with read_store(settings) as conn:
        assets = queries.list_assets(_registry_ready(conn, settings), light=True)
    health = catalog_health(settings, last_materialization=True) if assets else CatalogHealth({}, {})
    rows: list[dict[str, Any]] = []
    for dimension in dimensions:
        buckets: dict[str, dict[str, Any]] = {}
        for asset in assets:
            status = health.status.get(asset["key"], "UNKNOWN")
            last = health.last_materialization.get(asset["key"])
            for value in _dimension_values(asset, dimension):
                row = buckets.setdefault(
                    value,
                    {
                        "dimension": dimension,
                        "value": value,
                        "assets": 0,
                        "healthy": 0,
                        "unhealthy": 0,
                        "unknown": 0,
                        "last_materialization": None,
                    },
                )
                row["assets"] += 1
                row[
                    "healthy" if status == "HEALTHY" else "unhealthy" if status in UNHEALTHY else "unknown"
                ] += 1
                if last and (row["last_materialization"] is None or last > row["last_materialization"]):
                    row["last_materialization"] = last
        rows.extend(buckets[v] for v in sorted(buckets))
    emit(rows, INVENTORY_COLUMNS, fmt, output, title=f"inventory of {len(assets)} assets")


# -- ownership-report --------------------------------------------------------------------------------------

OWNER_COLUMNS = [
    "owner",
    "type",
    "assets",
    "unhealthy",
    "open_alerts",
    "described_pct",
    "incidents",
    "mtta_s",
    "mttr_s",
]


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1) if whole else 0.0


def ownership_report(
    since: SinceOption = "30d",
    fmt: FormatOption = OutputFormat.table,
    output: OutputOption = None,
) -> None:
    """Per owner and team: assets, unhealthy assets, open alerts, incidents with their MTTA and MTTR over the
    period; unowned and undescribed assets; coverage KPIs."""
    from services.discovery import queries

    start = reliability_since(since)
    settings = _settings()
    with read_store(settings) as conn:
        assets = queries.list_assets(_registry_ready(conn, settings), light=True)
    health = catalog_health(settings).status if assets else {}
    alerts = alerts_by_asset(settings) if assets else {}
    owners: dict[str, dict[str, Any]] = {}
    for asset in assets:
        described = bool((asset.get("description") or "").strip())
        for owner in asset["owners"]:
            row = owners.setdefault(
                owner,
                {
                    "owner": owner,
                    "type": "team" if owner.startswith("team:") else "person",
                    "assets": 0,
                    "unhealthy": 0,
                    "open_alerts": 0,
                    "_described": 0,
                },
            )
            row["assets"] += 1
            row["unhealthy"] += health.get(asset["key"], "UNKNOWN") in UNHEALTHY
            row["open_alerts"] += len(alerts.get(asset["key"], []))
            row["_described"] += described
    responses = {r["owner"]: r for r in reliability_document(settings, start)["owner"]} if assets else {}
    owner_rows = [
        {
            **r,
            "described_pct": _pct(r["_described"], r["assets"]),
            **{
                k: responses.get(owner, {}).get(k, 0 if k == "incidents" else None)
                for k in ("incidents", "mtta_s", "mttr_s")
            },
        }
        for owner, r in sorted(owners.items())
    ]
    unowned = [a for a in assets if not a["owners"]]
    undescribed = [a for a in assets if not (a.get("description") or "").strip()]
    total = len(assets)
    kpis = [
        {"kpi": "assets", "value": total},
        {"kpi": "owned_pct", "value": _pct(total - len(unowned), total)},
        {"kpi": "described_pct", "value": _pct(total - len(undescribed), total)},
        {
            "kpi": "team_owned_pct",
            "value": _pct(sum(1 for a in assets if any(o.startswith("team:") for o in a["owners"])), total),
        },
        {
            "kpi": "unhealthy_pct",
            "value": _pct(sum(1 for a in assets if health.get(a["key"], "UNKNOWN") in UNHEALTHY), total),
        },
        {"kpi": "owners", "value": len(owners)},
    ]
    gaps = [
        {
            "key": a["key"],
            "group": a.get("group"),
            "missing": ", ".join(
                m
                for m, bad in (
                    ("owner", not a["owners"]),
                    ("description", not (a.get("description") or "").strip()),
                )
                if bad
            ),
        }
        for a in assets
        if not a["owners"] or not (a.get("description") or "").strip()
    ]
    document = {
        "kpis": {k["kpi"]: k["value"] for k in kpis},
        "owners": [{c: r[c] for c in OWNER_COLUMNS} for r in owner_rows],
        "without_owner": [a["key"] for a in unowned],
        "without_description": [a["key"] for a in undescribed],
    }
    sections: list[Section] = [
        ("coverage", kpis, ["kpi", "value"]),
        ("owners", owner_rows, OWNER_COLUMNS),
        ("assets missing an owner or a description", gaps, ["key", "group", "missing"]),
    ]
    write_sections(document, sections, fmt, output)


def register(app: typer.Typer) -> None:
    """Add the catalog commands to the CLI."""
    app.command("list-assets")(list_assets)
    app.command("asset-details")(asset_details)
    app.command("discover-assets")(discover_assets)
    app.command("asset-inventory")(asset_inventory)
    app.command("ownership-report")(ownership_report)


__all__ = ["register"]
