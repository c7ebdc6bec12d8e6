"""The project's .env: DAGSTER_HOME written once, read by asset-manager as Dagster's CLI reads it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dotenv import dotenv_values

from asset_manager import envfile
from orchestrator.definitions import warn_without_dagster_home


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setattr(envfile, "_loaded", set())


def test_written_home_is_read_back_and_other_lines_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tmp_path / ".env"
    env.write_text("ENVIRONMENT=development\nDAGSTER_HOME=/old/place\n")
    home = tmp_path / "my home"
    message = envfile.record_dagster_home(home, env)
    assert str(env) in message
    assert dotenv_values(env) == {"ENVIRONMENT": "development", "DAGSTER_HOME": str(home.resolve())}

    monkeypatch.delenv("ENVIRONMENT", raising=False)
    assert envfile.load_env_file(env) == []
    assert os.environ["DAGSTER_HOME"] == str(home.resolve())
    assert not envfile.dagster_home_exported()  # it came from .env: dev may write it again
    monkeypatch.delenv("DAGSTER_HOME")


def test_a_new_env_file_is_created(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    envfile.write_dagster_home(tmp_path / "h", env)
    assert dotenv_values(env)["DAGSTER_HOME"] == str((tmp_path / "h").resolve())


def test_an_exported_home_wins_is_not_written_and_a_difference_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tmp_path / ".env"
    env.write_text("DAGSTER_HOME=/from/env/file\n")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "exported"))
    (warning,) = envfile.load_env_file(env)
    assert "/from/env/file" in warning and str(tmp_path / "exported") in warning
    assert os.environ["DAGSTER_HOME"] == str(tmp_path / "exported")
    assert envfile.dagster_home_exported()
    assert "exported" in envfile.record_dagster_home(tmp_path / "exported", env)
    assert dotenv_values(env)["DAGSTER_HOME"] == "/from/env/file"


def test_a_dagster_command_without_dagster_home_is_told_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    assert warn_without_dagster_home(["/venv/bin/dagster", "asset", "materialize"])
    assert warn_without_dagster_home(
        ["/venv/lib/python3.11/site-packages/dagster/__main__.py", "api", "grpc"]
    )
    assert not warn_without_dagster_home(["/venv/bin/asset-manager", "discover-assets"])
    monkeypatch.setenv("DAGSTER_HOME", "/somewhere")
    assert not warn_without_dagster_home(["/venv/bin/dagster", "asset", "materialize"])
