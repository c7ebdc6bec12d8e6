"""Application settings: `config/app_config.yaml`, an overlay per ENVIRONMENT, then environment variables.

Precedence (highest first): init arguments, environment variables (`AMS_` prefix, `__` between nested
fields, e.g. `AMS_REDIS__URL`; plus the bare `ENVIRONMENT`, `PROJECT_NAME`, `DAGSTER_HOME`), the
`app_config.<environment>.yaml` overlay, `app_config.yaml`, then the defaults below.

A bad file or value raises :class:`ConfigError` naming the field and the file it came from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "AMS_"
Environment = Literal["development", "staging", "production"]
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(Exception):
    """A configuration file or value is invalid; the message names the field and its source."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    # Overrides any password in the URL; from AMS_REDIS__PASSWORD or a secrets file, never YAML in git.
    password: SecretStr | None = None
    # redis-py 8 defaults to a 5 s socket timeout; it must stay above the blocking read below.
    socket_timeout_s: float = Field(default=10.0, gt=0)
    ssl_ca_certs: Path | None = None

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


class BusSettings(_Section):
    prefix: str = Field(default="ams", pattern=r"^[A-Za-z0-9_.-]+$")
    maxlen: int = Field(default=1_000_000, ge=1000)
    # Entries read per stream in one XREADGROUP, handled in one store transaction. Large enough that a worker
    # catching up amortises its commit and index writes (health: 47 -> 41 us per event from 1000 to 2000);
    # a worker that keeps up reads what is there, so this costs no latency.
    batch_size: int = Field(default=2000, ge=1, le=10_000)
    block_ms: int = Field(default=2000, ge=1, le=60_000)
    max_deliveries: int = Field(default=5, ge=1)
    claim_idle_ms: int = Field(default=60_000, ge=10)
    claim_interval_s: float = Field(default=15.0, gt=0)
    consumer_name: str | None = None


class StoreSettings(_Section):
    """Where each service's store lives; a URL so a deployment can move one to another database."""

    data_dir: Path | None = None
    metadata_url: str | None = None
    health_url: str | None = None
    monitor_url: str | None = None
    # FULL: an acked event survives power loss (the ack follows the commit). NORMAL trades that for speed.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    busy_timeout_ms: int = Field(default=10_000, ge=0)


class ServiceEndpoint(_Section):
    host: str = "0.0.0.0"
    port: int = Field(ge=0, le=65535)


class ServicesSettings(_Section):
    discovery: ServiceEndpoint = ServiceEndpoint(port=9101)
    health: ServiceEndpoint = ServiceEndpoint(port=9102)
    alerts: ServiceEndpoint = ServiceEndpoint(port=9103)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["auto", "console", "json"] = "auto"
    file: Path | None = None
    file_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    file_backups: int = Field(default=5, ge=0)

    @field_validator("file", mode="before")
    @classmethod
    def _no_file(cls, value: Any) -> Any:
        # AMS_LOGGING__FILE="" (or none) switches the file off; Path("") would mean the cwd.
        return None if isinstance(value, str) and value.strip().lower() in ("", "none", "null", "off") else value


class DiscoverySettings(_Section):
    rescan_interval_s: float = Field(default=300.0, gt=0)
    code_location: str = "orchestrator"
    # Scan the code location once when the worker starts (catches edits made while it was down).
    rescan_at_start: bool = True
    # `module:attribute` of the code location's Definitions, loaded in-process by rescans and discover-assets.
    definitions: str = Field(default="orchestrator.definitions:defs", pattern=r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$")
    # How long the ids of handled catalog events are remembered (redeliveries come within minutes).
    processed_retention_days: int = Field(default=30, ge=1)


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_duration_s(value: Any) -> float | None:
    """Seconds from a number or a text such as `90`, `45m`, `26h`, `1d12h`, `1w`; None stays None."""
    if value is None or isinstance(value, bool):
        if isinstance(value, bool):
            raise ValueError("a duration must be a number of seconds or a text like '26h'")
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        if not text or text in ("none", "null"):
            return None
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"not a duration: {value!r} (use seconds or e.g. '45m', '26h', '1d')") from None
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


DurationS = Annotated[float | None, BeforeValidator(parse_duration_s)]
AnomalyDirection = Literal["both", "spike", "drop"]
Seasonality = Literal["none", "day_of_week", "hour_of_day", "auto"]


