# orchestrator/assets/ingestion/customers_ingestion.py
import pandas as pd
from dagster import AssetExecutionContext, asset

from orchestrator.assets._demo import apply_controls, ensure_demo_source
from orchestrator.shared.ingest_utils import ingest_from_sql

EXPECTED_COLUMNS = ["customer_id", "name", "email", "country", "city", "is_active", "created_date"]


@asset(
    name="raw_customers",
    group_name="stg__ingestion",
    description="Every customer of the demo shop (a full snapshot: the table is small).",
    kinds={"pandas", "sqlite"},
    owners=["data-platform@example.com", "team:data-platform"],
    tags={"ams/pipeline": "demo", "domain": "sales", "source": "DemoShop", "type": "ingestion"},
    metadata={"source_system": "Demo shop (demo_source connection)", "target_schema": "stg"},
    code_version="2",
)
def raw_customers(context: AssetExecutionContext) -> pd.DataFrame:
    """Ingests the customer dimension."""
    ensure_demo_source()
    df = ingest_from_sql(connection="demo_source", query="SELECT * FROM customers ORDER BY customer_id")
    for column in EXPECTED_COLUMNS:
        if column not in df.columns:
            df[column] = None
    df = apply_controls("raw_customers", df)
    context.add_output_metadata({"preview": df.head().to_markdown() if not df.empty else "No data"})
    return df


all_assets = [raw_customers]
