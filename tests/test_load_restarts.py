"""When a first load resumes where it stopped and when it starts over: a load held by a
row Postgres refuses resumes after a restart from the chunk it stopped at; a key that
SQLite changes mid-load starts the load over under the new key (resuming from a
position of the old key would skip rows); rows Postgres refuses only together hold the
table with Postgres's words naming the second one's key."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, pg_rows, wait_caught_up

ROWS = 30_000
SLOW_LOAD = {"stream": {"snapshot_chunk_rows": 100}, "verify": {"interval_seconds": 0}}


def make_file(path, schema: str, rows: int = ROWS) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(schema)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t (a, b, v) VALUES (?, ?, ?)",
                     ((i, f"b{ROWS - i:06d}", f"row {i}") for i in range(1, rows + 1)))
    conn.execute("COMMIT")
    return conn


async def load_row(dsn) -> dict:
    try:
        rows = await pg_rows(dsn, "SELECT state, snapshot_rows, reason FROM syncd.tables WHERE table_name = 't'")
    except asyncpg.UndefinedTableError:
        return {}
    return dict(zip(("state", "rows", "reason"), rows[0])) if rows else {}


async def pg_key(dsn) -> list[str]:
    rows = await pg_rows(dsn, "SELECT a.attname FROM pg_constraint c JOIN unnest(c.conkey) WITH ORDINALITY AS k(n, i) "
                              "ON true JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n "
                              "WHERE c.conrelid = 'app.t'::regclass AND c.contype = 'p' ORDER BY k.i")
    return [r[0] for r in rows]


async def refuse(dsn, value: str) -> None:
    """A constraint of the user's own on syncd's table, which the row with v = value breaks."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"ALTER TABLE app.t ADD CONSTRAINT no_refused CHECK (v <> '{value}')")
    finally:
        await conn.close()


async def allow(dsn) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ALTER TABLE app.t DROP CONSTRAINT no_refused")
    finally:
        await conn.close()


async def held_midway(cfg, dsn, log) -> int:
    """Run the daemon until the load is held by the refused row; the rows loaded then."""
    async def held() -> bool:
        return (await load_row(dsn)).get("state") == "held"

    with DaemonProcess(cfg, log) as d:
        await eventually(held, 300, "the table to be held", d)
        r = await load_row(dsn)
        assert "key 20000" in r["reason"] and "no_refused" in r["reason"], r
        assert d.stop() == 0
    rows = (await load_row(dsn))["rows"]
    assert 0 < rows < 20000
    return rows