class HealthThresholds(_Section):
    """Tunable thresholds of the health evaluators.

    Global defaults live in `health.defaults`, per Dagster group overrides in `health.groups.<group>`, and
    per asset overrides in the asset's tags or metadata as `ams/<field>` (e.g. `ams/volume_sensitivity`).
    """

    # volume_anomaly: robust z-score of the row count against its training window
    volume_sensitivity: float = Field(default=3.0, gt=0)
    volume_direction: AnomalyDirection = "both"
    volume_training_days: float = Field(default=30.0, gt=0)
    volume_min_training_size: int = Field(default=7, ge=3)
    # auto: a weekday (or, for sub-daily assets, hour-of-day) profile when the history clearly shows one
    volume_seasonality: Seasonality = "auto"
    volume_ignore_small_spike_pct: float = Field(default=0.0, ge=0)
    volume_ignore_small_drop_pct: float = Field(default=0.0, ge=0)
    volume_severity: Literal["warn", "error"] = "error"
    zero_rows: Literal["warn", "error", "ignore"] = "error"
    # duration_anomaly: the same detector on run durations, plus an absolute maximum
    duration_sensitivity: float = Field(default=3.0, gt=0)
    duration_direction: AnomalyDirection = "spike"
    duration_training_days: float = Field(default=30.0, gt=0)
    duration_min_training_size: int = Field(default=7, ge=3)
    duration_seasonality: Seasonality = "none"
    duration_ignore_small_spike_pct: float = Field(default=0.0, ge=0)
    duration_ignore_small_drop_pct: float = Field(default=0.0, ge=0)
    duration_min_delta_s: float = Field(default=1.0, ge=0)
    duration_max_s: DurationS = None
    duration_severity: Literal["warn", "error"] = "warn"
    # freshness: an explicit maximum lag, else a cadence learned from past materializations
    freshness_max_lag: DurationS = None
    freshness_warn_lag: DurationS = None
    freshness_cadence_warn_factor: float = Field(default=1.5, gt=1)
    freshness_cadence_error_factor: float = Field(default=3.0, gt=1)
    freshness_min_history: int = Field(default=5, ge=2)
    # execution_status: how a canceled last run counts (a failed one is always an error)
    canceled_run: Literal["warn", "error", "ignore"] = "warn"
    # checks switched off for an asset or group, e.g. ["volume_anomaly"]
    disabled_checks: list[str] = Field(default_factory=list)

    @field_validator("disabled_checks", mode="before")
    @classmethod
    def _split_checks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


class HealthSettings(_Section):
    retention_days: int = Field(default=90, ge=1)
    retention_interval_s: float = Field(default=3600.0, gt=0)
    # Time-driven re-evaluation of every asset (freshness changes with time, not only with events).
    evaluation_interval_s: float = Field(default=60.0, gt=0)
    # Past materializations per asset the evaluators see (and the service keeps in memory).
    history_limit: int = Field(default=400, ge=20, le=100_000)
    # Under a backlog (full batches) evaluation is deferred and coalesced for at most this long.
    max_defer_s: float = Field(default=2.0, gt=0, le=60)
    # Dagster webserver base URL (e.g. http://localhost:3000); check results are reported there when set.
    dagster_url: str | None = None
    dagster_timeout_s: float = Field(default=5.0, gt=0)
    dagster_retries: int = Field(default=3, ge=1, le=10)
    defaults: HealthThresholds = HealthThresholds()
    groups: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("dagster_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("dagster_url must be http:// or https://")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _valid_groups(self) -> HealthSettings:
        base = self.defaults.model_dump()
        for group, overrides in self.groups.items():
            try:
                HealthThresholds.model_validate({**base, **overrides})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"groups.{group}.{where}: {first['msg']}") from None
        return self


