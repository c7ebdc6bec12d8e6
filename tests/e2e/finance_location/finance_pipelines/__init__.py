"""The finance team's Dagster code location (test fixture; no import of the asset-management project)."""
