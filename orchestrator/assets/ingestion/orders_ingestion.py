# orchestrator/assets/ingestion/orders_ingestion.py
import pandas as pd
from dagster import AssetExecutionContext, asset

from orchestrator.assets._demo import apply_controls, ensure_demo_source
from orchestrator.shared.ingest_utils import ingest_from_sql
from orchestrator.shared.load_window import get_load_window

# Schema changes in the source: columns downstream relies on are always present (NULL when the source
# dropped them); columns the source adds flow through to staging as they are.
EXPECTED_COLUMNS = [
    "order_id",
    "customer_id",
    "product_id",
    "quantity",
    "unit_price",
    "discount",
    "total_amount",
    "status",
    "order_date",
    "shipped_at",
    "created_date",
]


@asset(
    name="raw_orders",
    group_name="stg__ingestion",
    description="Raw orders of the demo shop for SQL staging.",
    kinds={"pandas", "sqlite"},
    owners=["data-platform@example.com", "team:data-platform"],
    tags={"ams/pipeline": "demo", "domain": "sales", "source": "DemoShop", "type": "ingestion"},
    metadata={
        "source_system": "Demo shop (demo_source connection)",
        "target_schema": "stg",
        "load_window": "dynamic via get_load_window()",
        "team": "Data Platform",
    },
    code_version="2",
)
def raw_orders(context: AssetExecutionContext) -> pd.DataFrame:
    """Ingests the orders created in the load window."""
    ensure_demo_source()
    query = """
        SELECT * FROM orders
        WHERE created_date >= ? AND created_date < ?
    """
    start, end = get_load_window(context)
    df = ingest_from_sql(connection="demo_source", query=query, date_params=[start, end])

    for column in EXPECTED_COLUMNS:
        if column not in df.columns:
            df[column] = None
    df = apply_controls("raw_orders", df)

    context.add_output_metadata(
        {
            "window_start": str(start),
            "window_end": str(end),
            "preview": df.head().to_markdown() if not df.empty else "No data",
        }
    )
    return df


all_assets = [raw_orders]
