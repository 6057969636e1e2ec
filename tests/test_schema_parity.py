"""Schema parity: every SQLite index, UNIQUE constraint, foreign key, CHECK, COLLATE
NOCASE column and view reaches Postgres in the form and at the moment docs/schema.md
gives (indexes during dual-write, the rest at cutover), or is listed with why not;
the application's triggers are listed, never copied."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest

from syncd import parity
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import first_source, pg_rows, wait_caught_up

SCHEMA = """
CREATE TABLE org (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE, name TEXT);
CREATE TABLE person (
  id INTEGER PRIMARY KEY,
  email TEXT COLLATE NOCASE UNIQUE,
  org_id INTEGER REFERENCES org(id) ON DELETE CASCADE,
  org_code TEXT,
  age INTEGER CONSTRAINT adult CHECK (age >= 18),
  status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'gone')),
  nick TEXT,
  CONSTRAINT person_org_code FOREIGN KEY (org_code) REFERENCES org(code) ON UPDATE CASCADE,
  UNIQUE (org_id, nick)
);
CREATE INDEX person_status ON person(status DESC, age);
CREATE INDEX person_live ON person(age) WHERE status <> 'gone';
CREATE INDEX person_nick_len ON person(length(nick));
CREATE UNIQUE INDEX person_nick_lower ON person(lower(nick));
CREATE UNIQUE INDEX person_one_active_per_org ON person(org_id) WHERE status = 'active' AND org_id > 100;
CREATE INDEX person_hex ON person(hex(nick));
CREATE VIEW adults AS SELECT id, email AS mail FROM person WHERE age >= 21;
CREATE VIEW by_status AS SELECT status, count(*) AS n FROM person GROUP BY status;
CREATE VIEW crazy AS SELECT printf('%d', age) AS a FROM person;
CREATE VIEW older_adults AS SELECT id FROM adults WHERE id > 1;
CREATE VIEW names AS SELECT id, name FROM org UNION ALL SELECT id, nick FROM person ORDER BY 1;
CREATE VIEW named_later AS SELECT id FROM names WHERE id > 1;
CREATE VIEW addresses AS SELECT email FROM person UNION SELECT code FROM org;
CREATE VIEW members AS SELECT p.id FROM person p WHERE EXISTS (SELECT 1 FROM org o WHERE o.id = p.org_id);
CREATE VIEW parties AS SELECT id, 'org' AS kind FROM org UNION ALL SELECT id, 'person' FROM person;
CREATE TRIGGER person_touch AFTER UPDATE ON person BEGIN SELECT 1; END;
INSERT INTO org VALUES (1, 'acme', 'Acme'), (2, 'init', 'Initech');
INSERT INTO person VALUES (1, 'a@x', 1, 'acme', 30, 'active', 'Al'),
                          (2, 'B@x', 2, 'init', 20, 'gone', 'Bo'),
                          (3, 'c@x', NULL, NULL, 40, 'active', NULL);
