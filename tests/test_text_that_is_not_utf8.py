"""SQLite stores whatever bytes the application hands it as TEXT; Postgres takes only
valid UTF-8. Such a value holds its table, and the hold names the table, the key and
the column, at the load as in the stream, so the row can be found and fixed."""

from __future__ import annotations

import json
import sqlite3

import asyncpg

from syncd.sqlite.hold import FIRST_ROWS
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.ports import free_port
from tests.support.sync import eventually, pg_rows, pg_statements, table_states, wait_caught_up
from tests.support.verifying import found, sync_and_stop, tables, verify, verify_json
from tests.support.way_back import backup_and_config, cut_over, wait_back


async def test_the_hold_names_the_column_of_text_that_is_not_utf8(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT, body TEXT)")
    conn.execute("INSERT INTO notes VALUES (1, 'fine', 'fine'), (2, 'fine', CAST(x'61ff62' AS TEXT))")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        async def reason() -> str | None:
            try:
                states = await table_states(pg_dsn, "app")
            except asyncpg.UndefinedTableError:  # syncd has not set the source up yet
                return None
            state, why = states.get("notes", (None, None))
            return why if state == "held" else None

        await eventually(reason, 60, "notes held at its load", d)
        why = await reason()
        assert 'table "notes" key 2' in why and 'column "body"' in why and "not valid UTF-8" in why, why

        conn.execute("UPDATE notes SET body = 'fixed' WHERE id = 2")

        async def loaded() -> bool:
            return await pg_rows(pg_dsn, "SELECT count(*) FROM app.notes") == [(2,)]

        await eventually(loaded, 60, "notes loaded once fixed", d)
        conn.execute("INSERT INTO notes VALUES (3, CAST(x'ff' AS TEXT), 'fine')")
        await eventually(reason, 60, "notes held in the stream", d)
        why = await reason()
        assert 'table "notes" key 3' in why and 'column "title"' in why and "not valid UTF-8" in why, why
        assert d.stop() == 0
    conn.close()


