"""Key identity: two rows SQLite tells apart are never merged into one Postgres row.
A key column without a declared type holds integer 1 and text '1' as two keys; a
`timestamp` override makes two spellings of one instant one key. syncd holds such a
table naming both keys, and resumes once the rows are fixed; 1 becoming 1.0 (one key
to SQLite, two spellings to Postgres) is followed."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_rows, table_states, wait_caught_up


async def wait_state(pg_dsn, table: str, state: str, d) -> tuple[str, str | None]:
    from tests.support.sync import eventually

    async def reached() -> bool:
        return (await table_states(pg_dsn, "app")).get(table, ("", None))[0] == state

    await eventually(reached, 30, f"{table} {state}", d)
    return (await table_states(pg_dsn, "app"))[table]


async def test_integer_and_text_keys_are_never_merged(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE kv (key PRIMARY KEY, value TEXT);"
                       "INSERT INTO kv VALUES ('1', 'text one'), ('a', 'letter');")
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO kv VALUES (1, 'int one')")  # a second row to SQLite
        state, reason = await wait_state(pg_dsn, "kv", "held", d)
        assert "'1' (text) and 1 (integer) as two rows" in reason or "1 (integer) and '1' (text)" in reason
        assert await pg_rows(pg_dsn, "SELECT key, value FROM app.kv ORDER BY key") == [
            ("1", "text one"), ("a", "letter")]  # nothing merged, nothing lost
        conn.execute("DELETE FROM kv WHERE key = 1")  # the integer one goes; the text '1' stays
        await wait_state(pg_dsn, "kv", "streaming", d)
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT key, value FROM app.kv ORDER BY key") == [
            ("1", "text one"), ("a", "letter")]
        assert d.stop() == 0


async def test_a_key_becoming_the_same_number_in_another_class_moves(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE k (id PRIMARY KEY, v TEXT);"  # mixed classes: text in Postgres
                       "INSERT INTO k VALUES (1, 'one'), ('x', 'ex');")
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("UPDATE k SET id = 1.0 WHERE id = 1")  # the same key to SQLite, stored as real now
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, v FROM app.k ORDER BY v") == [("x", "ex"), ("1.0", "one")]
        assert d.stop() == 0


async def test_spellings_of_one_instant_hold_the_table(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE ticks (at TEXT PRIMARY KEY, n INTEGER);"
                       "INSERT INTO ticks VALUES ('2024-01-01 00:00:00', 1), ('2024-01-02 00:00:00', 2);")
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": {"ticks": {"at": "timestamp"}}}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO ticks VALUES ('2024-01-01T00:00:00', 3)")
        conn.execute("INSERT INTO ticks VALUES ('2024-01-01 00:00:00Z', 4)")
        state, reason = await wait_state(pg_dsn, "ticks", "held", d)
        assert "as two rows" in reason and reason.count("'2024-01-01") == 2, reason  # two of the three spellings
        assert len(await pg_rows(pg_dsn, "SELECT * FROM app.ticks")) == 2
        assert d.stop() == 0

    # Before a load, the audit finds them all at once.
    other = tmp_path / "other.db"
    c2 = sqlite3.connect(other, isolation_level=None)
    c2.executescript("CREATE TABLE ticks (at TEXT PRIMARY KEY, n INTEGER);"
                     "INSERT INTO ticks VALUES ('2024-01-01 00:00:00', 1), ('2024-01-01T00:00:00', 2);")
    cfg = make_config([{"name": "other", "path": str(other), "columns": {"ticks": {"at": "timestamp"}}}],
                      name="other.toml")
    with DaemonProcess(cfg, tmp_path / "other.log") as d:
        d.wait_log("audit before load")
        states = await table_states(pg_dsn, "other")
        assert states["ticks"][0] == "held" and "as two rows" in states["ticks"][1]
        assert d.stop() == 0


async def test_a_zero_key_changing_its_sign_leaves_no_ghost(app_db, make_config, pg_dsn, tmp_path):
    """0.0 and -0.0 are one key to SQLite: setting one to the other fires no key change.
    A key column carried as text holds it as SQLite renders it ('0.0' for both), and a
    double precision key takes the sign SQLite now has; `syncd verify` agrees."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE mixed (id PRIMARY KEY, v TEXT);"  # mixed classes: text in Postgres
                       "CREATE TABLE reals (id PRIMARY KEY, v TEXT);"  # reals only: double precision
                       "INSERT INTO mixed VALUES ('x', 'ex'); INSERT INTO reals VALUES (0.5, 'half');")
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        for table in ("mixed", "reals"):
            conn.execute(f'INSERT INTO "{table}" VALUES (?, ?)', (-0.0, "zero"))
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        for sign, v in ((0.0, "now plus"), (-0.0, "now minus")):
            for table in ("mixed", "reals"):
                conn.execute(f'UPDATE "{table}" SET id = ?, v = ? WHERE id = 0', (sign, v))
            await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
            assert await pg_rows(pg_dsn, "SELECT id, v FROM app.mixed ORDER BY id") == [("0.0", v), ("x", "ex")]
            assert await pg_rows(pg_dsn, "SELECT id::text, v FROM app.reals ORDER BY id") == [
                (str(sign).replace(".0", ""), v), ("0.5", "half")]  # '-0' or '0', as SQLite holds it
        assert d.stop() == 0
    out = run_cli(cfg, "verify")
    assert out.returncode == 0, out.stdout
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        for table in ("mixed", "reals"):
            conn.execute(f'DELETE FROM "{table}" WHERE id = 0')
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, v FROM app.mixed") == [("x", "ex")]
        assert await pg_rows(pg_dsn, "SELECT id, v FROM app.reals") == [(0.5, "half")]
        assert d.stop() == 0


