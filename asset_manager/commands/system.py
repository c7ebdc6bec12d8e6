"""System commands: `init` (DAGSTER_HOME, stores, demo source) and `dev` (run everything locally)."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from asset_manager.dev import DevSystem, prepare_dagster_home
from asset_manager.errors import CliError
from libs.common.settings import load_settings

# Each service's store module, opened (and so migrated) by `init`: service -> store name.
SERVICE_STORES = {"discovery": "metadata", "health": "health", "alerts": "monitor"}


def init(
    demo: Annotated[bool, typer.Option("--demo/--no-demo", help="Create the demo source database")] = True,
) -> None:
    """Create DAGSTER_HOME, every service store (migrated) and the demo source database."""
    settings = load_settings()
    home = prepare_dagster_home(settings)
    typer.echo(f"DAGSTER_HOME  {home}")
    for service, store_name in SERVICE_STORES.items():
        module = importlib.import_module(f"services.{service}.store")
        store = module.open_store(settings)
        typer.echo(f"{store_name + '.db':<13} {store.path} (schema v{store.schema_version()})")
        store.close()
    if demo:
        from orchestrator.shared.demo_source import create_demo_source

        path = create_demo_source(settings.dagster_home / "demo_source.db")
        typer.echo(f"demo source   {path}")


def dev(
    port: Annotated[int, typer.Option("--port", help="Dagster UI port")] = 3000,
) -> None:
    """Start Redis (configured or embedded), the three workers and `dagster dev`; Ctrl-C stops all."""
    settings = load_settings()
    system = DevSystem(settings, dagster_port=port)
    try:
        system.start()
    except Exception as exc:
        system.stop()
        raise CliError(f"could not start the system: {exc}", code=1) from exc
    code = system.wait()
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(dev)
