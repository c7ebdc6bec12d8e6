"""The code location as deployed by docker-compose.prod.yml: `orchestrator.definitions` with the executor the
deployment picks through DAGSTER_EXECUTOR, so jobs need no deployment-specific code.

    dagster code-server start -h 0.0.0.0 -p 4000 -f /app/deploy/dagster/location.py

DAGSTER_EXECUTOR: unset or `default` (the orchestrator's own choice), `multiprocess` (each step a process of
its own, at most DAGSTER_MAX_CONCURRENT_STEPS at once; docker-compose.prod.yml's choice, inside the Celery
run worker that executes the run), `in_process`, or `celery` (dagster-celery, configured from celery.yaml
beside this file; not for runs that are themselves Celery tasks: Celery refuses to wait for a task inside a
task).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from dagster import Definitions, ExecutorDefinition, in_process_executor, multiprocess_executor

# The module, not its `defs`: `dagster ... -f location.py` refuses two Definitions objects at module scope.
import orchestrator.definitions as orchestrator

CELERY_CONFIG = Path(__file__).with_name("celery.yaml")


def celery_config(path: Path = CELERY_CONFIG) -> dict[str, Any]:
    """The Celery executor config block of celery.yaml (`execution.config`)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    config = data.get("execution", {}).get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: no execution.config mapping")
    return config


def executor_from_env(env: Mapping[str, str] = os.environ) -> ExecutorDefinition | None:
    """The executor named by DAGSTER_EXECUTOR, or None to keep the orchestrator's."""
    kind = env.get("DAGSTER_EXECUTOR", "").strip().lower()
    if kind in ("", "default"):
        return None
    if kind == "multiprocess":
        # Dagster's default is one step per CPU of the host, whatever the container's limit.
        steps = env.get("DAGSTER_MAX_CONCURRENT_STEPS", "").strip()
        return (
            multiprocess_executor.configured({"max_concurrent": int(steps)})
            if steps
            else multiprocess_executor
        )
    if kind == "in_process":
        return in_process_executor
    if kind == "celery":
        from dagster_celery import celery_executor  # installed in the image only (the `deploy` extra)

        return celery_executor.configured(celery_config())
    raise ValueError(f"DAGSTER_EXECUTOR={kind!r}: expected default, multiprocess, in_process or celery")


def with_executor(defs: Definitions, executor: ExecutorDefinition | None) -> Definitions:
    """`defs` with `executor` as the default executor of every job (unchanged when None)."""
    return defs if executor is None else Definitions.merge(defs, Definitions(executor=executor))


defs = with_executor(orchestrator.defs, executor_from_env())
