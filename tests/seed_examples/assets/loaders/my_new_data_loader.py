# orchestrator/assets/loaders/my_new_data_loader.py
from dagster import AssetExecutionContext, asset, AssetIn
from orchestrator.shared.load_to_sql_utils import load_to_stg_table, sanitize_dataframe
from pandas import DataFrame

@asset(
    name="stg_my_new_data",
    ins={"raw_my_new_data": AssetIn()},
    group_name="stg__loaders",
    description="Loads raw my new data into staging table.",
    compute_kind="pandas",
    owners=["your.email@company.com"],
    tags={"domain": "my_domain", "source": "MySource", "type": "loader"},
    metadata={
        "target_table": "my_new_data_staging",
        "target_schema": "stg"
    }
)
def stg_my_new_data(
    context: AssetExecutionContext,
    raw_my_new_data: DataFrame
):
    '''Loads the raw my new data into a preparation table.'''
    
    sanitized_data = sanitize_dataframe(raw_my_new_data)
    
    load_to_stg_table(
        context=context,
        df=sanitized_data,
        target_table_name='my_new_data_staging'
    )

# Register this asset in the all_assets list
all_assets = [stg_my_new_data]