async def test_a_real_key_an_older_syncd_wrote_in_pythons_spelling_leaves_no_ghost(app_db, make_config, pg_dsn,
                                                                                    tmp_path):
    """A key column carried as text holds a REAL as SQLite's text for it ('1.0e-05'); an
    older syncd wrote Python's ('1e-05'). When such a row changes or goes, the row under
    the older text goes too, unless SQLite holds that very text as a key of its own."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE k (id PRIMARY KEY, v TEXT);"  # mixed classes: text in Postgres
                       "INSERT INTO k VALUES ('x', 'ex'), (1e-05, 'small'), (1e16, 'big'), ('1e+16', 'text big');")
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, v FROM app.k ORDER BY v") == [
            ("1.0e+16", "big"), ("x", "ex"), ("1.0e-05", "small"), ("1e+16", "text big")]
        # as an older syncd left them (the text row '1e+16' is SQLite's own, and stays)
        await pg_rows(pg_dsn, "UPDATE app.k SET id = '1e-05' WHERE id = '1.0e-05'")
        await pg_rows(pg_dsn, "DELETE FROM app.k WHERE id = '1.0e+16'")
        conn.execute("UPDATE k SET v = 'small, changed' WHERE id = 1e-05")
        conn.execute("UPDATE k SET v = 'big, changed' WHERE id = 1e16 AND typeof(id) = 'real'")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, v FROM app.k ORDER BY v") == [
            ("1.0e+16", "big, changed"), ("x", "ex"), ("1.0e-05", "small, changed"), ("1e+16", "text big")]
        await pg_rows(pg_dsn, "UPDATE app.k SET id = '1e-05' WHERE id = '1.0e-05'")
        conn.execute("DELETE FROM k WHERE id = 1e-05")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id FROM app.k ORDER BY id") == [("1.0e+16",), ("1e+16",), ("x",)]
        assert d.stop() == 0
    assert run_cli(cfg, "verify").returncode == 0


async def test_a_key_deleted_and_written_again_in_another_class_in_one_batch(app_db, make_config, pg_dsn, tmp_path):
    """Integer 1 deleted and text '1' inserted (one key to Postgres) reach syncd in one
    batch: the row goes to Postgres once, as SQLite now holds it, and the table streams on."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE kv (key PRIMARY KEY, value TEXT);"  # mixed classes: text in Postgres
                       "INSERT INTO kv VALUES (1, 'int one'), ('a', 'letter');")
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("BEGIN")
        conn.execute("DELETE FROM kv WHERE key = 1")
        conn.execute("INSERT INTO kv VALUES ('1', 'text one')")
        conn.execute("INSERT INTO kv VALUES ('b', 'after it')")
        conn.execute("COMMIT")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert (await table_states(pg_dsn, "app"))["kv"][0] == "streaming"
        assert await pg_rows(pg_dsn, "SELECT key, value FROM app.kv ORDER BY key") == [
            ("1", "text one"), ("a", "letter"), ("b", "after it")]
        assert d.stop() == 0
    assert run_cli(cfg, "verify").returncode == 0


