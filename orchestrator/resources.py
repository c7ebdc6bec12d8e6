"""Resources of the code location: the default IO manager, which records table metadata.

Every materialization of a DataFrame-returning asset carries `dagster/row_count` and
`dagster/column_schema` (a TableSchema) without the asset author writing them: the health service's volume
and schema-drift evaluators read exactly these two entries. An asset that reports them itself (e.g. through
`load_to_stg_table`) keeps its own values.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from dagster import (
    FilesystemIOManager,
    InitResourceContext,
    MetadataValue,
    OutputContext,
    TableColumn,
    TableSchema,
)
from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager

ROW_COUNT = "dagster/row_count"
COLUMN_SCHEMA = "dagster/column_schema"


def table_schema_of(df: pd.DataFrame) -> TableSchema:
    """The column schema of `df` (column name and pandas dtype)."""
    return TableSchema(columns=[TableColumn(name=str(name), type=str(dtype)) for name, dtype in df.dtypes.items()])


def table_metadata(df: pd.DataFrame) -> dict[str, Any]:
    """`dagster/row_count` and `dagster/column_schema` of `df`, ready for add_output_metadata."""
    return {ROW_COUNT: MetadataValue.int(len(df)), COLUMN_SCHEMA: MetadataValue.table_schema(table_schema_of(df))}


class _TableMetadataPickleIOManager(PickledObjectFilesystemIOManager):
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
