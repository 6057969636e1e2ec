"""`syncd verify --repair`: Postgres is made to match SQLite through the normal apply
path, by the running daemon or, without one, by syncd's pipeline run in-process;
never with stale values, even while the application writes to the same rows."""

from __future__ import annotations

import sqlite3

from syncd.sqlite.capture import OP_DELETE, OP_UPDATE
from syncd.verify.repair import changelog_entries
from syncd.verify.result import Difference
from tests.support.app import Writer, create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.sync import changelog_max, table_states, wait_caught_up
from tests.support.verifying import pg_execute, pg_fetch, sync_and_stop, tables, verify, verify_json, verify_section

PLANT = """
    UPDATE app.items SET n = -n, v = 'tampered' WHERE id IN (4100, 4101);
    DELETE FROM app.items WHERE id IN (4200, 4201);
    INSERT INTO app.items (id, v) VALUES (99999, 'extra'), (99998, 'extra');
"""


async def test_repair_through_the_running_daemon_while_the_application_writes(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=5000, journal="wal")
    cfg = make_config([{"name": "app", "path": str(db)}], extra=verify_section())
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        writer = Writer(db, seconds=120, seed=21, ids=1000, rate=300)
        start = changelog_max(db)
        wait_for(lambda: changelog_max(db) > start + 100, 30, "the writer")
        # Rows nobody touches, and rows the application keeps changing: a repair that
        # wrote the values it read would put stale ones back.
        await pg_execute(pg_dsn, PLANT + "UPDATE app.items SET v = 'stale' WHERE id BETWEEN 1 AND 300")
        out = verify(cfg, "--repair", "--wait", "20")
        assert writer.proc.poll() is None, "the writer stopped before the repair finished: nothing was tested"
        assert out.returncode == 0, out.stdout + out.stderr
        assert 'app: "items" equal' in out.stdout and "after repairing" in out.stdout
        assert "applied by the running daemon, syncd" in out.stdout
        writer.proc.terminate()
        writer.result()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []
    runs = await pg_fetch(pg_dsn, "SELECT missing, extra, different, pending, repaired FROM syncd.verify_runs "
                                  "ORDER BY id")
    first, after = runs[0], runs[-1]
    assert first["missing"] == 2 and first["extra"] == 2 and first["different"] >= 2
    assert first["repaired"] == first["missing"] + first["extra"] + first["different"] + first["pending"]
    assert (after["missing"], after["extra"], after["different"], after["repaired"]) == (0, 0, 0, 0)


async def test_repair_without_a_daemon_runs_the_pipeline_here(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT, n INTEGER, r REAL, b BLOB);
        CREATE TABLE tags (name TEXT PRIMARY KEY COLLATE NOCASE, note TEXT);
    """)
    conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)", [(i, f"v{i}", i, i / 3, b"\x00") for i in range(1, 5001)])
    conn.executemany("INSERT INTO tags VALUES (?, ?)", [("Alpha", "a"), ("beta", "b"), ("Gamma", None)])
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_execute(pg_dsn, PLANT + """
        UPDATE app.tags SET note = 'NULL' WHERE name = 'Gamma';
        DELETE FROM app.tags WHERE name = 'beta';
        INSERT INTO app.tags VALUES ('ALPHA', 'extra: same key for SQLite, not for Postgres');
    """)
    rc, doc = verify_json(cfg, "--wait", "2")
    assert rc == 1 and tables(doc)["items"]["missing"] == 2 and tables(doc)["tags"]["extra"] == 1

    out = verify(cfg, "--repair", "--wait", "20")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "applied by syncd's pipeline run in this process (no daemon was running the source)" in out.stdout
    for table in ("items", "tags"):
        assert await compare_table(str(app_db), pg_dsn, "app", table) == [], table
    assert verify(cfg).returncode == 0
    held = await pg_fetch(pg_dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                  "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    assert held[0][0] == 0  # the pipeline let go of the source
    with DaemonProcess(cfg, tmp_path / "after.log") as d:  # and a daemon can take it over
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0


async def test_tables_not_streaming_are_not_repaired(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO items VALUES (1, 'a'), (2, 'b');
        CREATE TABLE flags (id INTEGER PRIMARY KEY, ok BOOLEAN);
        INSERT INTO flags VALUES (1, 0), (2, 7);
    """)
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_execute(pg_dsn, "UPDATE app.items SET v = 'x' WHERE id = 1")
    out = verify(cfg, "--repair", "--wait", "5")
    assert out.returncode == 1
    assert 'app: "items" equal' in out.stdout
    assert 'app: "flags" not comparable (held)' in out.stdout
    assert (await table_states(pg_dsn, "app"))["flags"][0] == "held"


