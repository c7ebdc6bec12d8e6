"""Utilities that asset modules import.

- `load_window.get_load_window(context=None, *, now=None, settings=None, lookback=None, align=None,
  timezone=None) -> (start, end)`: the [start, end) window, from the partition or `load_window:` config.
- `ingest_utils.ingest_from_sql(*, query, sql_server=None, sql_database=None, date_params=None,
  connection=None, params=None, chunk_size=None, settings=None) -> DataFrame`: one parameterised SELECT
  over ODBC (SQLite files also through a sqlite3 fallback with identical typing).
- `load_to_sql_utils.sanitize_dataframe(df)`, `load_to_stg_table(context, df, target_table_name, *,
  schema="stg", connection=None, mode="replace", batch_size=1000, settings=None) -> LoadResult`,
  `read_stg_table(table_name, *, schema="stg", connection=None, settings=None)`.
- `demo_source.create_demo_source(path, *, rows=500, seed=42, days=14, now=None, overwrite=False)`.

Connections are named in `connections:` of app_config.yaml (`demo_source`, `warehouse`, `default`, ...).
"""