class WebhookReceiver(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["webhook", "slack", "teams", "pagerduty"] = "webhook"
    url: str
    # Name of the environment variable holding the signing secret (`whsec_...`) or routing key.
    secret_env: str | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    # Also tell this receiver when an alert resolves (Alertmanager's send_resolved).
    send_resolved: bool = True

    @field_validator("url")
    @classmethod
    def _http_only(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("webhook URL must be http:// or https://")
        return value

    @model_validator(mode="after")
    def _pagerduty_needs_key(self) -> WebhookReceiver:
        if self.kind == "pagerduty" and not self.secret_env:
            raise ValueError("a pagerduty receiver needs secret_env (the variable holding its routing key)")
        return self

    def secret(self) -> str | None:
        """The receiver's secret from the environment, or None when unset."""
        return os.environ.get(self.secret_env) if self.secret_env else None


AlertSeverity = Literal["critical", "error", "warning", "info"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_ALL_DAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class MuteWindow(_Section):
    """A recurring time of day during which the routes naming it send nothing (e.g. nights, weekends)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    days: list[Weekday] = Field(default_factory=lambda: list(_ALL_DAYS))
    start: str = Field(default="00:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    # An end before the start wraps past midnight (22:00-07:00); equal start and end mute the whole day.
    end: str = Field(default="00:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class AlertRoute(_Section):
    """Alerts matching every given criterion go to `receivers`; lists match when any entry matches
    (shell-style globs), `tags` when every tag matches. Routes are tried in order; the first match wins
    unless it sets `continue: true`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    receivers: list[str] = Field(min_length=1)
    assets: list[str] = Field(default_factory=list)
    owners: list[str] = Field(default_factory=list)
    teams: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    severities: list[AlertSeverity] = Field(default_factory=list)
    checks: list[str] = Field(default_factory=list)
    mute_windows: list[str] = Field(default_factory=list)
    continue_: bool = Field(default=False, alias="continue")


class AlertsSettings(_Section):
    receivers: list[WebhookReceiver] = Field(default_factory=list)
    dagster_ui_url: str | None = None
    retention_days: int = Field(default=180, ge=1)
    routes: list[AlertRoute] = Field(default_factory=list)
    # Receivers of alerts no route matched; unset means every configured receiver.
    default_receivers: list[str] | None = None
    mute_windows: list[MuteWindow] = Field(default_factory=list)
    # Delay before a new alert's first notice (a check that recovers within it notifies nothing). 0 keeps
    # the failure-to-webhook latency low.
    group_wait_s: float = Field(default=0.0, ge=0)
    # After a resolved notice, the same alert firing again is announced only once this has passed and it is
    # still firing: a flapping check sends at most one firing/resolved pair per window.
    flap_window_s: float = Field(default=300.0, ge=0)
    # A still-firing, unacknowledged, unsilenced alert is announced again after this long.
    repeat_interval_s: float = Field(default=4 * 3600.0, gt=0)
    # How often clock-driven transitions (waits, repeats, silence expiry) are evaluated.
    tick_interval_s: float = Field(default=5.0, gt=0)
    # Delivery: exponential backoff with jitter between attempts, a notification older than max_age_s is dead.
    retry_base_s: float = Field(default=2.0, gt=0)
    retry_max_delay_s: float = Field(default=1800.0, gt=0)
    retry_after_max_s: float = Field(default=3600.0, gt=0)
    max_age_s: float = Field(default=24 * 3600.0, gt=0)
    sender_concurrency: int = Field(default=8, ge=1, le=64)

    @model_validator(mode="after")
    def _unique_receivers(self) -> AlertsSettings:
        names = [r.name for r in self.receivers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate receiver names: {', '.join(dupes)}")
        windows = {w.name for w in self.mute_windows}
        for i, route in enumerate(self.routes):
            unknown = sorted(set(route.receivers) - set(names))
            if unknown:
                raise ValueError(f"routes[{i}] names unknown receivers: {', '.join(unknown)}")
            missing = sorted(set(route.mute_windows) - windows)
            if missing:
                raise ValueError(f"routes[{i}] names unknown mute windows: {', '.join(missing)}")
        unknown_default = sorted(set(self.default_receivers or []) - set(names))
        if unknown_default:
            raise ValueError(f"default_receivers names unknown receivers: {', '.join(unknown_default)}")
        return self


class SensorSettings(_Section):
    """The orchestrator's event-publishing sensor (orchestrator/sensors.py)."""

    minimum_interval_s: int = Field(default=5, ge=1)
    # Event-log records read per query; Dagster refuses more than 10,000 per query.
    page_size: int = Field(default=1000, ge=1, le=10_000)
    # A tick keeps paging until caught up or this budget is spent (Dagster times a tick out at 60 s).
    tick_budget_s: float = Field(default=30.0, gt=0, le=50)


SqlAuthentication = Literal["auto", "sql", "trusted", "none"]


class SqlConnection(_Section):
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
    timezone: str | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        return _check_zone(value) if value is not None else None


def _check_zone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA time zone {value!r}") from None
    return value


def _parse_offset_s(value: Any) -> float:
    """Like parse_duration_s, but zero is allowed."""
    if value in (0, 0.0, "0", "", None):
        return 0.0
    return parse_duration_s(value) or 0.0


class LoadWindowSettings(_Section):
    """The default [start, end) window of `orchestrator.shared.load_window.get_load_window()`."""

    # How far back the window starts from its end, e.g. `1d`, `6h`, `7d`.
    lookback: Annotated[float, BeforeValidator(parse_duration_s)] = 86400.0
    # End (and start) are floored to the start of a day or hour in `timezone`; `none` keeps `now`.
    align: Literal["day", "hour", "none"] = "day"
    timezone: str = "UTC"
    # Data that arrives late: the window ends this long before now (before alignment), e.g. `2h`.
    end_offset: Annotated[float, BeforeValidator(_parse_offset_s)] = 0.0

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return _check_zone(value)


class Settings(BaseSettings):
    """Every setting of the system, validated once at start."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        populate_by_name=True,
    )

    environment: Environment = Field(
        default="development", validation_alias=AliasChoices("ENVIRONMENT", "AMS_ENVIRONMENT", "environment")
    )
    project_name: str = Field(
        default="dagster-asset-management",
        validation_alias=AliasChoices("PROJECT_NAME", "AMS_PROJECT_NAME", "project_name"),
    )
    dagster_home: Path = Field(
        default=PROJECT_ROOT / ".dagster_home",
        validation_alias=AliasChoices("DAGSTER_HOME", "AMS_DAGSTER_HOME", "dagster_home"),
    )
    redis: RedisSettings = RedisSettings()
    bus: BusSettings = BusSettings()
    stores: StoreSettings = StoreSettings()
    services: ServicesSettings = ServicesSettings()
    logging: LoggingSettings = LoggingSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    health: HealthSettings = HealthSettings()
    alerts: AlertsSettings = AlertsSettings()
    sensors: SensorSettings = SensorSettings()
    # Named SQL connections (`demo_source`, `warehouse`, `default` for ad-hoc server/database calls, ...).
    connections: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")], SqlConnection] = Field(
        default_factory=dict
    )
    load_window: LoadWindowSettings = LoadWindowSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # YAML values arrive as init arguments (see load_settings); env vars must beat them, so
        # env comes first. Explicit keyword overrides are merged into the YAML data by load_settings.
        return (env_settings, init_settings, file_secret_settings)

    @property
    def data_dir(self) -> Path:
        """Directory holding the SQLite stores."""
        return self.stores.data_dir or self.dagster_home

    def store_url(self, store: Literal["metadata", "health", "monitor"]) -> str:
        """The URL of one service store (`sqlite:///<data_dir>/<store>.db` unless configured)."""
        configured = getattr(self.stores, f"{store}_url")
        return str(configured) if configured else f"sqlite:///{self.data_dir / f'{store}.db'}"

    def receiver(self, name: str) -> WebhookReceiver:
        """The configured receiver called `name`; KeyError if none."""
        for receiver in self.alerts.receivers:
            if receiver.name == name:
                return receiver
        raise KeyError(name)


def config_dir() -> Path:
    """The configuration directory: `AMS_CONFIG_DIR`, else `config/` of the project."""
    return Path(os.environ.get("AMS_CONFIG_DIR") or PROJECT_ROOT / "config")


def _deep_merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _has_path(data: Mapping[str, Any], loc: tuple[str | int, ...]) -> bool:
    node: Any = data
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return False
    return True


def _env_name(loc: tuple[str | int, ...]) -> str:
    return ENV_PREFIX + "__".join(str(p).upper() for p in loc)


def _source_of(loc: tuple[str | int, ...], files: list[tuple[Path, dict[str, Any]]]) -> str:
    if _env_name(loc[:2]) in os.environ or _env_name(loc[:1]) in os.environ:
        return f"environment variable {_env_name(loc)}"
    for path, data in reversed(files):
        if _has_path(data, loc):
            return str(path)
    return str(files[0][0]) if files else "defaults"


def load_settings(environment: str | None = None, **overrides: Any) -> Settings:
    """Load and validate settings from the config directory, the environment and `overrides`."""
    env = environment or os.environ.get("ENVIRONMENT") or os.environ.get("AMS_ENVIRONMENT") or "development"
    directory = config_dir()
    files: list[tuple[Path, dict[str, Any]]] = []
    base = directory / "app_config.yaml"
    if base.exists():
        files.append((base, _read_yaml(base)))
    overlay = directory / f"app_config.{env}.yaml"
    if overlay.exists():
        files.append((overlay, _read_yaml(overlay)))
    data: dict[str, Any] = {}
    for _, content in files:
        data = _deep_merge(data, content)
    data = _deep_merge(data, overrides)
    data.setdefault("environment", env)
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc) or "(root)"
            problems.append(f"{field}: {err['msg']} (in {_source_of(loc, files)})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded once."""
    return load_settings()
