"""validate-config, backup and restore, run for real against real files and real stores."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from libs.common.http import ServiceServer
from libs.common.settings import PROJECT_ROOT
from tests.asset_manager.conftest import EXE, Cli

DAGSTER_YAML = """
storage:
  sqlite:
    base_dir: /tmp/dagster
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
"""
WORKSPACE_YAML = """
load_from:
  - python_module:
      module_name: {module}
      location_name: orchestrator
"""


def config_dir(tmp_path: Path, *, module: str = "libs.common.settings") -> Path:
    directory = tmp_path / "config"
    directory.mkdir(exist_ok=True)
    shutil.copy(PROJECT_ROOT / "config" / "app_config.yaml", directory / "app_config.yaml")
    (directory / "dagster.yaml").write_text(DAGSTER_YAML)
    (directory / "workspace.yaml").write_text(WORKSPACE_YAML.format(module=module))
    return directory


def test_validate_config_ok(cli: Cli, tmp_path: Path) -> None:
    directory = config_dir(tmp_path)
    code, out, _ = cli.run("validate-config", "--config-dir", str(directory))
    assert code == 0, out
    assert out.count("ok  ") == 3


def test_validate_config_lists_every_problem(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AMS_REDIS__URL")  # the environment would override the file's bad URL
    directory = config_dir(tmp_path, module="no_such_module_here")
    (directory / "app_config.staging.yaml").write_text("bus:\n  batch_size: 0\nredis:\n  url: http://nope\n")
    (directory / "dagster.yaml").write_text("storage:\n  sqlite: {base_dir: 5, bogus: 1}\nnot_a_key: true\n")
    code, out, err = cli.run("validate-config", "--config-dir", str(directory))
    assert code == 1
    assert "app_config (staging): bus.batch_size" in out
    assert "app_config (staging): redis.url" in out
    assert "app_config.staging.yaml" in out  # the file is named
    assert "not_a_key" in out
    assert "module 'no_such_module_here' not found" in out
    assert out.count("FAIL") == 3
    assert "problems found" in err


def test_validate_config_bad_yaml_and_missing_files(cli: Cli, tmp_path: Path) -> None:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "app_config.yaml").write_text("redis: [unclosed\n")
    code, out, _ = cli.run("validate-config", "--config-dir", str(directory))
    assert code == 1
    assert "not valid YAML" in out and "dagster.yaml: missing" in out and "workspace.yaml: missing" in out


def test_validate_config_missing_dir_exit_2(cli: Cli, tmp_path: Path) -> None:
    code, _, err = cli.run("validate-config", "--config-dir", str(tmp_path / "nope"))
    assert code == 2 and err.strip().count("\n") == 0 and "does not exist" in err


def add_rows(db: Path, n: int, prefix: str = "x") -> None:
    conn = sqlite3.connect(db)
    conn.executemany(
        "INSERT INTO processed_events (event_id, processed_at) VALUES (?, 0)",
        [(f"{prefix}{i}",) for i in range(n)],
    )
    conn.commit()
    conn.close()


def count(db: Path, table: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def test_backup_while_writing_then_restore(registered: Cli, tmp_path: Path) -> None:
    db = registered.metadata_db
    stop = threading.Event()
    written = [0]

    def writer() -> None:  # a live writer, as a running worker would be
        conn = sqlite3.connect(db, timeout=10, isolation_level=None)
        while not stop.is_set():
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO processed_events (event_id, processed_at) VALUES (?, 0)", (f"w{written[0]}",)
            )
            conn.execute("COMMIT")
            written[0] += 1
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        code, out, err = registered.run("backup", "--dest", str(tmp_path / "b1"))
    finally:
        stop.set()
        thread.join()
    assert code == 0, (out, err)
    manifest = json.loads((tmp_path / "b1" / "manifest.json").read_text())
    assert set(manifest["stores"]) == {"metadata"}  # health and monitor do not exist here
    assert manifest["stores"]["metadata"]["schema_version"] >= 1
    backed = count(tmp_path / "b1" / "metadata.db", "processed_events")
    assert count(tmp_path / "b1" / "metadata.db", "assets") == 3

    add_rows(db, 50)
    code, out, err = registered.run("restore", "--from", str(tmp_path / "b1"))
    assert code == 0, (out, err)
    assert count(db, "processed_events") == backed
    assert count(db, "assets") == 3
    assert list(db.parent.glob("metadata.db.pre-restore-*"))
    code, out, _ = registered.run("list-assets", "--format", "json")
    assert code == 0 and len(json.loads(out)) == 3


def test_backup_refuses_existing_backup(registered: Cli, tmp_path: Path) -> None:
    assert registered.run("backup", "--dest", str(tmp_path / "b"))[0] == 0
    code, _, err = registered.run("backup", "--dest", str(tmp_path / "b"))
    assert code == 2 and "already holds a backup" in err
    assert registered.run("backup", "--dest", str(tmp_path / "b"), "--overwrite")[0] == 0


def test_restore_refuses_while_a_worker_answers(
    registered: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert registered.run("backup", "--dest", str(tmp_path / "b"))[0] == 0
    server = ServiceServer("127.0.0.1", 0, checks={}).start()
    monkeypatch.setenv("AMS_SERVICES__HEALTH__PORT", str(server.port))
    try:
        add_rows(registered.metadata_db, 5)
        code, _, err = registered.run("restore", "--from", str(tmp_path / "b"))
    finally:
        server.stop()
    assert code == 1 and "refusing to restore while workers run: health" in err
    assert count(registered.metadata_db, "processed_events") == 5  # untouched


def test_restore_refuses_while_a_store_is_written(registered: Cli, tmp_path: Path) -> None:
    assert registered.run("backup", "--dest", str(tmp_path / "b"))[0] == 0
    conn = sqlite3.connect(registered.metadata_db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        code, _, err = registered.run("restore", "--from", str(tmp_path / "b"))
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    assert code == 1 and "is in use" in err


def test_restore_rejects_bad_backups(registered: Cli, tmp_path: Path) -> None:
    code, _, err = registered.run("restore", "--from", str(tmp_path / "nothing"))
    assert code == 2 and "not a directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = registered.run("restore", "--from", str(tmp_path / "empty"))
    assert code == 2 and "manifest.json is missing" in err
    assert registered.run("backup", "--dest", str(tmp_path / "b"))[0] == 0
    with (tmp_path / "b" / "metadata.db").open("ab") as handle:
        handle.write(b"tampered")
    code, _, err = registered.run("restore", "--from", str(tmp_path / "b"))
    assert code == 2 and "checksum differs" in err


def test_the_projects_own_config_is_valid(cli: Cli) -> None:
    code, out, _ = cli.run("validate-config", "--config-dir", str(PROJECT_ROOT / "config"))
    assert code == 0, out


def test_progress_bar_only_on_a_terminal(registered: Cli, tmp_path: Path) -> None:
    import os
    import pty
    import subprocess

    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [str(EXE), "backup", "--dest", str(tmp_path / "tty")],
        env={**registered.env, "TERM": "xterm", "COLUMNS": "100"},
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        cwd=registered.home,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(60) == 0
    os.close(primary)
    on_terminal = b"".join(chunks).decode(errors="replace")
    assert "\x1b[" in on_terminal and "backup complete" in on_terminal
    piped = registered.run_process("backup", "--dest", str(tmp_path / "piped"))
    assert piped.returncode == 0 and "\x1b[" not in piped.stdout + piped.stderr


# -- issue 16: a backup never lands on a live store; a restore checks everything, then replaces all or none --


@pytest.fixture
def stores(cli: Cli) -> Cli:
    """All three stores, migrated and empty (`init`)."""
    code, out, err = cli.run("init", "--no-demo")
    assert code == 0, (out, err)
    return cli


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("dest", [".", "./", "{home}", "{home}/../home"])
def test_backup_refuses_the_live_store_directory(stores: Cli, dest: str) -> None:
    health = stores.home / "health.db"
    worker = sqlite3.connect(health, isolation_level=None)  # a running worker holds its store open
    try:
        worker.execute("INSERT INTO processed_events (event_id, processed_at) VALUES ('before', 0)")
        code, out, err = stores.run("backup", "--dest", dest.format(home=stores.home))
        assert code == 2 and err.count("\n") == 1 and "live store directory" in err, (out, err)
        worker.execute("INSERT INTO processed_events (event_id, processed_at) VALUES ('after', 0)")
    finally:
        worker.close()
    assert count(health, "processed_events") == 2  # the worker's later write is in the file on disk
    assert not list(stores.home.glob("*.partial")) and not (stores.home / "manifest.json").exists()


def corrupt_backup(backup: Path, store: str, data: bytes | None) -> None:
    """Replace `store`'s copy (with `data`, or bytes flipped inside it); fix its checksum in the manifest."""
    import hashlib

    file = backup / f"{store}.db"
    if data is None:
        raw = bytearray(file.read_bytes())
        page = int.from_bytes(raw[16:18], "big") or 65536  # the header's page size (1 means 65536)
        # 64 bytes of every page but the first: whichever pages hold rows, some are damaged.
        for start in range(page + 100, len(raw), page):
            for at in range(start, min(start + 64, len(raw))):
                raw[at] ^= 0x5A
        data = bytes(raw)
    file.write_bytes(data)
    manifest = json.loads((backup / "manifest.json").read_text())
    manifest["stores"][store]["sha256"] = hashlib.sha256(data).hexdigest()
    (backup / "manifest.json").write_text(json.dumps(manifest))


