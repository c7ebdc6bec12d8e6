# orchestrator/assets/customer_orders_transform.py
import pandas as pd
from dagster import AssetExecutionContext, AssetIn, asset

from orchestrator.assets._demo import apply_controls


@asset(
    name="transformed_customer_orders",
    ins={"stg_orders": AssetIn(), "stg_customers": AssetIn()},
    group_name="transformed_data",
    description="Orders and revenue per customer of the load window: the analytics-ready sales table.",
    kinds={"pandas"},
    owners=["analytics@example.com", "team:analytics"],
    tags={"ams/pipeline": "demo", "domain": "sales", "type": "transformation"},
    metadata={
        "business_rules": "revenue = sum of total_amount; cancelled and returned orders excluded",
        "output_format": "one row per customer with orders in the window",
    },
    code_version="2",
)
def transformed_customer_orders(
    context: AssetExecutionContext, stg_orders: pd.DataFrame, stg_customers: pd.DataFrame
) -> pd.DataFrame:
    """Revenue and order count per customer, with the customer's country."""
    orders = stg_orders[~stg_orders["status"].isin(["cancelled", "returned"])].copy()
    orders["total_amount"] = pd.to_numeric(orders["total_amount"], errors="coerce").astype("float64")
    per_customer = orders.groupby("customer_id", as_index=False).agg(
        orders=("order_id", "count"), revenue=("total_amount", "sum")
    )
    customers = stg_customers[["customer_id", "name", "country"]]
    transformed_df = per_customer.merge(customers, on="customer_id", how="left")
    transformed_df["processed_date"] = pd.Timestamp.now(tz="UTC")

    transformed_df = apply_controls("transformed_customer_orders", transformed_df)
    context.add_output_metadata(
        {"preview": transformed_df.head().to_markdown() if not transformed_df.empty else "No data"}
    )
    return transformed_df


all_assets = [transformed_customer_orders]
