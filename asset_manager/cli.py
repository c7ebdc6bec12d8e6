"""The `asset-manager` command: one typer app; each concern registers its commands from `commands/`."""

from __future__ import annotations

import sys

import typer
from typer.exceptions import TyperException

from asset_manager.commands import admin, alerts, catalog, health, simulate, system
from asset_manager.envfile import load_env_file
from asset_manager.errors import CliError
from libs.common.settings import ConfigError

app = typer.Typer(
    name="asset-manager",
    help="Discover, monitor and govern the assets of a Dagster deployment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (system, catalog, admin, health, alerts, simulate):
    module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; usage and input errors print one line and exit 2.

    As a command (`argv` None) it first reads the project's `.env` (DAGSTER_HOME), as Dagster's CLI does.
    """
    if argv is None:
        for warning in load_env_file():
            typer.echo(f"warning: {warning}", err=True)
    try:
        result = app(args=argv, standalone_mode=False, prog_name="asset-manager")
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except typer.BadParameter as exc:  # a missing or invalid value, named with its option
        typer.echo(f"error: {exc.format_message()}", err=True)
        return 2
    except TyperException as exc:  # other bad arguments: typer's (vendored) click exceptions derive from it
        typer.echo(f"error: {exc}", err=True)
        return 2
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        return exc.code
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
