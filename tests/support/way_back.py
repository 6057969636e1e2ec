"""Helpers for the way back (Postgres -> SQLite after a cutover): a source ready to be cut
over, the cutover itself, and waiting until SQLite holds everything Postgres does."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import asyncpg

from syncd.config import load_settings
from syncd.reverse.position import position
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, pg_rows, wait_caught_up


def orders_app(db: Path) -> None:
    """An application's file with one table, `orders` (id, item), holding two rows."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL);"
                       "INSERT INTO orders (item) VALUES ('a'), ('b');")
    conn.close()


def order_in_sqlite(db: Path, item: str) -> bool:
    """An order `item` is in the SQLite file (read as the application's readers do)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT 1 FROM orders WHERE item = ?", (item,)).fetchone() is not None
    finally:
        conn.close()


def sqlite_write(db: Path, item: str) -> str | None:
    """The application's write of an order to its SQLite file: None when it went in, else the error."""
    conn = sqlite3.connect(db, timeout=5)
    try:
        conn.execute("INSERT INTO orders (item) VALUES (?)", (item,))
        conn.commit()
        return None
    except sqlite3.Error as e:
        return str(e)
    finally:
        conn.close()


async def postgres_write(dsn: str, item: str) -> str | None:
    """The application's write of an order to Postgres: None when it went in, else the error."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO app.orders (item) VALUES ($1)", item)
        return None
    except asyncpg.PostgresError as e:
        return str(e)
    finally:
        await conn.close()


def back_up(db: Path, backups: Path) -> None:
    """A fresh backup of `db`, as `backups`/STEM-latest.db."""
    backups.mkdir(exist_ok=True)
    src = sqlite3.connect(db)
    dst = sqlite3.connect(backups / f"{db.stem}-latest.db")
    src.backup(dst)
    src.close()
    dst.close()


def backup_and_config(make_config, tmp_path: Path, db: Path, sources: list[dict] | None = None,
                      **sections) -> Path:
    """A configuration whose checklist lets `syncd cutover` through (min_days 0, a fresh backup)."""
    backups = tmp_path / "backups"
    back_up(db, backups)
    cutover = {"min_days": 0, "backup_glob": str(backups / "*.db"), **sections.pop("cutover", {})}
    return make_config(sources or [{"name": "app", "path": str(db)}],
                       sections={"cutover": cutover, "verify": {"interval_seconds": 0}, **sections})


TURNED_BACK = "event=direction_switched: the source now flows Postgres -> SQLite"


async def cut_over(cfg: Path, db: Path, dsn: str, source: str = "app", daemon=None) -> str:
    """`syncd cutover` of a caught-up, verified source. With a daemon running, returns once
    the daemon runs the source's way back: it notices a cutover within a couple of
    seconds, and until then SQLite looks caught up with a Postgres nobody has written yet."""
    await wait_caught_up(db, dsn, source, daemon=daemon)
    v = run_cli(cfg, "verify", "--source", source)  # the checklist wants a clean verification
    assert v.returncode == 0, v.stdout + v.stderr
    turned = f"source={source} {TURNED_BACK}"
    before = daemon.own_log().count(turned) if daemon is not None else 0
    r = run_cli(cfg, "cutover", "--source", source)
    assert r.returncode == 0, r.stdout + r.stderr
    if daemon is not None:
        async def turned_back() -> bool:
            return daemon.own_log().count(turned) > before

        await eventually(turned_back, 60, f"the daemon's way back of {source}", daemon)
    return r.stdout


def reload_pending(db: Path) -> dict:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT value FROM _syncd_meta WHERE key = 'reverse_reload'").fetchone()
        return dict(json.loads(row[0])) if row else {}
    finally:
        conn.close()


async def caught_up_back(cfg: Path, db: Path, dsn: str, source: str = "app") -> bool:
    """Nothing in Postgres's changelog SQLite lacks, nothing waiting to be copied again,
    and every table followed (streaming)."""
    settings = load_settings(cfg)
    wb = await position(settings, settings.source(source))
    if wb.pending is None or wb.pending:
        return False
    if reload_pending(db):
        return False
    states = await pg_rows(dsn, "SELECT state FROM syncd.tables WHERE source = $1", source)
    return bool(states) and all(s == "streaming" or s == "refused" for (s,) in states)


async def wait_back(cfg: Path, db: Path, dsn: str, source: str = "app", timeout: float = 60, daemon=None) -> None:
    deadline = time.monotonic() + timeout
    while not await caught_up_back(cfg, db, dsn, source):
        if daemon is not None and not daemon.alive():
            raise AssertionError(f"syncd exited ({daemon.proc.returncode}):\n{daemon.log()[-4000:]}")
        if time.monotonic() > deadline:
            states = await pg_rows(dsn, "SELECT table_name, state, reason FROM syncd.tables WHERE source = $1", source)
            settings = load_settings(cfg)
            wb = await position(settings, settings.source(source))
            tail = daemon.log()[-4000:] if daemon else ""
            raise AssertionError(f"SQLite did not catch up with Postgres in {timeout}s: pending {wb.pending}, "
                                 f"reloads {reload_pending(db)}, tables {states}\n{tail}")
        await asyncio.sleep(0.1)


def typeof(db: Path, sql: str, *args) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


class PgWriter:
    """The application writing Postgres, in a process of its own (tests/support/pg_writer.py)."""

    def __init__(self, dsn: str, seconds: float, seed: int, table: str = "items", rate: float = 50, ids: int = 2000):
        import subprocess
        import sys

        from tests.support.daemon import ROOT

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.pg_writer", dsn, "--seconds", str(seconds), "--seed", str(seed),
             "--table", table, "--rate", str(rate), "--ids", str(ids)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
        )

    def result(self, timeout: float = 120) -> dict:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return json.loads(out)

    def stop(self) -> dict:
        """Stop writing now (SIGTERM ends the current transaction's loop); its summary."""
        self.proc.terminate()
        return self.result()


async def way_back_changelog(dsn: str, source: str = "app") -> str:
    """The qualified name of the source's changelog in Postgres (the way back's)."""
    key = (await pg_rows(dsn, "SELECT key FROM syncd.source_keys WHERE source = $1", source))[0][0]
    return f"syncd.rlog_{key:08x}"


async def applied_but_unpruned(db: Path, dsn: str, source: str = "app") -> int:
    """Entries of Postgres's changelog SQLite's checkpoint already covers: a kill landed
    between the SQLite commit and the prune in Postgres."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT value FROM _syncd_meta WHERE key = 'reverse_checkpoint'").fetchone()
    finally:
        conn.close()
    if row is None:
        return 0
    done = json.loads(row[0])["done"]
    table = await way_back_changelog(dsn, source)
    return (await pg_rows(dsn, f"SELECT count(*) FROM {table} WHERE txid < txid_snapshot_xmax($1::text::txid_snapshot) "
                               "AND txid_visible_in_snapshot(txid, $1::text::txid_snapshot)", done))[0][0]


async def cut_over_and_stop(cfg: Path, db: Path, dsn: str, log: Path) -> None:
    """With a daemon running: cut over, wait until SQLite follows Postgres, then stop the
    daemon (nothing streams until the test starts one again)."""
    with DaemonProcess(cfg, log) as d:
        await cut_over(cfg, db, dsn, daemon=d)
        await wait_back(cfg, db, dsn, daemon=d)
        assert d.stop() == 0


def tamper_sqlite(db, sql: str) -> None:
    """Change SQLite behind syncd's back, through the freeze (as only syncd may)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO _syncd_meta VALUES ('syncd_writing', '1')")
    conn.execute(sql)
    conn.execute("DELETE FROM _syncd_meta WHERE key = 'syncd_writing'")
    conn.execute("COMMIT")
    conn.close()
