"""SQL connections for the shared ingest/load helpers: config → ODBC (pyodbc) or the sqlite3 fallback.

One code path for every source. A connection comes from `connections:` in app_config.yaml (or is built
ad hoc from a server and database); its `driver` picks the SQL dialect, and for SQLite `engine: auto` uses
the SQLite3 ODBC driver when odbcinst knows it, else Python's sqlite3 with the same type mapping as that
driver. Connecting retries transient errors (refused, timed out, link failure) with backoff; anything else
fails at once. Errors name the connection and never carry the password.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sqlite3
import string
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import pyodbc
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from libs.common.log import get_logger, register_secret
from orchestrator.settings import OrchestratorSettings, SqlConnection, get_settings

log = get_logger(__name__)

Dialect = Literal["sqlite", "postgresql", "mssql", "generic"]
Engine = Literal["odbc", "sqlite3"]

# Built-in connections, used when app_config.yaml does not define them (so the demo needs no config).
BUILTIN_CONNECTIONS: dict[str, SqlConnection] = {
    "demo_source": SqlConnection(driver="SQLite3", database="demo_source.db"),
    "warehouse": SqlConnection(driver="SQLite3", database="warehouse.db"),
}
DEFAULT_PROFILE = "default"  # the connection whose settings ad-hoc `sql_server=`/`sql_database=` calls use
WAREHOUSE = "warehouse"  # the default target of load_to_stg_table
INLINE = "(inline)"  # the name of a connection passed as a SqlConnection object rather than by name

# SQLSTATEs worth another attempt: cannot connect, link failure, timeouts, deadlock/serialization victims.
_TRANSIENT_STATES = {"08001", "08004", "08S01", "HYT00", "HYT01", "40001", "40P01", "57P03"}
# ...unless the message says it will never work (bad login, missing database): retrying only delays that.
_PERMANENT_HINTS = re.compile(
    r"password authentication failed|login failed|does not exist|no pg_hba\.conf entry|"
    r"authentication failed|cannot open database|unknown database|role .* does not exist",
    re.I,
)


class SqlError(RuntimeError):
    """A SQL operation failed; the message names the connection, never its password."""

    def __init__(self, message: str, *, connection: str) -> None:
        super().__init__(message)
        self.connection = connection


class SqlConnectionError(SqlError):
    """Connecting failed (after the configured retries when the error was transient)."""

    def __init__(self, message: str, *, connection: str, attempts: int) -> None:
        super().__init__(message, connection=connection)
        self.attempts = attempts


class SqlQueryError(SqlError):
    """A statement failed on an open connection."""


@dataclass(frozen=True)
class ResolvedConnection:
    """A connection config with its name, dialect, engine and resolved SQLite path."""

    name: str
    config: SqlConnection
    dialect: Dialect
    engine: Engine
    sqlite_path: Path | None

    def describe(self) -> str:
        """Human description for errors and logs: name, driver and where (never credentials)."""
        cfg = self.config
        if self.dialect == "sqlite":
            where = f"file {self.sqlite_path}"
        else:
            where = f"server {cfg.server or '?'}" + (f":{cfg.port}" if cfg.port else "")
            where += f", database {cfg.database or '?'}"
        engine = "sqlite3 fallback" if self.engine == "sqlite3" else f"ODBC driver '{cfg.driver}'"
        return f"connection '{self.name}' ({engine}, {where})"


def dialect_of(driver: str) -> Dialect:
    """The SQL dialect an ODBC driver name speaks."""
    name = driver.lower()
    if name.startswith("sqlite"):
        return "sqlite"
    if "postgres" in name or name.startswith("psql"):
        return "postgresql"
    if "sql server" in name or "freetds" in name or name.startswith("sqlsrv"):
        return "mssql"
    return "generic"


def odbc_drivers() -> list[str]:
    """ODBC drivers registered with the driver manager (odbcinst.ini)."""
    try:
        return list(pyodbc.drivers())
    except pyodbc.Error:
        return []


def resolve(
    connection: str | SqlConnection | ResolvedConnection | None = None,
    *,
    sql_server: str | None = None,
    sql_database: str | None = None,
    settings: OrchestratorSettings | None = None,
    default: str | None = None,
) -> ResolvedConnection:
    """Find the connection to use: a name from config, a SqlConnection, or an ad-hoc server + database.

    Ad-hoc calls use a configured connection with that server and database when there is one, else the
    `default` connection's driver and authentication with that server and database.
    """
    if connection is not None and (sql_server or sql_database):
        raise ValueError("pass either connection= or sql_server=/sql_database=, not both")
    if isinstance(connection, ResolvedConnection):
        return connection
    settings = settings or get_settings()
    if isinstance(connection, SqlConnection):
        return _finish(INLINE, connection, settings)
    if connection is not None:
        return _finish(connection, _named(connection, settings), settings)
    if sql_server or sql_database:
        if not (sql_server and sql_database):
            raise ValueError("sql_server= and sql_database= go together")
        for name, cfg in settings.connections.items():
            if cfg.server == sql_server and cfg.database == sql_database:
                return _finish(name, cfg, settings)
        profile = settings.connections.get(DEFAULT_PROFILE, SqlConnection())
        adhoc = profile.model_copy(update={"server": sql_server, "database": sql_database})
        return _finish(f"{sql_server}/{sql_database}", adhoc, settings)
    if default is None:
        raise ValueError("no connection given: pass connection='<name>' or sql_server= and sql_database=")
    return _finish(default, _named(default, settings), settings)


def _named(name: str, settings: OrchestratorSettings) -> SqlConnection:
    if name in settings.connections:
        return settings.connections[name]
    if name in BUILTIN_CONNECTIONS:
        return BUILTIN_CONNECTIONS[name]
    known = sorted(set(settings.connections) | set(BUILTIN_CONNECTIONS))
    raise SqlError(
        f"connection '{name}' is not configured (add it under `connections:` in app_config.yaml; "
        f"known: {', '.join(known)})",
        connection=name,
    )


def _finish(name: str, cfg: SqlConnection, settings: OrchestratorSettings) -> ResolvedConnection:
    dialect = dialect_of(cfg.driver)
    sqlite_path: Path | None = None
    if dialect == "sqlite":
        if not cfg.database:
            raise SqlError(
                f"connection '{name}': a SQLite connection needs `database: <file>`", connection=name
            )
        path = Path(cfg.database).expanduser()
        sqlite_path = path if path.is_absolute() else settings.dagster_home / path
    engine: Engine
    if cfg.engine == "sqlite3":
        if dialect != "sqlite":
            raise SqlError(f"connection '{name}': engine sqlite3 needs a SQLite driver", connection=name)
        engine = "sqlite3"
    elif cfg.engine == "odbc" or dialect != "sqlite":
        engine = "odbc"
    else:
        engine = "odbc" if cfg.driver in odbc_drivers() else "sqlite3"
    return ResolvedConnection(name=name, config=cfg, dialect=dialect, engine=engine, sqlite_path=sqlite_path)


# ---------------------------------------------------------------------------------------------- secrets


def password_of(cfg: SqlConnection, name: str) -> str | None:
    """The connection's password from the environment or a file (never from committed YAML)."""
    secret: str | None = None
    if cfg.password is not None:
        secret = cfg.password.get_secret_value()
    elif cfg.password_env:
        secret = os.environ.get(cfg.password_env)
        if secret is None:
            raise SqlError(
                f"connection '{name}': environment variable {cfg.password_env} (password_env) is not set",
                connection=name,
            )
    elif cfg.password_file:
        try:
            secret = cfg.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SqlError(
                f"connection '{name}': cannot read password_file {cfg.password_file}: {exc.strerror}",
                connection=name,
            ) from None
    if secret:
        register_secret(secret)
    return secret


