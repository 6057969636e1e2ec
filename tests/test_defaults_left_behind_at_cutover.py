"""A SQLite default Postgres does not carry (an expression: an id from randomblob(), a
local time) is named by `syncd cutover` and its dry run, as `syncd rollback` names the
defaults Postgres has and SQLite lacks: once the application writes Postgres, an INSERT
that leaves such a column out stores NULL there, or fails where the column is NOT NULL,
where SQLite would have filled it. A default set in Postgres by hand is not named."""

from __future__ import annotations

import sqlite3

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import wait_caught_up
from tests.support.way_back import backup_and_config, cut_over


async def dry_run_and_cutover(tmp_path, make_config, pg_dsn, db) -> tuple[str, str]:
    """What `syncd cutover --dry-run`, then `syncd cutover`, of a caught-up file print."""
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        dry = run_cli(cfg, "cutover", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    return dry.stdout, out


async def test_defaults_postgres_lacks_are_named_before_and_at_the_switch(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE deals (id TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(16)))), title TEXT,
                            seen TEXT DEFAULT (datetime('now', 'localtime')), stage TEXT DEFAULT 'new',
                            owner TEXT DEFAULT ('team' || '-a'), note TEXT DEFAULT NULL);
        INSERT INTO deals (title) VALUES ('first');
    """)
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:  # the operator follows `syncd schema`'s advice for one of them
            await pg.execute("ALTER TABLE app.deals ALTER COLUMN owner SET DEFAULT 'team-a'")
        finally:
            await pg.close()
        assert run_cli(cfg, "verify").returncode == 0
        dry = run_cli(cfg, "cutover", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
    for said in (dry.stdout, out):
        warned = [line for line in said.splitlines() if "warning:" in line]
        assert len(warned) == 2, said
        (key,) = [w for w in warned if '"deals"."id"' in w]
        assert "lower(hex(randomblob(16)))" in key and "fails" in key and "NOT NULL" in key, key
        (seen,) = [w for w in warned if '"deals"."seen"' in w]
        assert "datetime('now', 'localtime')" in seen and "stores NULL" in seen, seen
    # what the warning says is what the application meets
    pg = await asyncpg.connect(pg_dsn)
    try:
        try:
            await pg.execute("INSERT INTO app.deals (title) VALUES ('from postgres')")
            raise AssertionError("an INSERT leaving the key out went in")
        except asyncpg.NotNullViolationError:
            pass
        await pg.execute("INSERT INTO app.deals (id, title) VALUES ('k2', 'from postgres')")
        assert await pg.fetchrow("SELECT seen, stage, owner FROM app.deals WHERE id = 'k2'") == (None, "new", "team-a")
    finally:
        await pg.close()


async def test_a_local_time_default_is_named_as_lost_where_the_cutover_types_its_column(tmp_path, make_config,
                                                                                       pg_dsn):
    """A DATETIME column filled with the local time of the insert: the cutover types it
    (its values are timestamps), and Postgres has no form of SQLite's local time. The
    warning says plainly that an INSERT leaving it out stores NULL, where before it said
    this was so "unless the cutover types the column" (it then would set the DEFAULT), and
    the cutover typed it without one."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE visits (id INTEGER PRIMARY KEY, at DATETIME DEFAULT (datetime('now', 'localtime')));
        INSERT INTO visits (id) VALUES (1), (2);
    """)
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    assert 'created: visits: column "at" DATETIME as "at": timestamp' in out, out
    (warned,) = [line for line in out.splitlines() if "warning:" in line and '"visits"."at"' in line]
    assert "stores NULL" in warned and "unless" not in warned, warned
    pg = await asyncpg.connect(pg_dsn)
    try:  # what the warning says is what the application meets
        assert await pg.fetchval("INSERT INTO app.visits (id) VALUES (3) RETURNING at") is None
    finally:
        await pg.close()


async def test_a_null_sqlite_takes_without_an_error_is_named_before_the_switch(tmp_path, make_config, pg_dsn):
    """NOT NULL ON CONFLICT REPLACE has SQLite store the column's DEFAULT where a row writes
    NULL there, and ON CONFLICT IGNORE skip such a row, both without an error; Postgres
    refuses the statement. The dry run and the cutover name each such column, where
    before nothing said that the application's writes of NULL would start failing."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL ON CONFLICT REPLACE DEFAULT 'anon',
                             team TEXT NOT NULL ON CONFLICT IGNORE, mail TEXT NOT NULL ON CONFLICT REPLACE);
        INSERT INTO people (name, team, mail) VALUES (NULL, 'a', 'm');
    """)
    assert conn.execute("SELECT name FROM people").fetchall() == [("anon",)]
    conn.close()
    for said in await dry_run_and_cutover(tmp_path, make_config, pg_dsn, db):
        warned = [line for line in said.splitlines() if "warning:" in line and "ON CONFLICT" in line]
        (name,) = [w for w in warned if '"people"."name"' in w]
        assert "REPLACE" in name and "'anon'" in name and "fails" in name, name
        (team,) = [w for w in warned if '"people"."team"' in w]
        assert "IGNORE" in team and "fails" in team, team
        assert not [w for w in warned if '"people"."mail"' in w], said  # no DEFAULT: SQLite refuses it too
    pg = await asyncpg.connect(pg_dsn)
    try:  # what the warning says is what the application meets
        try:
            await pg.execute("INSERT INTO app.people (name, team, mail) VALUES (NULL, 'b', 'm')")
            raise AssertionError("Postgres took a NULL name")
        except asyncpg.NotNullViolationError:
            pass
    finally:
        await pg.close()


async def test_a_row_sqlite_takes_over_another_on_a_key_conflict_is_named_before_the_switch(tmp_path, make_config,
                                                                                           pg_dsn):
    """A PRIMARY KEY or UNIQUE ON CONFLICT REPLACE has SQLite delete the row holding the
    value a new row writes, ON CONFLICT IGNORE skip the new row, both without an error;
    Postgres refuses the statement. The dry run and the cutover name each such
    constraint, where before nothing said the application's writes would start failing."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE prefs (k TEXT PRIMARY KEY ON CONFLICT REPLACE, v TEXT);
        CREATE TABLE seats (id INTEGER PRIMARY KEY, badge TEXT UNIQUE ON CONFLICT IGNORE, room TEXT, desk TEXT,
                            UNIQUE (room, desk) ON CONFLICT REPLACE, UNIQUE (desk, badge) ON CONFLICT ABORT);
        INSERT INTO prefs VALUES ('theme', 'dark');
        INSERT INTO prefs VALUES ('theme', 'light');
        INSERT INTO seats VALUES (1, 'b1', 'r1', 'd1');
    """)
    assert conn.execute("SELECT * FROM prefs").fetchall() == [("theme", "light")]
    conn.close()
    for said in await dry_run_and_cutover(tmp_path, make_config, pg_dsn, db):
        warned = [line for line in said.splitlines() if "warning:" in line and "ON CONFLICT" in line]
        assert len(warned) == 3, said
        (prefs,) = [w for w in warned if '"prefs" with the (k)' in w]
        assert "PRIMARY KEY ON CONFLICT REPLACE" in prefs and "fails" in prefs, prefs
        (badge,) = [w for w in warned if '"seats" with the (badge)' in w]
        assert "UNIQUE ON CONFLICT IGNORE" in badge, badge
        (place,) = [w for w in warned if '"seats" with the (room, desk)' in w]
        assert "UNIQUE ON CONFLICT REPLACE" in place, place
    pg = await asyncpg.connect(pg_dsn)
    try:  # what the warning says is what the application meets
        try:
            await pg.execute("INSERT INTO app.prefs VALUES ('theme', 'blue')")
            raise AssertionError("Postgres took a second row of one key")
        except asyncpg.UniqueViolationError:
            pass
    finally:
        await pg.close()
