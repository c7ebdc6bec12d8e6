"""The discovery worker's settings: the `discovery:` section."""

from __future__ import annotations

from pydantic import Field

from libs.common.settings import Section, Settings


class DiscoverySettings(Section):
    rescan_interval_s: float = Field(default=300.0, gt=0)
    # Scan the code location once when the worker starts (catches edits made while it was down).
    rescan_at_start: bool = True
    # `module:attribute` of the code location's Definitions, loaded in-process by rescans and discover-assets.
    definitions: str = Field(
        default="orchestrator.definitions:defs", pattern=r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$"
    )
    # With `dagster.url` set: how often the webserver's workspace is polled (one small GraphQL query; only a
    # code location whose load time or version changed is read again).
    poll_interval_s: float = Field(default=30.0, gt=0)
    # How long the ids of handled catalog events are remembered (redeliveries come within minutes).
    processed_retention_days: int = Field(default=30, ge=1)


class DiscoveryWorkerSettings(Settings):
    """Everything the discovery worker reads."""

    discovery: DiscoverySettings = DiscoverySettings()