async def test_verify_names_text_that_is_not_utf8_written_past_capture(tmp_path, make_config, pg_dsn):
    """Text SQLite holds that no capture trigger saw (its changelog entry lost) and that is
    not UTF-8: `syncd verify` reports the row by key and column, and says why, instead of
    failing the whole table's check."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT, body TEXT)")
    conn.execute("CREATE TABLE tags (name TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID")
    conn.execute("CREATE TABLE labels (name TEXT PRIMARY KEY COLLATE NOCASE, v TEXT)")  # no index in byte order
    conn.executemany("INSERT INTO labels VALUES (?, ?)", [(f"label{i:03d}", "v") for i in range(300)])
    conn.executemany("INSERT INTO notes VALUES (?, ?, ?)", [(i, f"t{i}", f"b{i}") for i in range(1, 51)])
    conn.executemany("INSERT INTO tags VALUES (?, ?)", [(f"tag{i:02d}", i) for i in range(1, 51)])
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0, "chunk_rows": 64}})
    await sync_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    # The daemon stopped, rows change and their changelog entries are lost.
    conn.execute("BEGIN")
    conn.execute("UPDATE notes SET body = CAST(x'61ff62' AS TEXT) WHERE id = 7")
    conn.execute("UPDATE notes SET title = 'changed' WHERE id = 9")
    conn.execute("INSERT INTO tags VALUES (CAST(x'74ff' AS TEXT), 99)")
    conn.execute("UPDATE labels SET v = CAST(x'76ff' AS TEXT) WHERE name = 'label150'")
    (applied,), = await pg_rows(pg_dsn, "SELECT applied_seq FROM syncd.sources WHERE source = 'app'")
    conn.execute("DELETE FROM _syncd_changelog WHERE seq > ?", (applied,))
    conn.execute("COMMIT")
    conn.close()

    rc, doc = verify_json(cfg, "--wait", "2")
    got = tables(doc)
    assert rc == 1, json.dumps(doc)[:3000]
    assert got["notes"]["error"] is None and got["tags"]["error"] is None, (got["notes"]["error"], got["tags"]["error"])
    assert found(doc, "notes") == {("different", (7,), ("body",)), ("different", (9,), ("title",))}
    note = next(d["note"] for d in got["notes"]["differences"] if d["key"] == [7])
    assert note is not None and "not valid UTF-8" in note and '"body"' in note, note
    assert (got["tags"]["missing"], got["tags"]["extra"], got["tags"]["different"]) == (1, 0, 0)
    assert found(doc, "labels") == {("different", ("label150",), ("v",))}
    assert "not valid UTF-8" in (got["tags"]["differences"][0]["note"] or ""), got["tags"]["differences"]
    out = verify(cfg, "--wait", "2")
    assert out.returncode == 1, out.stdout + out.stderr
    assert """app: "notes" different: key 7: column "body" (column "body": text 'a\\xffb' does not fit""" \
        in out.stdout, out.stdout
    assert """app: "tags" missing in Postgres: key 't\\xff'""" in out.stdout, out.stdout
    assert 'app: "tags" missing in Postgres: key ' in out.stdout and "Traceback" not in out.stderr, out.stdout + out.stderr
    # The key's bytes, where JSON (and Postgres's json, which keeps each run's differences) holds no such text.
    assert got["tags"]["differences"][0]["key"] == [{"text_bytes": "74ff"}], got["tags"]["differences"]
    status = run_cli(cfg, "status")
    assert "Postgres unreachable" not in status.stdout and '"tags": 1 row(s) differed' in status.stdout, status.stdout
    report = run_cli(cfg, "report")
    assert """missing ({"text_bytes": "74ff"})""" in report.stdout, report.stdout


async def test_a_key_that_is_not_utf8_deleted_in_sqlite_lets_its_table_resume(tmp_path, make_config, pg_dsn):
    """A row whose key is text that is not UTF-8 holds its table: it never reached
    Postgres. Once the application deletes it, there is nothing to delete in Postgres,
    and the table resumes with its queued changes."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE tags (name TEXT PRIMARY KEY, n INTEGER)")
    conn.execute("INSERT INTO tags VALUES ('fine', 1)")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO tags VALUES (CAST(x'74ff' AS TEXT), 2)")

        async def held() -> bool:
            return (await table_states(pg_dsn, "app"))["tags"][0] == "held"

        await eventually(held, 30, "tags held", d)
        conn.execute("UPDATE tags SET n = 10 WHERE name = 'fine'")  # queued behind the row
        conn.execute("DELETE FROM tags WHERE n = 2")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT name, n FROM app.tags") == [("fine", 10)]
        assert d.stop() == 0
    conn.close()
    assert await compare_table(str(db), pg_dsn, "app", "tags") == []


async def test_a_key_that_is_not_utf8_where_a_scan_window_ends_holds_only_its_table(tmp_path, make_config, pg_dsn):
    """Scans of a file go window by window, the next window starting past the key the
    last one ended on. A key that is not UTF-8 there is bound as SQLite holds it: the
    scan goes on, the table is held naming the key, the source's other tables load, and
    `syncd schema` reads the file through."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE tags (name TEXT PRIMARY KEY, at TEXT) WITHOUT ROWID")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("BEGIN")
    # The first window of a scan is FIRST_ROWS rows: the key that is not UTF-8 ends it.
    conn.executemany("INSERT INTO tags VALUES (?, '2026-11-01')", [(f"a{i:05d}",) for i in range(FIRST_ROWS - 1)])
    conn.execute("INSERT INTO tags VALUES (CAST(x'61ff' AS TEXT), '2026-11-02')")
    conn.executemany("INSERT INTO tags VALUES (?, '2026-11-03')", [(f"b{i}",) for i in range(5)])
    conn.execute("INSERT INTO notes VALUES (1, 'fine')")
    conn.execute("COMMIT")
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db)}])
    out = run_cli(cfg, "schema")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stdout + out.stderr
    assert "every one of its 1005 value(s) is a date" in out.stdout, out.stdout
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        async def settled() -> bool:
            try:
                states = await table_states(pg_dsn, "app")
            except asyncpg.UndefinedTableError:  # syncd has not set the source up yet
                return False
            return states.get("tags", (None,))[0] == "held" and states.get("notes", (None,))[0] == "streaming"

        await eventually(settled, 60, "tags held, notes loaded", d)
        why = (await table_states(pg_dsn, "app"))["tags"][1]
        assert """table "tags" key 'a\\xff'""" in why and 'column "name"' in why and "not valid UTF-8" in why, why
        assert await pg_rows(pg_dsn, "SELECT id, body FROM app.notes") == [(1, "fine")]
        assert d.stop() == 0


def with_bytes_not_utf8(conn: sqlite3.Connection, name: str) -> None:
    """Object `name`'s CREATE text and name as SQLite keeps them, each '#' made the byte 0xff
    (SQLite keeps whatever bytes an application's schema was given)."""
    sql, = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_master SET sql = CAST(? AS TEXT), name = CAST(? AS TEXT) WHERE name = ?",
                 (sql.encode().replace(b"#", b"\xff"), name.encode().replace(b"#", b"\xff"), name))
    conn.execute("PRAGMA writable_schema = OFF")


