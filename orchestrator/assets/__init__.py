"""Asset modules. Ingestion in `ingestion/`, loaders in `loaders/`, transformations here; each module
lists its assets in `all_assets` and `orchestrator.loader` picks them up (see the README)."""