async def test_an_instant_with_a_fraction_is_not_the_whole_second_before_it(app_db, make_config, pg_dsn, tmp_path):
    """'10:00:00.5' and '10:00:00' are two instants: deleting the first deletes it in
    Postgres (it was taken for a spelling of the second, which stayed, and the row was
    left behind for good, `syncd verify --repair` replaying it to no effect), and writing
    one next to the other holds nothing."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE ticks (at TEXT PRIMARY KEY, n INTEGER);"
                       "INSERT INTO ticks VALUES ('2024-01-01 10:00:00', 1), ('2024-01-01 10:00:00.500', 2);")
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": {"ticks": {"at": "timestamp"}}}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("DELETE FROM ticks WHERE at = '2024-01-01 10:00:00.500'")
        conn.execute("INSERT INTO ticks VALUES ('2024-01-02 10:00:00', 3), ('2024-01-02 10:00:00.250', 4)")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert (await table_states(pg_dsn, "app"))["ticks"][0] == "streaming"
        assert await pg_rows(pg_dsn, "SELECT n FROM app.ticks ORDER BY at") == [(1,), (3,), (4,)]
        assert d.stop() == 0
    out = run_cli(cfg, "verify")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("pgtype, first, second", [
    ("date", "2024-02-01 00:00:00", "2024-02-01"),  # the bare day, as a date
    ("timestamp", "2024-01-01 10:00:00.5", "2024-01-01 10:00:00.500"),  # more fraction digits
    ("timestamp", "2024-01-01 10:00", "2024-01-01 10:00:00"),  # its zero seconds
    ("timestamptz", "2024-01-02", "2024-01-02T00:00:00Z"),  # the bare day at midnight, as an instant
    ("timestamp", "2024-01-01T10:00:00.0000000Z", "2024-01-01 10:00:00"),  # .NET's round trip: seven digits
])
async def test_an_instant_written_again_in_another_usual_spelling_holds_the_table(app_db, make_config, pg_dsn,
                                                                                 tmp_path, pgtype, first, second):
    """Two usual spellings of one instant (or day) under a date or timestamp override: the
    second written next to the first holds the table; it was upserted over the first row
    in Postgres, one of two SQLite rows lost in silence."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("CREATE TABLE ticks (at TEXT PRIMARY KEY, n INTEGER)")
    conn.execute("INSERT INTO ticks VALUES (?, 1)", (first,))
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": {"ticks": {"at": pgtype}}}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO ticks VALUES (?, 2)", (second,))
        _, reason = await wait_state(pg_dsn, "ticks", "held", d)
        assert f"'{second}' (text) and '{first}' (text) as two rows" in reason, reason
        assert await pg_rows(pg_dsn, "SELECT n FROM app.ticks") == [(1,)]  # nothing merged
        assert d.stop() == 0


