"""The `asset-manager` command: one typer app; each concern registers its commands from `commands/`."""

from __future__ import annotations

import sys

import typer
from typer.exceptions import TyperException

from asset_manager.commands import admin, alerts, catalog, health, simulate, system
from asset_manager.envfile import load_env_file
from asset_manager.errors import CliError
from asset_manager.output import safe_text
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
        return _error(exc.format_message(), 2)
    except TyperException as exc:  # other bad arguments: typer's (vendored) click exceptions derive from it
        return _error(str(exc), 2)
    except ConfigError as exc:
        return _error(str(exc), 2)
    except CliError as exc:
        return _error(str(exc), exc.code)
    except OSError as exc:  # the machine refused (permissions, disk full): one line, exit 1
        where = f" ({exc.filename})" if exc.filename else ""
        return _error(f"{exc.strerror or exc}{where}", 1)
    return int(result) if isinstance(result, int) else 0


def _error(message: str, code: int) -> int:
    # Messages quote what was typed or stored: escaped like every output (one line, nothing a terminal runs).
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    typer.echo(f"error: {safe_text(' '.join(lines))}", err=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
