"""A foreign key whose parent column is COLLATE NOCASE matches its child values ignoring
case in SQLite (the parent column's collation decides): a child 'red' belongs to the
parent 'Red', and ON UPDATE CASCADE / ON DELETE CASCADE reach it. A Postgres foreign key
matches as its columns compare: over a child column that is not case-insensitive too, it
would refuse SQLite's rows and its cascades would miss them. syncd then leaves it out,
counts no orphans for it, and names it with what to do instead. When both columns are
COLLATE NOCASE, both become case-insensitive at cutover and the foreign key is carried:
Postgres then matches and cascades ignoring case, as SQLite does. The other way round, a
COLLATE NOCASE child of a case-sensitive parent key, SQLite matches byte for byte: under
nocase = "icu" Postgres would run the actions under the child's case-insensitive collation,
so syncd leaves the key out; a citext child is compared byte for byte and the key is carried."""

from __future__ import annotations

import json
import shutil
import sqlite3

import asyncpg

from syncd import parity
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import first_source, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over

APP = ["UPDATE tag SET name = 'Crimson' WHERE name = 'RED'", "DELETE FROM tag WHERE name = 'BLUE'"]
READ = "SELECT 'ev', id, tag FROM ev UNION ALL SELECT 'pin', id, tag FROM pin ORDER BY 1, 2"
FOREIGN_KEYS = ("SELECT c.conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
                "WHERE n.nspname = 'app' AND c.contype = 'f' ORDER BY 1")


