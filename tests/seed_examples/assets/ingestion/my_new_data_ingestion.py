# orchestrator/assets/ingestion/my_new_data_ingestion.py
import pandas as pd
from dagster import asset
from orchestrator.shared.load_window import get_load_window
from orchestrator.shared.ingest_utils import ingest_from_sql

@asset(
    name="raw_my_new_data",
    group_name="stg__ingestion",
    description="Raw my new data for SQL staging.",
    compute_kind="pandas",
    owners=["your.email@company.com"],
    tags={"domain": "my_domain", "source": "MySource", "type": "ingestion"},
    metadata={
        "source_system": "My Source System",
        "target_schema": "stg",
        "load_window": "dynamic via get_load_window()",
        "owner": "your_username",
        "team": "Your Team"
    }
)
def raw_my_new_data(context) -> pd.DataFrame:
    '''Ingests raw my new data from source system.'''
    
    query = '''
        SELECT * FROM my_source_table
        WHERE created_date >= ? AND created_date < ?
    '''
    
    start, end = get_load_window()
    
    df = ingest_from_sql(
        sql_server='MY_SERVER',
        sql_database='MY_DATABASE',
        query=query,
        date_params=[start, end]
    )
    
    # Add Dagster UI metadata
    context.add_output_metadata({
        "row_count": len(df),
        "window_start": str(start),
        "window_end": str(end),
        "preview": df.head().to_markdown() if not df.empty else "No data"
    })
    
    return df

# Register this asset in the all_assets list
all_assets = [raw_my_new_data]