@pytest.mark.parametrize("pgtype, spelling, usual", [
    ("timestamp", " 2024-01-01 10:00:00", "2024-01-01 10:00:00"),  # surrounding whitespace
    ("timestamp", "2024-01-01 10:00:00+0000", "2024-01-01 10:00:00"),  # an offset of zero spelled otherwise
    ("timestamptz", "2024-01-01 10:00:00-00:00", "2024-01-01 10:00:00Z"),
    ("timestamp", "2024-01-01 11:00:00+01:00", "2024-01-01 10:00:00"),  # the instant at another offset
    ("timestamp", "2024-01-01 10", "2024-01-01 10:00:00"),  # the hour alone
    ("timestamp", "2024-01-01t10:00:00z", "2024-01-01 10:00:00"),  # lower case, or another separator
    ("timestamp", "2024-01-01 10:00:00,5", "2024-01-01 10:00:00.5"),  # a comma as decimal sign
    ("timestamp", "20240101T100000", "2024-01-01 10:00:00"),  # ISO 8601's basic format (and week dates)
    ("date", "2024-W01-1", "2024-01-01"),
    ("date", " 2024-01-01 ", "2024-01-01"),
    ("date", "0999-01-01T00:00:00", "0999-01-01"),  # a year before 1000 (it was looked up as '999-01-01')
])
async def test_a_key_in_a_spelling_syncd_cannot_look_up_holds_the_table(app_db, make_config, pg_dsn, tmp_path,
                                                                       pgtype, spelling, usual):
    """The converter reads more spellings of an instant than syncd can look up in SQLite
    (any whitespace, any offset, any separator): with such a key in SQLite, writing the
    usual spelling next to it upserted it over that row in Postgres while the table kept
    streaming, one of two SQLite rows lost in silence. A key so spelled holds its
    table, named, when it is written; before a load, the audit holds it too."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE ticks (at TEXT PRIMARY KEY, n INTEGER);"
                       "INSERT INTO ticks VALUES ('2023-06-01', 0);")
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": {"ticks": {"at": pgtype}}}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO ticks VALUES (?, 1)", (spelling,))
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, settled=("streaming", "held"))
        conn.execute("INSERT INTO ticks VALUES (?, 2)", (usual,))  # in a batch of its own
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, settled=("streaming", "held"))
        state, reason = (await table_states(pg_dsn, "app"))["ticks"]
        assert state == "held" and 'table "ticks"' in reason and repr(spelling) in reason, (state, reason)
        # Nothing merged: the first held (or, a spelling looked up, kept), the second not written over it.
        assert await pg_rows(pg_dsn, "SELECT n FROM app.ticks ORDER BY n") in ([(0,)], [(0,), (1,)])
        conn.execute("DELETE FROM ticks WHERE n = 1")
        await wait_state(pg_dsn, "ticks", "streaming", d)
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT n FROM app.ticks ORDER BY n") == [(0,), (2,)]
        assert d.stop() == 0


async def test_a_key_in_a_spelling_syncd_cannot_look_up_is_held_before_a_load(app_db, make_config, pg_dsn, tmp_path):
    """Loaded, the key ' 2024-01-01 10:00:00' was overwritten in Postgres by a later
    '2024-01-01 10:00:00', the table streaming on: the audit before a load holds it."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE ticks (at TEXT PRIMARY KEY, n INTEGER);"
                       "INSERT INTO ticks VALUES (' 2024-01-01 10:00:00', 1);")
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": {"ticks": {"at": "timestamp"}}}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, settled=("streaming", "held"))
        state, reason = (await table_states(pg_dsn, "app"))["ticks"]
        assert state == "held" and "audit before load" in reason and "' 2024-01-01 10:00:00'" in reason, reason
        assert d.stop() == 0


def test_the_lookup_of_a_keys_other_spellings_seeks_on_every_key_column(tmp_path):
    """A date key column after another key column (PRIMARY KEY (dev, at)): its other
    spellings are looked up by seeking on both columns in the key's index, never by reading
    every row of the first column's value (a lookup per written row)."""
    from syncd.config import SourceSettings
    from syncd.sqlite import key_identity
    from syncd.sqlite.introspect import introspect

    conn = sqlite3.connect(tmp_path / "app.db")
    conn.execute("CREATE TABLE u (dev TEXT, at TEXT, v INTEGER, PRIMARY KEY (dev, at))")
    spec = introspect(conn, SourceSettings(name="app", path=str(tmp_path / "app.db"),
                                           columns={"u": {"at": "timestamp"}})).tables["u"]
    lookups: list[str] = []
    conn.set_trace_callback(lambda sql: lookups.append(sql) if sql.startswith("SELECT") else None)
    assert key_identity.stream_collision(conn, spec, [("d", "2024-01-02 10:00:00", 2)]) is None
    assert key_identity.survivors(conn, spec, [("d", "2024-01-02 10:00:00")]) == ([], [("d", "2024-01-02 10:00:00")])
    conn.set_trace_callback(None)
    plans = [row[3] for sql in lookups for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
    conn.close()
    assert lookups and all("(dev=? AND at=?)" in p for p in plans), plans


async def test_a_json_type_on_a_key_column_is_refused(app_db, make_config, pg_dsn, tmp_path):
    """jsonb holds '{"a":1}' and '{"a": 1}' (and keys in another order, or twice) as one
    value: a key column of that type would merge rows SQLite tells apart, in silence; json
    has no equality in Postgres at all. Either type on a key column is refused, naming the
    column and the way out; the same type on a column outside the key is carried."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE docs (doc TEXT PRIMARY KEY, n INTEGER);"
                       "CREATE TABLE raw (doc TEXT PRIMARY KEY, n INTEGER);"
                       "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);"
                       """INSERT INTO docs VALUES ('{"a":1}', 1); INSERT INTO raw VALUES ('{"a":1}', 1);"""
                       """INSERT INTO notes VALUES (1, '{"b":2}');""")
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": {
        "docs": {"doc": "jsonb"}, "raw": {"doc": "json"}, "notes": {"body": "jsonb"}}}])
    r = run_cli(cfg, "schema")
    assert """refused 'docs': key column "doc" is jsonb (configured override (jsonb))""" in r.stdout, r.stdout
    assert """refused 'raw': key column "doc" is json (configured override (json))""" in r.stdout, r.stdout
    assert "refused 'notes'" not in r.stdout
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("""INSERT INTO docs VALUES ('{"a": 1}', 2)""")  # another spelling of the same JSON value
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        states = await table_states(pg_dsn, "app")
        assert states["docs"][0] == "refused" and '[sources.columns]' in states["docs"][1], states
        assert states["raw"][0] == "refused" and states["notes"][0] == "streaming", states
        assert await pg_rows(pg_dsn, "SELECT body::text FROM app.notes") == [('{"b": 2}',)]
        assert d.stop() == 0


async def test_a_key_column_jsonb_in_postgres_is_refused_not_kept(app_db, make_config, pg_dsn, tmp_path):
    """A key column without a declared type keeps the type its Postgres column has: made
    jsonb there (by the application after a cutover, say), it would merge two spellings
    of one JSON value in silence. It is refused as a jsonb override is."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""CREATE TABLE docs (doc PRIMARY KEY, n INTEGER); INSERT INTO docs VALUES ('{"a":1}', 1);""")
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    pg = await asyncpg.connect(pg_dsn)
    try:  # syncd's key is COLLATE "C", which jsonb takes no part of: the key made anew
        pk = await pg.fetchval("SELECT conname FROM pg_constraint WHERE conrelid = 'app.docs'::regclass "
                               "AND contype = 'p'")
        await pg.execute(f'ALTER TABLE app.docs DROP CONSTRAINT "{pk}"')
        for (idx,) in await pg.fetch("SELECT indexrelid::regclass::text FROM pg_index "
                                     "WHERE indrelid = 'app.docs'::regclass"):
            await pg.execute(f"DROP INDEX {idx}")
        await pg.execute("ALTER TABLE app.docs ALTER doc TYPE jsonb USING doc::jsonb, ADD PRIMARY KEY (doc)")
    finally:
        await pg.close()
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("""INSERT INTO docs VALUES ('{"a": 1}', 2)""")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        state, reason = (await table_states(pg_dsn, "app"))["docs"]
        assert state == "refused", reason
        assert 'key column "doc" is jsonb (type kept from the existing Postgres column)' in reason, reason
        assert await pg_rows(pg_dsn, "SELECT doc::text, n FROM app.docs") == [('{"a": 1}', 1)]  # not overwritten
        assert d.stop() == 0


