"""The code location's settings: the publishing sensor, named SQL connections and the default load window."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr

from libs.common.settings import (
    Section,
    Settings,
    TimeZoneName,
    load_settings,
    parse_duration_s,
    parse_offset_s,
)


class SensorSettings(Section):
    """The orchestrator's event-publishing sensor (orchestrator/sensors.py)."""

    # The daemon checks sensors about every 5 s: an interval of 5 s is due just after a check, so it ticks
    # every 10 s (measured, bench/alert_latency.py); 4 s ticks every 5 s.
    minimum_interval_s: int = Field(default=4, ge=1)
    # Event-log records read per query; Dagster refuses more than 10,000 per query.
    page_size: int = Field(default=1000, ge=1, le=10_000)
    # A tick keeps paging until caught up or this budget is spent (Dagster times a tick out at 60 s).
    tick_budget_s: float = Field(default=30.0, gt=0, le=50)
    # Storage ids re-read below the cursor each tick so that an event committed late (PostgreSQL: concurrent
    # runs commit ids out of order) is still published once. None: 0 on SQLite (in-order commits), else 2000.
    late_commit_window: int | None = Field(default=None, ge=0, le=1_000_000)
    # Tick history (every sensor and schedule of the instance): at most this many instigators read per tick,
    # least recently read first (0: no tick history), and at most this many ticks read of each.
    tick_history_instigators: int = Field(default=200, ge=0, le=10_000)
    tick_history_ticks: int = Field(default=100, ge=1, le=1000)


SqlAuthentication = Literal["auto", "sql", "trusted", "none"]


class SqlConnection(Section):
    """A named SQL connection for `orchestrator.shared` (ingest_from_sql, load_to_stg_table).

    `driver` is an ODBC driver name as registered in odbcinst.ini (`odbcinst -q -d`). For SQLite drivers
    (`SQLite3`) `database` is a file path, relative to DAGSTER_HOME unless absolute, and `engine: auto` falls
    back to Python's sqlite3 when the ODBC driver is not installed. Secrets never go in YAML: name the
    environment variable (`password_env`) or file (`password_file`), or set AMS_CONNECTIONS__<NAME>__PASSWORD.
    """

    driver: str = "ODBC Driver 18 for SQL Server"
    server: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    database: str | None = None
    # auto: SQL login when `username` is set, else no credentials. trusted: integrated (Kerberos/Windows).
    authentication: SqlAuthentication = "auto"
    username: str | None = None
    password: SecretStr | None = None
    password_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    password_file: Path | None = None
    # A full ODBC connection string template instead of the fields above: ${driver} ${server} ${port}
    # ${database} ${username} ${password} are substituted (values ODBC-quoted).
    connection_string: str | None = None
    # Extra ODBC keywords, e.g. {Encrypt: "yes", TrustServerCertificate: "no"} or {sslmode: require}.
    options: dict[str, str] = Field(default_factory=dict)
    engine: Literal["auto", "odbc", "sqlite3"] = "auto"
    login_timeout_s: int = Field(default=15, ge=1, le=3600)
    query_timeout_s: int = Field(default=600, ge=0)  # 0: no limit
    retries: int = Field(default=3, ge=0, le=20)  # extra attempts on transient connection errors
    retry_backoff_s: float = Field(default=1.0, ge=0)
    fetch_size: int = Field(default=10_000, ge=1, le=1_000_000)
    # None: on for the SQL Server drivers only (psqlODBC rejects empty strings with it; SQLite ODBC crashes).
    fast_executemany: bool | None = None
    # Time zone in which aware datetime parameters are bound (as wall-clock time); None keeps their own.
    timezone: TimeZoneName | None = None


class LoadWindowSettings(Section):
    """The default [start, end) window of `orchestrator.shared.load_window.get_load_window()`."""

    # How far back the window starts from its end, e.g. `1d`, `6h`, `7d`.
    lookback: Annotated[float, BeforeValidator(parse_duration_s)] = 86400.0
    # End (and start) are floored to the start of a day or hour in `timezone`; `none` keeps `now`.
    align: Literal["day", "hour", "none"] = "day"
    timezone: TimeZoneName = "UTC"
    # Data that arrives late: the window ends this long before now (before alignment), e.g. `2h`.
    end_offset: Annotated[float, BeforeValidator(parse_offset_s)] = 0.0


class OrchestratorSettings(Settings):
    """Everything the code location (sensors, `orchestrator.shared`) reads."""

    sensors: SensorSettings = SensorSettings()
    # Named SQL connections (`demo_source`, `warehouse`, `default` for ad-hoc server/database calls, ...).
    connections: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")], SqlConnection] = Field(
        default_factory=dict
    )
    load_window: LoadWindowSettings = LoadWindowSettings()

    def secrets(self) -> Iterator[str]:
        """The shared secrets and the passwords of the SQL connections given as values."""
        yield from super().secrets()
        for connection in self.connections.values():
            if connection.password:
                yield connection.password.get_secret_value()

    def missing_secrets(self) -> list[str]:
        """Connections whose `password_env` variable is unset or whose `password_file` does not exist."""
        problems = super().missing_secrets()
        for name, connection in self.connections.items():
            if connection.password is not None:
                continue
            if connection.password_env and os.environ.get(connection.password_env) is None:
                problems.append(
                    f"connections.{name}.password_env: environment variable "
                    f"{connection.password_env} is not set"
                )
            elif connection.password_file and not connection.password_file.is_file():
                problems.append(
                    f"connections.{name}.password_file: {connection.password_file} does not exist"
                )
        return problems


@lru_cache(maxsize=1)
def get_settings() -> OrchestratorSettings:
    """The code location's settings, loaded once per process."""
    return load_settings(OrchestratorSettings)
