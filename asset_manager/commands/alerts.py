"""`asset-manager alerts`: list alerts, acknowledge, silence, inspect deliveries, test a receiver.

Reads and writes go through `services.alerts` (its store, queries and service), never around it.
"""

from __future__ import annotations

import getpass
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

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
from asset_manager.settings import AppSettings, load_app_settings
from libs.common.events import from_timestamp
from libs.common.settings import parse_duration_s
from libs.common.store import Store

SEVERITIES = ("critical", "error", "warning", "info")
MAX_ID = 2**63 - 1  # the largest id (and limit) a store can hold; a larger one is an error, not an overflow

alerts_app = typer.Typer(
    help="Alerts: list (active by default), show, incidents, ack, silence, unsilence, deliveries, "
    "test-receiver.",
    no_args_is_help=False,
)


def parse_duration(text: str, *, maximum_s: float) -> float:
    """`2h`, `90m`, `1d12h`, `45s`, `1w` → seconds, at most `maximum_s` (the parser of the config files)."""
    shown = text if len(text) <= 40 else text[:40] + "..."
    try:
        seconds = parse_duration_s(text) if len(text) <= 100 else None
    except ValueError:
        seconds = None
    if seconds is None:
        raise CliError(f"invalid duration {shown!r}: use e.g. 30m, 2h, 1d, 1h30m")
    if seconds > maximum_s:
        raise CliError(f"invalid duration {shown!r}: at most {maximum_s / 86400:g}d")
    return seconds


def _settings() -> AppSettings:
    """AppSettings, with service logs quietened to warnings on stderr: the command's output is the report."""
    from libs.common.log import configure_logging

    settings = load_app_settings()
    quiet = settings.logging.model_copy(update={"level": "WARNING", "file": None})
    configure_logging(settings.model_copy(update={"logging": quiet}), stream=sys.stderr)
    return settings


def _user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:
        return "cli"


@contextmanager
def _store(settings: AppSettings, *, create: bool) -> Iterator[Store | None]:
    """monitor.db through the alerts service's own store code; None when it does not exist yet (reads)."""
    from services.alerts.store import open_store, sqlite_path_of

    if not create and not sqlite_path_of(settings).exists():
        yield None
        return
    store = open_store(settings, migrate=create)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def _service(settings: AppSettings, *, error_code: int = 1) -> Iterator[Any]:
    """The alerts service on monitor.db for a person's action; its refusals become one-line CLI errors."""
    from services.alerts.service import AlertsError, AlertService

    with _store(settings, create=True) as store:
        assert store is not None
        try:
            yield AlertService(store, settings)
        except AlertsError as exc:
            raise CliError(str(exc), code=error_code) from None


def _check_severity(severity: str | None) -> None:
    if severity is not None and severity not in SEVERITIES:
        raise CliError(f"unknown severity {severity!r}: choose one of {', '.join(SEVERITIES)}")


@alerts_app.callback(invoke_without_command=True)
def alerts(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Include resolved alerts")] = False,
    asset: Annotated[str | None, typer.Option("--asset", help="Only this asset key")] = None,
    severity: Annotated[
        str | None, typer.Option("--severity", help="critical, error, warning or info")
    ] = None,
    fmt: FormatOption = OutputFormat.table,
    output: OutputOption = None,
) -> None:
    """List alerts: firing ones (acknowledged and silenced included) unless --all."""
    if ctx.invoked_subcommand is not None:
        return
    _check_severity(severity)
    settings = _settings()
    from services.alerts import queries

    with _store(settings, create=False) as store:
        rows = (
            []
            if store is None
            else queries.list_alerts(store, include_resolved=all_, asset_key=asset, severity=severity)
        )
    columns = [
        "id",
        "incident",
        "status",
        "severity",
        "asset_key",
        "location",
        "check",
        "summary",
        "owners",
        "started_at",
    ]
    if all_:
        columns.append("resolved_at")
    columns += ["acked_by"]
    if fmt is OutputFormat.json:
        columns += ["values", "downstream", "silence_id", "silenced_until", "fingerprint"]
    if not rows and fmt is OutputFormat.table and output is None:
        typer.echo("no alerts" if all_ else "no active alerts")
        return
    emit(rows, columns, fmt, output, title="Alerts" if all_ else "Active alerts")


