"""A small code location of four assets in three levels (test fixture; see README.md)."""
