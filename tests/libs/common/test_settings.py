from __future__ import annotations

from pathlib import Path

import pytest

from libs.common.settings import ConfigError, load_settings


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    monkeypatch.setenv("AMS_CONFIG_DIR", str(directory))
    for name in ("ENVIRONMENT", "PROJECT_NAME", "DAGSTER_HOME", "AMS_REDIS__URL", "AMS_BUS__BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return directory


def test_defaults_without_files(config_dir: Path) -> None:
    settings = load_settings()
    assert settings.environment == "development"
    assert settings.bus.prefix == "ams"
    assert settings.services.health.port == 9102
    assert settings.store_url("health").endswith("/health.db")


def test_overlay_per_environment_and_env_override(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (config_dir / "app_config.yaml").write_text("bus:\n  batch_size: 100\n  maxlen: 5000\nproject_name: base\n")
    (config_dir / "app_config.production.yaml").write_text("bus:\n  batch_size: 200\n")
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("AMS_BUS__MAXLEN", "7000")
    monkeypatch.setenv("PROJECT_NAME", "from-env")
    monkeypatch.setenv("DAGSTER_HOME", "/opt/dagster/dagster_home")
    settings = load_settings()
    assert settings.environment == "production"
    assert settings.bus.batch_size == 200  # overlay beats base
    assert settings.bus.maxlen == 7000  # environment beats files
    assert settings.project_name == "from-env"
    assert settings.dagster_home == Path("/opt/dagster/dagster_home")
    assert settings.data_dir == Path("/opt/dagster/dagster_home")


def test_bad_value_names_field_and_file(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (config_dir / "app_config.yaml").write_text("bus:\n  batch_size: 10\n")
    (config_dir / "app_config.staging.yaml").write_text("bus:\n  batch_size: lots\n")
    monkeypatch.setenv("ENVIRONMENT", "staging")
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert "bus.batch_size" in message
    assert str(config_dir / "app_config.staging.yaml") in message


def test_unknown_key_is_rejected_with_its_file(config_dir: Path) -> None:
    (config_dir / "app_config.yaml").write_text("redis:\n  uri: redis://x\n")
    with pytest.raises(ConfigError, match=r"redis\.uri.*app_config\.yaml"):
        load_settings()


def test_bad_env_value_names_the_variable(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMS_BUS__BATCH_SIZE", "many")
    with pytest.raises(ConfigError, match="AMS_BUS__BATCH_SIZE"):
        load_settings()


def test_invalid_yaml_and_non_mapping(config_dir: Path) -> None:
    (config_dir / "app_config.yaml").write_text("bus: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings()
    (config_dir / "app_config.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings()


def test_unknown_environment_rejected(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "prod")
    with pytest.raises(ConfigError, match="environment"):
        load_settings()


def test_webhook_url_must_be_http(config_dir: Path) -> None:
    (config_dir / "app_config.yaml").write_text(
        "alerts:\n  receivers:\n    - {name: ops, kind: webhook, url: 'file:///etc/passwd'}\n"
    )
    with pytest.raises(ConfigError, match=r"alerts\.receivers\.0\.url"):
        load_settings()


def test_redis_url_scheme_checked(config_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"redis\.url"):
        load_settings(redis={"url": "http://localhost:6379"})
    assert load_settings(redis={"url": "rediss://h:6380/0"}).redis.url.startswith("rediss://")


def test_project_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMS_CONFIG_DIR", raising=False)
    for env in ("development", "staging", "production"):
        monkeypatch.setenv("ENVIRONMENT", env)
        assert load_settings().environment == env


def test_empty_log_file_switches_the_file_off(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (config_dir / "app_config.yaml").write_text("logging:\n  file: logs/system.log\n")
    monkeypatch.setenv("AMS_LOGGING__FILE", "")
    assert load_settings().logging.file is None
    monkeypatch.setenv("AMS_LOGGING__FILE", "/var/log/ams.log")
    assert load_settings().logging.file == Path("/var/log/ams.log")
