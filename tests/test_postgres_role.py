"""syncd runs with exactly the Postgres privileges docs/operations.md grants it.

The GRANTs are read from the document itself, given to a fresh role with no
attributes (no superuser, no CREATEDB), and every verb and the daemon run as that role,
through a cutover (the application's schema, the way back's triggers) and a rollback.
"""

from __future__ import annotations

import re
import secrets
import sqlite3

import asyncpg

from tests.conftest import write_config
from tests.support.compare import compare_table
from tests.support.daemon import ROOT, DaemonProcess, run_cli
from tests.support.sync import pg_statements, wait_caught_up
from tests.support.way_back import wait_back

DOC = ROOT / "docs" / "operations.md"


def documented_grants() -> list[str]:
    section = DOC.read_text().split("## The Postgres role", 1)[1]
    block = re.search(r"```sql\n(.*?)```", section, re.S).group(1)
    assert re.search(r"^\\password syncd\b", block, re.M)  # psql asks for it: out of history and the server log
    block = re.sub(r"^\\[^\n]*", "", block, flags=re.M)  # psql's own commands are not SQL
    return [s.strip() for s in re.sub(r"--[^\n]*", "", block).split(";") if s.strip()]


def for_test(stmt: str, role: str, database: str, schema: str) -> str:
    stmt = re.sub(r"\bsynapse_core\b", database, stmt)
    stmt = re.sub(r"\b(ROLE|TO|AUTHORIZATION) syncd\b", rf"\1 {role}", stmt)
    stmt = re.sub(r"\bsynapse_system_infrastructure\b", schema, stmt)
    return re.sub(r"\bepic18_global_expansion\b", f"{schema}_2", stmt)


def test_the_documented_schemas_are_the_sources_of_that_database_in_the_example():
    """The grants create one schema per source replicating into the database they name, as
    config.example.toml has them: they named a schema no source had ("epic7_sales", a
    source of another database besides), and a role set up so was refused at init."""
    import tomllib

    grants = documented_grants()
    database = next(re.search(r"ON DATABASE (\w+)", g).group(1) for g in grants if " ON DATABASE " in g)
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    default = example["postgres"]["dsn"]
    sources = {s.get("schema", s["name"]) for s in example["sources"]
               if s.get("dsn", default).rsplit("/", 1)[1] == database}
    made = {re.match(r"CREATE SCHEMA (\w+)", g).group(1) for g in grants if g.startswith("CREATE SCHEMA")}
    assert made == sources | {"syncd"}, (made, sources)


async def test_syncd_needs_only_the_documented_privileges(tmp_path, pg_dsn):
    grants = documented_grants()
    assert any(g.startswith("CREATE ROLE syncd LOGIN") for g in grants) and not any(
        w in " ".join(grants).upper() for w in ("SUPERUSER ", "CREATEDB ", "CREATEROLE ", "GRANT ALL"))
    role = f"syncd_role_{secrets.token_hex(4)}"
    database = pg_dsn.rsplit("/", 1)[1]
    await pg_statements(pg_dsn, *(for_test(g, role, database, "app") for g in grants))
    role_dsn = pg_dsn.replace("postgres@", f"{role}@")
    try:
        db = tmp_path / "app.db"
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT, n REAL)")
        conn.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, str(i), i / 2) for i in range(500)])
        conn.commit()
        conn.execute("CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT UNIQUE, tag TEXT COLLATE NOCASE, "
                     "seen DATETIME)")
        conn.executemany("INSERT INTO contacts VALUES (?, ?, ?, ?)",
                         [(i, f"c{i}@x", f"T{i % 3}", f"2026-11-0{1 + i % 9} 10:00:00") for i in range(1, 30)])
        conn.commit()
        (tmp_path / "backups").mkdir()
        backup = sqlite3.connect(tmp_path / "backups" / "app.db")
        conn.backup(backup)
        backup.close()
        cfg = write_config(tmp_path / "syncd.toml", role_dsn, [{"name": "app", "path": str(db)}], sections={
            "cutover": {"min_days": 0, "backup_glob": str(tmp_path / "backups" / "*.db")},
            "verify": {"interval_seconds": 0}})
        r = run_cli(cfg, "init")
        assert r.returncode == 0, r.stdout + r.stderr
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await wait_caught_up(db, role_dsn, "app", daemon=d)
            conn.execute("UPDATE items SET v = 'changed' WHERE id < 50")
            conn.execute("DELETE FROM items WHERE id >= 450")
            conn.commit()
            await wait_caught_up(db, role_dsn, "app", daemon=d)
            outputs = {verb: run_cli(cfg, *verb.split()) for verb in ("verify", "status", "report", "schema",
                                                                        "cutover")}
            assert outputs["verify"].returncode == 0, outputs["verify"].stdout + outputs["verify"].stderr
            assert outputs["cutover"].returncode == 0, outputs["cutover"].stdout + outputs["cutover"].stderr
            app = await asyncpg.connect(role_dsn)  # the application, as syncd's role here
            try:
                await app.execute("INSERT INTO app.contacts (email, tag, seen) VALUES ('new@x', 't1', now())")
                await app.execute("UPDATE app.items SET v = 'from Postgres' WHERE id = 1")
            finally:
                await app.close()
            await wait_back(cfg, db, role_dsn, daemon=d)
            outputs["rollback"] = run_cli(cfg, "rollback")
            assert outputs["rollback"].returncode == 0, outputs["rollback"].stdout + outputs["rollback"].stderr
            assert conn.execute("SELECT v FROM items WHERE id = 1").fetchone() == ("from Postgres",)
            assert d.stop() == 0
            log = d.log()
        for verb, out in outputs.items():
            assert "permission denied" not in (out.stdout + out.stderr).lower(), (verb, out.stdout + out.stderr)
        assert "permission denied" not in log.lower() and "ERROR" not in log, log
        assert await compare_table(str(db), pg_dsn, "app", "items") == []
        assert await compare_table(str(db), pg_dsn, "app", "contacts") == []
        owners = await _owners(pg_dsn)
        assert owners == {("app", "items"): role, ("syncd", "tables"): role}
    finally:
        await pg_statements(pg_dsn, f'DROP OWNED BY "{role}"', f'DROP ROLE "{role}"')
        conn.close()