def snapshot(home: Path) -> dict[str, int]:
    return {
        name: count(home / f"{name}.db", "processed_events") for name in ("metadata", "health", "monitor")
    }


@pytest.mark.parametrize("damage", ["flipped", "text", "truncated", "wrong-version"])
def test_restore_checks_every_store_before_replacing_any(stores: Cli, tmp_path: Path, damage: str) -> None:
    for name in ("metadata", "health", "monitor"):
        add_rows(stores.home / f"{name}.db", 300)  # pages enough for a flipped byte to land in a table
    assert stores.run("backup", "--dest", str(tmp_path / "b"))[0] == 0
    backup = tmp_path / "b"
    if damage == "flipped":
        corrupt_backup(backup, "health", None)
    elif damage == "text":
        corrupt_backup(backup, "health", b"hello, I am not a database\n" * 100)
    elif damage == "truncated":
        corrupt_backup(backup, "health", (backup / "health.db").read_bytes()[: 4096 * 2])
    else:
        manifest = json.loads((backup / "manifest.json").read_text())
        manifest["stores"]["health"]["schema_version"] = 999
        (backup / "manifest.json").write_text(json.dumps(manifest))
    for name in ("metadata", "health", "monitor"):
        add_rows(stores.home / f"{name}.db", 7, prefix="later")
    before = snapshot(stores.home)
    code, out, err = stores.run("restore", "--from", str(backup))
    assert code == 2 and err.count("\n") == 1 and "health.db" in err, (damage, out, err)
    assert snapshot(stores.home) == before  # metadata.db (restored first) untouched too
    assert not list(stores.home.glob("*.pre-restore-*"))


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ('{"stores": {"health": "x"}}', "stores.health"),
        ('{"stores": {}}', "stores"),
        ('{"stores": {"nope": {}}}', "stores.nope"),
        ("[1, 2]", "invalid manifest"),
        (
            '{"stores": {"health": {"file": "../metadata.db", "sha256": "'
            + "0" * 64
            + '", "schema_version": 1}}}',
            "stores.health.file",
        ),
        ("not json", "invalid manifest"),
    ],
)
def test_restore_rejects_malformed_manifests(
    stores: Cli, tmp_path: Path, manifest: str, message: str
) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text(manifest)
    before = snapshot(stores.home)
    code, _, err = stores.run("restore", "--from", str(tmp_path / "b"))
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert snapshot(stores.home) == before


