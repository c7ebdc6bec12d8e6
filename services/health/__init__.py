"""The health service: execution history in health.db, pure evaluators, asset health and its transitions."""
