"""A value Postgres cannot take holds only its table: its changes stay queued while
other tables and sources stream on, and it resumes by itself once the row is fixed
or a column override is configured."""

from __future__ import annotations

import sqlite3
import urllib.request

import asyncpg

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.pgcluster import free_port
from tests.support.sync import eventually, pg_rows, table_states, wait_caught_up


def make_db(path, rows=3):
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE companies (rank INTEGER PRIMARY KEY, name TEXT, employees INTEGER);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
    """)
    conn.executemany("INSERT INTO companies VALUES (?, ?, ?)", [(i, f"co{i}", i * 10) for i in range(1, rows + 1)])
    conn.commit()
    return conn


def halted(port, source, table) -> float | None:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith("syncd_table_halted{") and f'table="{table}"' in line and f'source="{source}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_bad_value_holds_one_table_until_fixed(tmp_path, make_config, pg_dsn):
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    ca, cb = make_db(a), make_db(b)
    port = free_port()
    cfg = make_config([{"name": "a", "path": str(a)}, {"name": "b", "path": str(b)}],
                      metrics_listen=f"127.0.0.1:{port}")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(a, pg_dsn, "a", daemon=d)
        await wait_caught_up(b, pg_dsn, "b", daemon=d)
        ca.execute("INSERT INTO companies VALUES (777777, 'Acme', 'lots of people')")  # SQLite accepts it
        ca.execute("UPDATE companies SET name = 'queued behind the bad row' WHERE rank = 1")
        ca.commit()
        wait_for(lambda: "table held" in d.log(), 30, "the hold", d)
        line = next(l for l in d.log().splitlines() if "table held" in l)
        for part in ("source=a", "table=companies", "777777", '"employees"', "'lots of people'", "bigint"):
            assert part in line, line
        assert (await table_states(pg_dsn, "a"))["companies"][0] == "held"
        assert halted(port, "a", "companies") == 1
        # everything else keeps streaming
        ca.execute("INSERT INTO notes VALUES (1, 'other table, same source')")
        ca.commit()
        cb.execute("INSERT INTO companies VALUES (50, 'other source', 5)")
        cb.commit()
        await wait_caught_up(b, pg_dsn, "b", daemon=d)
        await eventually(lambda: _has_note(pg_dsn), 30, "the note to stream", d)
        # nothing of the held table was applied, nothing skipped
        assert await pg_rows(pg_dsn, "SELECT name FROM a.companies WHERE rank = 1") == [("co1",)]
        # fix the row in SQLite: the table resumes by itself, queued changes included
        ca.execute("UPDATE companies SET employees = 1200 WHERE rank = 777777")
        ca.commit()
        await wait_caught_up(a, pg_dsn, "a", daemon=d)
        assert halted(port, "a", "companies") == 0
        assert "table resumed" in d.log()
        assert d.stop() == 0
    for db, src in ((a, "a"), (b, "b")):
        for t in ("companies", "notes"):
            assert await compare_table(str(db), pg_dsn, src, t) == []


async def _has_note(dsn) -> bool:
    return await pg_rows(dsn, "SELECT body FROM a.notes") == [("other table, same source",)]


async def test_column_override_and_restart_resumes(tmp_path, make_config, pg_dsn):
    db = tmp_path / "a.db"
    conn = make_db(db)
    cfg = make_config([{"name": "a", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "one.log") as d:
        await wait_caught_up(db, pg_dsn, "a", daemon=d)
        conn.execute("INSERT INTO companies VALUES (9, 'Acme', 'lots of people')")
        conn.commit()
        wait_for(lambda: "table held" in d.log(), 30, "the hold", d)
        assert d.stop() == 0
    cfg = make_config([{"name": "a", "path": str(db), "columns": {"companies": {"employees": "text"}}}])
    with DaemonProcess(cfg, tmp_path / "two.log") as d:
        await wait_caught_up(db, pg_dsn, "a", daemon=d)
        assert d.stop() == 0
    assert await pg_rows(pg_dsn, "SELECT employees FROM a.companies WHERE rank IN (1, 9) ORDER BY rank") == [
        ("10",), ("lots of people",)]
    assert await compare_table(str(db), pg_dsn, "a", "companies") == []


async def test_postgres_side_rejection_is_held_with_postgres_message(tmp_path, make_config, pg_dsn):
    db = tmp_path / "a.db"
    conn = make_db(db, rows=50)
    cfg = make_config([{"name": "a", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "a", daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE a.companies ADD CONSTRAINT small CHECK (employees < 1000) NOT VALID")
        conn.executemany("INSERT INTO companies VALUES (?, 'x', ?)", [(100 + i, i * 100) for i in range(20)])
        conn.commit()
        wait_for(lambda: "table held" in d.log(), 30, "the hold", d)
        line = next(l for l in d.log().splitlines() if "table held" in l)
        assert "key 110" in line and 'violates check constraint "small"' in line and "23514" in line
        await pg_rows(pg_dsn, "ALTER TABLE a.companies DROP CONSTRAINT small")
        await wait_caught_up(db, pg_dsn, "a", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "a", "companies") == []


async def test_json_nested_too_deep_to_check_holds_only_its_table(tmp_path, make_config, pg_dsn):
    """A column carried as jsonb holding a document nested thousands of levels deep:
    syncd cannot check it, so the value holds its table, named in `syncd schema` and in
    the hold, while the other tables stream on; fixed, the table loads."""
    db = tmp_path / "a.db"
    conn = make_db(db)
    conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO docs VALUES (1, '{\"a\": [1, 2]}'), (2, ?)", ("[" * 3000 + "]" * 3000,))
    conn.commit()
    cfg = make_config([{"name": "a", "path": str(db), "columns": {"docs": {"body": "jsonb"}}}])
    schema = run_cli(cfg, "schema")
    assert schema.returncode == 0 and "Traceback" not in schema.stderr, schema.stdout + schema.stderr
    assert '-- HELD: table "docs" column "body": 1 value(s) do not fit jsonb' in schema.stdout, schema.stdout
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        async def held() -> bool:
            try:
                state, why = (await table_states(pg_dsn, "a")).get("docs", (None, None))
            except asyncpg.UndefinedTableError:
                return False
            return state == "held" and 'column "body"' in (why or "") and "keys: 2" in why

        await eventually(held, 30, "docs held", d)
        conn.execute("UPDATE companies SET name = 'streams on' WHERE rank = 1")
        conn.commit()

        async def streamed() -> bool:
            return await pg_rows(pg_dsn, "SELECT name FROM a.companies WHERE rank = 1") == [("streams on",)]

        await eventually(streamed, 30, "companies streaming", d)
        conn.execute("UPDATE docs SET body = '[[]]' WHERE id = 2")
        conn.commit()
        await wait_caught_up(db, pg_dsn, "a", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "a", "docs") == []


async def test_jsonb_strings_postgres_refuses_are_found_before_the_load(tmp_path, make_config, pg_dsn):
    """A column carried as jsonb holding a string Postgres's jsonb refuses, a \\u0000 escape
    or half of a surrogate pair (Python's JSON reads both): `syncd schema` names the values
    and the load's audit holds the table with every such key, as for any value that does
    not fit; fixed, the table loads. Before, both called the values fitting, and the load
    failed at the first of them on Postgres's message."""
    db = tmp_path / "a.db"
    conn = make_db(db)
    conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO docs VALUES (?, ?)", [
        (1, '{"a": "\\ud83d\\ude00 \\\\u0000"}'),  # a whole pair, and an escaped backslash: fine
        (2, '{"a": "x\\u0000y"}'), (3, '["\\ud800"]'), (4, '{"\\udc00": 1}')])
    conn.commit()
    cfg = make_config([{"name": "a", "path": str(db), "columns": {"docs": {"body": "jsonb"}}}])
    schema = run_cli(cfg, "schema")
    assert '-- HELD: table "docs" column "body": 3 value(s) do not fit jsonb' in schema.stdout, schema.stdout
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        async def held() -> bool:
            try:
                state, why = (await table_states(pg_dsn, "a")).get("docs", (None, None))
            except asyncpg.UndefinedTableError:
                return False
            return state == "held" and 'column "body"' in (why or "") and "keys: 2, 3, 4" in why

        await eventually(held, 30, "docs held", d)
        await wait_caught_up(db, pg_dsn, "a", daemon=d, settled=("streaming", "held"))
        conn.executemany("UPDATE docs SET body = ? WHERE id = ?", [('{"a": "xy"}', 2), ("[]", 3), ("{}", 4)])
        conn.commit()
        await wait_caught_up(db, pg_dsn, "a", daemon=d)
        assert d.stop() == 0
    assert await pg_rows(pg_dsn, "SELECT id, body::text FROM a.docs ORDER BY id") == [
        (1, '{"a": "\U0001f600 \\\\u0000"}'), (2, '{"a": "xy"}'), (3, "[]"), (4, "{}")]


