"""`defs`: root → sessions, orders → revenue, four owners; `LINEAGE_FAIL_ROOT=1` makes root raise."""

import os

import dagster as dg

PREFIX = "lineage"
OWNERS = {
    "lineage/root": ["team:platform"],
    "lineage/sessions": ["team:web"],
    "lineage/orders": ["team:sales", "sales-lead@example.com"],
    "lineage/revenue": ["analyst@example.com"],
}


@dg.asset(key_prefix=PREFIX, owners=OWNERS["lineage/root"], group_name="lineage")
def root() -> int:
    if os.environ.get("LINEAGE_FAIL_ROOT") == "1":
        raise RuntimeError("the event source refused the connection")
    return 10


@dg.asset(
    key_prefix=PREFIX,
    owners=OWNERS["lineage/sessions"],
    group_name="lineage",
    ins={"root": dg.AssetIn(key=[PREFIX, "root"])},
)
def sessions(root: int) -> int:
    return root * 2


@dg.asset(
    key_prefix=PREFIX,
    owners=OWNERS["lineage/orders"],
    group_name="lineage",
    ins={"root": dg.AssetIn(key=[PREFIX, "root"])},
)
def orders(root: int) -> int:
    return root + 1


@dg.asset(
    key_prefix=PREFIX,
    owners=OWNERS["lineage/revenue"],
    group_name="lineage",
    ins={"sessions": dg.AssetIn(key=[PREFIX, "sessions"]), "orders": dg.AssetIn(key=[PREFIX, "orders"])},
)
def revenue(sessions: int, orders: int) -> int:
    return sessions + orders


defs = dg.Definitions(assets=[root, sessions, orders, revenue])
