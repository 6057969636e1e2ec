"""Keys: composite, TEXT, WITHOUT ROWID, keyless tables (configured keys, and the rowid),
key updates, delete+reinsert, INSERT OR REPLACE."""

from __future__ import annotations

import sqlite3

from tests.support.compare import compare_keyless, compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, pg_rows, pg_statements, table_states, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, wait_back

SCHEMA = """
CREATE TABLE composite (a INTEGER, b TEXT, v TEXT, PRIMARY KEY (a, b));
CREATE TABLE textkey (k TEXT PRIMARY KEY, v INTEGER);
CREATE TABLE nocase (k TEXT PRIMARY KEY COLLATE NOCASE, v INTEGER);
CREATE TABLE wr (k1 TEXT, k2 BLOB, v REAL, PRIMARY KEY (k1, k2)) WITHOUT ROWID;
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT);
CREATE TABLE uniq_only (code TEXT NOT NULL UNIQUE, v INTEGER);
CREATE TABLE keyless (a INTEGER, b TEXT);
CREATE TABLE keyless_configured (a INTEGER, b TEXT);
"""


def seed(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    conn.executemany("INSERT INTO composite VALUES (?, ?, ?)", [(i % 3, f"b{i}", f"v{i}") for i in range(20)])
    conn.executemany("INSERT INTO textkey VALUES (?, ?)", [(f"key-{i}", i) for i in range(20)])
    conn.executemany("INSERT INTO nocase VALUES (?, ?)", [("abc", 1), ("Def", 2)])
    conn.executemany("INSERT INTO wr VALUES (?, ?, ?)", [(f"k{i}", bytes([i]), i / 7) for i in range(20)])
    conn.executemany("INSERT INTO users VALUES (?, ?, ?)", [(i, f"u{i}@x", f"n{i}") for i in range(10)])
    conn.executemany("INSERT INTO uniq_only VALUES (?, ?)", [(f"c{i}", i) for i in range(10)])
    conn.executemany("INSERT INTO keyless VALUES (?, ?)", [(1, "dup"), (1, "dup")])
    conn.executemany("INSERT INTO keyless_configured VALUES (?, ?)", [(i, f"x{i}") for i in range(5)])
    conn.commit()


def mutate(conn: sqlite3.Connection) -> None:
    # key updates: the old key must disappear from Postgres
    conn.execute("UPDATE composite SET b = b || '-moved' WHERE a = 1")
    conn.execute("UPDATE textkey SET k = 'renamed-' || k WHERE v < 5")
    conn.execute("UPDATE nocase SET k = 'ABC' WHERE k = 'abc'")  # same key under NOCASE, not for Postgres
    conn.execute("UPDATE wr SET k2 = x'ff00' WHERE k1 = 'k3'")
    # delete then reinsert the same key, within and across transactions
    conn.execute("DELETE FROM textkey WHERE k = 'key-10'")
    conn.execute("INSERT INTO textkey VALUES ('key-10', 1000)")
    conn.commit()
    conn.execute("DELETE FROM composite WHERE a = 2")
    conn.commit()
    conn.execute("INSERT INTO composite VALUES (2, 'b2', 'back')")
    # INSERT OR REPLACE through the key and through another unique index, with the
    # application's recursive_triggers off (the default in most builds): SQLite then
    # deletes the conflicting row without firing delete triggers.
    conn.execute("PRAGMA recursive_triggers = OFF")
    conn.execute("INSERT OR REPLACE INTO users VALUES (3, 'u3@x', 'replaced by key')")
    conn.execute("INSERT OR REPLACE INTO users VALUES (100, 'u4@x', 'took the email of 4')")
    conn.execute("REPLACE INTO uniq_only VALUES ('c1', 111)")
    conn.execute("UPDATE OR REPLACE users SET email = 'u5@x' WHERE id = 6")
    conn.execute("INSERT INTO keyless_configured VALUES (9, 'x9')")
    conn.execute("INSERT INTO keyless VALUES (1, 'dup')")
    conn.execute("UPDATE keyless SET b = 'one of three' WHERE rowid = 2")
    conn.execute("UPDATE keyless_configured SET b = 'changed' WHERE a = 2")
    conn.commit()


async def test_keys(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db)
    seed(conn)
    cfg = make_config([{"name": "app", "path": str(app_db), "keys": {"keyless_configured": ["a"]}}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        mutate(conn)
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    for table in ("composite", "textkey", "nocase", "wr", "users"):
        assert await compare_table(str(app_db), pg_dsn, "app", table) == [], table
    assert await compare_table(str(app_db), pg_dsn, "app", "uniq_only", key=["code"]) == []
    assert await compare_table(str(app_db), pg_dsn, "app", "keyless_configured", key=["a"]) == []
    assert await compare_keyless(str(app_db), pg_dsn, "app", "keyless") == []
    states = await table_states(pg_dsn, "app")
    assert states["keyless"][0] == states["uniq_only"][0] == "streaming"


async def test_a_configured_key_two_rows_share_holds_the_table(app_db, make_config, pg_dsn, tmp_path):
    """[sources.keys] is not a constraint in SQLite: a second row under a key already
    replicated holds the table, naming the key, instead of one of the two rows being
    dropped unseen; with the duplicate gone, the table resumes and ends equal."""
    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE log (code TEXT, v INTEGER); INSERT INTO log VALUES ('a', 1), ('b', 2);")
    cfg = make_config([{"name": "app", "path": str(app_db), "keys": {"log": ["code"]}}],
                      sections={"stream": {"held_table_retry_seconds": 0.5}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO log VALUES ('b', 3)")
        conn.execute("INSERT INTO log VALUES ('c', 4)")
        conn.commit()

        async def held() -> bool:
            return (await table_states(pg_dsn, "app"))["log"][0] == "held"

        await eventually(held, what="log held", daemon=d)
        reason = (await table_states(pg_dsn, "app"))["log"][1]
        assert "[sources.keys] columns (code) are not unique" in reason and "2 rows have the key 'b'" in reason
        conn.execute("DELETE FROM log WHERE code = 'b' AND v = 2")
        conn.commit()
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert (await table_states(pg_dsn, "app"))["log"][0] == "streaming"
    assert await compare_table(str(app_db), pg_dsn, "app", "log", key=["code"]) == []


async def test_a_configured_key_two_rows_share_before_the_load_is_named_and_not_loaded(
        app_db, make_config, pg_dsn, tmp_path):
    """Rows already sharing a [sources.keys] key when the table is first seen: syncd schema
    and syncd init name the key as the stream does, and the daemon holds the table before
    loading it. Before, both called the table fine, and the daemon loaded every row, met
    Postgres's duplicate key error at the end, and loaded the whole table again at each
    retry while it was held."""
    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE log (code TEXT, v INTEGER); CREATE TABLE other (id INTEGER PRIMARY KEY);")
    conn.executemany("INSERT INTO log VALUES (?, ?)", [(f"c{i}", i) for i in range(50)] + [("c7", 99), ("c7", 98)])
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db), "keys": {"log": ["code"]}}],
                      sections={"stream": {"held_table_retry_seconds": 0.5}})
    named = "[sources.keys] columns (code) are not unique in SQLite: 3 rows have the key 'c7'"
    schema = run_cli(cfg, "schema")
    assert f'-- HELD: table "log": its {named}' in schema.stdout, schema.stdout
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        async def held() -> bool:
            try:
                return (await table_states(pg_dsn, "app")).get("log", ("",))[0] == "held"
            except Exception:
                return False  # no bookkeeping yet

        await eventually(held, what="log held", daemon=d)
        assert named in (await table_states(pg_dsn, "app"))["log"][1]
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, settled=("streaming", "held"))
        conn.execute("DELETE FROM log WHERE code = 'c7' AND v > 90")
        conn.commit()
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    loads = [x for x in d.log().splitlines() if "table=log" in x and "event=snapshot_started" in x]
    assert len(loads) == 1, d.log()  # once, after the fix
    assert await compare_table(str(app_db), pg_dsn, "app", "log", key=["code"]) == []