async def test_json_nested_deeper_than_syncd_compares_is_held_and_verify_goes_on(tmp_path, make_config, pg_dsn):
    """A jsonb document a few hundred levels deep parses, but is deeper than syncd's
    comparison can follow: it holds its table at the load, named, instead of loading a
    row `syncd verify` would then fail on (an internal error for the whole source)."""
    db = tmp_path / "a.db"
    conn = make_db(db)
    conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO docs VALUES (1, '{\"a\": [1, 2]}'), (2, ?)", ("[" * 500 + "]" * 500,))
    conn.commit()
    cfg = make_config([{"name": "a", "path": str(db), "columns": {"docs": {"body": "jsonb"}}}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        async def held() -> bool:
            try:
                state, why = (await table_states(pg_dsn, "a")).get("docs", (None, None))
            except asyncpg.UndefinedTableError:
                return False
            return state == "held" and 'column "body"' in (why or "") and "keys: 2" in why

        await eventually(held, 30, "docs held", d)
        out = run_cli(cfg, "verify")
        assert "internal error" not in out.stdout + out.stderr, out.stdout + out.stderr
        assert '"companies" equal' in out.stdout and '"docs" not comparable (held)' in out.stdout, out.stdout
        conn.execute("UPDATE docs SET body = '[[]]' WHERE id = 2")
        conn.commit()
        await wait_caught_up(db, pg_dsn, "a", daemon=d)
        out = run_cli(cfg, "verify")
        assert out.returncode == 0, out.stdout + out.stderr
        assert d.stop() == 0


async def test_a_value_too_long_for_an_index_is_said_once_however_often_it_is_tried(tmp_path, make_config, pg_dsn):
    """A UNIQUE TEXT value longer than a Postgres index entry may be (SQLSTATE 54000): the
    table is held, said in one line, however many times the change is tried again. Before,
    Postgres's detail named where the refused row sat in the table, another place at each
    try, so every retry logged the hold again and recorded another hold event."""
    import secrets

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE links (id INTEGER PRIMARY KEY, url TEXT UNIQUE); "
                       "INSERT INTO links VALUES (1, 'short');")
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO links VALUES (2, ?)", ("https://example.com/" + secrets.token_urlsafe(3000),))
        conn.commit()
        saved = []

        async def tried_again() -> bool:  # each try saves the held table's row anew
            rows = await pg_rows(pg_dsn, "SELECT state, updated_at FROM syncd.tables WHERE table_name = 'links'")
            if rows and rows[0][0] == "held" and rows[0][1] not in saved:
                saved.append(rows[0][1])
            return len(saved) >= 3

        await eventually(tried_again, 60, "the held change tried three times", d)
        assert d.stop() == 0
    conn.close()
    held = [x for x in d.log().splitlines() if "event=table_held" in x]
    assert len(held) == 1 and "54000" in held[0], held
    assert await pg_rows(pg_dsn, "SELECT count(*) FROM syncd.events WHERE kind = 'held'") == [(1,)]