"""


async def indexes(dsn, schema="app") -> dict[str, str]:
    return {r[0]: r[1] for r in await pg_rows(dsn, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1",
                                              schema)}


async def constraints(dsn, schema="app") -> dict[str, tuple]:
    """name -> (type, deferrable, definition, validated, comment)"""
    return {r[0]: tuple(r[1:]) for r in await pg_rows(
        dsn, "SELECT c.conname, c.contype::text, c.condeferrable, pg_get_constraintdef(c.oid), c.convalidated, "
             "obj_description(c.oid, 'pg_constraint') FROM pg_constraint c "
             "JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = $1", schema)}


def app_file(path, schema=SCHEMA):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(schema)
    return conn


async def finalize(cfg, pg_dsn, allow_orphans=False):
    settings, source, specs = first_source(cfg)
    pg = await asyncpg.connect(pg_dsn)
    try:
        async with pg.transaction():
            return await parity.finalize(pg, settings, source, specs, allow_orphans)
    finally:
        await pg.close()


async def test_indexes_and_unique_constraints_are_there_during_dual_write(app_db, make_config, pg_dsn, tmp_path):
    conn = app_file(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log('created org: UNIQUE constraint on (code)')
        idx, cons = await indexes(pg_dsn), await constraints(pg_dsn)
        # column indexes keep their order and direction
        assert idx["person_status"] == "CREATE INDEX person_status ON app.person USING btree (status DESC, age)"
        # a partial index, its predicate translated
        assert idx["person_live"].endswith("(age) WHERE (status <> 'gone'::text)")
        # an expression index
        assert idx["person_nick_len"].endswith("USING btree (length(nick))")
        # UNIQUE constraints: deferrable while dual-writing, SQLite's autoindex named as Postgres would
        assert cons["org_code_key"][:3] == ("u", True, "UNIQUE (code) DEFERRABLE INITIALLY DEFERRED")
        assert cons["person_org_id_nick_key"][:2] == ("u", True)
        assert cons["person_email_key"][:2] == ("u", True)
        # unique expression and partial indexes: plain until cutover (Postgres cannot defer an index)
        assert idx["person_nick_lower"].startswith("CREATE INDEX person_nick_lower")
        assert "translate(nick" in idx["person_nick_lower"]  # SQLite's lower() folds A-Z only
        assert idx["person_one_active_per_org"].startswith("CREATE INDEX")
        # what does not translate exactly is not created, and is said
        assert "person_hex" not in idx
        d.wait_log('not carried: person: index "person_hex" on ((hex(nick))): not translated exactly: the function '
                   "hex() is not one syncd translates")
        # nothing of the cutover yet: no CHECK, no foreign key, no view
        assert not [c for c, v in cons.items() if v[0] in ("c", "f")]
        assert not await pg_rows(pg_dsn, "SELECT 1 FROM pg_views WHERE schemaname = 'app'")
        # the application's own index in Postgres is left alone; SQLite's changes are followed
        await pg_rows(pg_dsn, "CREATE INDEX my_own ON app.person (nick)")
        conn.execute("DROP INDEX person_live")
        conn.execute("CREATE INDEX person_org ON person(org_id, age DESC)")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log("created person: index \"person_org\"")
        idx = await indexes(pg_dsn)
        assert "person_live" not in idx and "my_own" in idx
        assert idx["person_org"].endswith("(org_id, age DESC)")
        assert d.stop() == 0


async def test_the_cutover_makes_postgres_the_applications_database(app_db, make_config, pg_dsn, tmp_path):
    app_file(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log('created org: UNIQUE constraint on (code)')
        assert d.stop() == 0
    result = await finalize(cfg, pg_dsn)
    made = {(o.kind, o.name) for o in result.created}
    missed = {o.what: o.detail for o in result.not_created}
    cons, idx = await constraints(pg_dsn), await indexes(pg_dsn)
    # UNIQUE constraints immediate now (ON CONFLICT and foreign keys need that), unique indexes unique
    assert cons["org_code_key"][:3] == ("u", False, "UNIQUE (code)")
    assert idx["person_nick_lower"].startswith("CREATE UNIQUE INDEX")
    assert idx["person_one_active_per_org"].startswith("CREATE UNIQUE INDEX")
    # CHECKs and foreign keys, validated
    assert cons["adult"][:2] == ("c", False) and cons["adult"][3] is True
    assert cons["person_status_check"][0] == "c"
    assert cons["person_org_id_fkey"][0] == "f" and cons["person_org_id_fkey"][3] is True
    assert "ON DELETE CASCADE" in cons["person_org_id_fkey"][2]
    assert cons["person_org_code"][0] == "f" and "ON UPDATE CASCADE" in cons["person_org_code"][2]
    assert ("view", "adults") in made and ("view", "by_status") in made and ("view", "older_adults") in made
    # a compound SELECT, and a view reading one; UNION compares rows as DISTINCT does, under NOCASE here
    assert ("view", "names") in made and ("view", "named_later") in made
    assert sorted(await pg_rows(pg_dsn, "SELECT id, name FROM app.names"), key=repr) == sorted(
        [(1, "Acme"), (2, "Initech"), (1, "Al"), (2, "Bo"), (3, None)], key=repr)
    assert await pg_rows(pg_dsn, "SELECT id FROM app.named_later ORDER BY id") == [(2,), (2,), (3,)]
    assert "UNION over text under another collation" in missed['view "addresses"']
    # columns SQLite reads by no name: EXISTS (SELECT 1 ...), a compound's SELECTs after the first
    assert await pg_rows(pg_dsn, "SELECT id FROM app.members ORDER BY id") == [(1,), (2,)]
    assert await pg_rows(pg_dsn, "SELECT kind, count(*) FROM app.parties GROUP BY kind ORDER BY kind") == [
        ("org", 2), ("person", 3)]
    # not carried, with why: the view SQLite-only functions build, the index, the trigger
    assert "printf" in missed['view "crazy"']
    assert "hex" in missed['index "person_hex" on ((hex(nick)))']
    assert "never copied" in missed['trigger "person_touch" on "person"']
    pg = await asyncpg.connect(pg_dsn)
    try:
        # COLLATE NOCASE: the application's WHERE email = ? behaves as in SQLite
        assert await pg.fetchval("SELECT id FROM app.person WHERE email = 'A@X'") == 1
        assert await pg.fetchval("SELECT id FROM app.person WHERE email = 'b@x'") == 2
        with pytest.raises(asyncpg.UniqueViolationError):
            await pg.execute("INSERT INTO app.person (id, email, status) VALUES (100, 'C@X', 'active')")
        # the views read what SQLite's read
        assert await pg.fetch("SELECT * FROM app.adults ORDER BY id") == [(1, "a@x"), (3, "c@x")]
        assert sorted(tuple(r) for r in await pg.fetch("SELECT * FROM app.by_status")) == [("active", 2), ("gone", 1)]
        # the constraints hold new writes as SQLite's did
        with pytest.raises(asyncpg.CheckViolationError):
            await pg.execute("INSERT INTO app.person (id, email, age, status) VALUES (100, 'd@x', 17, 'active')")
        with pytest.raises(asyncpg.CheckViolationError):
            await pg.execute("INSERT INTO app.person (id, email, status) VALUES (100, 'd@x', 'maybe')")
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await pg.execute("INSERT INTO app.person (id, email, org_id, status) VALUES (100, 'd@x', 99, 'active')")
        with pytest.raises(asyncpg.UniqueViolationError):
            await pg.execute("INSERT INTO app.org (id, code) VALUES (100, 'acme')")
        # ON CONFLICT works against the immediate constraint, as ORMs use it
        await pg.execute("INSERT INTO app.org (id, code, name) VALUES (100, 'acme', 'x') ON CONFLICT (code) DO NOTHING")
        await pg.execute("INSERT INTO app.person (id, email, status) VALUES (100, 'e@x', 'active')")  # all fine
        await pg.execute("DELETE FROM app.org WHERE id = 2")  # ON DELETE CASCADE
        assert await pg.fetchval("SELECT count(*) FROM app.person WHERE org_id = 2") == 0
    finally:
        await pg.close()


async def test_names_differing_only_in_the_case_of_a_letter_beyond_a_to_z_are_two_names(
        app_db, make_config, pg_dsn, tmp_path):
    """SQLite folds the case of A-Z only: "É" and "é" are two columns, "Ü" and "ü" two
    tables. Each object the cutover makes is on the one SQLite's schema names."""
    app_file(app_db, """
        CREATE TABLE "Ü" (id INTEGER PRIMARY KEY, a TEXT);
        CREATE TABLE "ü" (id INTEGER PRIMARY KEY, b TEXT);
        CREATE TABLE person (id INTEGER PRIMARY KEY, "É" TEXT COLLATE NOCASE, "é" TEXT,
                             "Ä" INTEGER, "ä" INTEGER, FOREIGN KEY ("Ä") REFERENCES "ü" (id));
        CREATE VIEW both_sides AS SELECT x.a, "ü".b FROM "Ü" x JOIN "ü" ON x.id = "ü".id;
        INSERT INTO "Ü" VALUES (1, 'upper');
        INSERT INTO "ü" VALUES (1, 'lower');
        INSERT INTO person VALUES (1, 'Ann', 'Bo', 1, 99);
    """).close()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    schema = run_cli(cfg, "schema").stdout
    assert 'column "É" COLLATE NOCASE' in schema and 'column "é" COLLATE NOCASE' not in schema
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    result = await finalize(cfg, pg_dsn)
    assert ("view", "both_sides") in {(o.kind, o.name) for o in result.created}
    fks = [c[2] for c in (await constraints(pg_dsn)).values() if c[0] == "f"]
    assert fks == ['FOREIGN KEY ("Ä") REFERENCES app."ü"(id)'], fks
    assert await pg_rows(pg_dsn, 'SELECT id FROM app.person WHERE "É" = \'ANN\'') == [(1,)]
    assert await pg_rows(pg_dsn, 'SELECT id FROM app.person WHERE "é" = \'BO\'') == []
    assert await pg_rows(pg_dsn, "SELECT a, b FROM app.both_sides") == [("upper", "lower")]