async def test_an_integer_primary_key_declared_desc_is_not_the_rowid(tmp_path, make_config, pg_dsn):
    """`id INTEGER PRIMARY KEY DESC` is, by a quirk SQLite keeps for compatibility, an
    ordinary key with an index of its own, not the rowid: ids and rowids run apart. A
    load that walked the rowid but resumed from the id looped at its second chunk,
    reloading, with the table held on a duplicate key."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY DESC, v TEXT)")
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"v{i}") for i in range(250, 0, -1)])
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"stream": {"snapshot_chunk_rows": 100}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=60)
        conn.execute("UPDATE items SET v = 'changed' WHERE id % 7 = 0")
        conn.execute("DELETE FROM items WHERE id > 240")
        conn.commit()
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=60)
        assert d.stop() == 0
    conn.close()
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


async def test_a_primary_key_holding_nulls_is_keyed_on_the_rowid_when_configured(tmp_path, make_config, pg_dsn):
    """SQLite lets a rowid table's TEXT or REAL PRIMARY KEY hold NULL, in any number of
    rows; Postgres cannot. Such a table is held with a way out that works whatever its
    other columns hold: `[sources.keys] "t" = ["rowid"]` keys it on the rowid, as a table
    without a key, through streaming, VACUUM, the cutover, the way back and the rollback;
    the primary key's uniqueness still holds in Postgres after the switch."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE contacts (email TEXT PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO contacts VALUES (?, ?)", [(None, "anon"), (None, "anon"), ("a@x", "ada")])
    conn.execute("CREATE TABLE numbered (id INTEGER PRIMARY KEY, name TEXT)")
    # the rowid of a table with an INTEGER PRIMARY KEY is that key: naming it is refused, saying so
    r = run_cli(make_config([{"name": "app", "path": str(db), "keys": {"numbered": ["rowid"]}}]), "schema")
    assert """refused 'numbered': [sources.keys] names the rowid, which is its INTEGER PRIMARY KEY "id" """ in r.stdout
    r = run_cli(make_config([{"name": "app", "path": str(db), "keys": {"contacts": ["rowid"]}}]), "schema")
    assert "-- table 'contacts': key _syncd_rowid (rowid ([sources.keys]))" in r.stdout, r.stdout
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, settled=("held", "streaming"))
        assert '[sources.keys] "contacts" = ["rowid"]' in (await table_states(pg_dsn, "app"))["contacts"][1]
        assert d.stop() == 0

    cfg = backup_and_config(make_config, tmp_path, db, sources=[
        {"name": "app", "path": str(db), "keys": {"contacts": ["rowid"]}}])
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO contacts VALUES (NULL, 'anon')")
        conn.execute("UPDATE contacts SET name = 'one of three' WHERE rowid = 2")
        conn.execute("DELETE FROM contacts WHERE rowid = 1")
        conn.execute("REPLACE INTO contacts VALUES ('a@x', 'replaced')")
        conn.execute("VACUUM")  # renumbers the rowids
        conn.execute("INSERT INTO contacts VALUES ('b@x', 'bo')")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        await eventually(lambda: _equal(db, pg_dsn), what="contacts equal", daemon=d)
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_statements(pg_dsn, "INSERT INTO app.contacts (email, name) VALUES (NULL, 'pg'), (NULL, 'pg')",
                            "DELETE FROM app.contacts WHERE ctid = (SELECT min(ctid) FROM app.contacts "
                            "WHERE name = 'pg')")
        try:  # SQLite's primary key, unique in Postgres too: the way back never meets a row it refuses
            await pg_statements(pg_dsn, "INSERT INTO app.contacts (email, name) VALUES ('a@x', 'twice')")
        except Exception as e:
            assert "unique" in str(e).lower(), e
        else:
            raise AssertionError("Postgres took a second 'a@x'")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert await compare_keyless(str(db), pg_dsn, "app", "contacts") == []
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        conn.execute("INSERT INTO contacts VALUES (NULL, 'after')")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await compare_keyless(str(db), pg_dsn, "app", "contacts") == []
        assert d.stop() == 0
    assert (await table_states(pg_dsn, "app"))["contacts"][0] == "streaming"
    assert [n for (n,) in await pg_rows(pg_dsn, "SELECT name FROM app.contacts WHERE email IS NULL ORDER BY name")] \
        == [n for (n,) in conn.execute("SELECT name FROM contacts WHERE email IS NULL ORDER BY name")]
    conn.close()


