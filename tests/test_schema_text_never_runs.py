"""Nothing written in a SQLite schema runs in Postgres.

The SQLite file is the application's, so every byte of its schema is untrusted: column
defaults, CHECK constraints, index predicates and view bodies. syncd carries a default
only when it is one literal, and then writes it itself; everything else stays out.
Postgres here records every DDL command, every drop and every write to a canary table,
and the test asserts that it ran nothing but syncd's own statements.
"""

from __future__ import annotations

import re
import sqlite3

import asyncpg

from tests.conftest import write_config
from tests.support.daemon import run_cli
from tests.support.pg_audit import AUDIT_SQL

# Postgres nests /* */ comments, SQLite does not: each payload is one harmless expression
# to SQLite and several statements to a Postgres that receives its text.
HOSTILE_TABLES = {
    # the report's reproduction, verbatim
    "nested_comment": "c TEXT DEFAULT ('a' /* /* */ -- */ ); DROP TABLE IF EXISTS public.victim; "
                      "CREATE TEMP TABLE zz (id bigint, c text DEFAULT 'b'\n|| 'c')",
    # the X'..' branch
    "blob_default": "c BLOB DEFAULT (x'41' /* /* */ -- */ ); DROP TABLE IF EXISTS public.victim; "
                    "CREATE TEMP TABLE zz2 (id bigint, c bytea DEFAULT '\\x42'\n|| '43')",
    "blob_semicolon": "c BLOB DEFAULT (X'5b' /* /* */ -- */ ); CREATE TABLE IF NOT EXISTS public.pwned (x int); "
                      "CREATE TEMP TABLE zz3 (id bigint, c bytea DEFAULT '\\x5a'\n|| '01')",
    "line_comment": "c TEXT DEFAULT ('x' -- '); DROP TABLE IF EXISTS public.victim; --\n)",
    "semicolons": "c TEXT DEFAULT ('; DROP TABLE IF EXISTS public.victim; --')",
    "dollar_quote": "c TEXT DEFAULT ('$$; DROP TABLE IF EXISTS public.victim; $$')",
    "backslash": "c TEXT DEFAULT ('\\''); DROP TABLE IF EXISTS public.victim; CREATE TEMP TABLE zz4 (id bigint, --')",
    "newline_string": "c TEXT DEFAULT ('line one\n); DROP TABLE IF EXISTS public.victim; --\nline three')",
    "expression": "c TEXT DEFAULT (lower('A') /* /* */ -- */ || pg_sleep(0)::text\n)",
    "number_comment": "c INTEGER DEFAULT (/* /* */ 5 -- */ ); DROP TABLE IF EXISTS public.victim; --\n)",
    "check_constraint": "c TEXT CHECK (c <> 'x' /* /* */ -- */ ); DROP TABLE IF EXISTS public.victim; --\n)",
}
# The hostile columns whose default is one literal to SQLite: carried, with the value
# SQLite gives it. Every other default stays out of Postgres.
CARRIED = {"line_comment", "semicolons", "dollar_quote", "backslash", "newline_string", "number_comment"}
HOSTILE_EXTRA_SQL = [
    "CREATE INDEX partial_idx ON semicolons(c) WHERE c <> '/* /* */ -- */ ); DROP TABLE IF EXISTS public.victim; --' "
    "/* /* */ -- */ ); DROP TABLE IF EXISTS public.victim; --\n",
    "CREATE VIEW hostile_view AS SELECT 1 /* /* */ -- */ ; DROP TABLE IF EXISTS public.victim; --\n AS x",
    "CREATE TRIGGER hostile_trigger AFTER INSERT ON semicolons BEGIN SELECT 1 /* /* */ -- */ ; "
    "DROP TABLE IF EXISTS public.victim; --\n; END",
]


def _make_hostile_db(path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=wal")
    for table, column in HOSTILE_TABLES.items():
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, {column})")
    for sql in HOSTILE_EXTRA_SQL:
        conn.execute(sql)
    conn.commit()
    conn.close()


async def _audit(pg_dsn: str) -> tuple[list[tuple], list[tuple] | None, list[tuple], dict[tuple[str, str], str | None]]:
    pg = await asyncpg.connect(pg_dsn)
    try:
        audit = [tuple(r) for r in await pg.fetch("SELECT kind, tag, identity, schema_name FROM public.audit")]
        victim = None
        if await pg.fetchval("SELECT to_regclass('public.victim')") is not None:
            victim = [tuple(r) for r in await pg.fetch("SELECT id, v FROM public.victim ORDER BY id")]
        temps = [tuple(r) for r in await pg.fetch("SELECT relname FROM pg_class WHERE relpersistence = 't'")]
        defaults = {
            (r[0], r[1]): r[2]
            for r in await pg.fetch(
                """SELECT c.relname, a.attname, pg_get_expr(d.adbin, d.adrelid)
                   FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                   WHERE n.nspname = 'app' AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind = 'r'"""
            )
        }
    finally:
        await pg.close()
    return audit, victim, temps, defaults


