from __future__ import annotations

from pathlib import Path

import pytest

from libs.common.settings import ConfigError, Section, ServiceName, Settings, StoreName, load_settings


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    monkeypatch.setenv("AMS_CONFIG_DIR", str(directory))
    for name in ("ENVIRONMENT", "PROJECT_NAME", "DAGSTER_HOME", "AMS_REDIS__URL", "AMS_BUS__BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return directory


def test_defaults_without_files(config_dir: Path) -> None:
    settings = load_settings(Settings)
    assert settings.environment == "development"
    assert settings.bus.prefix == "ams"
    assert settings.services.health.port == 9102
    assert settings.store_url(StoreName.HEALTH).endswith("/health.db")


def test_overlay_per_environment_and_env_override(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (config_dir / "app_config.yaml").write_text(
        "bus:\n  batch_size: 100\n  maxlen: 5000\nproject_name: base\n"
    )
    (config_dir / "app_config.production.yaml").write_text("bus:\n  batch_size: 200\n")
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("AMS_BUS__MAXLEN", "7000")
    monkeypatch.setenv("PROJECT_NAME", "from-env")
    monkeypatch.setenv("DAGSTER_HOME", "/opt/dagster/dagster_home")
    settings = load_settings(Settings)
    assert settings.environment == "production"
    assert settings.bus.batch_size == 200  # overlay beats base
    assert settings.bus.maxlen == 7000  # environment beats files
    assert settings.project_name == "from-env"
    assert settings.dagster_home == Path("/opt/dagster/dagster_home")
    assert settings.data_dir == Path("/opt/dagster/dagster_home")


def test_keyword_overrides_beat_the_environment_and_merge_with_the_files(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (config_dir / "app_config.yaml").write_text(
        "bus:\n  batch_size: 100\n  maxlen: 5000\nproject_name: base\n"
    )
    monkeypatch.setenv("AMS_BUS__MAXLEN", "7000")
    monkeypatch.setenv("AMS_BUS__BLOCK_MS", "250")
    monkeypatch.setenv("PROJECT_NAME", "from-env")
    settings = load_settings(Settings, bus={"maxlen": 9000}, project_name="from-caller")
    assert settings.bus.maxlen == 9000  # the caller's value beats the variable
    assert settings.bus.block_ms == 250  # the variable still fills the rest of the section
    assert settings.bus.batch_size == 100  # and the file what neither sets
    assert settings.project_name == "from-caller"
    monkeypatch.setenv("ENVIRONMENT", "staging")
    assert load_settings(Settings, environment="production").environment == "production"


def test_bad_value_names_field_and_file(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (config_dir / "app_config.yaml").write_text("bus:\n  batch_size: 10\n")
    (config_dir / "app_config.staging.yaml").write_text("bus:\n  batch_size: lots\n")
    monkeypatch.setenv("ENVIRONMENT", "staging")
    with pytest.raises(ConfigError) as err:
        load_settings(Settings)
    message = str(err.value)
    assert "bus.batch_size" in message
    assert str(config_dir / "app_config.staging.yaml") in message


def test_unknown_key_is_rejected_with_its_file(config_dir: Path) -> None:
    (config_dir / "app_config.yaml").write_text("redis:\n  uri: redis://x\n")
    with pytest.raises(ConfigError, match=r"redis\.uri.*app_config\.yaml"):
        load_settings(Settings)


def test_bad_env_value_names_the_variable(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMS_BUS__BATCH_SIZE", "many")
    with pytest.raises(ConfigError, match="AMS_BUS__BATCH_SIZE"):
        load_settings(Settings)


def test_bad_value_from_the_caller_is_not_blamed_on_a_file(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyword overrides win over the variables and the files, so an invalid one is named as theirs."""
    (config_dir / "app_config.yaml").write_text("bus:\n  batch_size: 10\n")
    monkeypatch.setenv("AMS_BUS__BATCH_SIZE", "20")
    with pytest.raises(ConfigError) as err:
        load_settings(Settings, bus={"batch_size": "lots"})
    message = str(err.value)
    assert "bus.batch_size" in message and "passed to load_settings" in message
    assert "app_config.yaml" not in message and "AMS_BUS__BATCH_SIZE" not in message


def test_invalid_yaml_and_non_mapping(config_dir: Path) -> None:
    (config_dir / "app_config.yaml").write_text("bus: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(Settings)
    (config_dir / "app_config.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(Settings)


def test_unknown_environment_names_the_variable_not_a_file(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "prod")
    with pytest.raises(ConfigError, match="environment variable ENVIRONMENT") as err:
        load_settings(Settings)
    assert "app_config" not in str(err.value)


class _Widget(Section):
    size: int = 1


class _WidgetSettings(Settings):
    health: _Widget = _Widget()


def test_each_model_validates_its_own_sections_and_leaves_the_others(config_dir: Path) -> None:
    (config_dir / "app_config.yaml").write_text("health:\n  size: 3\nalerts:\n  anything: [1, 2]\n")
    assert load_settings(_WidgetSettings).health.size == 3
    assert load_settings(Settings).bus.prefix == "ams"  # health and alerts belong to other components
    (config_dir / "app_config.yaml").write_text("health:\n  size: many\n")
    with pytest.raises(ConfigError, match=r"health\.size"):
        load_settings(_WidgetSettings)


def test_unknown_top_level_section_is_an_error_everywhere(config_dir: Path) -> None:
    (config_dir / "app_config.yaml").write_text("heatlh:\n  size: 3\n")
    for model in (Settings, _WidgetSettings):
        with pytest.raises(ConfigError, match=r"heatlh.*app_config\.yaml"):
            load_settings(model)


def test_each_service_owns_one_store() -> None:
    assert {s.store for s in ServiceName} == set(StoreName)
    assert ServiceName.ALERTS.store is StoreName.MONITOR


def test_redis_url_scheme_checked(config_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"redis\.url"):
        load_settings(Settings, redis={"url": "http://localhost:6379"})
    assert load_settings(Settings, redis={"url": "rediss://h:6380/0"}).redis.url.startswith("rediss://")


def test_empty_log_file_switches_the_file_off(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (config_dir / "app_config.yaml").write_text("logging:\n  file: logs/system.log\n")
    monkeypatch.setenv("AMS_LOGGING__FILE", "")
    assert load_settings(Settings).logging.file is None
    monkeypatch.setenv("AMS_LOGGING__FILE", "/var/log/ams.log")
    assert load_settings(Settings).logging.file == Path("/var/log/ams.log")