def odbc_quote(value: str) -> str:
    """An ODBC connection-string value, braced when it holds separators or braces."""
    if value == "" or re.search(r"[;{}=\s]", value) or value != value.strip():
        return "{" + value.replace("}", "}}") + "}"
    return value


def connection_string(conn: ResolvedConnection, *, create: bool = False) -> tuple[str, str | None]:
    """The ODBC connection string and the password in it (to scrub from error messages)."""
    cfg = conn.config
    password = password_of(cfg, conn.name)
    if cfg.connection_string:
        values = {
            "driver": cfg.driver,
            "server": cfg.server or "",
            "port": str(cfg.port or ""),
            "database": str(conn.sqlite_path or cfg.database or ""),
            "username": cfg.username or "",
            "password": password or "",
        }
        try:
            text = string.Template(cfg.connection_string).substitute(
                {k: odbc_quote(v) if v else "" for k, v in values.items()}
            )
        except (KeyError, ValueError) as exc:
            raise SqlError(
                f"connection '{conn.name}': bad connection_string template: unknown placeholder {exc}",
                connection=conn.name,
            ) from None
        return text, password
    parts: dict[str, str] = {"DRIVER": "{" + cfg.driver.replace("}", "}}") + "}"}
    if conn.dialect == "sqlite":
        assert conn.sqlite_path is not None
        # The SQLite ODBC driver takes the value verbatim (no {} quoting) and cuts it at the first ';'.
        if ";" in str(conn.sqlite_path) or str(conn.sqlite_path) != str(conn.sqlite_path).strip():
            raise SqlError(
                f"connection '{conn.name}': the SQLite3 ODBC driver cannot open a path containing ';' or "
                f"edge spaces ({conn.sqlite_path}); rename it or set `engine: sqlite3`",
                connection=conn.name,
            )
        parts["Database"] = str(conn.sqlite_path)
        # BigInt: INTEGER columns are 64-bit (the driver truncates them to 32 bits otherwise).
        parts["BigInt"] = "1"
        parts["Timeout"] = str(cfg.login_timeout_s * 1000)  # busy timeout, ms
        if not create:
            parts["NoCreat"] = "1"
    else:
        if cfg.server:
            if conn.dialect == "mssql":
                parts["SERVER"] = odbc_quote(cfg.server + (f",{cfg.port}" if cfg.port else ""))
            else:
                parts["SERVER"] = odbc_quote(cfg.server)
                if cfg.port:
                    parts["PORT"] = str(cfg.port)
        if cfg.database:
            parts["DATABASE"] = odbc_quote(cfg.database)
        if conn.dialect == "postgresql":
            parts["BoolsAsChar"] = "0"  # booleans as booleans, not '1'/'0' strings
        auth = cfg.authentication
        if auth == "auto":
            auth = "sql" if cfg.username else "none"
        if auth == "sql":
            if not cfg.username:
                raise SqlError(
                    f"connection '{conn.name}': authentication sql needs a username", connection=conn.name
                )
            parts["UID"] = odbc_quote(cfg.username)
            if password:
                parts["PWD"] = odbc_quote(password)
        elif auth == "trusted":
            parts["Trusted_Connection"] = "yes"
    for key, value in cfg.options.items():
        parts[key] = odbc_quote(value)
    return ";".join(f"{k}={v}" for k, v in parts.items()) + ";", password


