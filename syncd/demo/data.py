"""The demo world: ten small SQLite files shaped like the Synapse databases, a folder of
archived backups, and the three PostgreSQL databases they land in.

The shapes are the ones a real migration meets: both journal modes, dates stored as
text, booleans as 0/1, a NOCASE key, a WITHOUT ROWID table, an AUTOINCREMENT table, a
view, an FTS5 index, two keyless log tables with exact duplicate rows, a column named
`<script>` and a table named `weird "name"; DROP TABLE x;--`. epic7_sales_automation
holds 134 rows in all: the $1,158,000 pipeline and its 16 CRM contacts.

`config.example.toml` names exactly these sources (tests/test_demo_data.py checks it).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from syncd.identifiers import quote_ident

CORE, BUSINESS, ANALYTICS = "synapse_core", "synapse_business", "synapse_analytics"
TARGET_DATABASES = (CORE, BUSINESS, ANALYTICS)
PIPELINE_TOTAL = 1_158_000
WEIRD_TABLE = 'weird "name"; DROP TABLE x;--'
SCRIPT_COLUMN = "<script>"
BACKUPS = "backups"
STAGES = ("lead", "qualified", "proposal", "negotiation")


@dataclass(frozen=True)
class DemoSource:
    name: str
    database: str  # the target Postgres database
    journal: str  # "wal" or "delete" (the rollback journal)
    holds: str  # what the file is for, as the user describes it
    build: Callable[[sqlite3.Connection, random.Random], None]
    columns: dict[str, dict[str, str]] = field(default_factory=dict)  # [sources.columns] overrides

    @property
    def filename(self) -> str:
        return f"{self.name}.db"


def _day(rnd: random.Random, start: str = "2026-09-01", days: int = 90) -> str:
    return (dt.date.fromisoformat(start) + dt.timedelta(days=rnd.randrange(days))).isoformat()


def _stamp(rnd: random.Random, start: str = "2026-09-01", days: int = 90) -> str:
    t = dt.datetime.fromisoformat(start) + dt.timedelta(seconds=rnd.randrange(days * 86400))
    return t.strftime("%Y-%m-%d %H:%M:%S")


def pipeline_amounts(n: int = 48, total: int = PIPELINE_TOTAL) -> list[float]:
    """n deal amounts in whole hundreds that add up to exactly `total`."""
    rnd = random.Random(7)
    amounts = [rnd.randrange(80, 400) * 100 for _ in range(n - 1)]
    amounts.append(total - sum(amounts))
    assert amounts[-1] > 0
    return [float(a) for a in amounts]


def sales_automation(c: sqlite3.Connection, rnd: random.Random) -> None:
    # 22 companies + 48 deals + 48 activities + 16 contacts = 134 rows.
    c.executescript("""
        CREATE TABLE companies (id INTEGER PRIMARY KEY, name TEXT NOT NULL, industry TEXT, created_at TEXT);
        CREATE TABLE deals (id INTEGER PRIMARY KEY, company_id INTEGER REFERENCES companies(id), title TEXT,
                            amount REAL NOT NULL, stage TEXT DEFAULT 'lead', probability REAL, close_date DATE);
        CREATE TABLE activities (id INTEGER PRIMARY KEY AUTOINCREMENT, deal_id INTEGER, at DATETIME, note TEXT);
        CREATE TABLE crm_contacts (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT,
                                   company_id INTEGER, opted_in BOOLEAN DEFAULT 0, last_contacted DATE);
    """)
    for i in range(1, 23):
        c.execute("INSERT INTO companies VALUES (?, ?, ?, ?)",
                  (i, f"Company {i}", rnd.choice(["saas", "retail", "health", "finance"]), _stamp(rnd)))
    for i, amount in enumerate(pipeline_amounts(), start=1):
        c.execute("INSERT INTO deals VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (i, rnd.randint(1, 22), f"Deal {i}", amount, rnd.choice(STAGES), round(rnd.random(), 2),
                   _day(rnd, "2026-12-01", 60)))
        c.execute("INSERT INTO activities (deal_id, at, note) VALUES (?, ?, ?)",
                  (i, _stamp(rnd), "Called; they'll think about it"))
    for i in range(1, 17):
        c.execute("INSERT INTO crm_contacts VALUES (?, ?, ?, ?, ?, ?)",
                  (i, f"contact{i}@example.org", f"Contact {i} ✓", rnd.randint(1, 22), i % 2, _day(rnd)))


def linkedin(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE profiles (id INTEGER PRIMARY KEY, profile_url TEXT NOT NULL UNIQUE, full_name TEXT,
                               headline TEXT, connected BOOLEAN, connected_on TEXT);
        CREATE TABLE outreach_messages (id INTEGER PRIMARY KEY, profile_id INTEGER, sent_at TEXT, template TEXT,
                                        replied BOOLEAN DEFAULT 0);
        -- A log without a key, and the same touch recorded twice now and then.
        CREATE TABLE touches (profile_id INTEGER, kind TEXT, at TEXT);
    """)
    for i in range(1, 61):
        c.execute("INSERT INTO profiles VALUES (?, ?, ?, ?, ?, ?)",
                  (i, f"https://www.linkedin.com/in/prospect-{i}", f"Prospect {i}", "VP Sales | B2B SaaS",
                   int(i % 3 != 0), _day(rnd) if i % 3 else None))
        c.execute("INSERT INTO outreach_messages VALUES (?, ?, ?, ?, ?)",
                  (i, i, _stamp(rnd), rnd.choice(["intro", "follow-up", "case-study"]), int(rnd.random() < 0.3)))
    for _ in range(80):
        row = (rnd.randint(1, 60), rnd.choice(["view", "like", "message"]), _stamp(rnd))
        c.execute("INSERT INTO touches VALUES (?, ?, ?)", row)
        if rnd.random() < 0.2:
            c.execute("INSERT INTO touches VALUES (?, ?, ?)", row)


