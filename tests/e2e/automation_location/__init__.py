"""A code location of a sensor and a schedule that fail on demand, plus the publisher (see README.md)."""
