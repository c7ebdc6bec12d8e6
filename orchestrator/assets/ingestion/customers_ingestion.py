# orchestrator/assets/ingestion/customers_ingestion.py
import pandas as pd
from dagster import AssetExecutionContext, asset

from orchestrator.assets._demo import apply_controls


@asset(
    name="raw_customers",
    group_name="stg__ingestion",
    description="Raw customers of the demo shop for SQL staging.",
    kinds={"pandas", "python"},
    owners=["data-platform@example.com", "team:data-platform"],
    tags={"ams/pipeline": "demo", "domain": "sales", "source": "DemoShop", "type": "ingestion"},
    metadata={"source_system": "Demo shop", "target_schema": "stg"},
    code_version="1",
)
def raw_customers(context: AssetExecutionContext) -> pd.DataFrame:
    """Ingests every customer."""
    df = pd.DataFrame(
        {
            "customer_id": range(1, 21),
            "name": [f"Customer {i}" for i in range(1, 21)],
            "country": ["DE", "FR", "ES", "PL"] * 5,
        }
    )
    return apply_controls("raw_customers", df)


all_assets = [raw_customers]
