# orchestrator/assets/loaders/orders_loader.py
import os
import sqlite3
from pathlib import Path

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, asset

from orchestrator.assets._demo import apply_controls


def stage(df: pd.DataFrame, table: str) -> None:
    home = Path(os.environ.get("DAGSTER_HOME", ".dagster_home"))
    home.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(home / "staging.db") as conn:
        df.to_sql(table, conn, if_exists="replace", index=False)


@asset(
    name="stg_orders",
    ins={"raw_orders": AssetIn()},
    group_name="stg__loaders",
    description="Loads raw orders into the staging table.",
    kinds={"pandas", "sqlite"},
    owners=["data-platform@example.com", "team:data-platform"],
    tags={"ams/pipeline": "demo", "domain": "sales", "source": "DemoShop", "type": "loader"},
    metadata={"target_table": "orders_staging", "target_schema": "stg"},
    code_version="1",
)
def stg_orders(context: AssetExecutionContext, raw_orders: pd.DataFrame) -> pd.DataFrame:
    """Loads the raw orders into a staging table."""
    df = apply_controls("stg_orders", raw_orders)
    stage(df, "orders_staging")
    return df


all_assets = [stg_orders]
