"""Administration commands: validate-config, backup, restore.

`backup` copies every service store online through SQLite's backup API (consistent while the workers run)
and writes a manifest with each copy's schema version, size and SHA-256; it refuses a destination where a
store lives (its copy would replace a database a worker holds open). `restore` validates the manifest
(pydantic), then copies every store of the backup to a temporary directory and checks it (checksum,
PRAGMA integrity_check, schema version) before touching any live store; it refuses while any worker is
running (a worker answers on its `/healthz` port from settings, and a store held by a writer cannot be
locked exclusively), and replaces all the stores or none (those already replaced are put back when one
fails). The previous database is kept beside the restored one as `<name>.db.pre-restore-<time>`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from asset_manager.errors import CliError, check_path
from asset_manager.stores import code_schema_version, store_file
from libs.common.settings import ENVIRONMENTS, ServiceName, StoreName

if TYPE_CHECKING:
    from asset_manager.settings import AppSettings

MANIFEST = "manifest.json"


# -- validate-config ---------------------------------------------------------------------------------------


def _yaml(path: Path, problems: list[str]) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        problems.append(f"{path}: not valid YAML: {' '.join(str(exc).split())}")
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror}")
    return None


def _config_problems(directory: Path) -> list[str]:
    from asset_manager.settings import load_app_settings
    from libs.common.settings import ConfigError

    problems: list[str] = []
    if not (directory / "app_config.yaml").exists():
        problems.append(f"{directory / 'app_config.yaml'}: missing")
    current = os.environ.get("ENVIRONMENT") or os.environ.get("AMS_ENVIRONMENT") or "development"
    if current not in ENVIRONMENTS:
        problems.append(f"ENVIRONMENT={current!r}: must be one of {', '.join(ENVIRONMENTS)}")
    environments = [e for e in ENVIRONMENTS if e == current or (directory / f"app_config.{e}.yaml").exists()]
    seen: set[str] = set()
    for environment in environments:
        try:
            settings = load_app_settings(environment=environment)
        except ConfigError as exc:
            for line in str(exc).splitlines():
                line = line.strip()
                if line and line != "invalid configuration:" and line not in seen:
                    seen.add(line)
                    problems.append(f"app_config ({environment}): {line}")
            continue
        if environment == current:  # the variables and files of secrets belong to this environment
            problems.extend(f"app_config ({environment}): {line}" for line in settings.missing_secrets())
    return problems


def _short(message: str) -> str:
    # Dagster appends the whole expected schema (kilobytes) to an unknown key's message.
    text = " ".join(message.split())
    head, sep, expected = text.partition(" Expected: ")
    return head if sep and len(expected) > 200 else text


def _dagster_problems(path: Path) -> list[str]:
    problems: list[str] = []
    if not path.exists():
        return [f"{path}: missing"]
    data = _yaml(path, problems)
    if problems:
        return problems
    if data is None:
        return []
    if not isinstance(data, dict):
        return [f"{path}: top level must be a mapping, got {type(data).__name__}"]
    # Dagster has no public validator of dagster.yaml (loading an instance would also create its storage):
    # these private names were read in dagster 1.13.28; tests/asset_manager/test_admin_commands.py catches
    # a move.
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config_schema

    result = process_config(dagster_instance_config_schema(), data)
    if not result.success:
        problems.extend(f"{path}: {_short(err.message)}" for err in result.errors or [])
    if "storage" in data and any(k in data for k in ("run_storage", "event_log_storage", "schedule_storage")):
        problems.append(
            f"{path}: `storage` cannot be combined with run_storage/event_log_storage/schedule_storage"
        )
    return problems


def _workspace_problems(path: Path) -> list[str]:
    import importlib.util

    problems: list[str] = []
    if not path.exists():
        return [f"{path}: missing"]
    data = _yaml(path, problems)
    if problems:
        return problems
    if not isinstance(data, dict):
        return [f"{path}: top level must be a mapping with `load_from`"]
    # No public validator of workspace.yaml either (read in dagster 1.13.28, tested like the one above).
    from dagster._core.workspace.config_schema import process_workspace_config

    result = process_workspace_config(data)
    if not result.success:
        return [f"{path}: {_short(err.message)}" for err in result.errors or []]
    root = Path(__file__).resolve().parents[2]
    for n, entry in enumerate(data.get("load_from") or []):
        for kind, target in entry.items():
            spec = target if isinstance(target, dict) else {}
            workdir = Path(spec.get("working_directory") or path.parent)
            if not workdir.is_absolute():
                workdir = path.parent / workdir
            if kind == "python_file":
                rel = spec.get("relative_path") if spec else target
                file = Path(str(rel))
                candidates = [file] if file.is_absolute() else [path.parent / file, workdir / file]
                if not any(c.exists() for c in candidates):
                    problems.append(f"{path}: load_from[{n}].python_file: {rel} does not exist")
            elif kind in ("python_module", "python_package", "autoload_defs_module"):
                name = str(spec.get("module_name") or spec.get("package_name") or "") if spec else str(target)
                added = [p for p in (str(workdir), str(root)) if p not in sys.path]
                sys.path[:0] = added
                try:
                    found = importlib.util.find_spec(name) is not None
                except (ImportError, ValueError):
                    found = False
                finally:
                    for p in added:
                        sys.path.remove(p)
                if not found:
                    problems.append(f"{path}: load_from[{n}].{kind}: module {name!r} not found")
    return problems


def validate_config(
    config_dir: Annotated[
        Path | None,
        typer.Option(
            "--config-dir",
            help="Directory to check (default: AMS_CONFIG_DIR or config/)",
            callback=check_path,
        ),
    ] = None,
) -> None:
    """Check app_config.yaml (with its overlays), dagster.yaml and workspace.yaml; exit 1 listing every
    problem."""
    from libs.common.settings import config_dir as default_dir

    directory = config_dir or default_dir()
    if not directory.is_dir():
        raise CliError(f"config directory {directory} does not exist")
    previous = os.environ.get("AMS_CONFIG_DIR")
    os.environ["AMS_CONFIG_DIR"] = str(directory)
    try:
        checks = {
            "app_config.yaml": _config_problems(directory),
            "dagster.yaml": _dagster_problems(directory / "dagster.yaml"),
            "workspace.yaml": _workspace_problems(directory / "workspace.yaml"),
        }
    finally:
        if previous is None:
            os.environ.pop("AMS_CONFIG_DIR", None)
        else:
            os.environ["AMS_CONFIG_DIR"] = previous
    total = 0
    for name, problems in checks.items():
        typer.echo(f"{'ok  ' if not problems else 'FAIL'} {directory / name}")
        for problem in problems:
            typer.echo(f"  - {problem}")
        total += len(problems)
    if total:
        typer.echo(f"{total} problem{'s' if total != 1 else ''} found", err=True)
        raise typer.Exit(1)


# -- backup / restore --------------------------------------------------------------------------------------


def _settings() -> AppSettings:
    from asset_manager.settings import load_app_settings

    return load_app_settings()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_copy(path: Path, *, code: int = 1) -> int:
    """PRAGMA integrity_check of the database at `path`; its schema version (0 without migrations)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
        if verdict != "ok":
            detail = " ".join(str(verdict).split())[:200]
            raise CliError(f"{path}: integrity check failed: {detail}", code=code)
        try:
            row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        except sqlite3.OperationalError:
            return 0
        return int(row[0] or 0)
    finally:
        conn.close()