def analytics_intelligence(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE kpi_daily (day TEXT PRIMARY KEY, revenue REAL, leads INTEGER, conversion REAL);
        CREATE TABLE query_timings (id INTEGER PRIMARY KEY, query_name TEXT, ms REAL, at TEXT);
        CREATE VIEW kpi_monthly AS
            SELECT substr(day, 1, 7) AS month, sum(revenue) AS revenue, sum(leads) AS leads
            FROM kpi_daily GROUP BY 1;
    """)
    for d in range(90):
        day = (dt.date(2026, 9, 1) + dt.timedelta(days=d)).isoformat()
        c.execute("INSERT INTO kpi_daily VALUES (?, ?, ?, ?)",
                  (day, round(rnd.uniform(2_000, 15_000), 2), rnd.randint(0, 40), round(rnd.random() / 5, 4)))
    for i in range(1, 121):
        c.execute("INSERT INTO query_timings VALUES (?, ?, ?, ?)",
                  (i, rnd.choice(["pipeline_by_stage", "contacts_search", "kpi_rollup"]),
                   round(rnd.uniform(0.4, 9.5), 2), _stamp(rnd)))


def business_crm(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE accounts (email TEXT PRIMARY KEY COLLATE NOCASE, company TEXT, tier TEXT,
                               active BOOLEAN NOT NULL DEFAULT 1, created TEXT);
        CREATE TABLE opportunities (id INTEGER PRIMARY KEY, account_email TEXT COLLATE NOCASE, value NUMERIC,
                                    stage TEXT, updated TEXT);
    """)
    for i in range(1, 41):
        email = f"Buyer{i}@Customer{i}.example" if i % 4 == 0 else f"buyer{i}@customer{i}.example"
        c.execute("INSERT INTO accounts VALUES (?, ?, ?, ?, ?)",
                  (email, f"Customer {i}", rnd.choice(["gold", "silver", "bronze"]), int(i % 5 != 0), _day(rnd)))
        c.execute("INSERT INTO opportunities VALUES (?, ?, ?, ?, ?)",
                  (i, email.lower(), rnd.randrange(10, 300) * 250, rnd.choice(STAGES), _stamp(rnd)))


