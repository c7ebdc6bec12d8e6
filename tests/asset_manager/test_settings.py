from __future__ import annotations

import pytest

from asset_manager.settings import AppSettings, load_app_settings
from libs.common.settings import COMPONENT_SECTIONS, Settings


def test_project_config_is_valid_in_every_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMS_CONFIG_DIR", raising=False)
    for env in ("development", "staging", "production"):
        monkeypatch.setenv("ENVIRONMENT", env)
        assert load_app_settings().environment == env


def test_the_whole_model_declares_every_component_section() -> None:
    """Every section a component owns is validated by `asset-manager validate-config`."""
    assert set(AppSettings.model_fields) == set(Settings.model_fields) | COMPONENT_SECTIONS


def test_secrets_of_every_component_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPS_SECRET", "whsec_c2VjcmV0LXZhbHVlLW9mLXRoZS1vcHMtcmVjZWl2ZXI=")
    settings = load_app_settings(
        redis={"password": "redis-pw"},
        alerts={
            "receivers": [
                {"name": "ops", "url": "https://ops.example/hook", "secret_env": "OPS_SECRET"},
                {"name": "chat", "kind": "slack", "url": "https://hooks.slack.com/services/T/B/X"},
            ]
        },
        connections={"erp": {"password": "erp-pw"}},
    )
    assert set(settings.secrets()) == {
        "redis-pw",
        "whsec_c2VjcmV0LXZhbHVlLW9mLXRoZS1vcHMtcmVjZWl2ZXI=",
        "https://hooks.slack.com/services/T/B/X",
        "erp-pw",
    }