async def test_schema_text_that_is_not_utf8_names_its_table_and_the_others_go_on(tmp_path, make_config, pg_dsn):
    """A table whose DEFAULT, CHECK or column name is text that is not UTF-8 is refused,
    the part at fault named; a view, an index or a trigger of such text is said not
    carried, one the application makes while syncd runs too; the source's other tables
    load, and syncd schema, status and report read the file through."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE good (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE dflt (id INTEGER PRIMARY KEY, v TEXT DEFAULT 'a#b')")
    conn.execute("CREATE TABLE chk (id INTEGER PRIMARY KEY, v TEXT CHECK (v <> 'a#b'))")
    conn.execute('CREATE TABLE named (id INTEGER PRIMARY KEY, "v#" TEXT)')
    conn.execute("CREATE TABLE indexed (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute('CREATE INDEX "indexed_v#" ON indexed (v)')
    conn.execute("CREATE INDEX good_v ON good (v) WHERE v <> 'a#b'")
    conn.execute("CREATE VIEW good_view AS SELECT * FROM good WHERE v <> 'a#b'")
    conn.execute("CREATE TRIGGER good_trigger AFTER INSERT ON good BEGIN SELECT 'a#b'; END")
    conn.execute("INSERT INTO good VALUES (1, 'fine')")
    for name in ("dflt", "chk", "named", "indexed_v#", "good_v", "good_view", "good_trigger"):
        with_bytes_not_utf8(conn, name)
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{free_port()}")
    refused = {"dflt": """-- refused 'dflt': the DEFAULT 'a\\xffb' of column "v" is text that is not valid UTF-8""",
               "chk": "-- refused 'chk': its CREATE TABLE text (a CHECK constraint, say) is text that is not valid "
                      "UTF-8",
               "named": """-- refused 'named': the name of column "v\\xff" is text that is not valid UTF-8""",
               "indexed": """-- refused 'indexed': the name of index "indexed_v\\xff" is text that is not valid """
                          "UTF-8"}
    out = run_cli(cfg, "schema")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stdout + out.stderr
    assert all(line in out.stdout for line in refused.values()), out.stdout
    assert 'index "good_v" on (v): its CREATE INDEX text is not valid UTF-8' in out.stdout, out.stdout
    assert 'view "good_view": its text is not valid UTF-8' in out.stdout, out.stdout
    assert 'CREATE TABLE IF NOT EXISTS "app"."good"' in out.stdout, out.stdout
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        states = await table_states(pg_dsn, "app")
        assert {n: s for n, (s, _) in states.items()} == {"good": "streaming", "dflt": "refused", "chk": "refused",
                                                          "named": "refused", "indexed": "refused"}, states
        assert all(line.split(": ", 1)[1] in states[n][1] for n, line in refused.items()), states
        assert await pg_rows(pg_dsn, "SELECT id, v FROM app.good") == [(1, "fine")]
        status = run_cli(cfg, "status")
        assert "cannot read" not in status.stdout and "4 refused, 1 streaming" in status.stdout, status.stdout
        # A trigger of the application's made after syncd's, that may end a write.
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("CREATE TRIGGER good_ends AFTER INSERT ON good BEGIN SELECT RAISE(IGNORE) WHERE NEW.v = 'a#b'; "
                     "END")
        with_bytes_not_utf8(conn, "good_ends")
        conn.execute("INSERT INTO good VALUES (2, 'fine')")
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, v FROM app.good ORDER BY id") == [(1, "fine"), (2, "fine")]
        assert d.stop() == 0
    report = run_cli(cfg, "report")
    assert "cannot read" not in report.stdout and "Traceback" not in report.stderr, report.stdout + report.stderr


async def test_the_way_back_holds_a_table_whose_trigger_is_not_utf8_until_it_is(tmp_path, make_config, pg_dsn):
    """After a cutover, Postgres's rows reach SQLite with the application's triggers set
    aside and made again. One whose text is not UTF-8 cannot be made again: its table
    waits on the way back, named with the trigger, while the others follow; once the
    application gives it a definition in UTF-8, the table is copied again."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE deals (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT)")
    conn.execute("CREATE TRIGGER deals_audit AFTER INSERT ON deals WHEN NEW.v <> 'a#b' "
                 "BEGIN INSERT INTO audit (what) VALUES ('made in SQLite'); END")
    with_bytes_not_utf8(conn, "deals_audit")
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_statements(pg_dsn, "INSERT INTO app.deals VALUES (1, 'in Postgres')",
                            "INSERT INTO app.audit VALUES (7, 'in Postgres')")

        async def held() -> bool:
            return (await table_states(pg_dsn, "app"))["deals"][0] == "held"

        await eventually(held, 60, "deals held on the way back", d)
        why = (await table_states(pg_dsn, "app"))["deals"][1]
        assert "trigger 'deals_audit'" in why and "not valid UTF-8" in why, why

        def sqlite_rows(table: str) -> list[tuple]:
            c = sqlite3.connect(db)
            try:
                return c.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
            finally:
                c.close()

        async def audit_back() -> bool:
            return sqlite_rows("audit") == [(7, "in Postgres")]

        await eventually(audit_back, 60, "audit's row in SQLite", d)
        assert sqlite_rows("deals") == []
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("DROP TRIGGER deals_audit")
        conn.execute("CREATE TRIGGER deals_audit AFTER INSERT ON deals BEGIN "
                     "INSERT INTO audit (what) VALUES ('made in SQLite'); END")
        conn.close()
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert sqlite_rows("deals") == [(1, "in Postgres")]
        assert sqlite_rows("audit") == [(7, "in Postgres")]  # its effect is Postgres's, not made again
        assert d.stop() == 0