@contextmanager
def _steps(total: int, description: str) -> Iterator[Any]:
    """A rich progress bar on a terminal; a no-op advance when stderr is piped."""
    if not sys.stderr.isatty():

        class _Quiet:
            def advance(self) -> None:
                return None

        yield _Quiet()
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)

        class _Bar:
            def advance(self) -> None:
                bar.advance(task)

        yield _Bar()


def _refuse_live_destination(dest: Path, sources: dict[StoreName, Path]) -> None:
    """A backup never goes where a store lives: its copy would replace a database a worker holds open."""
    where = dest.resolve()
    for name, source in sources.items():
        if where in (source.parent.resolve(), source.resolve().parent):
            raise CliError(
                f"refusing --dest {dest}: it is the live store directory (where {name}.db lives); "
                "choose another directory"
            )


def backup(
    dest: Annotated[
        Path,
        typer.Option("--dest", help="Directory for the copies (created if missing)", callback=check_path),
    ],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier backup in DEST")] = False,
) -> None:
    """Consistent online copies of every store (SQLite backup API), safe while the workers run.

    Refuses a DEST where a store lives. Each copy is written beside its final name, checked
    (PRAGMA integrity_check) and renamed within DEST; the manifest is written last, so a backup cut short
    has none and `restore` refuses it."""
    from libs.common.store import Store

    settings = _settings()
    if dest.exists() and not dest.is_dir():
        raise CliError(f"--dest {dest} is not a directory")
    sources = {name: store_file(settings, name) for name in StoreName}
    _refuse_live_destination(dest, sources)
    if (dest / MANIFEST).exists() and not overwrite:
        raise CliError(f"{dest} already holds a backup: choose another --dest or pass --overwrite")
    present = {name: source for name, source in sources.items() if source.exists()}
    if not present:
        raise CliError("no store found to back up: run `asset-manager init` first", code=1)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / MANIFEST).unlink(missing_ok=True)  # until the new one is complete, DEST is no backup
    except OSError as exc:
        raise CliError(f"cannot create {dest}: {exc.strerror}") from exc
    manifest: dict[str, Any] = {"created_at": datetime.now(UTC).isoformat(), "stores": {}}
    with _steps(len(StoreName), "backing up") as bar:
        for name in StoreName:
            source = sources[name]
            if name not in present:
                typer.echo(f"skip {name}.db: not found at {source}")
                bar.advance()
                continue
            target = dest / f"{name}.db"
            tmp = dest / f".{name}.db.partial"
            tmp.unlink(missing_ok=True)
            store = Store(f"sqlite:///{source}", migrate=False)
            started = time.perf_counter()
            try:
                store.backup(tmp)
                version = _check_copy(tmp)
            except sqlite3.Error as exc:
                tmp.unlink(missing_ok=True)
                raise CliError(f"cannot back up {source}: {exc}", code=1) from exc
            finally:
                store.close()
            tmp.replace(target)  # within DEST, never a live store (see _refuse_live_destination)
            manifest["stores"][name] = {
                "file": target.name,
                "source": str(source),
                "schema_version": version,
                "bytes": target.stat().st_size,
                "sha256": _sha256(target),
            }
            typer.echo(
                f"{name + '.db':<12} -> {target} ({target.stat().st_size} bytes, schema v{version}, "
                f"{time.perf_counter() - started:.2f} s)"
            )
            bar.advance()
    partial = dest / f".{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    partial.replace(dest / MANIFEST)
    typer.echo(f"backup complete: {len(manifest['stores'])} stores in {dest}")