async def _equal(db, dsn) -> bool:
    return await compare_keyless(str(db), dsn, "app", "contacts") == []


async def test_a_null_key_met_while_streaming_names_the_rowid_as_the_way_out(tmp_path, make_config, pg_dsn):
    """A NULL written later into a rowid table's TEXT PRIMARY KEY holds the table naming
    [sources.keys] "t" = ["rowid"]; with it, the table is loaded again on its rowid and
    every row, the NULL-keyed ones too, reaches Postgres."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("CREATE TABLE accounts (code TEXT PRIMARY KEY, owner TEXT);"
                       "INSERT INTO accounts VALUES ('a1', 'ann');")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.executemany("INSERT INTO accounts VALUES (NULL, ?)", [("bob",), ("bob",)])
        await wait_caught_up(db, pg_dsn, "app", daemon=d, settled=("held",))
        assert '[sources.keys] "accounts" = ["rowid"]' in (await table_states(pg_dsn, "app"))["accounts"][1]
        assert d.stop() == 0
    cfg = make_config([{"name": "app", "path": str(db), "keys": {"accounts": ["rowid"]}}])
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_keyless(str(db), pg_dsn, "app", "accounts") == []


async def held_at_load_and_while_streaming(cfg, db, conn, pg_dsn, tmp_path, insert: str) -> dict:
    """The tables' states once one table is held at its load and `insert` (a NULL key
    written while the other streams) has held the other."""
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, settled=("held", "streaming"))
        conn.execute(insert)
        await wait_caught_up(db, pg_dsn, "app", daemon=d, settled=("held",))
        states = await table_states(pg_dsn, "app")
        assert d.stop() == 0
    return states


async def test_a_null_key_in_a_table_without_rowid_never_names_the_rowid_as_the_way_out(tmp_path, make_config, pg_dsn):
    """A WITHOUT ROWID table keyed in [sources.keys] on a column holding NULLs has no
    rowid to key it on instead: its hold, before the load as while streaming, says to
    give those rows a key, not to set [sources.keys] "t" = ["rowid"] (refused there as
    an unknown column)."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("CREATE TABLE parts (id INTEGER PRIMARY KEY, code TEXT, v TEXT) WITHOUT ROWID;"
                       "CREATE TABLE tools (id INTEGER PRIMARY KEY, code TEXT, v TEXT) WITHOUT ROWID;"
                       "INSERT INTO parts VALUES (1, 'p1', 'a'), (2, NULL, 'b');"
                       "INSERT INTO tools VALUES (1, 't1', 'a');")
    cfg = make_config([{"name": "app", "path": str(db), "keys": {"parts": ["code"], "tools": ["code"]}}])
    states = await held_at_load_and_while_streaming(cfg, db, conn, pg_dsn, tmp_path,
                                                    "INSERT INTO tools VALUES (2, NULL, 'b')")
    for table in ("parts", "tools"):
        state, reason = states[table]
        assert state == "held" and "NULL" in reason and "rowid" not in reason, (table, reason)