def test_schema_names_text_that_is_not_utf8_by_its_bytes(tmp_path, make_config):
    """syncd schema's notes on a column kept as text name a value and key that are not
    UTF-8 by the bytes SQLite holds (\\xff), as the hold lines do."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE ev (code TEXT PRIMARY KEY, at DATE, n)")
    conn.execute("INSERT INTO ev VALUES ('a', '2026-01-01', 1), ('b', '2026-01-02', 2)")
    conn.execute("INSERT INTO ev VALUES (CAST(x'63ff' AS TEXT), CAST(x'323032362dff' AS TEXT), CAST(x'31ff' AS TEXT))")
    conn.close()
    out = run_cli(make_config([{"name": "app", "path": str(db)}]), "schema")
    assert out.returncode == 0, out.stdout + out.stderr
    assert """(e.g. '2026-\\xff'); keys 'c\\xff'.""" in out.stdout, out.stdout
    assert """(e.g. '1\\xff'); keys 'c\\xff'.""" in out.stdout, out.stdout
    assert "udc" not in out.stdout, out.stdout


def test_a_table_whose_name_is_not_utf8_left_out_by_the_source_is_said_excluded(tmp_path, make_config):
    """The source's `exclude` leaves such a table out as any other: said excluded, the
    operator's choice, not "rows of application data not migrated" in status, nor a
    refused cutover (whose own advice is to list it in `exclude`)."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE good (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute('CREATE TABLE "scratch#" (id INTEGER PRIMARY KEY)')
    conn.execute("INSERT INTO good VALUES (1, 'fine')")
    with_bytes_not_utf8(conn, "scratch#")
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_master SET tbl_name = name WHERE type = 'table'")
    conn.execute("PRAGMA writable_schema = OFF")
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db,
                            sources=[{"name": "app", "path": str(db), "exclude": ["scratch*"]}])
    out = run_cli(cfg, "schema")
    assert out.returncode == 0 and "-- skipped 'scratch\\\\xff': a table the source's include/exclude settings " \
        "leave out" in out.stdout and "HOLDS rows" not in out.stdout, out.stdout + out.stderr
    status = run_cli(cfg, "status")
    assert "HOLDS rows" not in status.stdout, status.stdout


