"""The alerts service: alert lifecycle, routing, silences and durable signed delivery (monitor.db)."""