def application_file(path, child_type: str) -> None:
    """Rows SQLite accepted with its foreign keys on: 'red' and 'blue' name 'Red' and 'Blue'."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executescript(f"""
        CREATE TABLE tag (name TEXT COLLATE NOCASE PRIMARY KEY);
        CREATE TABLE ev (id INTEGER PRIMARY KEY, tag {child_type} REFERENCES tag(name) ON UPDATE CASCADE);
        CREATE TABLE pin (id INTEGER PRIMARY KEY, tag {child_type} REFERENCES tag(name) ON DELETE CASCADE);
        INSERT INTO tag VALUES ('Red'), ('Blue');
        INSERT INTO ev VALUES (1, 'Red'), (2, 'red');
        INSERT INTO pin VALUES (1, 'Blue'), (2, 'blue');
    """)
    conn.close()


async def test_a_foreign_key_postgres_would_match_case_sensitively_is_left_out_and_named(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    application_file(db, "TEXT")
    cfg = backup_and_config(make_config, tmp_path, db)
    schema = run_cli(cfg, "schema")
    assert schema.returncode == 0, schema.stderr
    assert ("-- NOT CARRIED: FOREIGN KEY (tag) REFERENCES tag (name): SQLite matches ev.tag to tag.name ignoring "
            "case (tag.name is COLLATE NOCASE)") in schema.stdout, schema.stdout
    assert "enforce it in the application" in schema.stdout
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        report = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
        left = {o["name"]: o for o in report["sources"][0]["not_migrated"]}
        assert left["ev: FOREIGN KEY (tag) REFERENCES tag (name)"]["todo"].startswith(
            "enforce it in the application, or make both columns citext"), left
        fk = next(i for i in report["checklist"] if i["key"] == "foreign_keys")
        assert fk["ok"] is True, fk  # no orphans counted for a foreign key not carried
        dry = run_cli(cfg, "cutover", "--source", "app", "--dry-run")
        assert "schema: will not carry pin: FOREIGN KEY (tag) REFERENCES tag (name): SQLite matches" in dry.stdout, \
            dry.stdout + dry.stderr
        out = await cut_over(cfg, db, pg_dsn, daemon=d)  # no orphans refusal: 'red' is no orphan
        assert "NOT created: ev: FOREIGN KEY (tag) REFERENCES tag (name): SQLite matches ev.tag" in out, out
        assert "NOT created: pin: FOREIGN KEY (tag) REFERENCES tag (name): SQLite matches pin.tag" in out, out
        assert d.stop() == 0
    pg = await asyncpg.connect(pg_dsn)
    try:
        assert await pg.fetch(FOREIGN_KEYS) == []
    finally:
        await pg.close()


async def test_cascades_through_case_insensitive_columns_on_both_sides_reach_every_child(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    application_file(db, "TEXT COLLATE NOCASE")
    shutil.copy(db, tmp_path / "as_sqlite.db")  # the application's file as it was, to run it on SQLite
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0

    lite = sqlite3.connect(tmp_path / "as_sqlite.db", isolation_level=None)
    lite.execute("PRAGMA foreign_keys = ON")
    for sql in APP:
        lite.execute(sql)
    expected = lite.execute(READ).fetchall()
    lite.close()
    # SQLite: both children of 'Red' follow it, both children of 'Blue' go with it.
    assert expected == [("ev", 1, "Crimson"), ("ev", 2, "Crimson")]
    pg = await asyncpg.connect(pg_dsn, server_settings={"search_path": "app"})
    try:
        assert [r[0] for r in await pg.fetch(FOREIGN_KEYS)] == ["ev_tag_fkey", "pin_tag_fkey"]
        for sql in APP:
            await pg.execute(sql)
        got = [tuple(r) for r in await pg.fetch(READ)]
    finally:
        await pg.close()
    assert got == expected


def preview(tmp_path, make_config, sql: str, nocase: str = "icu") -> list[str]:
    n = len(list(tmp_path.glob("plan_*.db")))
    db = tmp_path / f"plan_{n}.db"
    sqlite3.connect(db, isolation_level=None).executescript(sql)
    cfg = make_config([{"name": "app", "path": str(db)}], name=f"plan_{n}.toml",
                      sections={"cutover": {"nocase": nocase}})
    settings, source, specs = first_source(cfg)
    return [line for line in parity.preview(settings, source, specs) if "FOREIGN KEY" in line]


def test_which_foreign_keys_to_case_insensitive_keys_are_carried(tmp_path, make_config):
    # The parent's key matched through PRIMARY KEY (name COLLATE NOCASE): the column is not.
    through_index = preview(tmp_path, make_config, """
        CREATE TABLE tag (name TEXT, PRIMARY KEY (name COLLATE NOCASE));
        CREATE TABLE ev (id INTEGER PRIMARY KEY, tag TEXT COLLATE NOCASE REFERENCES tag);""")
    assert through_index == [
        "schema: will not carry ev: FOREIGN KEY (tag) REFERENCES tag (its primary key): SQLite matches ev.tag to "
        "tag.name ignoring case (the primary key of tag is COLLATE NOCASE), a Postgres foreign key would not (tag.name "
        "stays case-sensitive there): enforce it in the application, or make both columns citext (or text under one "
        "ICU nondeterministic collation) and add the key by hand"], through_index
    both = """
        CREATE TABLE tag (name TEXT COLLATE NOCASE PRIMARY KEY);
        CREATE TABLE ev (id INTEGER PRIMARY KEY, tag TEXT COLLATE NOCASE REFERENCES tag(name) ON DELETE SET NULL);
        CREATE TABLE pin (id INTEGER PRIMARY KEY, tag TEXT COLLATE NOCASE REFERENCES tag(name) ON UPDATE SET NULL);"""
    # Both columns case-insensitive in Postgres: carried, but for an ON UPDATE action a change
    # of the parent's case alone sets off in Postgres (SQLite sees no change of key).
    for nocase in ("icu", "citext"):
        lines = sorted(preview(tmp_path, make_config, both.replace("tag", f"tag_{nocase}"), nocase))
        assert lines[0] == (f'schema: will create ev: FOREIGN KEY (tag_{nocase}) REFERENCES tag_{nocase} (name) as '
                            f'"ev_tag_{nocase}_fkey"'), lines
        assert lines[1].startswith(f"schema: will not carry pin: FOREIGN KEY (tag_{nocase}) REFERENCES tag_{nocase} "
                                   "(name): its ON UPDATE SET NULL: Postgres sets it off when only the case of "
                                   f"tag_{nocase}.name changes"), lines
        assert len(lines) == 2
    # The primary key matched byte for byte through PRIMARY KEY (name COLLATE BINARY): the column
    # is NOCASE, so it becomes case-insensitive in Postgres, and its foreign key would ignore case.
    for nocase in ("icu", "citext"):
        through_binary = preview(tmp_path, make_config, """
            CREATE TABLE tag (name TEXT COLLATE NOCASE, PRIMARY KEY (name COLLATE BINARY));
            CREATE TABLE ev (id INTEGER PRIMARY KEY, tag TEXT REFERENCES tag);""", nocase)
        assert through_binary == [
            "schema: will not carry ev: FOREIGN KEY (tag) REFERENCES tag (its primary key): SQLite matches ev.tag to "
            "tag.name case-sensitively (the primary key of tag is COLLATE BINARY), a Postgres foreign key would ignore "
            "case (tag.name becomes case-insensitive at cutover): enforce it in the application"], through_binary
    none = preview(tmp_path, make_config, both.replace("tag", "tag_none"), "none")
    assert len(none) == 2 and all("ignoring case" in line and "will not carry" in line for line in none), none


# A case-sensitive parent key: SQLite matches under its BINARY collation, whatever the child
# column's. 'RED' is a parent of its own, so 'Red' -> 'Crimson' and deleting 'Blue' leave
# the children of 'RED' and 'BLUE' alone.
CASE_SENSITIVE_PARENT = """
    CREATE TABLE tag (name TEXT PRIMARY KEY);
    CREATE TABLE ev (id INTEGER PRIMARY KEY, tag TEXT COLLATE NOCASE REFERENCES tag(name) ON UPDATE CASCADE);
    CREATE TABLE pin (id INTEGER PRIMARY KEY, tag TEXT COLLATE NOCASE REFERENCES tag(name) ON DELETE CASCADE);
    INSERT INTO tag VALUES ('Red'), ('RED'), ('Blue'), ('BLUE');
    INSERT INTO ev VALUES (1, 'Red'), (2, 'RED');
    INSERT INTO pin VALUES (1, 'Blue'), (2, 'BLUE');"""
SENSITIVE_APP = ["UPDATE tag SET name = 'Crimson' WHERE name = 'Red'", "DELETE FROM tag WHERE name = 'Blue'"]


def case_sensitive_parent(tmp_path) -> list[tuple]:
    """The application's file, and what SQLite (foreign keys on) makes of SENSITIVE_APP on a copy of it."""
    for name in ("app.db", "as_sqlite.db"):
        conn = sqlite3.connect(tmp_path / name, isolation_level=None)
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.executescript(CASE_SENSITIVE_PARENT)
        conn.close()
    lite = sqlite3.connect(tmp_path / "as_sqlite.db", isolation_level=None)
    lite.execute("PRAGMA foreign_keys = ON")
    for sql in SENSITIVE_APP:
        lite.execute(sql)
    expected = lite.execute(READ).fetchall()
    lite.close()
    assert expected == [("ev", 1, "Crimson"), ("ev", 2, "RED"), ("pin", 2, "BLUE")]
    return expected