async def test_a_table_whose_name_is_not_utf8_is_said_not_migrated_and_the_others_go_on(tmp_path, make_config,
                                                                                        pg_dsn):
    """No statement syncd runs can name a table whose name is not UTF-8, nor Postgres hold
    the name: the table is left in SQLite and said to hold data not migrated, its name's
    bytes as escapes, wherever the objects left out are; the source's other tables load,
    and the cutover is refused while it holds rows (it is left writable, not frozen)."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE good (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute('CREATE TABLE "t#" (id INTEGER PRIMARY KEY, v TEXT)')
    conn.execute("INSERT INTO good VALUES (1, 'fine')")
    conn.execute("""INSERT INTO "t#" VALUES (1, 'left in SQLite')""")
    conn.execute('CREATE VIEW "v#" AS SELECT * FROM good')
    with_bytes_not_utf8(conn, "t#")
    with_bytes_not_utf8(conn, "v#")
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_master SET tbl_name = name WHERE type IN ('table', 'view')")
    conn.execute("PRAGMA writable_schema = OFF")
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    said = "a table whose name is not valid UTF-8 (no statement syncd runs can name it, and Postgres cannot hold"
    out = run_cli(cfg, "schema")
    assert out.returncode == 0 and f"-- skipped 't\\\\xff': HOLDS rows OF APPLICATION DATA THAT IS NOT MIGRATED: " \
        f"{said}" in out.stdout, out.stdout + out.stderr
    assert "-- skipped 'v\\\\xff': a view whose name is not valid UTF-8" in out.stdout, out.stdout
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await pg_rows(pg_dsn, "SELECT id, v FROM app.good") == [(1, "fine")]
    v = run_cli(cfg, "verify")
    assert """app: "good" equal""" in v.stdout and """app: "t\\xff" not comparable""" in v.stdout, v.stdout
    status = run_cli(cfg, "status")
    assert "cannot read" not in status.stdout and "Traceback" not in status.stderr, status.stdout + status.stderr
    assert """WARNING: app: not migrated: 't\\xff' HOLDS rows OF APPLICATION DATA""" in status.stdout, status.stdout
    report = run_cli(cfg, "report")
    assert f"app.t\\xff: rows of application data in {said}" in report.stdout, report.stdout
    dry = run_cli(cfg, "cutover", "--dry-run")
    assert dry.returncode != 0 and f"app.t\\xff: rows of application data in {said}" in dry.stdout, dry.stdout
    assert "left writable in SQLite, not frozen: 't\\xff'" in dry.stdout and "no plan" not in dry.stdout, dry.stdout


async def test_a_repair_names_a_key_it_leaves_that_is_not_utf8_by_its_bytes(tmp_path, make_config, pg_dsn):
    """`syncd verify --repair` leaves a row whose key is text that is not UTF-8 (Postgres
    cannot hold it; fixing the row in SQLite is the way), and names its key as syncd names
    such text everywhere, 't\\xff', not as the Python surrogate 't\\udcff'."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE tags (name TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID")
    conn.execute("INSERT INTO tags VALUES ('fine', 1)")
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    await sync_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    conn.execute("BEGIN")  # written past capture: its changelog entry lost
    conn.execute("INSERT INTO tags VALUES (CAST(x'74ff' AS TEXT), 2)")
    (applied,), = await pg_rows(pg_dsn, "SELECT applied_seq FROM syncd.sources WHERE source = 'app'")
    conn.execute("DELETE FROM _syncd_changelog WHERE seq > ?", (applied,))
    conn.execute("COMMIT")
    conn.close()
    out = verify(cfg, "--repair", "--wait", "2")
    assert """"tags" key 't\\xff' not repaired""" in out.stdout, out.stdout
    assert "udcff" not in out.stdout, out.stdout