async def _owners(dsn: str) -> dict[tuple[str, str], str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT schemaname, tablename, tableowner FROM pg_tables "
                                "WHERE (schemaname, tablename) IN (('app', 'items'), ('syncd', 'tables'))")
        return {(r[0], r[1]): r[2] for r in rows}
    finally:
        await conn.close()


async def test_create_on_the_database_lets_syncd_make_its_schemas(tmp_path, pg_dsn):
    role = f"syncd_role_{secrets.token_hex(4)}"
    database = pg_dsn.rsplit("/", 1)[1]
    await pg_statements(pg_dsn, f"CREATE ROLE {role} LOGIN",
                        f"GRANT CONNECT, TEMPORARY, CREATE ON DATABASE {database} TO {role}")
    try:
        db = tmp_path / "app.db"
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
        conn.commit()
        conn.close()
        cfg = write_config(tmp_path / "syncd.toml", pg_dsn.replace("postgres@", f"{role}@"),
                           [{"name": "app", "path": str(db)}])
        r = run_cli(cfg, "init")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "1 pending" in r.stdout
    finally:
        await pg_statements(pg_dsn, f'DROP OWNED BY "{role}"', f'DROP ROLE "{role}"')


async def test_a_privilege_the_role_lacks_is_one_line(tmp_path, pg_dsn):
    """A role not granted what docs/operations.md lists (here CREATE on the database):
    `syncd init` and the daemon say which privilege Postgres refused and where the grants
    are, in one line, never a traceback nor an "unexpected error"."""
    from tests.support.daemon import wait_for

    role = f"syncd_role_{secrets.token_hex(4)}"
    await pg_statements(pg_dsn, f"CREATE ROLE {role} LOGIN")
    try:
        db = tmp_path / "app.db"
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
        conn.commit()
        conn.close()
        cfg = write_config(tmp_path / "syncd.toml", pg_dsn.replace("postgres@", f"{role}@"),
                           [{"name": "app", "path": str(db)}])
        said = "permission denied for database"
        r = run_cli(cfg, "init")
        out = r.stdout + r.stderr
        assert r.returncode == 1 and "Traceback" not in out, out
        line = next(x for x in out.splitlines() if said in x)
        assert line.startswith("app: ERROR ") and f"refused syncd's role {role}" in line \
            and '"The Postgres role"' in line, line
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            wait_for(lambda: f"refused syncd's role {role}" in d.log(), 30, "the daemon's line", d)
            assert d.alive()
            assert d.stop() == 0
            assert "Traceback" not in d.log() and "unexpected error" not in d.log(), d.log()
    finally:
        await pg_statements(pg_dsn, f'DROP OWNED BY "{role}"', f'DROP ROLE "{role}"')