async def test_a_null_key_names_the_rowid_by_a_name_no_column_of_the_table_takes(tmp_path, make_config, pg_dsn):
    """A table whose own column is named rowid: [sources.keys] "t" = ["rowid"] would key
    it on that column, not on the rowid. Its hold for a NULL key, before the load as
    while streaming, names the rowid as SQLite still reaches it there (_rowid_), and with
    that the table loads on its rowid, every row included."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("CREATE TABLE notes (title TEXT PRIMARY KEY, rowid INTEGER, body TEXT);"
                       "CREATE TABLE cards (code TEXT PRIMARY KEY, rowid TEXT);"
                       "INSERT INTO notes VALUES ('a', NULL, 'x'), (NULL, NULL, 'y');"
                       "INSERT INTO cards VALUES ('c1', NULL);")
    cfg = make_config([{"name": "app", "path": str(db)}])
    states = await held_at_load_and_while_streaming(cfg, db, conn, pg_dsn, tmp_path,
                                                    "INSERT INTO cards VALUES (NULL, NULL)")
    for table in ("notes", "cards"):
        state, reason = states[table]
        assert state == "held" and f'[sources.keys] "{table}" = ["_rowid_"]' in reason, (table, reason)
    cfg = make_config([{"name": "app", "path": str(db), "keys": {"notes": ["_rowid_"], "cards": ["_rowid_"]}}])
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await pg_rows(pg_dsn, "SELECT count(*) FROM app.notes") == [(2,)]
    assert await pg_rows(pg_dsn, "SELECT count(*) FROM app.cards") == [(2,)]


def test_keys_and_types_set_for_a_table_name_cased_otherwise_apply_as_in_sqlite(tmp_path, make_config):
    """SQLite's table names ignore case (A-Z): [sources.keys] and [sources.columns] set for
    "Orders" are the table orders' settings, not settings of no table, silently ignored
    (the table keyed on its rowid, its column left text)."""
    from tests.support.daemon import run_cli

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE orders (ref TEXT NOT NULL, doc TEXT)")
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db), "keys": {"Orders": ["ref"]},
                        "columns": {"ORDERS": {"doc": "jsonb"}}}])
    r = run_cli(cfg, "schema")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "-- table 'orders': key ref (configured)" in r.stdout, r.stdout
    assert '"doc" jsonb' in r.stdout and "_syncd_rowid" not in r.stdout, r.stdout


async def test_keys_and_types_naming_columns_cased_otherwise_apply_as_in_sqlite(tmp_path, make_config, pg_dsn):
    """SQLite's column names ignore case (A-Z) too: [sources.keys] "orders" = ["REF"] keys
    the table on its column ref, and [sources.columns] "DOC" types doc, where the whole
    table was refused as naming unknown columns; Postgres keeps SQLite's spelling."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE orders (ref TEXT NOT NULL, doc TEXT)")
    conn.execute("""INSERT INTO orders VALUES ('a', '{"n": 1}')""")
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db), "keys": {"orders": ["REF"]},
                        "columns": {"orders": {"DOC": "jsonb"}}}])
    r = run_cli(cfg, "schema")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "-- table 'orders': key ref (configured)" in r.stdout, r.stdout
    assert '"doc" jsonb' in r.stdout and "refused" not in r.stdout, r.stdout
    r = run_cli(cfg, "init")
    assert r.returncode == 0, r.stdout + r.stderr
    cols = await pg_rows(pg_dsn, "SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_schema = 'app' AND table_name = 'orders' ORDER BY ordinal_position")
    assert cols == [("ref", "text"), ("doc", "jsonb")], cols


