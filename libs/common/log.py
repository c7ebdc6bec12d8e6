"""Structured logging: structlog over the standard library, one pipeline for every process.

Console renderer in development, JSON lines elsewhere, an optional rotating file, and a processor that
redacts secrets by key name and by value before anything is rendered.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from libs.common.settings import LoggingSettings, Settings

REDACTED = "***"
_SECRET_KEY = re.compile(r"(pass(word)?|secret|token|api[_-]?key|authorization|routing[_-]?key|dsn)", re.I)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@", re.I)
_known_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret value so that it is redacted wherever it appears in a log line."""
    if value and len(value) >= 4:
        _known_secrets.add(value)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        value = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", value)
        for secret in _known_secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: (REDACTED if _SECRET_KEY.search(str(k)) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace secret-looking keys and known secret values with `***`."""
    for key in list(event_dict):
        if _SECRET_KEY.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]


def configure_logging(settings: Settings, *, service: str | None = None, stream: Any = None) -> None:
    """Configure structlog and the standard library once for this process."""
    cfg: LoggingSettings = settings.logging
    use_json = cfg.format == "json" or (cfg.format == "auto" and settings.environment != "development")
    for secret in settings.secrets():
        register_secret(secret)

    shared = _shared_processors()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=(stream or sys.stderr).isatty())
    )
    handlers: list[logging.Handler] = []
    console = logging.StreamHandler(stream or sys.stderr)
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handlers.append(console)
    if cfg.file:
        path = cfg.file  # relative paths are relative to the working directory, like every CLI path
        path.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            path, maxBytes=cfg.file_max_bytes, backupCount=cfg.file_backups, encoding="utf-8"
        )
        rotating.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=shared,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer(),
                ],
            )
        )
        handlers.append(rotating)

    root = logging.getLogger()
    # Replace only our own handlers: others (pytest's capture, Dagster's) stay attached.
    for handler in list(root.handlers):
        if getattr(handler, "_ams_handler", False):
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        handler._ams_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(cfg.level)
    for noisy in ("apscheduler", "urllib3", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(cfg.level)))

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # No caching: a logger used before configure_logging (imports, Dagster) must follow it afterwards.
        cache_logger_on_first_use=False,
    )
    if service:
        structlog.contextvars.bind_contextvars(service=service, pid=os.getpid())


def get_logger(name: str | None = None) -> Any:
    """A structlog logger bound to `name`."""
    return structlog.get_logger(name)