async def test_a_repair_does_not_call_tables_it_could_not_compare_nothing_to_repair(app_db, make_config, pg_dsn,
                                                                                      tmp_path):
    """A table held by a value Postgres refuses, and one whose Postgres table was dropped
    by hand: neither was compared, so `--repair` repaired nothing there and says so,
    not that there was nothing to repair."""
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO items VALUES (1, 'a'), (2, 'b');
        CREATE TABLE flags (id INTEGER PRIMARY KEY, ok BOOLEAN);
        INSERT INTO flags VALUES (1, 0), (2, 7);
    """)
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_execute(pg_dsn, "DROP TABLE app.items")
    out = verify(cfg, "--repair", "--wait", "5")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "nothing to repair" not in out.stdout, out.stdout
    assert '"flags" not repaired: it was not compared: audit before load: ' in out.stdout, out.stdout
    assert '"items" not repaired: it was not compared: the table does not exist in Postgres' in out.stdout, out.stdout


def test_only_what_a_replay_can_fix_is_queued():
    diffs = [
        Difference("different", (1,), ("v",), raw_key=(1,)),
        Difference("missing", ("k",), raw_key=("k",)),
        Difference("extra", (9,), raw_key=(9,)),
        Difference("pending", (3,), raw_key=(3,)),
        Difference("extra", ("2024-01-31",), raw_key=None),  # SQLite form unknown (a date key)
        Difference("missing", (None,), note="a row whose key is NULL: Postgres cannot hold it", raw_key=(None,)),
        Difference("different", (5,), ("n",), raw_key=(5,),
                   note='column "n": text \'x\' does not fit bigint; the stream holds the table until the row is fixed'),
    ]
    entries, skipped = changelog_entries(diffs)
    assert entries == [(OP_UPDATE, (1,)), (OP_UPDATE, ("k",)), (OP_DELETE, (9,)), (OP_UPDATE, (3,))]
    assert [d.key for d in skipped] == [("2024-01-31",), (None,), (5,)]


async def test_a_postgres_key_sqlite_cannot_hold_is_named_as_postgres_holds_it(app_db, make_config, pg_dsn, tmp_path):
    """A row only Postgres has, under a numeric key no SQLite value converts to (more digits
    than a REAL keeps): it is listed under its own key, not under the nearest REAL (a key
    SQLite does hold), and a repair, which replays SQLite's keys, says it cannot fix it
    instead of replaying that other key and counting the row as repaired."""
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE prices (k NUMERIC PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO prices VALUES (?, ?)", [(1.5, "a"), (2, "b"), (2.25, "c")])
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_execute(pg_dsn, "INSERT INTO app.prices VALUES (1.5000000000000000001, 'extra')")

    rc, doc = verify_json(cfg, "--wait", "2")
    assert rc == 1
    listed = tables(doc)["prices"]["differences"]
    assert [(d["kind"], d["key"]) for d in listed] == [("extra", ["1.5000000000000000001"])], listed

    out = verify(cfg, "--repair", "--wait", "2")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "replayed" not in out.stdout and "not repaired" in out.stdout, out.stdout
    assert 'app: "prices" DIFFERS' in out.stdout and "after repairing" not in out.stdout, out.stdout
    assert "delete the row in Postgres" in out.stdout, out.stdout
    rows = await pg_fetch(pg_dsn, "SELECT k::text, v FROM app.prices ORDER BY k")
    assert [tuple(r) for r in rows] == [("1.5", "a"), ("1.5000000000000000001", "extra"), ("2", "b"),
                                        ("2.25", "c")]


async def test_a_nan_key_only_postgres_holds_is_not_replayed_as_if_sqlite_could_hold_it(app_db, make_config, pg_dsn,
                                                                                      tmp_path):
    """SQLite stores NaN as NULL: a Postgres row keyed by NaN in a REAL key (alone or in a
    composite key) is one no SQLite row can be. The repair, which replays SQLite's keys, says
    it cannot fix it instead of replaying a key SQLite records as NULL (which replays nothing)
    and counting the row as replayed."""
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE readings (k REAL PRIMARY KEY, v TEXT);
        CREATE TABLE points (a TEXT, r REAL, v INTEGER, PRIMARY KEY (a, r)) WITHOUT ROWID;
    """)
    conn.executemany("INSERT INTO readings VALUES (?, ?)", [(0.5, "a"), (1.5, "b")])
    conn.executemany("INSERT INTO points VALUES (?, ?, ?)", [("a", 1.5, 1), ("b", 2.5, 2)])
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_execute(pg_dsn, "INSERT INTO app.readings VALUES ('NaN', 'n'); INSERT INTO app.points VALUES ('c', 'NaN', 7)")

    out = verify(cfg, "--repair", "--wait", "2")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "replayed" not in out.stdout, out.stdout
    assert out.stdout.count("not repaired") == 2, out.stdout
    assert 'app: "readings" DIFFERS' in out.stdout and 'app: "points" DIFFERS' in out.stdout, out.stdout
    # The way out, not only that the repair could not take it.
    repair_line = next(line for line in out.stdout.splitlines() if line.startswith("app: repair: "))
    assert repair_line.count("delete the row in Postgres") == 2, repair_line


