"""Make the demo world config.example.toml points at: 11 small SQLite files shaped like
the Synapse databases (quirks included), and the three Postgres databases they land in.

    python deploy/demo/make_demo_data.py [--dir demo] [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

Existing files are left alone, so it is safe to run again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
TARGET_DATABASES = ("core", "business", "analytics")
STAGES = ["lead", "qualified", "proposal", "negotiation", "won", "lost"]


def accounts(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT,
                            created_at DATETIME DEFAULT CURRENT_TIMESTAMP, avatar BLOB, is_admin BOOLEAN DEFAULT 0);
        CREATE TABLE sessions (token TEXT PRIMARY KEY, user_id INTEGER, expires REAL) WITHOUT ROWID;
        CREATE VIEW admins AS SELECT * FROM users WHERE is_admin;
    """)
    for i in range(1, 41):
        c.execute("INSERT INTO users (id, email, name, avatar, is_admin) VALUES (?, ?, ?, ?, ?)",
                  (i, f"user{i}@synapse.example", f"User {i}", rnd.randbytes(32), int(i <= 3)))
        c.execute("INSERT INTO sessions VALUES (?, ?, ?)", (f"tok-{i:04d}", i, 2460640.5 + i / 24))


def permissions(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE roles (name TEXT PRIMARY KEY COLLATE NOCASE, description TEXT);
        CREATE TABLE grants (role TEXT, resource TEXT, action TEXT, PRIMARY KEY (role, resource, action));
    """)
    for role in ("admin", "sales", "support", "viewer"):
        c.execute("INSERT INTO roles VALUES (?, ?)", (role, f"The {role} role"))
        for res in ("deals", "contacts", "invoices", "tickets"):
            c.execute("INSERT INTO grants VALUES (?, ?, ?)", (role, res, "read"))


def settings(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE settings (key TEXT PRIMARY KEY, value JSON, updated DATETIME);
        CREATE TABLE cache_pages (url TEXT PRIMARY KEY, body BLOB);
    """)
    for k, v in {"theme": {"dark": True}, "locale": "en-GB", "limits": {"seats": 50, "storage_gb": 2.5}}.items():
        c.execute("INSERT INTO settings VALUES (?, ?, ?)", (k, json.dumps(v), "2026-10-01 09:00:00"))


def sales(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE companies (rank INTEGER PRIMARY KEY, name TEXT NOT NULL, employees INTEGER, industry TEXT);
        CREATE TABLE deals (id INTEGER PRIMARY KEY, company_rank INTEGER, title TEXT, amount REAL,
                            stage TEXT DEFAULT 'lead', probability REAL, close_date DATE);
        CREATE TABLE activities (id INTEGER PRIMARY KEY AUTOINCREMENT, deal_id INTEGER, at DATETIME, note TEXT);
        CREATE TABLE "Order Details" (order_id INTEGER, line INTEGER, sku TEXT, qty NUMERIC, price REAL,
                                      PRIMARY KEY (order_id, line));
    """)
    for rank in range(1, 31):
        employees = "lots of people" if rank == 7 else rnd.randint(5, 5000)
        c.execute("INSERT INTO companies VALUES (?, ?, ?, ?)",
                  (rank, f"Company {rank}", employees, rnd.choice(["saas", "retail", "health"])))
    # An open pipeline of exactly $1,158,000 across 48 deals.
    amounts = [24_125.0] * 48
    for i, amount in enumerate(amounts, start=1):
        c.execute("INSERT INTO deals VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (i, rnd.randint(1, 30), f"Deal {i}", amount, rnd.choice(STAGES[:4]), rnd.random(),
                   f"2026-12-{rnd.randint(1, 28):02d}"))
        c.execute("INSERT INTO activities (deal_id, at, note) VALUES (?, ?, ?)",
                  (i, f"2026-11-{rnd.randint(1, 22):02d} 10:00:00", "Called; they'll think about it"))
    for order in range(1, 11):
        for line in range(1, 4):
            c.execute('INSERT INTO "Order Details" VALUES (?, ?, ?, ?, ?)',
                      (order, line, f"SKU-{line}", line * 2, 9.99 * line))


def contacts(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE contacts (id INTEGER PRIMARY KEY, name TEXT, email TEXT, phone TEXT, notes TEXT);
        CREATE TABLE tags (contact_id INTEGER, tag TEXT, PRIMARY KEY (contact_id, tag)) WITHOUT ROWID;
    """)
    for i in range(1, 101):
        c.execute("INSERT INTO contacts VALUES (?, ?, ?, ?, ?)",
                  (i, f"Contact {i} ✓", f"c{i}@example.org", f"+44 20 7946 {i:04d}", "Line one\nline 'two'"))
        c.execute("INSERT INTO tags VALUES (?, ?)", (i, rnd.choice(["vip", "lead", "partner"])))


