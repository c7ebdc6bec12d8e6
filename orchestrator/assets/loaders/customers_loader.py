# orchestrator/assets/loaders/customers_loader.py
from dagster import AssetExecutionContext, AssetIn, asset
from pandas import DataFrame

from orchestrator.assets._demo import apply_controls
from orchestrator.shared.load_to_sql_utils import load_to_stg_table, sanitize_dataframe


@asset(
    name="stg_customers",
    ins={"raw_customers": AssetIn()},
    group_name="stg__loaders",
    description="Loads raw customers into the staging table stg.customers_staging.",
    kinds={"pandas", "sqlite"},
    owners=["data-platform@example.com", "team:data-platform"],
    tags={"ams/pipeline": "demo", "domain": "sales", "source": "DemoShop", "type": "loader"},
    metadata={"target_table": "customers_staging", "target_schema": "stg"},
    code_version="2",
)
def stg_customers(context: AssetExecutionContext, raw_customers: DataFrame) -> DataFrame:
    """Loads the raw customers into a staging table; returns them for the transformations."""
    sanitized_data = sanitize_dataframe(apply_controls("stg_customers", raw_customers))
    load_to_stg_table(context=context, df=sanitized_data, target_table_name="customers_staging")
    return sanitized_data


all_assets = [stg_customers]