async def test_a_role_given_in_the_dsns_query_is_the_one_named(tmp_path, pg_dsn):
    """postgresql://host/db?user=R: Postgres refused R, and the line named the user syncd
    runs as on this host instead ("syncd's role root")."""
    role = f"syncd_role_{secrets.token_hex(4)}"
    await pg_statements(pg_dsn, f"CREATE ROLE {role} LOGIN")
    try:
        db = tmp_path / "app.db"
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
        conn.commit()
        conn.close()
        dsn = pg_dsn.replace("postgres@", "") + f"?user={role}"
        r = run_cli(write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}]), "init")
        line = next(x for x in (r.stdout + r.stderr).splitlines() if "permission denied for database" in x)
        assert f"refused syncd's role {role}:" in line, line
    finally:
        await pg_statements(pg_dsn, f'DROP OWNED BY "{role}"', f'DROP ROLE "{role}"')


async def test_every_verb_names_a_privilege_the_role_lacks_in_one_line(tmp_path, pg_dsn):
    """syncd set up by a superuser, then run as a role not granted the bookkeeping schema
    (another operator's DSN, a role changed in the unit): each verb says what Postgres
    refused in one line, never a traceback."""
    role = f"syncd_role_{secrets.token_hex(4)}"
    database = pg_dsn.rsplit("/", 1)[1]
    await pg_statements(pg_dsn, f"CREATE ROLE {role} LOGIN", f"GRANT CONNECT, CREATE ON DATABASE {database} TO {role}")
    try:
        db = tmp_path / "app.db"
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
        conn.commit()
        conn.close()
        assert run_cli(write_config(tmp_path / "admin.toml", pg_dsn, [{"name": "app", "path": str(db)}]),
                       "init").returncode == 0
        cfg = write_config(tmp_path / "syncd.toml", pg_dsn.replace("postgres@", f"{role}@"),
                           [{"name": "app", "path": str(db)}])
        for verb in (("report",), ("resync", "--source", "app", "--table", "items"), ("uninstall",), ("rehearse",)):
            r = run_cli(cfg, *verb)
            out = r.stdout + r.stderr
            assert r.returncode != 0 and "Traceback" not in out, (verb, out)
            line = next(x for x in out.splitlines() if "permission denied for schema" in x)
            assert '"The Postgres role"' in line, (verb, out)
        # `syncd status` reaches Postgres: it is the grant that is missing, said as such
        # (naming the role), never "Postgres unreachable".
        r = run_cli(cfg, "status")
        out = r.stdout + r.stderr
        assert r.returncode == 2 and "Traceback" not in out, out
        line = next(x for x in out.splitlines() if "permission denied for schema" in x)
        assert f"refused syncd's role {role}" in line and '"The Postgres role"' in line, out
        assert "unreachable" not in out.lower(), out
    finally:
        await pg_statements(pg_dsn, f'DROP OWNED BY "{role}"', f'DROP ROLE "{role}"')


