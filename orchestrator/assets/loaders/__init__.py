"""Loader assets (`stg_*`): sanitize a raw DataFrame and load it into a staging table."""