async def test_a_real_epoch_key_finer_than_a_microsecond_streams(app_db, make_config, pg_dsn, tmp_path):
    """A REAL key of time.time() under a timestamp override (finer than Postgres's
    microsecond): its instant's other spellings are looked up as an epoch's are, and the
    table streams; it is not held as a spelling syncd cannot look up."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("CREATE TABLE samples (at REAL PRIMARY KEY, v INTEGER)")
    conn.execute("INSERT INTO samples VALUES (1796621448.8040054, 1)")
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": {"samples": {"at": "timestamp"}}}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO samples VALUES (1796621449.2500071, 2)")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert (await table_states(pg_dsn, "app"))["samples"][0] == "streaming"
        assert await pg_rows(pg_dsn, "SELECT v FROM app.samples ORDER BY at") == [(1,), (2,)]
        assert d.stop() == 0


@pytest.mark.parametrize("second", [1796621448.8040047, "2026-12-07 05:30:48.804005"])
async def test_a_real_epoch_key_finer_than_a_microsecond_is_never_merged(app_db, make_config, pg_dsn, tmp_path,
                                                                        second):
    """A REAL key of time.time() under a timestamp override, and another key Postgres
    rounds to the same microsecond (another real, the ISO text of that microsecond): the
    second written next to the first holds the table, naming both keys. It was upserted
    over the first row in Postgres, one of two SQLite rows lost in silence."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("CREATE TABLE samples (at REAL PRIMARY KEY, v INTEGER)")
    conn.execute("INSERT INTO samples VALUES (1796621448.8040051, 1)")
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": {"samples": {"at": "timestamp"}}}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO samples VALUES (?, 2)", (second,))
        _, reason = await wait_state(pg_dsn, "samples", "held", d)
        assert "1796621448.8040051 (real)" in reason and "as two rows" in reason, reason
        assert await pg_rows(pg_dsn, "SELECT v FROM app.samples") == [(1,)]  # nothing merged
        conn.execute("DELETE FROM samples WHERE v = 1")  # fixed in SQLite: the table resumes
        await wait_state(pg_dsn, "samples", "streaming", d)
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT v FROM app.samples") == [(2,)]
        assert d.stop() == 0
