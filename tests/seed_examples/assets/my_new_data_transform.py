# orchestrator/assets/my_new_data_transform.py
import pandas as pd
from dagster import AssetExecutionContext, asset, AssetIn

@asset(
    name="transformed_my_new_data",
    ins={
        "stg_my_new_data": AssetIn(),
        # Add other dependencies as needed
    },
    group_name="transformed_data",
    description="Transforms staging data into final format.",
    compute_kind="pandas",
    owners=["your.email@company.com"],
    tags={"domain": "my_domain", "type": "transformation"},
    metadata={
        "business_rules": "Apply business rules X, Y, Z",
        "output_format": "Standardized format for analytics"
    }
)
def transformed_my_new_data(
    context: AssetExecutionContext,
    stg_my_new_data: pd.DataFrame
) -> pd.DataFrame:
    '''Transforms staging data into final format for analytics.'''
    
    # Apply transformations
    transformed_df = stg_my_new_data.copy()
    
    # Example transformations
    transformed_df['processed_date'] = pd.Timestamp.now()
    transformed_df['record_count'] = len(transformed_df)
    
    # Add business logic here
    # ...
    
    # Log metrics
    context.add_output_metadata({
        "row_count": len(transformed_df),
        "preview": transformed_df.head().to_markdown() if not transformed_df.empty else "No data"
    })
    
    return transformed_df

# Register this asset
all_assets = [transformed_my_new_data]
