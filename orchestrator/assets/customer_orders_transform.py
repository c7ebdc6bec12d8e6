# orchestrator/assets/customer_orders_transform.py
import pandas as pd
from dagster import AssetExecutionContext, AssetIn, asset

from orchestrator.assets._demo import apply_controls


@asset(
    name="transformed_customer_orders",
    ins={"stg_orders": AssetIn(), "stg_customers": AssetIn()},
    group_name="transformed_data",
    description="Orders per customer and country: the analytics-ready sales table.",
    kinds={"pandas"},
    owners=["analytics@example.com", "team:analytics"],
    tags={"ams/pipeline": "demo", "domain": "sales", "type": "transformation"},
    metadata={"business_rules": "revenue = quantity x unit price", "output_format": "one row per customer"},
    code_version="1",
)
def transformed_customer_orders(
    context: AssetExecutionContext, stg_orders: pd.DataFrame, stg_customers: pd.DataFrame
) -> pd.DataFrame:
    """Revenue and order count per customer."""
    orders = stg_orders.assign(revenue=stg_orders["quantity"] * stg_orders["unit_price"])
    per_customer = orders.groupby("customer_id", as_index=False).agg(
        orders=("order_id", "count"), revenue=("revenue", "sum")
    )
    df = per_customer.merge(stg_customers, on="customer_id", how="left")
    df["processed_date"] = pd.Timestamp.now(tz="UTC")
    return apply_controls("transformed_customer_orders", df)


all_assets = [transformed_customer_orders]
