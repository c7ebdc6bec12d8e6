"""Resources of the code location: the default IO manager, which records table metadata.

Every materialization of a DataFrame-returning asset carries `dagster/row_count` and
`dagster/column_schema` (a TableSchema) without the asset author writing them: the health service's volume
and schema-drift evaluators read exactly these two entries. An asset that reports them itself (e.g. through
`load_to_stg_table`) keeps its own values.

A loader that writes a staging table with `load_to_stg_table` and returns nothing (the seed's style) has
that table as its value: the IO manager stores a `StagingTable` reference instead of None, and an asset
that takes the loader as input receives the table's rows as a DataFrame (`read_stg_table`), read when the
downstream step runs. A loader that returns its DataFrame hands on that DataFrame, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from dagster import (
    FilesystemIOManager,
    InitResourceContext,
    InputContext,
    MetadataValue,
    OutputContext,
    TableColumn,
    TableSchema,
)
from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager

ROW_COUNT = "dagster/row_count"
COLUMN_SCHEMA = "dagster/column_schema"
# Written by load_to_stg_table (`_report`): "<schema>.<table>" and the connection's name.
TARGET_TABLE = "target_table"
TARGET_CONNECTION = "target_connection"


@dataclass(frozen=True)
class StagingTable:
    """The value of an asset that loaded a staging table and returned nothing: where its rows are.

    `config` is the connection's settings when the loader passed a SqlConnection object instead of a name;
    a literal `password` in it is never written to disk (`password_dropped`), while `password_env` and
    `password_file` references are kept, so the downstream step can connect with them.
    """

    connection: str
    schema: str
    table: str
    config: dict[str, Any] | None = None
    password_dropped: bool = False

    def read(self) -> pd.DataFrame:
        from orchestrator.settings import SqlConnection
        from orchestrator.shared.load_to_sql_utils import read_stg_table
        from orchestrator.shared.sql import INLINE, SqlError

        connection: str | SqlConnection = self.connection
        if self.connection == INLINE:
            where = f"staging table {self.schema}.{self.table}"
            if self.password_dropped:
                raise SqlError(
                    f"the {where} was loaded through a SqlConnection object with a literal password, which "
                    "is never stored: give it password_env or password_file, or name the connection under "
                    "`connections:` in app_config.yaml, so the downstream step can read the table",
                    connection=INLINE,
                )
            if self.config is None:
                raise SqlError(
                    f"the {where} was loaded through a SqlConnection object whose settings did not reach "
                    "the IO manager (was load_to_stg_table called in another process?): name the "
                    "connection under `connections:` in app_config.yaml",
                    connection=INLINE,
                )
            connection = SqlConnection.model_validate(self.config)
        return read_stg_table(self.table, schema=self.schema, connection=connection)


def staging_table_of(metadata: Any) -> StagingTable | None:
    """The staging table an asset reported with load_to_stg_table (its latest load), if any."""
    if not metadata:
        return None
    target, connection = metadata.get(TARGET_TABLE), metadata.get(TARGET_CONNECTION)
    target = getattr(target, "value", target)
    connection = getattr(connection, "value", connection)
    if not isinstance(target, str) or not isinstance(connection, str) or target.count(".") != 1:
        return None
    schema, table = target.split(".")
    from orchestrator.shared.load_to_sql_utils import take_inline_connection
    from orchestrator.shared.sql import INLINE

    if connection != INLINE:
        return StagingTable(connection=connection, schema=schema, table=table)
    inline = take_inline_connection(schema, table)
    if inline is None:
        return StagingTable(connection=connection, schema=schema, table=table)
    return StagingTable(
        connection=connection,
        schema=schema,
        table=table,
        config=inline.model_dump(mode="json", exclude={"password"}),
        password_dropped=inline.password is not None,
    )


def table_schema_of(df: pd.DataFrame) -> TableSchema:
    """The column schema of `df` (column name and pandas dtype)."""
    return TableSchema(
        columns=[TableColumn(name=str(name), type=str(dtype)) for name, dtype in df.dtypes.items()]
    )


def table_metadata(df: pd.DataFrame) -> dict[str, Any]:
    """`dagster/row_count` and `dagster/column_schema` of `df`, ready for add_output_metadata."""
    return {
        ROW_COUNT: MetadataValue.int(len(df)),
        COLUMN_SCHEMA: MetadataValue.table_schema(table_schema_of(df)),
    }


class _TableMetadataPickleIOManager(PickledObjectFilesystemIOManager):
    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            obj = staging_table_of(context.output_metadata)
        super().handle_output(context, obj)

    def load_input(self, context: InputContext) -> Any:
        value = super().load_input(context)
        if isinstance(value, StagingTable):
            return value.read()
        if isinstance(value, dict):  # several partitions of the upstream
            return {k: v.read() if isinstance(v, StagingTable) else v for k, v in value.items()}
        return value

    def get_metadata(self, context: OutputContext, obj: Any) -> dict[str, MetadataValue]:
        if not isinstance(obj, pd.DataFrame):
            return {}
        # What the asset reported itself wins (load_to_stg_table reports the SQL column types it created);
        # IO-manager metadata would otherwise replace it.
        reported = set(context.output_metadata or {})
        return {k: v for k, v in table_metadata(obj).items() if k not in reported}


class TableMetadataIOManager(FilesystemIOManager):
    """Dagster's filesystem (pickle) IO manager, adding row count and column schema for DataFrames."""

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    def create_io_manager(self, context: InitResourceContext) -> PickledObjectFilesystemIOManager:
        instance = context.instance
        if self.base_dir:
            base_dir = self.base_dir
        elif instance is not None:
            base_dir = instance.storage_directory()
        else:  # pragma: no cover - Dagster always passes an instance when running assets
            raise RuntimeError("no base_dir and no Dagster instance to store outputs in")
        return _TableMetadataPickleIOManager(base_dir=base_dir)  # type: ignore[no-untyped-call]
