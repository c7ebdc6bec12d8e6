"""A small, realistic source database for the demo pipeline: customers, products and orders in SQLite.

`asset-manager init` calls `create_demo_source(default_demo_source_path(settings))`; the example ingestion
assets read it through the `demo_source` connection (the SQLite3 ODBC driver, or the sqlite3 fallback).
Rows are deterministic for a seed; `created_date` spans the last `days` days before `now`, so the default
load window (yesterday) always has data on the day the database is created.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import sqlite3
from decimal import Decimal
from pathlib import Path

from orchestrator.settings import OrchestratorSettings, get_settings

SCHEMA = """
CREATE TABLE customers (
    customer_id   INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    email         TEXT,
    country       TEXT,
    city          TEXT,
    is_active     BOOLEAN NOT NULL,
    created_date  TIMESTAMP NOT NULL
);
CREATE TABLE products (
    product_id    INTEGER PRIMARY KEY,
    sku           TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    category      TEXT,
    unit_price    NUMERIC(10,2) NOT NULL,
    weight_kg     REAL,
    created_date  TIMESTAMP NOT NULL
);
CREATE TABLE orders (
    order_id      INTEGER PRIMARY KEY,
    customer_id   INTEGER NOT NULL REFERENCES customers(customer_id),
    product_id    INTEGER NOT NULL REFERENCES products(product_id),
    quantity      INTEGER NOT NULL,
    unit_price    NUMERIC(10,2) NOT NULL,
    discount      NUMERIC(4,2),
    total_amount  NUMERIC(12,2) NOT NULL,
    status        TEXT NOT NULL,
    order_date    DATE NOT NULL,
    shipped_at    TIMESTAMP,
    notes         TEXT,
    created_date  TIMESTAMP NOT NULL
);
CREATE INDEX orders_created ON orders(created_date);
CREATE INDEX customers_created ON customers(created_date);
CREATE INDEX products_created ON products(created_date);
"""

_FIRST = [
    "Zoë",
    "José",
    "Ana",
    "Łukasz",
    "Søren",
    "Chloé",
    "Björn",
    "Mei",
    "Aarav",
    "Fatima",
    "Olivia",
    "Noah",
    "Émilie",
    "Jürgen",
    "Siobhán",
    "Kenji",
    "Ngozi",
    "Mateo",
    "Ines",
    "Yusuf",
]
_LAST = [
    "Müller",
    "García",
    "O'Brien",
    "Nakamura",
    "Kowalski",
    "Dubois",
    "Smith",
    "Rossi",
    "Ivanova",
    "Andersson",
    "Nguyễn",
    "Okafor",
    "Fernández",
    "Chen",
    "Haddad",
    "田中",
    "Новак",
    "Silva",
]
_PLACES = [
    ("DE", "München"),
    ("ES", "Málaga"),
    ("FR", "Besançon"),
    ("PL", "Łódź"),
    ("DK", "Århus"),
    ("JP", "東京"),
    ("US", "San José"),
    ("BR", "São Paulo"),
    ("GB", "London"),
    ("NG", "Lagos"),
    ("IN", "Bengaluru"),
    ("TR", "İstanbul"),
]
_PRODUCTS = [
    ("Espresso beans 1 kg", "coffee", "18.90"),
    ("Ceramic mug", "kitchen", "9.50"),
    ("Pour-over kettle", "kitchen", "42.00"),
    ("Burr grinder", "appliances", "129.99"),
    ("Oat milk 1 l", "grocery", "2.49"),
    ("Paper filters (100)", "coffee", "4.99"),
    ("Café crème capsules", "coffee", "5.75"),
    ("Travel tumbler", "kitchen", "24.95"),
    ("Digital scale", "appliances", "31.20"),
    ("Matcha 50 g", "tea", "16.00"),
    ("Rooibos 100 g", "tea", "7.30"),
    ("Milk frother", "appliances", "59.00"),
]
_STATUSES = ["placed", "paid", "shipped", "delivered", "cancelled", "returned"]


def default_demo_source_path(settings: OrchestratorSettings | None = None) -> Path:
    """Where `asset-manager init` puts the demo source: `<DAGSTER_HOME>/demo_source.db`."""
    return (settings or get_settings()).dagster_home / "demo_source.db"


def _stamp(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def create_demo_source(
    path: Path | str,
    *,
    rows: int = 500,
    seed: int = 42,
    days: int = 14,
    now: dt.datetime | None = None,
    overwrite: bool = False,
) -> Path:
    """Create the demo source SQLite database at `path` and return its path.

    `rows` orders (customers and products scale with it), created over the `days` days before `now`
    (naive UTC wall time, like the default load window). An existing file is left as it is unless
    `overwrite`; the file is written to a temporary name and renamed, so a reader never sees half of it.
    """
    if rows < 0 or days < 1:
        raise ValueError("rows must be >= 0 and days >= 1")
    target = Path(path).expanduser().resolve()
    if target.exists() and not overwrite:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    end = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(tzinfo=None, microsecond=0)
    start = end - dt.timedelta(days=days)
    span = int((end - start).total_seconds()) - 1

    def moment() -> dt.datetime:
        return start + dt.timedelta(seconds=rng.randint(0, span))

    n_customers = max(5, rows // 5) if rows else 0
    customers = []
    for cid in range(1, n_customers + 1):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        country, city = rng.choice(_PLACES)
        email = None if rng.random() < 0.15 else f"{cid}.{last.lower().replace(chr(39), '')}@example.com"
        customers.append(
            (
                cid,
                f"{first} {last}",
                email,
                country,
                None if rng.random() < 0.1 else city,
                rng.random() > 0.1,
                _stamp(moment()),
            )
        )
    products = []
    for pid, (name, category, price) in enumerate(_PRODUCTS if rows else [], start=1):
        weight = None if category == "grocery" else round(rng.uniform(0.05, 3.5), 3)
        products.append((pid, f"SKU-{pid:05d}", name, category, price, weight, _stamp(moment())))
    orders = []
    for oid in range(1, rows + 1):
        product = rng.choice(products)
        quantity = rng.randint(1, 6)
        unit = Decimal(str(product[4]))
        rate = None if rng.random() < 0.6 else Decimal(rng.choice(["0.05", "0.10", "0.15", "0.25"]))
        total = (unit * quantity * (1 - (rate or Decimal(0)))).quantize(Decimal("0.01"))
        created = moment()
        status = rng.choice(_STATUSES)
        shipped = (
            created + dt.timedelta(hours=rng.randint(2, 72)) if status in ("shipped", "delivered") else None
        )
        notes = rng.choice(
            [
                None,
                None,
                None,
                "Gift wrap 🎁",
                "Leave at the door",
                "Livraison après 18h",
                "Bitte klingeln",
                "",
            ]
        )
        orders.append(
            (
                oid,
                rng.choice(customers)[0],
                product[0],
                quantity,
                str(unit),
                None if rate is None else str(rate),
                str(total),
                status,
                created.date().isoformat(),
                None if shipped is None else _stamp(shipped),
                notes,
                _stamp(created),
            )
        )
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    partial.unlink(missing_ok=True)
    db = sqlite3.connect(partial)
    try:
        with db:
            db.executescript(SCHEMA)
            db.executemany("INSERT INTO customers VALUES (?,?,?,?,?,?,?)", customers)
            db.executemany("INSERT INTO products VALUES (?,?,?,?,?,?,?)", products)
            db.executemany("INSERT INTO orders VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", orders)
    finally:
        db.close()
    os.replace(partial, target)
    return target
