"""System commands: `init` (DAGSTER_HOME, stores, demo source) and `dev` (run everything locally)."""

from __future__ import annotations

from typing import Annotated

import typer

from asset_manager.dev import DevSystem, prepare_dagster_home
from asset_manager.envfile import record_dagster_home
from asset_manager.errors import CliError
from asset_manager.settings import load_app_settings
from asset_manager.stores import open_service_store
from libs.common.settings import StoreName


def init(
    demo: Annotated[bool, typer.Option("--demo/--no-demo", help="Create the demo source database")] = True,
) -> None:
    """Create DAGSTER_HOME, every service store (migrated) and the demo source database."""
    settings = load_app_settings()
    home = prepare_dagster_home(settings)
    typer.echo(f"DAGSTER_HOME  {home}")
    typer.echo(record_dagster_home(home))
    for name in StoreName:
        store = open_service_store(settings, name)
        typer.echo(f"{name + '.db':<13} {store.path} (schema v{store.schema_version()})")
        store.close()
    if demo:
        from orchestrator.shared.demo_source import create_demo_source

        path = create_demo_source(settings.dagster_home / "demo_source.db")
        typer.echo(f"demo source   {path}")


def dev(
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Dagster UI port")] = 3000,
) -> None:
    """Start Redis (configured or embedded), the three workers and `dagster dev`; Ctrl-C stops all."""
    settings = load_app_settings()
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