async def test_a_key_sqlite_changes_mid_load_starts_the_load_over(tmp_path, make_config, pg_dsn):
    # No primary key: syncd keys the table on the unique index whose name sorts first.
    # The load stops midway (held by a row the user's own constraint refuses); meanwhile
    # a unique index whose name sorts first becomes the key. The rows loaded so far were
    # read in the order of the old key: resuming from that position would skip rows.
    db = tmp_path / "app.db"
    app = make_file(db, "CREATE TABLE t (a INTEGER NOT NULL, b TEXT NOT NULL, v TEXT);"
                        "CREATE UNIQUE INDEX t_by_a ON t (a);")
    app.execute("UPDATE t SET v = 'refused' WHERE a = 20000")
    cfg = make_config([{"name": "app", "path": str(db)}], sections=SLOW_LOAD)
    out = run_cli(cfg, "init")
    assert out.returncode == 0, out.stdout + out.stderr
    await refuse(pg_dsn, "refused")
    await held_midway(cfg, pg_dsn, tmp_path / "one.log")
    await allow(pg_dsn)
    app.execute("CREATE UNIQUE INDEX t_0_by_b ON t (b)")
    with DaemonProcess(cfg, tmp_path / "two.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=300)
        log = d.log()
        assert "primary key changed" in log and "snapshot resuming" not in log, log[-3000:]
        assert log.count("snapshot started") == log.count("snapshot finished") == 1, log[-3000:]
        assert d.stop() == 0
    app.close()
    assert await pg_key(pg_dsn) == ["b"]
    assert await compare_table(str(db), pg_dsn, "app", "t", key=["b"]) == []


async def test_a_held_load_resumes_after_a_restart(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    app = make_file(db, "CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT, v TEXT);")
    app.execute("UPDATE t SET v = 'refused' WHERE a = 20000")
    cfg = make_config([{"name": "app", "path": str(db)}], sections=SLOW_LOAD)
    out = run_cli(cfg, "init")
    assert out.returncode == 0, out.stdout + out.stderr
    await refuse(pg_dsn, "refused")
    before = await held_midway(cfg, pg_dsn, tmp_path / "one.log")
    await allow(pg_dsn)
    with DaemonProcess(cfg, tmp_path / "two.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=300)
        assert f"snapshot resuming after {before} rows" in d.log()
        assert "snapshot started" not in d.log()
        # the time and rate are of the rows loaded since the resume, and said to be
        finished = next(x for x in d.log().splitlines() if "snapshot finished" in x)
        total = int(finished.split("snapshot finished: ")[1].split(" rows")[0])
        assert f"the last {total - before} of them in " in finished and "since it resumed" in finished, finished
        assert d.stop() == 0
    app.close()
    assert await pg_key(pg_dsn) == ["a"]
    assert await compare_table(str(db), pg_dsn, "app", "t") == []


async def test_rows_that_cannot_take_the_key_are_named(tmp_path, make_config, pg_dsn):
    # Two rows Postgres refuses only together, far apart in one chunk (a UNIQUE index of
    # the user's own on syncd's table, which two SQLite rows break): the chunk holding
    # the second row is refused, and the hold names that row with Postgres's words. (Rows
    # sharing a [sources.keys] key are named before the load: tests/test_keys.py.)
    db = tmp_path / "app.db"
    app = make_file(db, "CREATE TABLE t (a INTEGER NOT NULL, b TEXT, v TEXT);", rows=3_000)
    app.execute("UPDATE t SET b = 'twice' WHERE a IN (7, 2500)")
    app.close()
    cfg = make_config([{"name": "app", "path": str(db), "keys": {"t": ["a"]}}],  # both rows in one chunk
                      sections={"stream": {"snapshot_chunk_rows": 5000}, "verify": {"interval_seconds": 0}})
    out = run_cli(cfg, "init")
    assert out.returncode == 0, out.stdout + out.stderr
    await pg_rows(pg_dsn, "CREATE UNIQUE INDEX users_own ON app.t (b)")

    async def held() -> bool:
        return (await load_row(pg_dsn)).get("state") == "held"

    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await eventually(held, 120, "the table to be held", d)
        r = await load_row(pg_dsn)
        assert r["reason"].startswith('table "t" key 2500: '), r
        assert "Key (b)=(twice) already exists" in r["reason"], r
        assert d.stop() == 0
    assert await pg_key(pg_dsn) == ["a"]


async def test_a_held_load_says_it_resumes_once_per_hold(tmp_path, make_config, pg_dsn):
    """A load held by a row Postgres refuses is tried again every
    held_table_retry_seconds: its "snapshot resuming" is said once, not at every try."""
    db = tmp_path / "app.db"
    app = make_file(db, "CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT, v TEXT);", rows=2_000)
    app.execute("UPDATE t SET v = 'refused' WHERE a = 1500")
    cfg = make_config([{"name": "app", "path": str(db)}],
                      sections={"stream": {"snapshot_chunk_rows": 100, "held_table_retry_seconds": 0.2},
                                "verify": {"interval_seconds": 0}})
    out = run_cli(cfg, "init")
    assert out.returncode == 0, out.stdout + out.stderr
    await refuse(pg_dsn, "refused")

    async def held() -> bool:
        return (await load_row(pg_dsn)).get("state") == "held"

    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await eventually(held, 60, "the table to be held", d)
        d.wait_log("table held")
        tried = "SELECT updated_at FROM syncd.tables WHERE table_name = 't'"
        before = await pg_rows(pg_dsn, tried)
        await asyncio.sleep(3)  # about fifteen tries, each saving the hold again
        assert await pg_rows(pg_dsn, tried) != before, "the held load was not tried again"
        said = d.log().count("snapshot resuming after")
        assert said == 1, f"said {said} times in 3 s of one hold"
        await allow(pg_dsn)
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=60)
        assert d.stop() == 0
    app.close()
    assert await compare_table(str(db), pg_dsn, "app", "t") == []
