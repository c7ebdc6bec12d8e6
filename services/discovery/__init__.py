"""Discovery: the asset registry in metadata.db (registration, change detection, versions, lineage)."""