def system_infrastructure(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE system_metrics (host TEXT, ts REAL, cpu REAL, mem_mb INTEGER, disk_pct REAL,
                                     PRIMARY KEY (host, ts));
        -- A log without a key, with exact duplicate rows (a collector that retries).
        CREATE TABLE metrics_log (host TEXT, metric TEXT, value REAL, logged_at TEXT);
        CREATE TABLE services (name TEXT PRIMARY KEY, healthy BOOLEAN, checked_at TEXT);
    """)
    t0 = 1_764_000_000.0
    for host in ("app-1", "app-2", "db-1"):
        for i in range(60):
            c.execute("INSERT INTO system_metrics VALUES (?, ?, ?, ?, ?)",
                      (host, t0 + i * 60.5, round(rnd.uniform(3, 95), 1), rnd.randint(900, 7800),
                       round(rnd.uniform(20, 80), 1)))
    for i in range(150):
        row = (rnd.choice(["app-1", "app-2", "db-1"]), rnd.choice(["load1", "iowait"]), round(rnd.random() * 4, 2),
               _stamp(rnd))
        c.execute("INSERT INTO metrics_log VALUES (?, ?, ?, ?)", row)
        if i % 10 == 0:
            c.execute("INSERT INTO metrics_log VALUES (?, ?, ?, ?)", row)
    for name in ("api", "worker", "scheduler", "linkedin-bot"):
        c.execute("INSERT INTO services VALUES (?, ?, ?)", (name, 1, _stamp(rnd)))


def content_intelligence(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT, body TEXT, published TEXT, sentiment REAL);
        CREATE VIRTUAL TABLE articles_fts USING fts5(title, body, content='articles', content_rowid='id');
    """)
    topics = ["pricing", "onboarding", "churn", "expansion", "security"]
    for i in range(1, 31):
        topic = rnd.choice(topics)
        row = (i, f"Notes on {topic} #{i}", f"What customers say about {topic}: it's \"mostly\" fine.",
               _day(rnd), round(rnd.uniform(-1, 1), 3))
        c.execute("INSERT INTO articles VALUES (?, ?, ?, ?, ?)", row)
        c.execute("INSERT INTO articles_fts(rowid, title, body) VALUES (?, ?, ?)", (i, row[1], row[2]))