def test_restore_puts_back_what_it_replaced_when_one_store_fails(
    stores: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert stores.run("backup", "--dest", str(tmp_path / "b"))[0] == 0
    for name in ("metadata", "health", "monitor"):
        add_rows(stores.home / f"{name}.db", 11, prefix="later")
    before = snapshot(stores.home)
    # monitor.db now lives where no directory can be made: replacing it fails after the other two.
    (tmp_path / "blocker").write_text("a file, not a directory")
    monkeypatch.setenv("AMS_STORES__MONITOR_URL", f"sqlite:///{tmp_path / 'blocker' / 'monitor.db'}")
    code, _, err = stores.run("restore", "--from", str(tmp_path / "b"))
    assert code == 1 and err.count("\n") == 1 and "every store is as it was" in err, err
    assert {k: v for k, v in snapshot(stores.home).items() if k != "monitor"} == {
        k: v for k, v in before.items() if k != "monitor"
    }
    for name in ("metadata", "health"):
        assert integrity(stores.home / f"{name}.db") == "ok"


def test_validate_config_names_every_secret_that_is_not_set(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = config_dir(tmp_path)
    monkeypatch.setenv(
        "AMS_ALERTS__RECEIVERS",
        json.dumps([{"name": "hook", "url": "http://127.0.0.1:9/x", "secret_env": "AMS_TEST_UNSET_WHSEC"}]),
    )
    monkeypatch.setenv("AMS_CONNECTIONS", json.dumps({"wh": {"password_env": "AMS_TEST_UNSET_PW"}}))
    code, out, _ = cli.run("validate-config", "--config-dir", str(directory))
    assert code == 1
    assert "alerts.receivers.0.secret_env: environment variable AMS_TEST_UNSET_WHSEC" in out
    assert "connections.wh.password_env: environment variable AMS_TEST_UNSET_PW is not set" in out
    monkeypatch.setenv("AMS_TEST_UNSET_WHSEC", "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0")
    monkeypatch.setenv("AMS_TEST_UNSET_PW", "pw")
    code, out, _ = cli.run("validate-config", "--config-dir", str(directory))
    assert code == 0, out