async def test_a_schema_the_tightest_role_may_not_create_is_named_with_how_to_make_it(tmp_path, pg_dsn):
    """The tightest role docs/operations.md lists, with the source's schema made under
    another name than the source's (its `schema`, else its name): `syncd init` said only
    "permission denied for database D", naming no schema; the line names the schema syncd
    was creating and the statement that makes it for the role, and once it is run, init
    goes through."""
    role = f"syncd_role_{secrets.token_hex(4)}"
    database = pg_dsn.rsplit("/", 1)[1]
    await pg_statements(pg_dsn, *(for_test(g, role, database, "app_made_by_hand") for g in documented_grants()))
    try:
        db = tmp_path / "app.db"
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
        conn.commit()
        conn.close()
        cfg = write_config(tmp_path / "syncd.toml", pg_dsn.replace("postgres@", f"{role}@"),
                           [{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
        r = run_cli(cfg, "init")
        out = r.stdout + r.stderr
        assert r.returncode == 1 and "Traceback" not in out, out
        line = next(x for x in out.splitlines() if "permission denied for database" in x)
        assert line.startswith("app: ERROR ") and f"refused syncd's role {role}" in line, line
        make = f'CREATE SCHEMA "app" AUTHORIZATION "{role}"'
        assert 'schema "app"' in line and make in line and "password" not in line.lower(), line
        await pg_statements(pg_dsn, make)
        r = run_cli(cfg, "init")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        await pg_statements(pg_dsn, 'DROP SCHEMA IF EXISTS "app_made_by_hand" CASCADE',
                            'DROP SCHEMA IF EXISTS "app" CASCADE', f'DROP OWNED BY "{role}"', f'DROP ROLE "{role}"')


async def test_a_rehearsal_names_the_grant_it_needs_beyond_the_tightest_one(tmp_path, pg_dsn):
    """The tightest role docs/operations.md lists (its schemas made for it) runs everything
    but `syncd rehearse`, which makes schemas of its own and drops them after: the refusal
    named neither the role nor the grant ("load: permission denied for database ...");
    it names both now, and the grant it names is the one the rehearsal needs."""
    role = f"syncd_role_{secrets.token_hex(4)}"
    database = pg_dsn.rsplit("/", 1)[1]
    await pg_statements(pg_dsn, *(for_test(g, role, database, "app") for g in documented_grants()))
    try:
        db = tmp_path / "app.db"
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("INSERT INTO items VALUES (1, 'a')")
        conn.commit()
        conn.close()
        cfg = write_config(tmp_path / "syncd.toml", pg_dsn.replace("postgres@", f"{role}@"),
                           [{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
        assert run_cli(cfg, "init").returncode == 0
        r = run_cli(cfg, "rehearse")
        out = r.stdout + r.stderr
        assert r.returncode == 1 and "Traceback" not in out, out
        line = next(x for x in out.splitlines() if "permission denied for database" in x)
        assert f"refused syncd's role {role}" in line and f'GRANT CREATE ON DATABASE "{database}" TO "{role}"' in line \
            and '"app_rehearsal"' in line and '"syncd_rehearsal"' in line, line
        await pg_statements(pg_dsn, f"GRANT CREATE ON DATABASE {database} TO {role}")
        r = run_cli(cfg, "rehearse")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        await pg_statements(pg_dsn, f'DROP OWNED BY "{role}"', f'DROP ROLE "{role}"')


async def test_a_table_the_role_may_not_write_holds_only_that_table(tmp_path, pg_dsn):
    """syncd's role not allowed to write one table (its INSERT revoked there, say): that
    table is held, naming the refusal, while the source's other tables stream on; once the
    grant is back it loads, as a change refused so is held and resumes. Before, a load of
    it made the whole source fail, every table of it stopped, retried for good."""
    from tests.support.sync import eventually, pg_rows, table_states

    role = f"syncd_role_{secrets.token_hex(4)}"
    database = pg_dsn.rsplit("/", 1)[1]
    await pg_statements(pg_dsn, f"CREATE ROLE {role} LOGIN", f'ALTER DATABASE "{database}" OWNER TO {role}')
    try:
        db = tmp_path / "app.db"
        conn = sqlite3.connect(db)
        conn.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE tags (id INTEGER "
                           "PRIMARY KEY, v TEXT); CREATE TABLE notes (id INTEGER PRIMARY KEY, v TEXT); "
                           "INSERT INTO items VALUES (1, 'a');")
        conn.commit()
        cfg = write_config(tmp_path / "syncd.toml", pg_dsn.replace("postgres@", f"{role}@"),
                           [{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await wait_caught_up(db, pg_dsn, "app", daemon=d)
            assert d.stop() == 0
        # Loaded again (a column retyped in Postgres by hand), into tables it may not write:
        # one whose rows are replaced once loaded aside, one empty, loaded in place.
        await pg_statements(pg_dsn, *(f"ALTER TABLE app.{t} ALTER COLUMN v TYPE char(5)" for t in ("items", "tags")),
                            f"REVOKE INSERT ON app.items, app.tags FROM {role}")
        conn.execute("INSERT INTO tags VALUES (1, 'red')")
        conn.execute("INSERT INTO notes VALUES (1, 'still streaming')")
        conn.commit()
        with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
            async def held() -> bool:
                states = await table_states(pg_dsn, "app")
                return all(states.get(t, ("",))[0] == "held" for t in ("items", "tags"))

            await eventually(held, 60, "the tables held", d)
            states = await table_states(pg_dsn, "app")
            assert all("permission denied" in states[t][1] for t in ("items", "tags")), states

            async def streamed() -> bool:
                return await pg_rows(pg_dsn, "SELECT v FROM app.notes") == [("still streaming",)]

            await eventually(streamed, 30, "the other table streamed", d)
            await pg_statements(pg_dsn, f"GRANT INSERT ON app.items, app.tags TO {role}")
            await wait_caught_up(db, pg_dsn, "app", daemon=d)
            assert await pg_rows(pg_dsn, "SELECT id, v FROM app.items") == [(1, "a")]
            assert await pg_rows(pg_dsn, "SELECT id, v FROM app.tags") == [(1, "red")]
            assert d.stop() == 0
        conn.close()
    finally:
        await pg_statements(pg_dsn, f'ALTER DATABASE "{database}" OWNER TO postgres', f'DROP OWNED BY "{role}" CASCADE',
                            f'DROP ROLE "{role}"')