@alerts_app.command("show")
def show(
    alert_id: Annotated[int, typer.Argument(help="Alert id", min=1, max=MAX_ID)],
    fmt: FormatOption = OutputFormat.table,
    output: OutputOption = None,
) -> None:
    """One alert with its incident (the alerts sharing its root cause, and why each is there) and its full
    history: every state change, who made it and why."""
    settings = _settings()
    from services.alerts import queries

    with _store(settings, create=False) as store:
        alert = None if store is None else queries.get_alert(store, alert_id)
        if alert is not None:
            alert["incident"] = queries.incident_of(store, alert_id) if store is not None else None
    if alert is None:
        raise CliError(f"no alert with id {alert_id}")
    header = [
        {"field": k, "value": alert[k]}
        for k in (
            "id",
            "status",
            "severity",
            "asset_key",
            "location",
            "check",
            "summary",
            "values",
            "owners",
            "downstream",
            "started_at",
            "resolved_at",
            "acked_by",
            "ack_reason",
            "silence_id",
            "silenced_until",
        )
    ]
    incident = alert["incident"]
    sections: list[Section] = [(f"Alert {alert_id}", header, ["field", "value"])]
    if incident is not None:
        header.insert(1, {"field": "incident", "value": _incident_line(incident)})
        header.insert(2, {"field": "grouped because", "value": _why(incident, alert_id)})
        sections.append(
            (
                f"Incident #{incident['id']}: every alert with the same root cause, and why",
                incident["alerts"],
                ["id", "asset_key", "location", "check", "status", "owners", "why"],
            )
        )
    sections.append(("History", alert["history"], ["at", "event", "actor", "reason", "detail"]))
    write_sections(alert, sections, fmt, output)


def _incident_line(incident: dict[str, Any]) -> str:
    root = f"root cause {incident['root_asset']} ({incident['root_check']})"
    merged = f", merged into #{incident['merged_into']}" if incident["merged_into"] else ""
    return f"#{incident['id']} {incident['status']}{merged}: {root}, {incident['members']} alert(s)"


def _why(incident: dict[str, Any], alert_id: int) -> str:
    member = next((m for m in incident["alerts"] if m["id"] == alert_id), None)
    why = (member or {}).get("why") or "not grouped yet"
    if incident["root_alert_id"] == alert_id:
        return why
    root_retired = any(
        m["id"] == incident["root_alert_id"] and "retired" in (m["summary"] or "") for m in incident["alerts"]
    )
    return why + ("; the root cause's asset is retired" if root_retired else "")


@alerts_app.command("incidents")
def incidents(
    all_: Annotated[bool, typer.Option("--all", help="Include resolved and merged incidents")] = False,
    fmt: FormatOption = OutputFormat.table,
    output: OutputOption = None,
) -> None:
    """List incidents (alerts grouped by root cause): open ones unless --all, each with its members."""
    settings = _settings()
    from services.alerts import queries

    with _store(settings, create=False) as store:
        rows = [] if store is None else queries.list_incidents(store, include_resolved=all_)
    if not rows and fmt is OutputFormat.table and output is None:
        typer.echo("no incidents" if all_ else "no open incidents")
        return
    columns = [
        "id",
        "status",
        "severity",
        "root_asset",
        "root_location",
        "root_check",
        "members",
        "affected",
        "owners",
        "opened_at",
        "acked_by",
    ]
    if all_:
        columns += ["resolved_at", "merged_into"]
    if fmt is OutputFormat.json:
        columns += ["alerts"]
    emit(rows, columns, fmt, output, title="Incidents" if all_ else "Open incidents")


