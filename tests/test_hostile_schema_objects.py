"""Nothing a SQLite schema says runs in Postgres: CHECK bodies, index predicates, index
expressions and view bodies built to be harmless to SQLite and several statements to
a Postgres that received their text (Postgres nests /* */ comments, SQLite does not;
semicolons, dollar quotes, E'' strings, U& escapes, functions Postgres has and SQLite
lacks) go through the daemon's dual-write and the cutover's finalize. Postgres here
records every DDL command, every drop and every write to a canary table; the test
asserts it ran nothing but syncd's own statements on syncd's own objects."""

from __future__ import annotations

import sqlite3

import asyncpg

from syncd import parity
from tests.support.daemon import DaemonProcess
from tests.support.pg_audit import AUDIT_SQL
from tests.support.sync import first_source, pg_rows, wait_caught_up

DROP = "DROP TABLE IF EXISTS public.victim"
HOSTILE_SCHEMA = f"""
CREATE TABLE t (
  id INTEGER PRIMARY KEY,
  c TEXT CHECK (c <> 'x' /* /* */ -- */ ); {DROP}; --
  ),
  d TEXT CHECK (d <> '$$; {DROP}; $$'),
  e TEXT CHECK (e <> 'E''\\''; {DROP}; --'),
  U INTEGER CHECK (U&'\\0041' = 0),
  f TEXT CONSTRAINT "x""); {DROP}; --" CHECK (length(f) < 100),
  g TEXT CHECK (g NOT LIKE '%'' ); {DROP}; --' ESCAPE '\\')
);
CREATE TABLE sleeper (id INTEGER PRIMARY KEY, v TEXT CHECK (v IS NULL));
CREATE TABLE "weird ""name""; {DROP};--" (id INTEGER PRIMARY KEY, "col ""x""; --" TEXT UNIQUE);
CREATE INDEX partial_idx ON t(c) WHERE c <> '/* /* */ -- */ ); {DROP}; --' /* /* */ -- */ ); {DROP}; --
;
CREATE INDEX expr_idx ON t((c || '/* /* */ -- */'), length(c /* /* */ ));
CREATE UNIQUE INDEX "idx""; {DROP}; --" ON t(d) WHERE d IS NOT NULL /* ; {DROP} */;
CREATE VIEW hostile_view AS SELECT c /* /* */ -- */ ; {DROP}; --
  AS x FROM t;
CREATE VIEW dollar_view AS SELECT '$$; {DROP}; $$' AS y, id FROM t WHERE c <> '$$x$$';
CREATE VIEW function_view AS SELECT id FROM t WHERE quote('/etc/passwd') IS NOT NULL;
CREATE TRIGGER hostile_trigger AFTER INSERT ON t BEGIN SELECT 1 /* /* */ -- */ ; {DROP}; --
; END;
INSERT INTO t (id, c, d, e, U, f, g) VALUES (1, 'a', 'b', 'c', 0, 'f', 'g'), (2, 'b', NULL, 'd', 0, 'ff', 'h');
INSERT INTO "weird ""name""; {DROP};--" VALUES (1, 'a');
"""
# SQLite refuses unknown functions in CREATE statements; whoever writes the file can put
# them in its schema all the same.
WRITTEN_IN = [
    ("sleeper", "CREATE TABLE sleeper (id INTEGER PRIMARY KEY, v TEXT CHECK (pg_sleep(10) IS NULL OR "
                "set_config('a', 'b', false) = v))"),
    ("function_view", "CREATE VIEW function_view AS SELECT id FROM t WHERE pg_read_file('/etc/passwd') IS NOT NULL"),
]


# What syncd itself does: its bookkeeping, its tables, their identity sequences, its
# stage tables, and the objects of schema parity, every one in its own schemas.
SYNCD_TAGS = {"CREATE SCHEMA", "CREATE TABLE", "ALTER TABLE", "CREATE INDEX", "CREATE SEQUENCE", "ALTER SEQUENCE",
              "COMMENT", "CREATE VIEW", "CREATE COLLATION", "DROP INDEX", "DROP TABLE"}


async def test_hostile_schema_objects_run_nothing_in_postgres(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript(HOSTILE_SCHEMA)
    conn.execute("PRAGMA writable_schema = ON")
    for name, sql in WRITTEN_IN:
        conn.execute("UPDATE sqlite_master SET sql = ? WHERE name = ?", (sql, name))
    conn.execute("PRAGMA writable_schema = OFF")
    conn.close()
    pg = await asyncpg.connect(pg_dsn)
    await pg.execute(AUDIT_SQL)
    await pg.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log('not carried: view "function_view"')
        assert d.stop() == 0
    settings, source, specs = first_source(cfg)
    pg = await asyncpg.connect(pg_dsn)
    try:
        async with pg.transaction():
            result = await parity.finalize(pg, settings, source, specs)
        # the canary is untouched and was never written
        assert await pg.fetch("SELECT id, v FROM public.victim ORDER BY id") == [(1, "one"), (2, "two")]
        audit = [tuple(r) for r in await pg.fetch("SELECT kind, tag, identity, schema_name FROM public.audit "
                                                  "ORDER BY id")]
        assert not [a for a in audit if a[0] == "dml"], audit
        for kind, tag, identity, schema in audit:
            assert tag in SYNCD_TAGS or kind == "drop", (kind, tag, identity)
            if tag == "CREATE SCHEMA":
                schema = identity
            assert schema in ("app", "syncd") or (schema or "").startswith("pg_temp"), (kind, tag, identity, schema)
        # nothing of the payloads exists anywhere
        assert not await pg.fetch("SELECT relname FROM pg_class WHERE relname LIKE 'zz%' OR relname = 'pwned'")
    finally:
        await pg.close()
    created = {o.what: o for o in result.created}
    missed = {o.what: o.detail for o in result.not_created}
    # SQLite's reading of each: the CHECKs hold their first expression only, and run as syncd wrote them
    checks = {r[0]: r[1] for r in await pg_rows(
        pg_dsn, "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'c' "
                "AND conrelid = 'app.t'::regclass")}
    assert checks["t_c_check"] == "CHECK ((c <> 'x'::text))"
    assert checks["t_d_check"] == "CHECK ((d <> '$$; DROP TABLE IF EXISTS public.victim; $$'::text))"
    assert checks['x"); DROP TABLE IF EXISTS public.victim; --'] == "CHECK ((length(f) < 100))"
    assert any("pg_sleep() is not one syncd translates" in v for k, v in missed.items() if k.startswith("CHECK"))
    assert "pg_read_file" in missed['view "function_view"']  # SQLite itself cannot read that view
    assert "never copied" in missed['trigger "hostile_trigger" on "t"']
    assert 'view "hostile_view"' in created and 'view "dollar_view"' in created
    views = dict(await pg_rows(pg_dsn, "SELECT viewname, definition FROM pg_views WHERE schemaname = 'app'"))
    assert "victim" not in views["hostile_view"] and "$$" in views["dollar_view"]
    assert await pg_rows(pg_dsn, "SELECT x FROM app.hostile_view ORDER BY x") == [("a",), ("b",)]
    idx = {r[0]: r[1] for r in await pg_rows(pg_dsn, "SELECT indexname, indexdef FROM pg_indexes "
                                                   "WHERE schemaname = 'app'")}
    assert idx["partial_idx"].endswith("WHERE (c <> '/* /* */ -- */ ); DROP TABLE IF EXISTS public.victim; --'::text)")
    assert idx['idx"; DROP TABLE IF EXISTS public.victim; --'].startswith("CREATE UNIQUE INDEX")
