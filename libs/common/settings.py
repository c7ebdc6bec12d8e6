"""Settings: the loader, the precedence rules and the sections every process shares.

Precedence (highest first): init arguments, environment variables (`AMS_` prefix, `__` between nested
fields, e.g. `AMS_REDIS__URL`; plus the bare `ENVIRONMENT`, `PROJECT_NAME`, `DAGSTER_HOME`), the
`app_config.<environment>.yaml` overlay, `app_config.yaml`, then the defaults of the models.

Each component owns the model of its own sections (`services.health.settings`, `services.alerts.settings`,
`services.discovery.settings`, `orchestrator.settings`) as a subclass of :class:`Settings`; a process loads
its own model with :func:`load_settings` and leaves the other components' sections to them
(`asset-manager validate-config` checks every section).

A bad file or value raises :class:`ConfigError` naming the field and the file it came from.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "AMS_"
Environment = Literal["development", "staging", "production"]
ENVIRONMENTS: tuple[str, ...] = ("development", "staging", "production")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class StoreName(StrEnum):
    """The service stores (one database each)."""

    METADATA = "metadata"
    HEALTH = "health"
    MONITOR = "monitor"


class ServiceName(StrEnum):
    """The worker services; each owns one store."""

    DISCOVERY = "discovery"
    HEALTH = "health"
    ALERTS = "alerts"

    @property
    def store(self) -> StoreName:
        """The store this service owns (and no other part writes)."""
        return _SERVICE_STORES[self]


_SERVICE_STORES = {
    ServiceName.DISCOVERY: StoreName.METADATA,
    ServiceName.HEALTH: StoreName.HEALTH,
    ServiceName.ALERTS: StoreName.MONITOR,
}

# Top-level sections owned by one component; a process that does not own a section leaves it to its owner
# (any other unknown top-level key is an error everywhere).
COMPONENT_SECTIONS: frozenset[str] = frozenset(
    {"discovery", "health", "alerts", "sensors", "connections", "load_window"}
)


class ConfigError(Exception):
    """A configuration file or value is invalid; the message names the field and its source."""


class Section(BaseModel):
    """A settings section: unknown keys are errors, so a typo is named rather than ignored."""

    model_config = ConfigDict(extra="forbid")


class RedisSettings(Section):
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


class BusSettings(Section):
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
    # How far ahead of this host's clock an event's times may be (hosts' clocks differ a little); an event
    # dated later is dead-lettered with the reason when read (it would outrank every correct event after it).
    max_clock_skew_s: float = Field(default=300.0, ge=0, le=86_400)
    # A dead letter keeps at most this many characters of each field of the entry (the rest is cut, its
    # original size recorded): one huge bad entry must not be copied whole into Redis again per group.
    dead_letter_max_chars: int = Field(default=65_536, ge=1024)


class StoreSettings(Section):
    """Where each service's store lives; a URL so a deployment can move one to another database."""

    data_dir: Path | None = None
    metadata_url: str | None = None
    health_url: str | None = None
    monitor_url: str | None = None
    # FULL: an acked event survives power loss (the ack follows the commit). NORMAL trades that for speed.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    busy_timeout_ms: int = Field(default=10_000, ge=0)


class ServiceEndpoint(Section):
    host: str = "0.0.0.0"
    port: int = Field(ge=0, le=65535)


class ServicesSettings(Section):
    discovery: ServiceEndpoint = ServiceEndpoint(port=9101)
    health: ServiceEndpoint = ServiceEndpoint(port=9102)
    alerts: ServiceEndpoint = ServiceEndpoint(port=9103)

    def endpoint(self, service: ServiceName) -> ServiceEndpoint:
        """Where `service` serves /metrics, /healthz and /readyz."""
        endpoint: ServiceEndpoint = getattr(self, service.value)
        return endpoint


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["auto", "console", "json"] = "auto"
    file: Path | None = None
    file_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    file_backups: int = Field(default=5, ge=0)

    @field_validator("file", mode="before")
    @classmethod
    def _no_file(cls, value: Any) -> Any:
        # AMS_LOGGING__FILE="" (or none) switches the file off; Path("") would mean the cwd.
        return (
            None if isinstance(value, str) and value.strip().lower() in ("", "none", "null", "off") else value
        )


class DagsterSettings(Section):
    """The Dagster deployment this system watches."""

    # The webserver's base URL (e.g. http://localhost:3000): health reports check results to it; unset: not
    # reported.
    url: str | None = None
    timeout_s: float = Field(default=5.0, gt=0)
    retries: int = Field(default=3, ge=1, le=10)
    # The name of this project's code location in the workspace (workspace.yaml's `location_name`): the
    # publisher's catalog snapshots and discovery's in-process scans are registered under it.
    code_location: str = Field(default="orchestrator", min_length=1)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value


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
                raise ValueError(
                    f"not a duration: {value!r} (use seconds or e.g. '45m', '26h', '1d')"
                ) from None
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if not math.isfinite(seconds):
        raise ValueError(f"not a duration: {value!r} (use seconds or e.g. '45m', '26h', '1d')")
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


