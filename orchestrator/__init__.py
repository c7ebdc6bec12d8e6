"""The Dagster code location: assets (orchestrator/assets), shared helpers, sensors that publish events.

Import `orchestrator.definitions` for the Definitions; this package itself imports nothing heavy.
"""
