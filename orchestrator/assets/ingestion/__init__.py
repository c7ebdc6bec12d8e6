"""Ingestion assets (`raw_*`): read a source system into a DataFrame."""