async def test_a_case_insensitive_child_of_a_case_sensitive_key_under_icu_is_left_out_and_named(
        tmp_path, make_config, pg_dsn):
    # Under ICU the child column gets a nondeterministic collation, and Postgres runs a foreign
    # key's actions (NO ACTION's check too) under the child column's collation: 'Red' -> 'Crimson'
    # would rewrite the child 'RED' of the parent 'RED', and deleting 'Blue' delete 'BLUE''s child.
    case_sensitive_parent(tmp_path)
    db = tmp_path / "app.db"
    cfg = backup_and_config(make_config, tmp_path, db, cutover={"nocase": "icu"})
    schema = run_cli(cfg, "schema")
    assert schema.returncode == 0, schema.stderr
    assert ("-- NOT CARRIED: FOREIGN KEY (tag) REFERENCES tag (name): SQLite matches ev.tag to tag.name "
            "case-sensitively (tag.name is BINARY)") in schema.stdout, schema.stdout
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        report = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
        left = {o["name"]: o for o in report["sources"][0]["not_migrated"]}
        assert left["pin: FOREIGN KEY (tag) REFERENCES tag (name)"]["todo"].startswith(
            "enforce it in the application, or make pin.tag plain text or citext"), left
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        assert "NOT created: ev: FOREIGN KEY (tag) REFERENCES tag (name): SQLite matches ev.tag" in out, out
        assert "NOT created: pin: FOREIGN KEY (tag) REFERENCES tag (name): SQLite matches pin.tag" in out, out
        assert d.stop() == 0
    pg = await asyncpg.connect(pg_dsn)
    try:
        assert await pg.fetch(FOREIGN_KEYS) == []
    finally:
        await pg.close()


async def test_a_citext_child_of_a_case_sensitive_key_is_carried_and_matches_as_in_sqlite(
        tmp_path, make_config, pg_dsn):
    # A citext child of a text parent: Postgres's foreign key compares them with text's =
    # (byte for byte), in its check and its actions alike, as SQLite's BINARY parent key does.
    expected = case_sensitive_parent(tmp_path)
    db = tmp_path / "app.db"
    cfg = backup_and_config(make_config, tmp_path, db, cutover={"nocase": "citext"})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    pg = await asyncpg.connect(pg_dsn, server_settings={"search_path": "app"})
    try:
        assert [r[0] for r in await pg.fetch(FOREIGN_KEYS)] == ["ev_tag_fkey", "pin_tag_fkey"]
        for sql in SENSITIVE_APP:
            await pg.execute(sql)
        got = [tuple(r) for r in await pg.fetch(READ)]
        refused = None
        try:
            await pg.execute("INSERT INTO ev VALUES (3, 'red')")  # SQLite refuses it too: no parent 'red'
        except asyncpg.ForeignKeyViolationError as e:
            refused = e
    finally:
        await pg.close()
    assert got == expected
    assert refused is not None