def _sqlite_default_values(db, tables, column) -> dict[str, object]:
    conn = sqlite3.connect(db)
    try:
        out = {}
        for t in tables:
            conn.execute(f"INSERT INTO {t}(id) VALUES (-1)")
            out[t] = conn.execute(f"SELECT {column} FROM {t} WHERE id = -1").fetchone()[0]
        conn.rollback()
        return out
    finally:
        conn.close()


async def _default_values(pg_dsn, db, tables, column) -> dict[str, object]:
    """What Postgres fills in when a row leaves the column out (rolled back)."""
    pg = await asyncpg.connect(pg_dsn)
    try:
        tr = pg.transaction()
        await tr.start()
        out = {t: await pg.fetchval(f"INSERT INTO app.{t}(id) VALUES (-1) RETURNING {column}") for t in tables}
        await tr.rollback()
        return out
    finally:
        await pg.close()


def _assert_only_syncd_ran(audit, victim, temps) -> None:
    assert victim == [(1, "one"), (2, "two")], "the canary table was changed"
    assert temps == [], f"temporary objects appeared: {temps}"
    for kind, tag, identity, schema in audit:
        assert kind == "ddl", f"Postgres ran {kind} {tag} {identity}"
        # COMMENT: the mark schema parity leaves on the indexes it creates (docs/schema.md)
        assert tag in ("CREATE SCHEMA", "CREATE TABLE", "CREATE INDEX", "CREATE SEQUENCE", "ALTER SEQUENCE",
                       "ALTER TABLE", "COMMENT"), f"Postgres ran {tag} {identity}"
        assert (schema or identity.strip('"')) in ("syncd", "app"), f"{tag} {identity} outside syncd's schemas"


async def test_hostile_schema_text_never_runs_in_postgres(tmp_path, pg_dsn):
    pg = await asyncpg.connect(pg_dsn)
    try:
        await pg.execute(AUDIT_SQL)
        # The older, backslash-escaping string syntax: a literal must not depend on this setting.
        await pg.execute(f"ALTER DATABASE {pg_dsn.rsplit('/', 1)[1]} SET standard_conforming_strings = off")
    finally:
        await pg.close()
    db = tmp_path / "app.db"
    _make_hostile_db(db)
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}])

    r = run_cli(cfg, "init")
    assert r.returncode == 0, r.stdout + r.stderr
    audit, victim, temps, defaults = await _audit(pg_dsn)
    _assert_only_syncd_ran(audit, victim, temps)
    assert {t for (t, c), d in defaults.items() if c == "c" and d is not None} == CARRIED
    assert await _default_values(pg_dsn, db, CARRIED, "c") == _sqlite_default_values(db, CARRIED, "c")

    # The same text arriving later, as an added column, takes the ALTER TABLE path.
    conn = sqlite3.connect(db)
    for table, column in HOSTILE_TABLES.items():
        if "CHECK" not in column:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column.replace('c ', 'added ', 1)}")
    conn.commit()
    conn.close()
    r = run_cli(cfg, "init")
    assert r.returncode == 0, r.stdout + r.stderr
    audit, victim, temps, defaults = await _audit(pg_dsn)
    _assert_only_syncd_ran(audit, victim, temps)
    assert {t for (t, c), d in defaults.items() if c == "added" and d is not None} == CARRIED
    assert await _default_values(pg_dsn, db, CARRIED, "added") == _sqlite_default_values(db, CARRIED, "added")

    # `syncd schema` says which defaults are not carried and why, one comment line each.
    r = run_cli(cfg, "schema")
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        # ALTER TABLE / DROP INDEX: the statements schema parity runs (docs/schema.md)
        assert line.startswith(("--", "CREATE", "    ", ")", "ALTER TABLE", "DROP INDEX")) or not line.strip(), \
            f"stray line: {line!r}"
    code = re.sub(r"E?'(?:[^'\\]|''|\\.)*'", "''", "\n".join(  # what Postgres would parse as code
        line for line in r.stdout.splitlines() if not line.startswith("--") and "DEFAULT" not in line))
    assert "DROP TABLE IF EXISTS public.victim" not in code
    not_carried = [t for t, col in HOSTILE_TABLES.items() if t not in CARRIED and "DEFAULT" in col]
    assert sum("not carried" in line for line in r.stdout.splitlines()) == 2 * len(not_carried)


async def test_ddl_runs_one_statement_or_none(pg_dsn):
    """The second line of defence: even a statement built wrongly cannot carry another."""
    from syncd.postgres.ddl import run_ddl

    pg = await asyncpg.connect(pg_dsn)
    try:
        await pg.execute("CREATE TABLE public.victim (id int)")
        try:
            await run_ddl(pg, "CREATE TABLE public.a (x int); DROP TABLE public.victim")
        except asyncpg.PostgresSyntaxError as e:
            assert "multiple commands" in str(e)
        else:
            raise AssertionError("two statements ran")
        assert await pg.fetchval("SELECT to_regclass('public.victim') IS NOT NULL AND to_regclass('public.a') IS NULL")
    finally:
        await pg.close()