def test_keys_and_types_set_for_a_table_the_file_does_not_hold_are_named(tmp_path, make_config):
    """A [sources.keys] or [sources.columns] entry for a table the file does not hold (a
    typo, "ordrs") would leave the setting unused without a word. The table may yet appear
    (the application creates it), so nothing is refused: `syncd schema`, `syncd init` and
    the daemon's log (once, not at every recheck) name the setting and the table; once the
    table appears, the setting applies and the line is gone."""
    import time

    from tests.support.daemon import DaemonProcess, wait_for

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE orders (ref TEXT NOT NULL, doc TEXT)")
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(db), "keys": {"ordrs": ["ref"], "Orders": ["ref"]},
                        "columns": {"later": {"doc": "jsonb"}}}])
    keys_line = f"[sources.keys] names table 'ordrs', which {db} does not hold"
    columns_line = f"[sources.columns] names table 'later', which {db} does not hold"
    r = run_cli(cfg, "schema")
    assert r.returncode == 0, r.stdout + r.stderr
    assert keys_line in r.stdout and columns_line in r.stdout, r.stdout
    assert "did you mean 'orders'?" in r.stdout, r.stdout
    assert "'Orders', which" not in r.stdout, r.stdout  # the table orders', A-Z in any case
    r = run_cli(cfg, "init")
    out = r.stdout + r.stderr
    assert keys_line in r.stdout and columns_line in r.stdout, out
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("every table is streaming", 60)
        time.sleep(2)  # several rechecks (held_table_retry_seconds = 0.5)
        lines = d.log().splitlines()
        assert sum(keys_line in ln for ln in lines) == 1 and sum(columns_line in ln for ln in lines) == 1, d.log()
        conn.execute("CREATE TABLE later (id INTEGER PRIMARY KEY, doc TEXT)")
        conn.commit()
        wait_for(lambda: run_cli(cfg, "schema").stdout.count("does not hold") == 1, 60,
                 "the line on 'later' gone once the table exists", d)
        assert '"doc" jsonb' in run_cli(cfg, "schema").stdout
        assert d.stop() == 0
    assert sum(keys_line in ln for ln in d.log().splitlines()) == 1, d.log()
    conn.close()


def test_configured_keys_whose_hashes_meet_are_told_apart_from_keys_two_rows_share(tmp_path):
    """The check before a load keeps the keys' hashes: keys whose hashes meet (Python hashes
    -1 and -2 alike) are not taken for one, and a key two rows do share is named."""
    from syncd.config import SourceSettings
    from syncd.sqlite.introspect import introspect
    from syncd.sqlite.key_identity import audit_collisions

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE versions (host TEXT, v INTEGER, note TEXT)")
    conn.executemany("INSERT INTO versions VALUES (?, ?, 'x')", [(h, v) for h in "abc" for v in (-1, -2, 1)])
    spec = introspect(conn, SourceSettings(name="app", path=str(db), keys={"versions": ["host", "v"]})).tables["versions"]
    assert hash(("a", -1)) == hash(("a", -2))
    assert audit_collisions(conn, spec) is None
    conn.execute("INSERT INTO versions VALUES ('b', -2, 'again')")
    said = audit_collisions(conn, spec)
    assert said is not None and "2 rows have the key" in said and "-2" in said, said
