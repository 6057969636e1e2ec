"""Row-level security a team turns on in Postgres after the cutover hides rows from a
role it applies to: syncd's, when the policy is FORCEd on the tables' owner (or the
tables are given to another owner). syncd never reads through such a policy: its reads
would miss the rows the policy hides, and the way back would delete them from SQLite,
a check find them missing in Postgres (and a repair delete them). Its sessions run with
row_security off, so a read a policy would filter fails instead, naming the table, and
nothing is deleted; once the policy no longer applies to syncd, the way back goes on."""

from __future__ import annotations

import secrets
import sqlite3

from tests.conftest import write_config
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.sync import pg_statements, wait_caught_up
from tests.support.way_back import typeof, wait_back
from tests.test_postgres_role import documented_grants, for_test

ROWS = [(i, "a" if i % 2 else "b", str(i)) for i in range(10)]


async def test_rows_a_policy_hides_from_syncd_are_never_deleted_from_sqlite(tmp_path, pg_dsn):
    role = f"syncd_role_{secrets.token_hex(4)}"
    database = pg_dsn.rsplit("/", 1)[1]
    await pg_statements(pg_dsn, *(for_test(g, role, database, "app") for g in documented_grants()))
    role_dsn = pg_dsn.replace("postgres@", f"{role}@")  # no superuser: row-level security applies to it
    try:
        db = tmp_path / "app.db"
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, tenant TEXT, v TEXT)")
        conn.executemany("INSERT INTO items VALUES (?, ?, ?)", ROWS)
        conn.commit()
        conn.close()
        (tmp_path / "backups").mkdir()
        src, dst = sqlite3.connect(db), sqlite3.connect(tmp_path / "backups" / "app.db")
        src.backup(dst)
        src.close()
        dst.close()
        cfg = write_config(tmp_path / "syncd.toml", role_dsn, [{"name": "app", "path": str(db)}], sections={
            "cutover": {"min_days": 0, "backup_glob": str(tmp_path / "backups" / "*.db")},
            "verify": {"interval_seconds": 0}})
        assert run_cli(cfg, "init").returncode == 0
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await wait_caught_up(db, role_dsn, "app", daemon=d)
            assert run_cli(cfg, "verify").returncode == 0
            r = run_cli(cfg, "cutover")
            assert r.returncode == 0, r.stdout + r.stderr
            await wait_back(tmp_path / "syncd.toml", db, role_dsn, daemon=d)
            # The team's policy: each tenant sees its own rows, the tables' owner too.
            await pg_statements(pg_dsn, "ALTER TABLE app.items ENABLE ROW LEVEL SECURITY",
                                "ALTER TABLE app.items FORCE ROW LEVEL SECURITY",
                                "CREATE POLICY tenant_a ON app.items USING (tenant = 'a')",
                                "UPDATE app.items SET v = 'changed' WHERE id IN (1, 2)")
            wait_for(lambda: 'row-level security policy for table "items"' in d.log(), 60,
                     "the way back naming the policy that stops it", d)
            assert typeof(db, "SELECT * FROM items ORDER BY id") == ROWS  # nothing hidden was deleted
            # Said as the operator's to fix, naming what to do, not as a bug with a traceback.
            assert "BYPASSRLS" in d.log() and "unexpected error" not in d.log(), d.log()[-3000:]
            v = run_cli(cfg, "verify")
            assert v.returncode != 0 and 'row-level security policy for table "items"' in v.stdout, v.stdout
            assert "only in SQLite" not in v.stdout, v.stdout
            repair = run_cli(cfg, "verify", "--repair")
            assert repair.returncode != 0, repair.stdout
            assert typeof(db, "SELECT count(*) FROM items") == [(10,)]
            # The policy no longer applies to syncd's role: the way back goes on.
            await pg_statements(pg_dsn, "ALTER TABLE app.items NO FORCE ROW LEVEL SECURITY")
            await wait_back(tmp_path / "syncd.toml", db, role_dsn, daemon=d)
            assert typeof(db, "SELECT id, v FROM items WHERE id IN (1, 2) ORDER BY id") == \
                [(1, "changed"), (2, "changed")]
            assert await compare_table(str(db), pg_dsn, "app", "items") == []
            assert d.stop() == 0
    finally:
        await pg_statements(pg_dsn, f'DROP OWNED BY "{role}"', f'DROP ROLE "{role}"')