def running_workers(settings: AppSettings, timeout_s: float = 1.0) -> list[str]:
    """Workers answering on their configured /healthz port (host 0.0.0.0 is probed on 127.0.0.1)."""
    import http.client

    found: list[str] = []
    for service in ServiceName:
        endpoint = settings.services.endpoint(service)
        if not endpoint.port:
            continue
        host = "127.0.0.1" if endpoint.host in ("0.0.0.0", "::", "") else endpoint.host
        conn = http.client.HTTPConnection(host, endpoint.port, timeout=timeout_s)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            found.append(f"{service} (http://{host}:{endpoint.port}/healthz)")
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
    return found


def locked_by_writer(path: Path) -> str | None:
    """A reason when another connection writes `path` now, else None."""
    if not path.exists():
        return None
    conn = sqlite3.connect(path, timeout=0.5, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return None
    except sqlite3.OperationalError as exc:
        return f"{path} is in use ({exc})"
    finally:
        conn.close()


class ManifestEntry(BaseModel):
    """One store's copy in a backup."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    file: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.db$", max_length=200)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    schema_version: int = Field(ge=1)
    bytes: int | None = Field(default=None, ge=0)
    source: str | None = None


class Manifest(BaseModel):
    """`manifest.json` of a backup: at least one store, each named once."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    created_at: str | None = None
    stores: dict[StoreName, ManifestEntry] = Field(min_length=1)


def read_manifest(source: Path) -> Manifest:
    """The validated manifest of the backup in `source`; a one-line CliError (exit 2) otherwise."""
    path = source / MANIFEST
    if not source.is_dir():
        raise CliError(f"--from {source} is not a directory")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"{source} is not a backup: {MANIFEST} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: unreadable manifest ({exc})") from None
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise CliError(f"{path}: invalid manifest: {where}: {first['msg']}{more}") from None