async def test_the_report_times_lookups_of_a_table_holding_text_that_is_not_utf8(tmp_path, make_config, pg_dsn):
    """Values that are not UTF-8 (written past capture: the tables stream on) do not keep
    the report from sampling their tables' rows for the lookup timings: the performance
    item times each table's key as any other's (a key that is not UTF-8 is no sample),
    instead of failing with Python's "Could not decode to UTF-8 column 'body' with text
    'a\ufffdb'"."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO notes VALUES (?, ?)", [(i, f"b{i}") for i in range(1, 21)])
    conn.execute("CREATE TABLE tags (name TEXT PRIMARY KEY, n INTEGER)")
    conn.executemany("INSERT INTO tags VALUES (?, ?)", [(f"t{i:02d}", i) for i in range(1, 21)])
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    await sync_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    conn.execute("BEGIN")
    conn.execute("UPDATE notes SET body = CAST(x'61ff62' AS TEXT) WHERE id % 2 = 1")
    conn.execute("UPDATE tags SET name = CAST(x'74ff' || n AS TEXT) WHERE n % 2 = 1")
    (applied,), = await pg_rows(pg_dsn, "SELECT applied_seq FROM syncd.sources WHERE source = 'app'")
    conn.execute("DELETE FROM _syncd_changelog WHERE seq > ?", (applied,))
    conn.execute("COMMIT")
    conn.close()
    r = run_cli(cfg, "report", "--format", "json")
    performance = next(i for i in json.loads(r.stdout)["checklist"] if i["key"] == "performance")
    assert performance["ok"] and not performance["problems"], performance
    assert any(e.startswith("app.notes: primary key (id): ") for e in performance["evidence"]), performance
    assert any(e.startswith("app.tags: primary key (name): ") for e in performance["evidence"]), performance


async def test_a_column_renamed_to_text_that_is_not_utf8_since_the_last_check_is_said_by_its_bytes(
        tmp_path, make_config, pg_dsn):
    """A column renamed, after the last consistency check, to a name that is not UTF-8:
    `syncd status` says the table is not checked since its columns changed, naming the
    column by its bytes ("v\\xff"), in UTF-8 text and JSON a monitoring check can read. It
    printed the raw byte, and no UTF-8 reader could read the JSON (`json.loads` of its
    output failed)."""
    import subprocess

    from tests.support.daemon import syncd_cmd

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    await sync_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    assert verify(cfg).returncode == 0
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute('ALTER TABLE t RENAME COLUMN v TO "v#"')
    with_bytes_not_utf8(conn, "t")
    conn.close()
    for args in (("status", "--json"), ("status",)):
        out = subprocess.run(syncd_cmd(cfg, *args), capture_output=True, cwd=str(cfg.parent), timeout=120)
        assert b"Traceback" not in out.stderr, out.stderr
        text = out.stdout.decode("utf-8")  # raises on a byte that is not UTF-8
        assert 'column "v\\xff" added' in (json.loads(text)["sources"][0]["tables"][0]["columns_changed"]
                                          if args[-1] == "--json" else text), text
