"""The settings of the whole system, as the CLI and the `dev` launcher see them: every component's model."""

from __future__ import annotations

from collections.abc import Iterator

from libs.common.settings import load_settings
from orchestrator.settings import OrchestratorSettings
from services.alerts.settings import AlertsWorkerSettings
from services.discovery.settings import DiscoveryWorkerSettings
from services.health.settings import HealthWorkerSettings


class AppSettings(DiscoveryWorkerSettings, HealthWorkerSettings, AlertsWorkerSettings, OrchestratorSettings):
    """Every section of `app_config.yaml`, each validated by the model of the component that owns it."""

    def secrets(self) -> Iterator[str]:
        """Every component's secrets, each once."""
        yield from dict.fromkeys([*AlertsWorkerSettings.secrets(self), *OrchestratorSettings.secrets(self)])

    def missing_secrets(self) -> list[str]:
        """Every component's unreadable secrets, each once."""
        return list(
            dict.fromkeys(
                [*AlertsWorkerSettings.missing_secrets(self), *OrchestratorSettings.missing_secrets(self)]
            )
        )


def load_app_settings(*, environment: str | None = None, **overrides: object) -> AppSettings:
    """Load and validate the whole configuration (see `libs.common.settings.load_settings`)."""
    return load_settings(AppSettings, environment=environment, **overrides)