def invoicing(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE invoices (number TEXT PRIMARY KEY, customer TEXT, total DECIMAL(12,2), issued DATE,
                               paid_at TIMESTAMP);
        CREATE TABLE invoice_lines (number TEXT, line INTEGER, description TEXT, amount DECIMAL(12,2),
                                    PRIMARY KEY (number, line));
    """)
    for i in range(1, 61):
        number = f"INV-2026-{i:04d}"
        c.execute("INSERT INTO invoices VALUES (?, ?, ?, ?, ?)",
                  (number, f"Company {rnd.randint(1, 30)}", round(rnd.uniform(100, 9000), 2), "2026-11-01",
                   1762000000 + i * 3600 if i % 3 else None))
        c.execute("INSERT INTO invoice_lines VALUES (?, 1, 'Subscription', ?)", (number, round(rnd.uniform(100, 900), 2)))


def inventory(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE products (sku TEXT PRIMARY KEY, name TEXT, price REAL, stock INTEGER, photo BLOB);
        CREATE TABLE warehouses (code TEXT NOT NULL UNIQUE, city TEXT);
    """)
    for i in range(1, 51):
        c.execute("INSERT INTO products VALUES (?, ?, ?, ?, ?)",
                  (f"SKU-{i}", f"Product {i}", round(rnd.uniform(1, 500), 2), rnd.randint(0, 900), b""))
    c.executemany("INSERT INTO warehouses VALUES (?, ?)", [("LON", "London"), ("MAN", "Manchester")])


def support(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE tickets (id INTEGER PRIMARY KEY, subject TEXT, status TEXT, opened DATETIME, body TEXT);
        CREATE TABLE ticket_events (event_id INTEGER NOT NULL, ticket_id INTEGER, kind TEXT, at DATETIME);
    """)
    for i in range(1, 81):
        c.execute("INSERT INTO tickets VALUES (?, ?, ?, ?, ?)",
                  (i, f"Problem #{i}", rnd.choice(["open", "closed"]), f"2026-11-{rnd.randint(1, 22):02d}",
                   "It doesn't work \\ at all"))
        c.execute("INSERT INTO ticket_events VALUES (?, ?, 'opened', ?)", (i, i, "2026-11-20 08:00:00"))


def web(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE page_views (id INTEGER PRIMARY KEY, path TEXT, at REAL, duration_ms INTEGER, referrer);
        CREATE TABLE raw_log (line TEXT);  -- no key: syncd reports it instead of guessing
    """)
    for i in range(1, 301):
        c.execute("INSERT INTO page_views VALUES (?, ?, ?, ?, ?)",
                  (i, rnd.choice(["/", "/pricing", "/docs"]), 1763800000 + i * 7.25, rnd.randint(10, 9000),
                   None if i % 4 else "https://search.example/?q=synapse"))
    c.execute("INSERT INTO raw_log VALUES ('GET / 200')")


def marketing(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE campaigns (id INTEGER PRIMARY KEY, name TEXT, budget NUMERIC, starts DATE, settings JSON);
        CREATE TABLE "weird ""name""; DROP TABLE x;--" (k TEXT PRIMARY KEY, v);
    """)
    for i in range(1, 13):
        c.execute("INSERT INTO campaigns VALUES (?, ?, ?, ?, ?)",
                  (i, f"Campaign {i}", i * 1500, f"2026-{i:02d}-01", json.dumps({"channel": "email", "ab": i % 2})))
    c.execute("""INSERT INTO "weird ""name""; DROP TABLE x;--" VALUES ('quoted', 1)""")


def reporting(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE monthly (month TEXT PRIMARY KEY, revenue REAL, new_customers INTEGER, churn REAL);
    """)
    for m in range(1, 12):
        c.execute("INSERT INTO monthly VALUES (?, ?, ?, ?)",
                  (f"2026-{m:02d}", rnd.uniform(50_000, 120_000), rnd.randint(3, 40), rnd.random() / 10))


BUILDERS = {
    "synapse_accounts": accounts, "synapse_permissions": permissions, "synapse_settings": settings,
    "epic7_sales_automation": sales, "crm_contacts": contacts, "invoicing": invoicing, "inventory": inventory,
    "support_desk": support, "web_analytics": web, "marketing_campaigns": marketing,
    "reporting_snapshots": reporting,
}


def make_files(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    for i, (name, build) in enumerate(BUILDERS.items()):
        path = directory / f"{name}.db"
        if path.exists():
            continue
        conn = sqlite3.connect(path)
        if i % 2 == 0:
            conn.execute("PRAGMA journal_mode=wal")  # the app uses both modes
        build(conn, random.Random(i))
        conn.commit()
        conn.close()
        made.append(path)
    return made


async def make_databases(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        have = {r[0] for r in await conn.fetch("SELECT datname FROM pg_database")}
        missing = [d for d in TARGET_DATABASES if d not in have]
        for name in missing:
            await conn.execute(f'CREATE DATABASE "{name}"')
        return missing
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=ROOT / "demo")
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="a database to connect to while creating core, business and analytics")
    args = ap.parse_args()
    made = make_files(args.dir)
    created = asyncio.run(make_databases(args.dsn))
    print(f"demo: {len(made)} SQLite file(s) created in {args.dir}, "
          f"Postgres database(s) created: {', '.join(created) or 'none (already there)'}")


if __name__ == "__main__":
    main()