DurationS = Annotated[float | None, BeforeValidator(parse_duration_s)]


def parse_offset_s(value: Any) -> float:
    """Like :func:`parse_duration_s`, but zero (or nothing) is allowed."""
    if value in (0, 0.0, "0", "", None):
        return 0.0
    return parse_duration_s(value) or 0.0


def check_time_zone(value: str) -> str:
    """`value` if it names an IANA time zone, else a ValueError."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA time zone {value!r}") from None
    return value


TimeZoneName = Annotated[str, AfterValidator(check_time_zone)]


# The config files' values for the model load_settings is building (a settings source reads them from here).
_config_files: ContextVar[dict[str, Any]] = ContextVar("ams_config_files", default={})  # noqa: B039


class _ConfigFiles(PydanticBaseSettingsSource):
    """The merged YAML files as a settings source, placed beneath the environment."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole layer

    def __call__(self) -> dict[str, Any]:
        # A field read under one of its aliases by a higher source (PROJECT_NAME from the environment) would
        # meet the file's value under another name and fail as an extra input: the higher source has it.
        taken = {str(key).lower() for key in self.current_state}
        layer: dict[str, Any] = {}
        for key, value in _config_files.get().items():
            field = self.settings_cls.model_fields.get(key)
            alias = field.validation_alias if field is not None else None
            if isinstance(alias, AliasChoices):
                names = {key.lower()} | {str(c).lower() for c in alias.choices if isinstance(c, str)}
                if names & taken:
                    continue
            layer[key] = value
        return layer


class Settings(BaseSettings):
    """The settings every process shares; each component extends it with its own sections."""

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
    dagster: DagsterSettings = DagsterSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keyword overrides (init arguments) beat AMS_* variables, which beat the config files.
        return (init_settings, env_settings, _ConfigFiles(settings_cls), file_secret_settings)

    @property
    def data_dir(self) -> Path:
        """Directory holding the SQLite stores."""
        return self.stores.data_dir or self.dagster_home

    def store_url(self, store: StoreName) -> str:
        """The URL of one service store (`sqlite:///<data_dir>/<store>.db` unless configured)."""
        configured: str | None = getattr(self.stores, f"{store.value}_url")
        return configured or f"sqlite:///{self.data_dir / f'{store.value}.db'}"

    def secrets(self) -> Iterator[str]:
        """Every secret value these settings hold (redacted from logs); components add their own."""
        if self.redis.password:
            yield self.redis.password.get_secret_value()

    def missing_secrets(self) -> list[str]:
        """One line per configured secret that cannot be read now (an unset variable, a missing file), each
        naming the field: checked at a worker's start and by `asset-manager validate-config`, so a missing
        secret stops the start instead of failing every delivery for a day. Components add their own."""
        return []


SettingsT = TypeVar("SettingsT", bound=Settings)


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


def _source_of(
    loc: tuple[str | int, ...], files: list[tuple[Path, dict[str, Any]]], overrides: dict[str, Any]
) -> str:
    """Where the invalid value at `loc` came from, highest precedence first."""
    if _has_path(overrides, loc):
        return "the settings passed to load_settings"
    if _env_name(loc[:2]) in os.environ or _env_name(loc[:1]) in os.environ:
        return f"environment variable {_env_name(loc)}"
    for path, data in reversed(files):
        if _has_path(data, loc):
            return str(path)
    return str(files[0][0]) if files else "defaults"


def load_settings(model: type[SettingsT], *, environment: str | None = None, **overrides: Any) -> SettingsT:
    """Load and validate `model` from the config directory, the environment and `overrides`.

    Precedence, lowest first: `app_config.yaml`, `app_config.<environment>.yaml`, `AMS_*` variables, keyword
    `overrides` (nested sections merge key by key). Sections of other components (`COMPONENT_SECTIONS` that
    `model` does not declare) are left to them.
    """
    env = environment or os.environ.get("ENVIRONMENT") or os.environ.get("AMS_ENVIRONMENT") or "development"
    if env not in ENVIRONMENTS:
        source = "ENVIRONMENT" if os.environ.get("ENVIRONMENT") else "AMS_ENVIRONMENT"
        where = "the environment argument" if environment else f"environment variable {source}"
        raise ConfigError(f"environment: {env!r} is not one of {', '.join(ENVIRONMENTS)} (in {where})")
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
    data.setdefault("environment", env)
    if environment:
        overrides = {"environment": environment, **overrides}
    foreign = COMPONENT_SECTIONS - set(model.model_fields)
    token = _config_files.set({k: v for k, v in data.items() if k not in foreign})
    try:
        return model(**{k: v for k, v in overrides.items() if k not in foreign})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc) or "(root)"
            problems.append(f"{field}: {err['msg']} (in {_source_of(loc, files, overrides)})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None
    finally:
        _config_files.reset(token)
