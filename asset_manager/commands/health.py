"""`asset-health`: the latest health of every asset (or one), with the reason behind every finding."""

from __future__ import annotations

import difflib
import sqlite3
import time
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from asset_manager.errors import CliError
from asset_manager.output import FormatOption, OutputFormat, OutputOption, emit
from libs.common.events import AUTOMATION_KINDS, HealthStatus

STATUSES = tuple(HealthStatus)
ASSET_COLUMNS = ["asset_key", "location", "status", "failing_checks", "reasons", "since", "evaluated_at"]
CHECK_COLUMNS = ["check", "outcome", "reason", "evaluated_at"]


def parse_choices(text: str, choices: Sequence[str], option: str) -> set[str]:
    """`a,B` → {"a", "b"} among `choices` (compared in their case); an unknown or empty one is a usage error
    naming `option`, with the closest choice."""
    upper = all(c.isupper() for c in choices)
    wanted = {
        (part.strip().upper() if upper else part.strip().lower()) for part in text.split(",") if part.strip()
    }
    unknown = sorted(wanted - set(choices))
    if unknown or not wanted:
        bad = unknown[0] if unknown else text
        close = difflib.get_close_matches(bad, choices, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise CliError(f"unknown {option} '{bad}'{hint}; use a comma-separated list of {', '.join(choices)}")
    return wanted


def parse_statuses(text: str | None) -> set[HealthStatus] | None:
    """`FAILED,warning` → {"FAILED", "WARNING"}; unknown names are a usage error."""
    if text is None:
        return None
    return {HealthStatus(s) for s in parse_choices(text, STATUSES, "--status")}


def _located(location: str | None) -> str:
    return f" (code location {location})" if location else ""


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else ""


def asset_health(
    key: Annotated[
        str | None, typer.Argument(help="Asset key (e.g. raw/orders); all assets when omitted")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", "-s", help="Only these statuses, comma-separated (e.g. FAILED,WARNING)"),
    ] = None,
    location: Annotated[
        str | None, typer.Option("--location", "-l", help="Only assets of this code location")
    ] = None,
    fmt: FormatOption = OutputFormat.table,
    output: OutputOption = None,
) -> None:
    """Health per asset (worst first) with every reason; with KEY, each check of that asset."""
    from asset_manager.settings import load_app_settings
    from asset_manager.stores import store_file
    from libs.common.settings import StoreName
    from services.health import queries
    from services.health.store import open_store

    wanted = parse_statuses(status)
    settings = load_app_settings()
    path = store_file(settings, StoreName.HEALTH)
    if not path.exists():
        if key is not None:
            raise CliError(
                f"no health recorded for '{key}': {path} does not exist yet (is the health service running?)"
            )
        typer.echo(f"no health data yet: {path} does not exist (start the health service)", err=True)
        emit([], ASSET_COLUMNS, fmt, output, title="Asset health")
        return
    store = open_store(settings, migrate=False)
    try:
        items = queries.latest_health(store, key, statuses=wanted)
        if key is not None and not items and not queries.statuses(store, key):
            close = difflib.get_close_matches(key, queries.known_assets(store), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise CliError(f"no health recorded for asset '{key}'{hint}")
        if location is not None:
            if key is not None and items and items[0].code_location != location:
                found = items[0].code_location
                raise CliError(f"asset '{key}' is in code location {found or '(unknown)'}, not {location}")
            items = [item for item in items if item.code_location == location]
            known = queries.code_locations(store) if not items else []
            if not items and location not in known:
                close = difflib.get_close_matches(location, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                listed = ", ".join(known) or "none"
                raise CliError(f"unknown code location '{location}'{hint}; known: {listed}")
    finally:
        store.close()
    if key is not None and items:
        (item,) = items
        check_rows: list[dict[str, Any]] = [
            {
                "check": c.check,
                "outcome": c.outcome,
                "reason": c.reason,
                "evaluated_at": _when(item.evaluated_at),
                "values": c.values,
            }
            for c in item.checks
        ]
        columns = [*CHECK_COLUMNS, "values"] if fmt is OutputFormat.json else CHECK_COLUMNS
        emit(
            check_rows,
            columns,
            fmt,
            output,
            title=(
                f"{item.asset_key}{_located(item.code_location)}: {item.status} "
                f"since {_when(item.changed_at)}"
            ),
        )
        return
    rows: list[dict[str, Any]] = []
    for a in items:
        failing = [f"{c.check}={c.outcome}" for c in a.checks if c.outcome != "passed"]
        rows.append(
            {
                "asset_key": a.asset_key,
                "location": a.code_location or "",
                "status": a.status,
                "failing_checks": failing,
                "reasons": a.reasons if fmt is OutputFormat.json else "\n".join(a.reasons),
                "since": _when(a.changed_at),
                "evaluated_at": _when(a.evaluated_at),
                "checks": [c.model_dump(mode="json") for c in a.checks],
            }
        )
    columns = [*ASSET_COLUMNS, "checks"] if fmt is OutputFormat.json else ASSET_COLUMNS
    emit(rows, columns, fmt, output, title="Asset health")


# -- automation-health -----------------------------------------------------------------------------------

AUTOMATION_COLUMNS = [
    "object",
    "kind",
    "location",
    "status",
    "failing_checks",
    "reasons",
    "last_seen",
    "since",
]


def parse_kinds(text: str | None) -> set[str] | None:
    """`sensor,Schedule` → {"sensor", "schedule"}; unknown kinds are a usage error."""
    return None if text is None else parse_choices(text, AUTOMATION_KINDS, "--kind")


def automation_health(
    location: Annotated[
        str | None, typer.Option("--location", "-l", help="Only objects of this code location")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status", "--health", "-s", help="Only these statuses, comma-separated (e.g. FAILED,DEGRADED)"
        ),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind", "-k", help="Only these kinds, comma-separated: sensor, schedule, daemon, publisher, job"
        ),
    ] = None,
    fmt: FormatOption = OutputFormat.table,
    output: OutputOption = None,
    forget: Annotated[
        list[str] | None,
        typer.Option(
            "--forget",
            help="Retire this object (repeatable; e.g. a daemon type no longer run): health stops judging it "
            "and its alerts resolve; its next tick or heartbeat brings it back. Lists nothing.",
        ),
    ] = None,
) -> None:
    """Health of the sensors, schedules, daemons, publishers and op jobs (worst first) with every reason."""
    from asset_manager.settings import load_app_settings
    from asset_manager.stores import store_file
    from libs.common.settings import StoreName
    from services.health import queries
    from services.health.store import open_store

    if forget is not None:
        given = {"--location": location, "--status": status, "--kind": kind, "--output": output}
        used = [name for name, value in given.items() if value is not None]
        if fmt is not OutputFormat.table:
            used.append("--format")
        if used:
            raise CliError(f"--forget lists nothing: it takes no {', '.join(used)}")
    wanted = parse_statuses(status)
    kinds = parse_kinds(kind)
    settings = load_app_settings()
    path = store_file(settings, StoreName.HEALTH)
    if forget is not None:
        _forget(settings, path, forget)
        return
    if not path.exists():
        typer.echo(f"no health data yet: {path} does not exist (start the health service)", err=True)
        emit([], AUTOMATION_COLUMNS, fmt, output, title="Automation health")
        return
    store = open_store(settings, migrate=False)
    try:
        items = queries.automation_health(store)
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        # health.db from before automation health: the health service adds the table when it next starts.
        typer.echo(f"no automation health yet: {path} predates it (restart the health service)", err=True)
        items = []
    finally:
        store.close()
    known = {i.code_location for i in items if i.code_location}
    if location is not None and location not in known:
        close = difflib.get_close_matches(location, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise CliError(
            f"unknown code location '{location}'{hint}: no sensor, schedule, publisher or job of it on record"
        )
    rows: list[dict[str, Any]] = []
    for item in items:
        if wanted is not None and item.status not in wanted:
            continue
        if (kinds is not None and item.kind not in kinds) or (location not in (None, item.code_location)):
            continue
        rows.append(
            {
                "object": item.key,
                "kind": item.kind,
                "location": item.code_location or "",
                "status": item.status,
                "failing_checks": [f"{c.check}={c.outcome}" for c in item.checks if c.outcome != "passed"],
                "reasons": item.reasons if fmt is OutputFormat.json else "\n".join(item.reasons),
                "last_seen": _when(item.last_seen),
                "since": _when(item.changed_at),
                "owners": item.owners,
                "checks": [c.model_dump(mode="json") for c in item.checks],
            }
        )
    columns = [*AUTOMATION_COLUMNS, "owners", "checks"] if fmt is OutputFormat.json else AUTOMATION_COLUMNS
    emit(rows, columns, fmt, output, title="Automation health")


def _forget(settings: Any, path: Any, keys: list[str]) -> None:
    """Check every key is on record and Redis answers, then publish one `automation.removed` per key to the
    automation stream: the health worker retires them as it does the objects the publisher saw removed."""
    import redis

    from libs.common.bus import Bus, connect
    from libs.common.events import AUTOMATION, AutomationRemoved, AutomationRemovedData, new_event

    if not path.exists():
        raise CliError(f"nothing to forget: {path} does not exist (start the health service)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        known = {str(r[0]) for r in conn.execute("SELECT object_key FROM automation_objects")}
    except sqlite3.OperationalError as exc:
        raise CliError(f"nothing to forget: {path} has no automation objects ({exc})") from exc
    finally:
        conn.close()
    wanted = list(dict.fromkeys(k.strip() for k in keys))
    for key in wanted:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise CliError(f"unknown automation object '{key}'{hint}: `automation-health` lists them")
    events = [
        new_event(
            AutomationRemoved,
            "automation.removed",
            identity=f"forget:{key}:{time.time()!r}",
            data=AutomationRemovedData(
                object_key=key, reason="forgotten by hand (asset-manager automation-health --forget)"
            ),
            source="asset-manager",
        )
        for key in wanted
    ]
    client = connect(settings.redis)
    try:
        client.ping()
        Bus(client, settings.bus).publish_many(AUTOMATION, events)
    except (redis.RedisError, OSError) as exc:
        raise CliError(f"nothing forgotten: Redis unreachable ({type(exc).__name__})", code=1) from exc
    finally:
        client.close()
    for key in wanted:
        typer.echo(
            f"{key}: retired (the health worker resolves its alerts when it reads the automation stream)"
        )


def register(app: typer.Typer) -> None:
    app.command("asset-health")(asset_health)
    app.command("automation-health")(automation_health)