async def test_what_postgres_refuses_at_cutover_is_listed_with_its_reason(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE item (id INTEGER PRIMARY KEY, qty INTEGER, kind TEXT);
        INSERT INTO item VALUES (1, 5, 'a'), (2, -1, 'b'), (3, -7, 'a');
        CREATE VIEW per_kind AS SELECT kind, qty FROM item GROUP BY kind;
    """)
    # A CHECK added after the rows (the 12-step way, its rows never checked again)
    conn.executescript("""
        PRAGMA writable_schema = ON;
        UPDATE sqlite_master SET sql = 'CREATE TABLE item (id INTEGER PRIMARY KEY, qty INTEGER CHECK (qty >= 0), kind TEXT)'
            WHERE name = 'item';
        PRAGMA writable_schema = OFF;
    """)
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    assert run_cli(cfg, "init").returncode == 0
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    result = await finalize(cfg, pg_dsn)
    missed = {o.what: o.detail for o in result.not_created}
    check = next(v for k, v in missed.items() if k.startswith("CHECK"))
    assert "2 row(s) fail it" in check and "2" in check and "3" in check
    # Postgres's own error for a view SQLite accepts and Postgres does not
    assert "must appear in the GROUP BY clause" in missed['view "per_kind"']
    assert not await pg_rows(pg_dsn, "SELECT 1 FROM pg_constraint WHERE contype = 'c' AND conrelid = "
                                      "'app.item'::regclass")


async def test_orphans_refuse_the_cutover_unless_allowed(app_db, make_config, pg_dsn, tmp_path):
    conn = app_file(app_db)
    conn.execute("INSERT INTO person (id, email, org_id, status) VALUES (10, 'o1@x', 77, 'active'), "
                 "(11, 'o2@x', 78, 'active')")  # foreign_keys is off: SQLite takes them
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    with pytest.raises(parity.OrphanRows) as refused:
        await finalize(cfg, pg_dsn)
    assert "FOREIGN KEY (org_id) REFERENCES org (id): 2 orphan row(s) (keys 10, 11)" in str(refused.value)
    assert not [c for c in (await constraints(pg_dsn)).values() if c[0] in ("c", "f")]  # nothing was created
    result = await finalize(cfg, pg_dsn, allow_orphans=True)
    cons = await constraints(pg_dsn)
    assert cons["person_org_id_fkey"][3] is False  # NOT VALID: the orphans stay
    assert cons["person_org_code"][3] is True
    assert result.not_valid == ["person: FOREIGN KEY (org_id) REFERENCES org (id): 2 orphan row(s)"]
    with pytest.raises(asyncpg.ForeignKeyViolationError):  # new rows are checked
        await pg_rows(pg_dsn, "INSERT INTO app.person (id, email, org_id, status) VALUES (100, 'n@x', 79, 'active')")


async def test_syncd_schema_prints_each_object_with_when_and_why(app_db, make_config):
    app_file(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    out = run_cli(cfg, "schema")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert '-- dual-write: index "person_status" on (status, age)' in text
    assert 'CREATE INDEX "person_status" ON "app"."person" ("status" DESC, "age");' in text
    assert ('ALTER TABLE "app"."org" ADD CONSTRAINT "org_code_key" UNIQUE ("code") DEFERRABLE INITIALLY DEFERRED;'
            in text)
    assert '-- cutover: CHECK "adult" on age (age >= 18)' in text
    assert '-- cutover: column "email" COLLATE NOCASE: text COLLATE "syncd_nocase"' in text
    assert '-- NOT CARRIED: index "person_hex" on ((hex(nick))): not translated exactly: the function hex()' in text
    assert '-- NOT CARRIED: view "crazy": not translated exactly: the function printf()' in text
    assert '-- NOT CARRIED: trigger "person_touch" on "person": an application trigger is never copied' in text
    assert 'CREATE VIEW "app"."adults" AS SELECT' in text


def test_a_trigger_naming_its_table_in_another_case_is_named_as_left_out(app_db, make_config):
    """SQLite keeps a trigger's table as its CREATE TRIGGER spelled it ("ON Deals" for the
    table deals); `syncd schema` names that trigger as left out too, under the table's name."""
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE deals (id INTEGER PRIMARY KEY, title TEXT);
        CREATE TABLE audit (id INTEGER PRIMARY KEY, deal_id INTEGER);
        CREATE TRIGGER deals_audit AFTER INSERT ON Deals BEGIN INSERT INTO audit (deal_id) VALUES (NEW.id); END;
        CREATE TRIGGER deals_check BEFORE UPDATE ON "DEALS" BEGIN SELECT RAISE(ABORT, 'no') WHERE NEW.id < 0; END;
    """)
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    out = run_cli(cfg, "schema")
    assert out.returncode == 0, out.stderr
    assert '-- NOT CARRIED: trigger "deals_audit" on "deals": an application trigger is never copied' in out.stdout
    assert '-- NOT CARRIED: trigger "deals_check" on "deals": an application trigger is never copied' in out.stdout


async def test_streaming_towards_postgres_again_returns_the_schema_to_its_dual_write_form(
        app_db, make_config, pg_dsn, tmp_path):
    conn = app_file(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log('created org: UNIQUE constraint on (code)')
        assert d.stop() == 0
    await finalize(cfg, pg_dsn)
    assert {v[0] for v in (await constraints(pg_dsn)).values()} == {"p", "u", "c", "f"}
    # The way back: SQLite takes the application's writes again and syncd streams them.
    conn.execute("INSERT INTO person (id, email, org_id, age, status) VALUES (50, 'z@x', 99, 30, 'active')")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        cons = await constraints(pg_dsn)
        # no CHECK or foreign key can hold the table; UNIQUE constraints deferrable again
        assert {v[0] for v in cons.values()} == {"p", "u"}
        assert all(v[1] for k, v in cons.items() if v[0] == "u")
        assert (await indexes(pg_dsn))["person_nick_lower"].startswith("CREATE INDEX")
        assert not await pg_rows(pg_dsn, "SELECT 1 FROM pg_views WHERE schemaname = 'app'")
        assert await pg_rows(pg_dsn, "SELECT email, org_id FROM app.person WHERE id = 50") == [("z@x", 99)]
        # the case-insensitive column stays so
        assert await pg_rows(pg_dsn, "SELECT id FROM app.person WHERE email = 'Z@X'") == [(50,)]
        assert d.stop() == 0
    # ... and a second cutover makes it the application's database again (the row SQLite
    # took meanwhile is an orphan: refused, then allowed).
    with pytest.raises(parity.OrphanRows):
        await finalize(cfg, pg_dsn)
    again = await finalize(cfg, pg_dsn, allow_orphans=True)
    assert again.not_valid == ["person: FOREIGN KEY (org_id) REFERENCES org (id): 1 orphan row(s)"]
    assert {v[0] for v in (await constraints(pg_dsn)).values()} == {"p", "u", "c", "f"}
    assert sorted(o.what for o in again.not_created) == [
        'index "person_hex" on ((hex(nick)))', 'trigger "person_touch" on "person"', 'view "addresses"',
        'view "crazy"']
    twice = await finalize(cfg, pg_dsn, allow_orphans=True)  # finalize is safe to repeat
    assert [o.what for o in twice.not_created] == [o.what for o in again.not_created]
    assert sorted(o.what for o in twice.created) == sorted(o.what for o in again.created)


def test_the_cutover_preview_lists_what_finalize_would_do(app_db, make_config):
    app_file(app_db).executescript("CREATE TABLE ev (id INTEGER PRIMARY KEY, at DATETIME); "
                                   "INSERT INTO ev VALUES (1, '2026-11-01 10:00:00');")
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    settings, source, specs = first_source(cfg)
    lines = parity.preview(settings, source, specs)
    assert 'schema: will create person: CHECK "adult" on age (age >= 18) as "adult"' in lines
    assert 'schema: will create view "adults" as "adults"' in lines
    # What exists during dual-write already is not "created": its column made case-insensitive,
    # its deferred UNIQUE constraint made immediate.
    assert 'schema: will make person: column "email" COLLATE NOCASE case-insensitive' in lines, lines
    assert ('schema: will make person: UNIQUE constraint on (org_id, nick) as "person_org_id_nick_key" immediate '
            "(deferred during dual-write)") in lines, lines
    assert ('schema: will make person: unique index "person_nick_lower" on ((lower(nick))) as "person_nick_lower" '
            "unique (a plain index during dual-write)") in lines, lines
    assert any(line.startswith('schema: will not carry view "crazy": not translated exactly') for line in lines)
    assert 'schema: will type ev: column "at" DATETIME as timestamp' in lines, lines


def test_an_application_trigger_whose_name_starts_like_syncds_is_named_as_left_out(app_db, make_config, pg_dsn):
    """An application trigger named _syncd_audit is the application's (syncd's own are
    _syncd_t<table id>_<kind>): `syncd schema` names it as not carried, and not syncd's."""
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE deals (id INTEGER PRIMARY KEY, title TEXT);
        CREATE TABLE audit (id INTEGER PRIMARY KEY, deal_id INTEGER);
        CREATE TRIGGER _syncd_audit AFTER INSERT ON deals BEGIN INSERT INTO audit (deal_id) VALUES (NEW.id); END;
    """)
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    assert run_cli(cfg, "init").returncode == 0
    out = run_cli(cfg, "schema")
    assert out.returncode == 0, out.stderr
    assert '-- NOT CARRIED: trigger "_syncd_audit" on "deals": an application trigger is never copied' in out.stdout
    assert "_syncd_t1_ins" not in out.stdout and "_syncd_t2_ins" not in out.stdout, out.stdout
