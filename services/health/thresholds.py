"""Per-asset thresholds: asset tags/metadata `ams/<field>` over the Dagster freshness policy, the asset's
group (`health.groups.<group>`) and the global defaults (`health.defaults`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from libs.common.events import AssetSpecData
from libs.common.settings import parse_duration_s
from services.health.settings import HealthSettings, HealthThresholds

TAG_PREFIX = "ams/"
FIELDS = frozenset(HealthThresholds.model_fields)


@dataclass(frozen=True)
class Resolved:
    """The thresholds of one asset, where each non-default value came from, and overrides that were bad."""

    thresholds: HealthThresholds
    sources: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    def source(self, name: str) -> str:
        """Where setting `name` came from: `default`, `group <g>`, `tag ams/...`,
        `Dagster freshness policy`."""
        return self.sources.get(name, "default")


def asset_overrides(spec: AssetSpecData) -> dict[str, tuple[Any, str]]:
    """`ams/<field>` entries of the asset's metadata, then tags (tags win), as field → (value, origin)."""
    found: dict[str, tuple[Any, str]] = {}
    for origin, entries in (("metadata", spec.metadata), ("tag", spec.tags)):
        for name, value in entries.items():
            if name.startswith(TAG_PREFIX) and name[len(TAG_PREFIX) :] in FIELDS:
                if isinstance(value, dict) and "value" in value:  # a serialized Dagster MetadataValue
                    value = value["value"]
                found[name[len(TAG_PREFIX) :]] = (value, f"{origin} {name}")
    return found


def _seconds(value: Any) -> float | None:
    """Seconds from a number, a duration text or `{"seconds": ...}`; None for anything unreadable (a
    hostile spec must not fail the evaluation of its asset)."""
    try:
        if isinstance(value, dict):
            for unit, factor in (
                ("seconds", 1.0),
                ("total_seconds", 1.0),
                ("minutes", 60.0),
                ("hours", 3600.0),
            ):
                if unit in value:
                    return _seconds(value[unit]) if factor == 1.0 else _seconds(float(value[unit]) * factor)
            return None
        return parse_duration_s(value)
    except (ValueError, TypeError, OverflowError):
        return None


def dagster_policy(freshness: Mapping[str, Any] | None) -> dict[str, float]:
    """`freshness_max_lag` / `freshness_warn_lag` from a serialized Dagster freshness policy.

    Understands the legacy `maximum_lag_minutes` and the time-window policy's `fail_window` / `warn_window`
    (seconds, a duration text, or `{"seconds": ...}`), with `_s`/`_seconds` spellings.
    """
    if not freshness:
        return {}
    out: dict[str, float] = {}
    if freshness.get("maximum_lag_minutes") is not None:
        minutes = _seconds(freshness["maximum_lag_minutes"])  # minutes, read as a number
        lag = _seconds(minutes * 60) if minutes else None
        if lag:
            out["freshness_max_lag"] = lag
    for target, names in (
        (
            "freshness_max_lag",
            ("fail_window", "fail_window_s", "fail_window_seconds", "maximum_lag_s", "max_lag_s"),
        ),
        ("freshness_warn_lag", ("warn_window", "warn_window_s", "warn_window_seconds")),
    ):
        for name in names:
            if freshness.get(name) is not None:
                seconds = _seconds(freshness[name])
                if seconds:
                    out[target] = seconds
                break
    return out


def resolve(settings: HealthSettings, spec: AssetSpecData | None) -> Resolved:
    """The thresholds for the asset described by `spec` (defaults when there is no spec)."""
    values: dict[str, Any] = settings.defaults.model_dump()
    sources: dict[str, str] = {}
    if spec is None:
        return Resolved(settings.defaults)
    if spec.group and spec.group in settings.groups:
        for name, value in settings.groups[spec.group].items():
            values[name] = value
            sources[name] = f"group {spec.group}"
    for name, value in dagster_policy(spec.freshness).items():
        values[name] = value
        sources[name] = "Dagster freshness policy"
    problems: list[str] = []
    for name, (value, origin) in asset_overrides(spec).items():
        candidate = {**values, name: value}
        try:
            HealthThresholds.model_validate(candidate)
        except ValidationError as exc:
            problems.append(f"ignored {origin}={value!r}: {exc.errors()[0]['msg']}")
            continue
        values[name] = value
        sources[name] = origin
    return Resolved(HealthThresholds.model_validate(values), sources, tuple(problems))