def _stage(source: Path, name: StoreName, entry: ManifestEntry, staging: Path) -> Path:
    """A checked copy of one store of the backup in `staging`: checksum, SQLite integrity, schema."""
    file = source / entry.file
    if not file.is_file():
        raise CliError(f"{file}: listed in the manifest but missing")
    if _sha256(file) != entry.sha256:
        raise CliError(f"{file}: checksum differs from the manifest (damaged or edited backup)")
    copy = staging / f"{name}.db"
    try:
        _copy_db(file, copy)
        version = _check_copy(copy, code=2)
    except sqlite3.Error as exc:
        raise CliError(f"{file}: not a usable SQLite database ({exc})") from None
    if version != entry.schema_version:
        raise CliError(f"{file}: schema v{version}, but the manifest says v{entry.schema_version}")
    known = code_schema_version(name)
    if version > known:
        raise CliError(f"{file}: schema v{version} is newer than this asset-manager knows (v{known})")
    return copy


def restore(
    source: Annotated[
        Path,
        typer.Option("--from", help="A directory written by `asset-manager backup`", callback=check_path),
    ],
) -> None:
    """Replace the stores with a backup, all of them or none; refuses while any worker is running.

    Every store of the backup is first copied to a temporary directory and checked (checksum, PRAGMA
    integrity_check, schema version) before any live store is touched; if replacing one fails, the ones
    already replaced are put back."""
    import tempfile

    settings = _settings()
    manifest = read_manifest(source)
    with tempfile.TemporaryDirectory(prefix="ams-restore-") as tmp:
        staged = {name: _stage(source, name, entry, Path(tmp)) for name, entry in manifest.stores.items()}
        running = running_workers(settings)
        if running:
            raise CliError(
                f"refusing to restore while workers run: {', '.join(running)}; stop them first", code=1
            )
        busy = [reason for name in staged if (reason := locked_by_writer(store_file(settings, name)))]
        if busy:
            raise CliError(f"refusing to restore: {'; '.join(busy)}", code=1)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        done: list[tuple[Path, Path | None]] = []
        with _steps(len(staged), "restoring") as bar:
            try:
                for name, copy in staged.items():
                    target = store_file(settings, name)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    keep = None
                    if target.exists():
                        keep = target.with_name(f"{target.name}.pre-restore-{stamp}")
                        _copy_db(target, keep)
                    _copy_db(copy, target)  # one transaction: the target is either replaced or as it was
                    done.append((target, keep))
                    if keep is not None:
                        typer.echo(f"kept the previous {name}.db as {keep}")
                    typer.echo(
                        f"{name + '.db':<12} <- {source / manifest.stores[name].file} "
                        f"(schema v{manifest.stores[name].schema_version})"
                    )
                    bar.advance()
            except (sqlite3.Error, OSError) as exc:
                _put_back(done)
                raise CliError(f"restore failed ({exc}); every store is as it was before", code=1) from None
    typer.echo(f"restore complete: {len(staged)} stores from {source}")


def _put_back(done: list[tuple[Path, Path | None]]) -> None:
    for target, keep in reversed(done):
        if keep is not None:
            _copy_db(keep, target)
        else:  # the store did not exist before the restore
            for suffix in ("", "-wal", "-shm"):
                target.with_name(target.name + suffix).unlink(missing_ok=True)


def _copy_db(source: Path, target: Path) -> None:
    # Through SQLite's backup API (never a file copy or a rename): a connection holding the target open
    # sees the new content, and the target's WAL and locks stay consistent.
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=WAL")
    finally:
        src.close()
        dst.close()


def register(app: typer.Typer) -> None:
    """Add the administration commands to the CLI."""
    app.command("validate-config")(validate_config)
    app.command("backup")(backup)
    app.command("restore")(restore)


__all__ = ["locked_by_writer", "register", "running_workers"]