async def test_the_repair_note_gives_why_a_table_was_not_compared_and_leaves_out_excluded_tables(
        app_db, make_config, pg_dsn, tmp_path):
    """A table copied before and excluded by the configuration now is not the repair's
    (not replicated by choice): the note leaves it out. A table the repair passes over
    because it could not be compared is named with why, not with its state as if that were
    the reason ("not compared (streaming)")."""
    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT);"
                       "CREATE TABLE secrets (id INTEGER PRIMARY KEY, v TEXT);"
                       "INSERT INTO items VALUES (1, 'a'); INSERT INTO secrets VALUES (1, 's');")
    conn.commit()
    source = {"name": "app", "path": str(app_db)}
    cfg = make_config([source], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, v TEXT)")  # no daemon has taken it up
    conn.commit()
    conn.close()
    await pg_execute(pg_dsn, "UPDATE app.items SET v = 'tampered' WHERE id = 1")
    cfg = make_config([{**source, "exclude": ["secrets"]}], extra=verify_section())
    out = verify(cfg, "--repair")
    [note] = [x for x in out.stdout.splitlines() if x.startswith("app: repair: ")]
    assert "secrets" not in note, out.stdout
    assert '"notes" not repaired: it was not compared: ' in note and "(not registered)" not in note, note
    assert 'app: "items" equal' in out.stdout and "after repairing 1 row(s)" in out.stdout, out.stdout


async def test_a_replay_queued_when_no_stream_can_connect_is_said_queued_not_hidden_behind_an_error(
        tmp_path, make_config, pg_dsn):
    """No daemon runs, and syncd's role may hold one connection only (its CONNECTION LIMIT,
    taken by the check itself): the replay is queued in the SQLite file, and the repair
    says so (the rows queued, not applied, and why), beside each table's differences; it
    said only "ERROR" with the connection's refusal, hiding the changes that wait."""
    import secrets

    db = tmp_path / "app.db"
    create_items(db, rows=20, journal="wal")
    role = f"syncd_one_conn_{secrets.token_hex(4)}"
    database = pg_dsn.rsplit("/", 1)[1]
    await pg_execute(pg_dsn, f'CREATE ROLE {role} LOGIN; ALTER DATABASE "{database}" OWNER TO {role}')
    try:
        cfg = make_config([{"name": "app", "path": str(db)}],
                          sections={"postgres": {"dsn": pg_dsn.replace("postgres@", f"{role}@")}})
        await sync_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
        await pg_execute(pg_dsn, f"ALTER ROLE {role} CONNECTION LIMIT 1; "
                                 "UPDATE app.items SET v = 'tampered' WHERE id = 3")
        queued = changelog_max(db)
        out = verify(cfg, "--repair", "--wait", "1")
    finally:
        await pg_execute(pg_dsn, f'ALTER DATABASE "{database}" OWNER TO postgres; DROP OWNED BY {role} CASCADE; '
                                 f"DROP ROLE {role}")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "ERROR" not in out.stdout and "Traceback" not in out.stderr, out.stdout + out.stderr
    assert 'app: "items"' in out.stdout and "1 different" in out.stdout, out.stdout
    line = next(x for x in out.stdout.splitlines() if x.startswith("app: repair: "))
    assert "1 row(s) queued for replay but not applied" in line and "too many connections" in line, line
    assert changelog_max(db) == queued + 1  # waiting in the file for the stream
