# orchestrator/assets/ingestion/orders_ingestion.py
import datetime as dt

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, asset

from orchestrator.assets._demo import apply_controls


def _window() -> tuple[dt.datetime, dt.datetime]:
    end = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return end - dt.timedelta(days=1), end


@asset(
    name="raw_orders",
    group_name="stg__ingestion",
    description="Raw orders of the demo shop for SQL staging.",
    kinds={"pandas", "python"},
    owners=["data-platform@example.com", "team:data-platform"],
    tags={"ams/pipeline": "demo", "domain": "sales", "source": "DemoShop", "type": "ingestion"},
    metadata={"source_system": "Demo shop", "target_schema": "stg", "load_window": "previous UTC day"},
    code_version="1",
)
def raw_orders(context: AssetExecutionContext) -> pd.DataFrame:
    """Ingests the orders of the load window."""
    start, end = _window()
    rng = np.random.default_rng(int(start.timestamp()))
    n = 40 + int(rng.integers(0, 10))
    df = pd.DataFrame(
        {
            "order_id": np.arange(1, n + 1),
            "customer_id": rng.integers(1, 20, n),
            "quantity": rng.integers(1, 6, n),
            "unit_price": rng.choice([2.49, 9.5, 18.9, 42.0], n),
            "created_date": [start + dt.timedelta(minutes=int(m)) for m in rng.integers(0, 1440, n)],
        }
    )
    df = apply_controls("raw_orders", df)
    context.add_output_metadata({"window_start": str(start), "window_end": str(end)})
    return df


all_assets = [raw_orders]