@alerts_app.command("ack")
def ack(
    alert_id: Annotated[
        int, typer.Argument(help="Alert id (from `asset-manager alerts`)", min=1, max=MAX_ID)
    ],
    by: Annotated[str | None, typer.Option("--by", help="Who acknowledges (default: $USER)")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why")] = None,
) -> None:
    """Acknowledge a firing alert: no more repeats; the resolved notice still goes out."""
    with _service(_settings()) as service:
        row = service.acknowledge(alert_id, by or _user(), reason)
    others = row["acknowledged"] - 1
    incident = f" and {others} other alert(s) of incident #{row['incident_id']}" if others else ""
    typer.echo(
        safe_text(
            f"acknowledged alert {alert_id} ({row['asset_key']}: {row['check_name']}){incident} "
            f"as {row['acked_by']}"
        )
    )


@alerts_app.command("silence")
def silence(
    duration: Annotated[str, typer.Option("--for", help="How long: 30m, 2h, 1d...")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the history)")],
    asset: Annotated[str | None, typer.Option("--asset", help="Asset key (glob) to silence")] = None,
    matcher: Annotated[
        list[str] | None,
        typer.Option(
            "--matcher", "-m", help="k=v (asset, check, severity, owner, team, group, tag.<name>); repeatable"
        ),
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who silences (default: $USER)")] = None,
) -> None:
    """Silence current and future alerts matching every matcher for a while."""
    from services.alerts.routing import parse_matcher

    matchers: dict[str, str] = {}
    if asset:
        matchers["asset"] = asset
    for text in matcher or []:
        try:
            key, value = parse_matcher(text)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        matchers[key] = value
    if not matchers:
        raise CliError("give --asset KEY or at least one --matcher k=v")
    from services.alerts.service import MAX_SILENCE_S

    seconds = parse_duration(duration, maximum_s=MAX_SILENCE_S)
    with _service(_settings(), error_code=2) as service:
        silence_id, covered = service.silence(matchers, seconds, by or _user(), reason)
    until = from_timestamp(time.time() + seconds).isoformat(timespec="seconds")
    shown = " ".join(f"{k}={v}" for k, v in matchers.items())
    typer.echo(safe_text(f"silence {silence_id}: {shown} until {until} (covers {covered} current alert(s))"))


@alerts_app.command("unsilence")
def unsilence(
    silence_id: Annotated[
        str, typer.Argument(help="Silence id (from `alerts silence` or `alerts silences`)")
    ],
    by: Annotated[str | None, typer.Option("--by", help="Who lifts it (default: $USER)")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why")] = None,
) -> None:
    """End a silence now; alerts it held that still fire are announced."""
    with _service(_settings()) as service:
        released = service.unsilence(silence_id, by or _user(), reason)
    typer.echo(f"silence {silence_id} lifted ({released} alert(s) released)")


@alerts_app.command("silences")
def silences(
    all_: Annotated[bool, typer.Option("--all", help="Include expired and lifted silences")] = False,
    fmt: FormatOption = OutputFormat.table,
    output: OutputOption = None,
) -> None:
    """List silences (active ones unless --all)."""
    settings = _settings()
    from services.alerts import queries

    with _store(settings, create=False) as store:
        rows = [] if store is None else queries.silences(store, active_only=not all_)
    emit(
        rows,
        ["id", "matchers", "created_by", "reason", "created_at", "ends_at", "removed_at", "removed_by"],
        fmt,
        output,
        title="Silences",
    )


@alerts_app.command("deliveries")
def deliveries(
    failed: Annotated[bool, typer.Option("--failed", help="Only dead ones and ones being retried")] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=MAX_ID, help="At most this many, newest first")
    ] = 200,
    fmt: FormatOption = OutputFormat.table,
    output: OutputOption = None,
) -> None:
    """Notifications and their delivery state per receiver."""
    settings = _settings()
    from services.alerts import queries

    with _store(settings, create=False) as store:
        rows = [] if store is None else queries.deliveries(store, failed_only=failed, limit=limit)
    emit(
        rows,
        [
            "id",
            "alert_id",
            "kind",
            "receiver",
            "status",
            "attempts",
            "created_at",
            "next_attempt_at",
            "delivered_at",
            "last_status",
            "last_error",
        ],
        fmt,
        output,
        title="Deliveries",
    )


@alerts_app.command("test-receiver")
def test_receiver(name: Annotated[str, typer.Argument(help="Receiver name from alerts.receivers")]) -> None:
    """Send a signed test message to a configured receiver now and report its answer."""
    import httpx

    from services.alerts.receivers import deliver as deliver_once
    from services.alerts.receivers import test_payload

    settings = _settings()
    try:
        receiver = settings.receiver(name)
    except KeyError:
        known = ", ".join(r.name for r in settings.alerts.receivers) or "none configured"
        raise CliError(f"no receiver named {name!r} (receivers: {known})") from None
    payload = test_payload(settings)
    with httpx.Client(follow_redirects=False) as client:
        attempt = deliver_once(client, receiver, payload)
    if not attempt.ok:
        raise CliError(f"receiver {name} ({receiver.kind}) failed: {attempt.error}", code=1)
    signed = " signed" if receiver.kind == "webhook" and receiver.secret_env else ""
    typer.echo(
        f"receiver {name} ({receiver.kind}) accepted the{signed} test message "
        f"(HTTP {attempt.status}, webhook-id {payload.notification_id})"
    )


# -- reliability-report ------------------------------------------------------------------------------------

RELIABILITY_COLUMNS = ["incidents", "acknowledged", "resolved", "mtta_s", "mttr_s"]
MAX_PERIOD_S = 10 * 366 * 86400.0


SinceOption = Annotated[
    str, typer.Option("--since", help="Period: incidents opened in the last 30d, 12h, 2w...")
]


def reliability_since(text: str) -> float:
    """The start of the period `--since <duration>` names, as epoch seconds."""
    return time.time() - parse_duration(text, maximum_s=MAX_PERIOD_S)


def reliability_document(settings: AppSettings, since: float) -> dict[str, list[dict[str, Any]]]:
    """`services.alerts.queries.reliability` over monitor.db; empty sections when it does not exist yet."""
    from services.alerts import queries

    with _store(settings, create=False) as store:
        if store is None:
            return {"totals": [], "owner": [], "team": [], "group": [], "worst_assets": []}
        return queries.reliability(store, since)


def reliability_report(
    since: SinceOption = "30d",
    fmt: FormatOption = OutputFormat.table,
    output: OutputOption = None,
) -> None:
    """Per owner, team and group: incidents, mean time to acknowledge (MTTA) and to resolve (MTTR), and
    the assets in the most incidents, over a period."""
    start = reliability_since(since)
    document = reliability_document(_settings(), start)
    period = f"since {from_timestamp(start).isoformat(timespec='seconds')}"
    empty = not document["totals"] or not document["totals"][0]["incidents"]
    if empty and fmt is OutputFormat.table and output is None:
        typer.echo(f"no incidents {period}")
        return
    sections: list[Section] = [
        (f"incidents {period}", document["totals"], ["scope", *RELIABILITY_COLUMNS]),
        ("per owner", document["owner"], ["owner", *RELIABILITY_COLUMNS]),
        ("per team", document["team"], ["team", *RELIABILITY_COLUMNS]),
        ("per group", document["group"], ["group", *RELIABILITY_COLUMNS]),
        (
            "assets in the most incidents",
            document["worst_assets"],
            ["asset_key", "incidents", "as_root", "firing_s"],
        ),
    ]
    write_sections(
        {"since": from_timestamp(start).isoformat(timespec="seconds"), **document}, sections, fmt, output
    )


def register(app: typer.Typer) -> None:
    app.add_typer(alerts_app, name="alerts")
    app.command("reliability-report")(reliability_report)
