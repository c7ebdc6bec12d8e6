from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from libs.common.log import configure_logging, get_logger, register_secret
from libs.common.settings import Settings, load_settings


def test_json_outside_development_and_secrets_redacted(tmp_path: Path) -> None:
    stream = io.StringIO()
    settings = load_settings(
        Settings,
        environment="production",
        redis={"url": "redis://127.0.0.1:6379/0", "password": "s3cr3t-redis-pw"},
        logging={"file": str(tmp_path / "logs" / "system.log"), "format": "auto"},
        dagster_home=str(tmp_path / "home"),
    )
    configure_logging(settings, service="test", stream=stream)
    register_secret("whsec_abcdefgh")
    log = get_logger("t")
    log.info(
        "connecting",
        url="redis://user:hunter22@host:6379/0",
        password="plain",
        note="signing with whsec_abcdefgh and s3cr3t-redis-pw",
        headers={"Authorization": "Bearer tok"},
    )
    logging.getLogger("stdlib").warning("stdlib line with s3cr3t-redis-pw")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "connecting"
    assert lines[0]["service"] == "test"
    text = stream.getvalue() + (tmp_path / "logs" / "system.log").read_text()
    for secret in ("hunter22", "plain", "whsec_abcdefgh", "s3cr3t-redis-pw", "Bearer tok"):
        assert secret not in text
    assert "redis://user:***@host" in text
    # the rotating file gets JSON lines too
    file_lines = (tmp_path / "logs" / "system.log").read_text().splitlines()
    assert json.loads(file_lines[0])["event"] == "connecting"


def test_console_in_development(tmp_path: Path) -> None:
    stream = io.StringIO()
    settings = load_settings(
        Settings,
        environment="development",
        logging={"file": None, "format": "auto"},
        dagster_home=str(tmp_path),
    )
    configure_logging(settings, stream=stream)
    get_logger("t").info("hello", n=1)
    out = stream.getvalue()
    assert "hello" in out and "n=1" in out
    assert not out.lstrip().startswith("{")