def abm_campaigns(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript(f"""
        CREATE TABLE campaigns (id INTEGER PRIMARY KEY, name TEXT, budget NUMERIC, starts DATE, settings JSON,
                                active BOOLEAN);
        CREATE TABLE landing_pages (id INTEGER PRIMARY KEY, campaign_id INTEGER, url TEXT,
                                    {quote_ident(SCRIPT_COLUMN)} TEXT);
        CREATE TABLE {quote_ident(WEIRD_TABLE)} (k TEXT PRIMARY KEY, v);
    """)
    for i in range(1, 13):
        c.execute("INSERT INTO campaigns VALUES (?, ?, ?, ?, ?, ?)",
                  (i, f"ABM wave {i}", i * 1500, f"2026-{i:02d}-01", '{"channel": "email", "ab": %d}' % (i % 2),
                   int(i > 8)))
        c.execute("INSERT INTO landing_pages VALUES (?, ?, ?, ?)",
                  (i, i, f"https://synapse.example/abm/{i}", "<script>track('abm');</script>"))
    c.execute(f"INSERT INTO {quote_ident(WEIRD_TABLE)} VALUES ('quoted', 1), ('<b>bold</b>', 2)")


def enterprise_onboarding(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE workflows (id INTEGER PRIMARY KEY, account TEXT, started TEXT, done BOOLEAN DEFAULT 0);
        CREATE TABLE workflow_steps (workflow_id INTEGER NOT NULL, step INTEGER NOT NULL, title TEXT,
                                     completed_at TEXT, PRIMARY KEY (workflow_id, step)) WITHOUT ROWID;
    """)
    steps = ["kickoff", "sso", "data import", "training", "go-live"]
    for w in range(1, 15):
        done = rnd.randint(0, 5)
        c.execute("INSERT INTO workflows VALUES (?, ?, ?, ?)", (w, f"Enterprise {w}", _day(rnd), int(done == 5)))
        for s, title in enumerate(steps, start=1):
            c.execute("INSERT INTO workflow_steps VALUES (?, ?, ?, ?)",
                      (w, s, title, _stamp(rnd) if s <= done else None))


def fortune500(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE companies (rank INTEGER PRIMARY KEY, name TEXT NOT NULL, employees INTEGER, industry TEXT);
        CREATE TABLE targets (id INTEGER PRIMARY KEY, company_rank INTEGER, owner TEXT, next_step TEXT, due TEXT);
    """)
    for rank in range(1, 51):
        # The app once stored "lots of people" here: an INTEGER column holding text.
        employees = "lots of people" if rank == 7 else rnd.randint(5_000, 400_000)
        c.execute("INSERT INTO companies VALUES (?, ?, ?, ?)",
                  (rank, f"Fortune {rank} Inc.", employees, rnd.choice(["energy", "retail", "tech", "health"])))
    for i in range(1, 26):
        c.execute("INSERT INTO targets VALUES (?, ?, ?, ?, ?)",
                  (i, rnd.randint(1, 50), rnd.choice(["ana", "ben", "chloé"]), "intro call", _day(rnd, "2026-12-01")))


def global_expansion(c: sqlite3.Connection, rnd: random.Random) -> None:
    c.executescript("""
        CREATE TABLE markets (code TEXT PRIMARY KEY, country TEXT, launched TEXT, currency TEXT, active BOOLEAN);
        CREATE TABLE market_revenue (market TEXT, month TEXT, revenue REAL, PRIMARY KEY (market, month));
    """)
    for code, country, cur in (("GB", "United Kingdom", "GBP"), ("DE", "Germany", "EUR"), ("FR", "France", "EUR"),
                               ("JP", "Japan", "JPY"), ("BR", "Brasil", "BRL"), ("IN", "India", "INR")):
        c.execute("INSERT INTO markets VALUES (?, ?, ?, ?, ?)",
                  (code, country, _day(rnd, "2025-01-01", 600), cur, int(code != "BR")))
        for m in range(1, 12):
            c.execute("INSERT INTO market_revenue VALUES (?, ?, ?)",
                      (code, f"2026-{m:02d}", round(rnd.uniform(1_000, 90_000), 2)))


SOURCES: tuple[DemoSource, ...] = (
    DemoSource("epic7_sales_automation", BUSINESS, "wal", "the $1,158,000 sales pipeline", sales_automation),
    DemoSource("linkedin_business_development", BUSINESS, "delete", "LinkedIn automation", linkedin),
    DemoSource("synapse_analytics_intelligence", ANALYTICS, "wal", "performance metrics", analytics_intelligence),
    DemoSource("synapse_business_crm", BUSINESS, "delete", "CRM data", business_crm),
    DemoSource("synapse_system_infrastructure", CORE, "wal", "system metrics", system_infrastructure),
    DemoSource("synapse_content_intelligence", ANALYTICS, "delete", "content analysis", content_intelligence),
    DemoSource("epic16_abm_campaigns", BUSINESS, "wal", "ABM campaigns", abm_campaigns),
    DemoSource("epic16_enterprise_onboarding", BUSINESS, "delete", "onboarding workflows", enterprise_onboarding),
    DemoSource("epic16_fortune500_acquisition", BUSINESS, "wal", "enterprise pipeline", fortune500,
               columns={"companies": {"employees": "text"}}),
    DemoSource("epic18_global_expansion", CORE, "delete", "global markets", global_expansion),
)

# Archived copies in the backups folder: (source, days old).
BACKUP_COPIES = (("epic7_sales_automation", 2), ("synapse_business_crm", 2), ("epic7_sales_automation", 9),
                 ("synapse_system_infrastructure", 23))


def make_files(directory: Path) -> list[Path]:
    """Create every demo file that does not exist yet in `directory` (and the backups
    folder); returns the files created. Existing files are left alone."""
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    for i, source in enumerate(SOURCES):
        path = directory / source.filename
        if path.exists():
            continue
        conn = sqlite3.connect(path)
        try:
            conn.execute(f"PRAGMA journal_mode={source.journal}")
            source.build(conn, random.Random(i))
            conn.commit()
        finally:
            conn.close()
        made.append(path)
    made += make_backups(directory)
    return made


def make_backups(directory: Path) -> list[Path]:
    """Archived backup copies, as a nightly job would leave them (dated names, ages set
    by modification time)."""
    folder = directory / BACKUPS
    folder.mkdir(exist_ok=True)
    made = []
    now = time.time()
    for name, days_old in BACKUP_COPIES:
        day = dt.date.fromtimestamp(now - days_old * 86400).isoformat()
        path = folder / f"{name}-{day}.db"
        if path.exists():
            continue
        src = sqlite3.connect(f"file:{directory / (name + '.db')}?mode=ro", uri=True)
        dst = sqlite3.connect(path)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=delete")  # an archive is one self-contained file
        finally:
            src.close()
            dst.close()
        os.utime(path, (now - days_old * 86400,) * 2)
        made.append(path)
    return made
