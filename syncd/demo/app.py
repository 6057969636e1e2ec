"""The demo's application: a few small write transactions a second across the demo
files, the way the Synapse code writes them (short transactions, a normal
busy_timeout, both journal modes). Inserts land in the logs and metrics; the sales
pipeline is only updated, so epic7 keeps its 134 rows and $1,158,000 total."""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from pathlib import Path

from syncd.demo.data import STAGES

log = logging.getLogger("syncd.demo")

BUSY_TIMEOUT_SECONDS = 5.0


class DemoApplication:
    def __init__(self, directory: Path, writes_per_second: float = 3.0, seed: int = 1):
        self.directory = directory
        self.interval = 1.0 / writes_per_second
        self.rnd = random.Random(seed)
        self.writes = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-app", daemon=True)
        self._last_metric: tuple | None = None
        self._last_touch: tuple | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        writes = [self.sales, self.metrics, self.touches, self.crm, self.timings, self.content, self.onboarding]
        conns: dict[str, sqlite3.Connection] = {}
        try:
            while not self._stop.wait(self.interval):
                write = self.rnd.choice(writes)
                name = write.__name__
                try:
                    write(lambda file: conns.setdefault(file, self._connect(file)))
                    self.writes += 1
                except sqlite3.Error as e:  # a busy file: the application retries later, as real ones do
                    self.errors += 1
                    log.warning(f"demo application: {name}: {e}")
        finally:
            for c in conns.values():
                c.close()

    def _connect(self, file: str) -> sqlite3.Connection:
        return sqlite3.connect(self.directory / f"{file}.db", timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)

    def _tx(self, conn: sqlite3.Connection, *statements: tuple[str, tuple]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def sales(self, db) -> None:
        r = self.rnd
        self._tx(db("epic7_sales_automation"),
                 ("UPDATE deals SET stage = ?, probability = ? WHERE id = ?",
                  (r.choice(STAGES), round(r.random(), 2), r.randint(1, 48))),
                 ("UPDATE crm_contacts SET last_contacted = date('now') WHERE id = ?", (r.randint(1, 16),)))

    def metrics(self, db) -> None:
        r = self.rnd
        host = r.choice(["app-1", "app-2", "db-1"])
        row = (host, r.choice(["load1", "iowait"]), round(r.random() * 4, 2), time.strftime("%Y-%m-%d %H:%M:%S"))
        if self._last_metric and r.random() < 0.2:
            row = self._last_metric  # the collector retried: an exact duplicate
        self._last_metric = row
        self._tx(db("synapse_system_infrastructure"),
                 ("INSERT OR IGNORE INTO system_metrics VALUES (?, ?, ?, ?, ?)",
                  (host, time.time(), round(r.uniform(3, 95), 1), r.randint(900, 7800), round(r.uniform(20, 80), 1))),
                 ("INSERT INTO metrics_log VALUES (?, ?, ?, ?)", row))

    def touches(self, db) -> None:
        r = self.rnd
        row = (r.randint(1, 60), r.choice(["view", "like", "message"]), time.strftime("%Y-%m-%d %H:%M:%S"))
        if self._last_touch and r.random() < 0.2:
            row = self._last_touch
        self._last_touch = row
        self._tx(db("linkedin_business_development"),
                 ("INSERT INTO touches VALUES (?, ?, ?)", row),
                 ("UPDATE outreach_messages SET replied = 1 WHERE id = ?", (row[0],)))

    def crm(self, db) -> None:
        r = self.rnd
        n = r.randint(1, 40)
        self._tx(db("synapse_business_crm"),  # the key is NOCASE: any spelling finds the row
                 ("UPDATE accounts SET active = 1 - active WHERE email = ?", (f"BUYER{n}@CUSTOMER{n}.EXAMPLE",)),
                 ("UPDATE opportunities SET stage = ?, updated = datetime('now') WHERE id = ?",
                  (r.choice(STAGES), r.randint(1, 40))))

    def timings(self, db) -> None:
        r = self.rnd
        self._tx(db("synapse_analytics_intelligence"),
                 ("INSERT INTO query_timings (query_name, ms, at) VALUES (?, ?, datetime('now'))",
                  (r.choice(["pipeline_by_stage", "contacts_search", "kpi_rollup"]), round(r.uniform(0.4, 9.5), 2))))

    def content(self, db) -> None:
        r = self.rnd
        conn = db("synapse_content_intelligence")
        conn.execute("BEGIN IMMEDIATE")
        try:
            title, body = f"Field note {r.randint(1, 10**6)}", "Customers ask about \"pricing\" & <onboarding>."
            cur = conn.execute("INSERT INTO articles (title, body, published, sentiment) VALUES (?, ?, date('now'), ?)",
                               (title, body, round(r.uniform(-1, 1), 3)))
            conn.execute("INSERT INTO articles_fts(rowid, title, body) VALUES (?, ?, ?)", (cur.lastrowid, title, body))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def onboarding(self, db) -> None:
        r = self.rnd
        self._tx(db("epic16_enterprise_onboarding"),
                 ("UPDATE workflow_steps SET completed_at = datetime('now') WHERE workflow_id = ? AND step = ?",
                  (r.randint(1, 14), r.randint(1, 5))))