def scrub(text: str, password: str | None) -> str:
    """`text` without the password or any PWD=... fragment."""
    if password:
        text = text.replace(password, "***")
    return re.sub(r"(?i)(pwd|password)=(\{[^}]*\}|[^;]*)", r"\1=***", text)


def is_transient(exc: BaseException) -> bool:
    """True for errors another attempt may cure (refused, timed out, link failure, deadlock victim)."""
    if isinstance(exc, pyodbc.Error):
        state = str(exc.args[0]) if exc.args else ""
        message = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        return state in _TRANSIENT_STATES and not _PERMANENT_HINTS.search(message)
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc) or "busy" in str(exc)
    return False


def _message(exc: BaseException) -> str:
    if isinstance(exc, pyodbc.Error) and len(exc.args) > 1:
        return f"[{exc.args[0]}] {exc.args[1]}"
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------------------------- sqlite3

_SQLITE_CONVERTERS_LOCK = threading.Lock()
_sqlite_converters_ready = False


def _to_int(raw: bytes) -> int | str:
    try:
        return int(raw)
    except ValueError:
        try:
            return int(float(raw))
        except ValueError:
            return raw.decode("utf-8", "replace")


def _to_float(raw: bytes) -> float | str:
    try:
        return float(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _to_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _to_bool(raw: bytes) -> bool:
    text = raw.decode("utf-8", "replace").strip().lower()
    try:
        return float(text) != 0
    except ValueError:
        return text in ("true", "yes", "on", "y", "t")


def _to_datetime(raw: bytes) -> dt.datetime | str:
    text = raw.decode("utf-8", "replace").strip()
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return text
    # The ODBC driver drops the offset; keep the same naive wall-clock value.
    return value.replace(tzinfo=None)


def _to_date(raw: bytes) -> dt.date | str:
    text = raw.decode("utf-8", "replace").strip()
    try:
        return dt.date.fromisoformat(text[:10])
    except ValueError:
        return text


def _to_time(raw: bytes) -> dt.time | str:
    text = raw.decode("utf-8", "replace").strip()
    try:
        return dt.time.fromisoformat(text)
    except ValueError:
        return text


# Declared type (first word) → converter, mirroring the SQLite3 ODBC driver's mapsqltype(), so that the
# sqlite3 fallback returns the same Python types as the driver. NUMERIC → float and DECIMAL → text are
# the driver's choices (SQLite has no decimal storage), kept for identical frames on both paths.
_SQLITE_DECLTYPES: dict[str, Callable[[bytes], Any]] = {
    **dict.fromkeys(
        ["INT", "INTEGER", "INT2", "INT4", "INT8", "MEDIUMINT", "TINYINT", "SMALLINT", "BIGINT"], _to_int
    ),
    **dict.fromkeys(["NUMERIC", "FLOAT", "DOUBLE", "REAL"], _to_float),
    # Not TEXT/VARCHAR...: sqlite3 hands converters an empty value as None, which would turn '' into NULL.
    **dict.fromkeys(["DECIMAL", "MONEY"], _to_text),
    **dict.fromkeys(["TIMESTAMP", "DATETIME"], _to_datetime),
    "DATE": _to_date,
    "TIME": _to_time,
    **dict.fromkeys(["BOOL", "BOOLEAN", "BIT"], _to_bool),
}


def _register_sqlite_converters() -> None:
    # sqlite3's converter registry is process-wide; it only applies to connections opened with
    # detect_types (nothing else in this project does), and these parsers accept what the defaults did.
    global _sqlite_converters_ready
    with _SQLITE_CONVERTERS_LOCK:
        if not _sqlite_converters_ready:
            for name, func in _SQLITE_DECLTYPES.items():
                sqlite3.register_converter(name, func)
            _sqlite_converters_ready = True


def _sqlite_param(value: Any) -> Any:
    """Parameters as SQLite stores them, identically on both engines (the ODBC driver cuts µs)."""
    if isinstance(value, dt.datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
        return text + (f".{value.microsecond:06d}" if value.microsecond else "")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bool):
        return int(value)
    return value


def bind_params(conn: ResolvedConnection, params: Sequence[Any]) -> list[Any]:
    """Parameters ready to bind: aware datetimes as wall-clock time (in the connection's zone if set)."""
    zone = ZoneInfo(conn.config.timezone) if conn.config.timezone else None
    out: list[Any] = []
    for value in params:
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            value = (value.astimezone(zone) if zone else value).replace(tzinfo=None)
        if hasattr(value, "to_pydatetime"):  # pandas Timestamp
            value = value.to_pydatetime()
        out.append(_sqlite_param(value) if conn.dialect == "sqlite" else value)
    return out


# ---------------------------------------------------------------------------------------------- connect


class Handle:
    """An open connection of either engine, with the operations the helpers need."""

    def __init__(self, conn: ResolvedConnection, raw: Any, password: str | None) -> None:
        self.conn = conn
        self.raw = raw
        self.password = password
        self._deadline: float | None = None

    @property
    def is_odbc(self) -> bool:
        return self.conn.engine == "odbc"

    def cursor(self) -> Any:
        return self.raw.cursor()

    def error(self, action: str, exc: BaseException) -> SqlQueryError:
        """A SqlQueryError naming the connection, with the driver's message (password scrubbed)."""
        return SqlQueryError(
            f"{action} on {self.conn.describe()} failed: {scrub(_message(exc), self.password)}",
            connection=self.conn.name,
        )

    def arm_query_timeout(self) -> None:
        """Start the sqlite3 engine's query deadline (ODBC drivers enforce their own)."""
        timeout = self.conn.config.query_timeout_s
        self._deadline = time.monotonic() + timeout if timeout and not self.is_odbc else None

    def _progress(self) -> int:
        return 1 if self._deadline is not None and time.monotonic() > self._deadline else 0

    def begin(self) -> None:
        """Start a transaction: every statement until commit() is all-or-nothing (DDL included)."""
        if self.is_odbc:
            self.raw.autocommit = False
        else:
            self.raw.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.raw.commit()
        if self.is_odbc:
            self.raw.autocommit = True

    def rollback(self) -> None:
        with suppress(pyodbc.Error, sqlite3.Error):
            self.raw.rollback()

    def close(self) -> None:
        with suppress(pyodbc.Error, sqlite3.Error):
            self.raw.close()


def _attach_schemas(handle: Handle, cursor: Any) -> None:
    """SQLite has no schemas: schema `s` of `<dir>/<name>.db` is the attached file `<dir>/<name>.s.db`."""
    path = handle.conn.sqlite_path
    assert path is not None
    for sibling in sorted(path.parent.glob(f"{path.stem}.*.db")):
        schema = sibling.name[len(path.stem) + 1 : -3]
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
            attach_sqlite_schema(handle, cursor, schema)


def sqlite_schema_file(conn: ResolvedConnection, schema: str) -> Path:
    """The file that holds SQLite schema `schema` of this connection."""
    assert conn.sqlite_path is not None
    return conn.sqlite_path.with_name(f"{conn.sqlite_path.stem}.{schema}.db")


def attach_sqlite_schema(handle: Handle, cursor: Any, schema: str) -> None:
    """ATTACH the file of `schema` (a validated identifier) unless it is attached already."""
    cursor.execute("PRAGMA database_list")
    if any(row[1] == schema for row in cursor.fetchall()):
        return
    literal = str(sqlite_schema_file(handle.conn, schema)).replace("'", "''")
    cursor.execute(f"ATTACH DATABASE '{literal}' AS \"{schema}\"")


def _open_once(conn: ResolvedConnection, *, create: bool) -> Handle:
    cfg = conn.config
    if conn.dialect == "sqlite" and not create:
        assert conn.sqlite_path is not None
        if not conn.sqlite_path.is_file():
            raise SqlConnectionError(
                f"{conn.describe()}: database file does not exist", connection=conn.name, attempts=1
            )
    if conn.dialect == "sqlite" and create:
        assert conn.sqlite_path is not None
        conn.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    if conn.engine == "sqlite3":
        assert conn.sqlite_path is not None
        _register_sqlite_converters()
        mode = "rwc" if create else "rw"
        raw = sqlite3.connect(
            f"{conn.sqlite_path.as_uri()}?mode={mode}",  # as_uri: a path with ? or # stays a path
            uri=True,
            timeout=cfg.login_timeout_s,
            detect_types=sqlite3.PARSE_DECLTYPES,
            isolation_level=None,
            check_same_thread=False,
        )
        handle = Handle(conn, raw, None)
        try:
            raw.set_progress_handler(handle._progress, 10_000)
            _attach_schemas(handle, raw.cursor())
        except BaseException:
            handle.close()
            raise
        return handle
    if cfg.driver not in odbc_drivers() and not cfg.connection_string:
        installed = ", ".join(odbc_drivers()) or "none"
        raise SqlConnectionError(
            f"{conn.describe()}: ODBC driver '{cfg.driver}' is not installed (installed: {installed})",
            connection=conn.name,
            attempts=1,
        )
    text, password = connection_string(conn, create=create)
    try:
        raw = pyodbc.connect(text, timeout=cfg.login_timeout_s, autocommit=True)
    except pyodbc.Error as exc:
        exc.args = tuple(scrub(str(a), password) for a in exc.args)
        raise
    handle = Handle(conn, raw, password)
    try:
        _set_query_timeout(handle)
        if conn.dialect == "sqlite":
            _attach_schemas(handle, raw.cursor())  # ATTACH is refused inside a transaction
    except BaseException:
        handle.close()
        raise
    return handle


def _set_query_timeout(handle: Handle) -> None:
    seconds = handle.conn.config.query_timeout_s
    if not seconds:
        return
    try:
        handle.raw.timeout = seconds
    except pyodbc.Error:
        if handle.conn.dialect == "postgresql":  # psqlODBC has no query-timeout attribute
            handle.raw.cursor().execute(f"SET statement_timeout = {int(seconds) * 1000}")
        else:
            log.debug("sql.query_timeout_unsupported", connection=handle.conn.name)


def connect(conn: ResolvedConnection, *, create: bool = False) -> Handle:
    """Open `conn`, retrying transient errors `retries` times with exponential backoff."""
    cfg = conn.config

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "sql.connect_retry",
            connection=conn.name,
            attempt=state.attempt_number,
            error=_message(exc) if exc else None,
        )

    retrying = Retrying(
        stop=stop_after_attempt(cfg.retries + 1),
        wait=wait_exponential(multiplier=cfg.retry_backoff_s, max=30),
        retry=retry_if_exception(is_transient),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(_open_once, conn, create=create)
    except SqlError:
        raise
    except (pyodbc.Error, sqlite3.Error, OSError) as exc:
        attempts = retrying.statistics.get("attempt_number", 1)
        what = "attempt" if attempts == 1 else "attempts"
        raise SqlConnectionError(
            f"{conn.describe()} failed after {attempts} {what}: {scrub(_message(exc), None)}",
            connection=conn.name,
            attempts=attempts,
        ) from None


@contextmanager
def opened(conn: ResolvedConnection, *, create: bool = False) -> Iterator[Handle]:
    """`connect` as a context manager that always closes."""
    handle = connect(conn, create=create)
    try:
        yield handle
    finally:
        handle.close()
