"""The application's triggers, rewritten in Postgres after the cutover, and the stream
from SQLite after a rollback.

docs/schema.md: the application's SQLite triggers are never copied, "if the application
relies on one, write it again as a Postgres trigger function". A team does exactly that
on its first day on Postgres: the SQLite trigger that touches `updated_at` becomes a
BEFORE UPDATE trigger in Postgres. On the way back syncd keeps the application's SQLite
triggers from running for the rows it writes ("Postgres already holds their effects").
After a `syncd rollback` the application writes SQLite again, its SQLite trigger runs
there, and the forward stream must make Postgres hold exactly what SQLite holds: the
rows' effects are already in them, so the Postgres trigger must not change them again,
or no verification is ever clean and the next `syncd cutover` is refused."""

from __future__ import annotations

import sqlite3

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, wait_back


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT NOT NULL,
                            updated_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP);
        CREATE TRIGGER tasks_touch AFTER UPDATE OF title ON tasks BEGIN
            UPDATE tasks SET updated_at = CURRENT_TIMESTAMP WHERE id = NEW.id;
        END;
    """)
    conn.executemany("INSERT INTO tasks (title, updated_at) VALUES (?, ?)",
                     [(f"task {i}", f"2026-11-0{i} 10:00:00") for i in range(1, 6)])
    conn.commit()
    conn.close()


TOUCH = ["""
CREATE FUNCTION app.tasks_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$""",
         "CREATE TRIGGER tasks_touch BEFORE UPDATE OF title ON app.tasks FOR EACH ROW EXECUTE FUNCTION app.tasks_touch()"]


async def test_the_applications_postgres_trigger_does_not_rewrite_rows_streamed_from_sqlite_after_a_rollback(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        for sql in TOUCH:  # the SQLite trigger, written again for Postgres
            await pg_rows(pg_dsn, sql)
        await pg_rows(pg_dsn, "UPDATE app.tasks SET title = 'renamed in postgres' WHERE id = 2")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr

        # The application writes SQLite again; its own trigger touches the row there.
        conn = sqlite3.connect(db)
        conn.execute("UPDATE tasks SET title = 'renamed in sqlite' WHERE id = 3")
        conn.commit()
        sqlite_row = conn.execute("SELECT id, title, updated_at FROM tasks WHERE id = 3").fetchone()
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        # updated_at is typed `timestamp` since the cutover; SQLite holds it as '%Y-%m-%d %H:%M:%S'
        pg_row = (await pg_rows(pg_dsn, "SELECT id, title, updated_at::text FROM app.tasks WHERE id = 3"))[0]
        assert pg_row == sqlite_row, f"SQLite holds {sqlite_row}, Postgres {pg_row}"
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr


async def test_a_trigger_written_during_dual_write_stays_off_until_the_cutover_enables_it(tmp_path, make_config, pg_dsn):
    """Written in Postgres before the first cutover: disabled, by name, while syncd
    writes the table from SQLite; `syncd schema` and the dry run say so; the cutover
    enables it again, and only it: a trigger the team disabled themselves stays so."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        for sql in TOUCH:
            await pg_rows(pg_dsn, sql)
        await pg_rows(pg_dsn, "CREATE FUNCTION app.tasks_shout() RETURNS trigger LANGUAGE plpgsql AS $$ "
                              "BEGIN NEW.title := upper(NEW.title); RETURN NEW; END $$")
        await pg_rows(pg_dsn, "CREATE TRIGGER tasks_shout BEFORE UPDATE ON app.tasks FOR EACH ROW "
                              "EXECUTE FUNCTION app.tasks_shout()")
        await pg_rows(pg_dsn, "ALTER TABLE app.tasks DISABLE TRIGGER tasks_shout")  # the team's own choice

        conn = sqlite3.connect(db)
        conn.execute("UPDATE tasks SET title = 'renamed in sqlite' WHERE id = 4")
        conn.commit()
        sqlite_row = conn.execute("SELECT id, title, updated_at FROM tasks WHERE id = 4").fetchone()
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert (await pg_rows(pg_dsn, "SELECT id, title, updated_at::text FROM app.tasks WHERE id = 4"))[0] == sqlite_row
        d.wait_log('disabled the application\'s trigger "tasks_touch" on "tasks"', timeout=30)
        assert "tasks_shout" not in d.log()
        s = run_cli(cfg, "schema")
        assert s.returncode == 0, s.stdout + s.stderr
        assert '-- the application\'s trigger "tasks_touch" on "tasks": disabled by syncd' in s.stdout
        assert "tasks_shout" not in s.stdout
        dry = run_cli(cfg, "cutover", "--dry-run")
        assert 'would enable the application\'s trigger "tasks_touch" on "tasks" again' in dry.stdout, dry.stdout

        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        assert 'enabled the application\'s trigger "tasks_touch" on "tasks" again' in out, out
        enabled = dict(await pg_rows(pg_dsn, "SELECT tgname, tgenabled::text FROM pg_trigger "
                                             "WHERE tgrelid = 'app.tasks'::regclass AND tgname LIKE 'tasks_%'"))
        assert enabled == {"tasks_touch": "O", "tasks_shout": "D"}
        # The application writes Postgres now: its trigger runs there.
        await pg_rows(pg_dsn, "UPDATE app.tasks SET title = 'renamed in postgres' WHERE id = 4")
        after = (await pg_rows(pg_dsn, "SELECT title, updated_at::text FROM app.tasks WHERE id = 4"))[0]
        assert after[0] == "renamed in postgres" and after[1] != sqlite_row[2]


async def test_uninstall_enables_again_the_triggers_syncd_disabled(tmp_path, make_config, pg_dsn):
    """A team leaving syncd during dual-write (another tool, or no move after all) gets
    its Postgres triggers back as they were: `syncd uninstall` enables again those syncd
    disabled, and says so."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        for sql in TOUCH:
            await pg_rows(pg_dsn, sql)
        conn = sqlite3.connect(db)
        conn.execute("UPDATE tasks SET title = 'renamed in sqlite' WHERE id = 4")
        conn.commit()
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        d.wait_log('disabled the application\'s trigger "tasks_touch" on "tasks"', timeout=30)
        assert d.stop() == 0
    out = run_cli(cfg, "uninstall")
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'enabled the application\'s trigger "tasks_touch" on "tasks" again' in out.stdout, out.stdout
    assert await pg_rows(pg_dsn, "SELECT tgenabled::text FROM pg_trigger "
                                 "WHERE tgrelid = 'app.tasks'::regclass AND tgname = 'tasks_touch'") == [("O",)]
