"""`syncd rollback`: the mirror of `syncd cutover`. Postgres is frozen for the application
(a superuser's writes too; syncd's own pass), the last changes drain to SQLite, every
row is verified, the direction turns around and SQLite takes the application's writes
again while the forward stream resumes; anything failing undoes it all. A later
`syncd cutover` switches again, as often as needed."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import sqlite3
import subprocess
import time

import asyncpg
import pytest

from tests.support.compare import compare_all
from tests.support.daemon import DaemonProcess, held_at, run_cli, syncd_cmd, wait_for
from tests.support.sync import eventually, pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, cut_over_and_stop, tamper_sqlite, wait_back

SCHEMA = """
CREATE TABLE deals (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT, amount REAL, closed DATETIME);
CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT UNIQUE);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT);
"""
TABLES = ["deals", "contacts", "settings"]
# The daemon's rechecks (an abandoned rollback's freeze, a table paused or held) every
# second instead of every 10 s: what they find is the same, found sooner.
RECHECK = {"held_table_retry_seconds": 1}


def make_app(db) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript(SCHEMA)
    conn.executemany("INSERT INTO deals (title, amount, closed) VALUES (?, ?, ?)",
                     [(f"deal {i}", 1000.0 * i, "2026-11-01 12:00:00") for i in range(1, 21)])
    conn.executemany("INSERT INTO contacts VALUES (?, ?)", [(i, f"c{i}@x") for i in range(1, 17)])
    conn.execute("INSERT INTO settings VALUES ('theme', 'dark')")
    return conn


def sqlite_writable(db) -> bool:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("UPDATE settings SET value = value WHERE key = 'theme'")
        return True
    except sqlite3.IntegrityError as e:
        assert "moved to PostgreSQL by syncd" in str(e)
        return False
    finally:
        conn.close()


async def postgres_refusal(dsn: str, lock_wait: str = "5s") -> str | None:
    """The error a superuser session gets writing Postgres, or None if it may write. A
    write that waits `lock_wait` for a lock (a switch's open transaction holds the tables)
    is refused too, with the lock timeout's message."""
    conn = await asyncpg.connect(dsn, server_settings={"lock_timeout": lock_wait})  # user postgres: a superuser
    try:
        async with conn.transaction():
            await conn.execute("UPDATE app.settings SET value = value WHERE key = 'theme'")
            raise _Undo
    except _Undo:
        return None
    except asyncpg.PostgresError as e:
        return str(e)
    finally:
        await conn.close()


class _Undo(Exception):
    pass


async def direction(dsn: str) -> str:
    return (await pg_rows(dsn, "SELECT direction FROM syncd.sources WHERE source = 'app'"))[0][0]


async def lookup_indexes(dsn: str) -> list[str]:
    """The tables holding syncd's REPLACE lookup indexes (contacts, for its UNIQUE email;
    tests/test_way_back_visibility.py: they go when the way back ends)."""
    return [r[0] for r in await pg_rows(dsn, "SELECT tablename FROM pg_indexes WHERE schemaname = 'app' AND "
                                             "starts_with(indexname, '_syncd_uq_')")]


async def cut_over_and_stopped(make_config, tmp_path, pg_dsn) -> tuple:
    """The app cut over, SQLite following Postgres, and no daemon running: (db, config)."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    await cut_over_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    return db, cfg


def downtime(stdout: str) -> float:
    return float(re.search(r"write downtime ([0-9.]+) s", stdout).group(1))


async def test_rollback_and_cutover_again_twice_with_writes_in_between(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    app = make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        for cycle in (1, 2):
            await wait_caught_up(db, pg_dsn, "app", daemon=d)
            assert await lookup_indexes(pg_dsn) == ["contacts"]
            await cut_over(cfg, db, pg_dsn, daemon=d)
            # kept through the rollback window: the forward stream after a rollback needs it, and
            # building it again on a full table would be one long step
            assert await lookup_indexes(pg_dsn) == ["contacts"]
            assert not sqlite_writable(db) and await postgres_refusal(pg_dsn) is None
            pg = await asyncpg.connect(pg_dsn)
            try:
                new_id = await pg.fetchval("INSERT INTO app.deals (title, amount, closed) VALUES ($1, 1, "
                                           "'2026-12-01 09:00:00') RETURNING id", f"pg {cycle}")
                await pg.execute("UPDATE app.contacts SET email = 'moved@' || $1 WHERE id = 2", str(cycle))
                await pg.execute("DELETE FROM app.deals WHERE id = $1", cycle)
            finally:
                await pg.close()
            dry = run_cli(cfg, "rollback", "--dry-run")
            assert dry.returncode == 0, dry.stdout + dry.stderr
            assert "ready to roll back (dry run" in dry.stdout and "expected write downtime" in dry.stdout
            assert not sqlite_writable(db)

            r = run_cli(cfg, "rollback")
            assert r.returncode == 0, r.stdout + r.stderr
            assert "rolled back to SQLite" in r.stdout and 0 < downtime(r.stdout) < 30
            assert "verified equal" in r.stdout
            assert sqlite_writable(db) and await direction(pg_dsn) == "to_postgres"
            refusal = await postgres_refusal(pg_dsn)
            assert refusal is not None and "moved back to SQLite by syncd" in refusal
            # the application is back on SQLite; AUTOINCREMENT continues after Postgres's ids
            app.execute("INSERT INTO deals (title, amount) VALUES (?, 2)", (f"sqlite {cycle}",))
            assert app.execute("SELECT max(id) FROM deals").fetchone()[0] > new_id
            app.execute("UPDATE settings SET value = ? WHERE key = 'theme'", (f"cycle {cycle}",))
            await wait_caught_up(db, pg_dsn, "app", daemon=d)  # the forward stream writes through the freeze
            assert await compare_all(str(db), pg_dsn, "app", TABLES) == []
            again = run_cli(cfg, "rollback")
            assert again.returncode == 0 and "not cut over" in again.stdout
        assert (await pg_rows(pg_dsn, "SELECT value FROM app.settings")) == [("cycle 2",)]
        kinds = await pg_rows(pg_dsn, "SELECT kind, state FROM syncd.switches WHERE source = 'app' ORDER BY id")
        assert kinds == [("cutover", "done"), ("rollback", "done")] * 2
        assert d.stop() == 0
    assert run_cli(cfg, "verify").returncode == 0


async def test_a_rollback_starts_dual_write_anew_for_the_next_cutover(tmp_path, make_config, pg_dsn):
    """A consistency error recorded while SQLite followed Postgres (found, then mended) is
    outside the window the next cutover's checklist needs clean, with min_days = 0 too:
    dual-write counts from the rollback."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)

        async def behind_syncds_back(value: str) -> None:  # a write Postgres's capture never sees
            conn = await asyncpg.connect(pg_dsn)
            try:
                await conn.execute("SET session_replication_role = replica")
                await conn.execute("UPDATE app.settings SET value = $1 WHERE key = 'theme'", value)
            finally:
                await conn.close()

        await behind_syncds_back("drifted")
        assert run_cli(cfg, "verify").returncode == 1  # recorded in the history
        await behind_syncds_back("dark")
        assert run_cli(cfg, "verify").returncode == 0
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        dry = run_cli(cfg, "cutover", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "consistency error" not in dry.stdout
        assert d.stop() == 0


async def test_a_rollback_whose_verification_finds_a_difference_is_undone(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        # SQLite changed behind syncd's back: no change in Postgres explains it, so the
        # rollback's verification must see it
        tamper_sqlite(db, "UPDATE contacts SET email = 'tampered' WHERE id = 3")
        r = run_cli(cfg, "rollback")
        assert r.returncode == 1, r.stdout
        assert "app: UNDONE" in r.stdout and "final verification found 1 table(s) not equal" in r.stdout
        assert await postgres_refusal(pg_dsn) is None  # the application writes Postgres again
        assert not sqlite_writable(db) and await direction(pg_dsn) == "to_sqlite"
        assert (await pg_rows(pg_dsn, "SELECT state FROM syncd.switches WHERE kind = 'rollback'")) == [("undone",)]
        # and the way back goes on
        await pg_rows(pg_dsn, "UPDATE app.contacts SET email = 'fixed in postgres' WHERE id = 3")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert await compare_all(str(db), pg_dsn, "app", TABLES) == []
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr


async def test_a_rollback_is_refused_while_the_last_verification_found_a_difference(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        tamper_sqlite(db, "UPDATE contacts SET email = 'tampered' WHERE id = 3")
        found = run_cli(cfg, "verify")
        assert found.returncode == 1, found.stdout + found.stderr
        # The dry run says what the rollback would meet: its own verification refusing
        for args in (("rollback", "--dry-run"), ("rollback",)):
            r = run_cli(cfg, *args)
            assert r.returncode == 1, r.stdout + r.stderr
            assert "app: REFUSED" in r.stdout and "ready to roll back" not in r.stdout
            assert 'table "contacts": the last verification found 1 row(s) that differ' in r.stdout
            assert "still there when checked again now" in r.stdout and "syncd verify --repair" in r.stdout
        # refused before anything froze
        assert (await pg_rows(pg_dsn, "SELECT count(*) FROM syncd.switches WHERE kind = 'rollback'")) == [(0,)]
        assert await postgres_refusal(pg_dsn) is None
        repaired = run_cli(cfg, "verify", "--repair")
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert await compare_all(str(db), pg_dsn, "app", TABLES) == []
        dry = run_cli(cfg, "rollback", "--dry-run")
        assert dry.returncode == 0 and "ready to roll back (dry run" in dry.stdout, dry.stdout + dry.stderr
        assert run_cli(cfg, "rollback").returncode == 0
        await wait_caught_up(db, pg_dsn, "app", daemon=d)


async def test_a_failed_check_since_does_not_hide_rows_the_last_comparison_found_differing(
        tmp_path, make_config, pg_dsn):
    db, cfg = await cut_over_and_stopped(make_config, tmp_path, pg_dsn)
    tamper_sqlite(db, "UPDATE contacts SET email = 'tampered' WHERE id = 3")
    assert run_cli(cfg, "verify").returncode == 1
    # a check of the table that fails (a session keeps it locked past the statement timeout)
    slow = cfg.with_name("slow.toml")
    slow.write_text(cfg.read_text().replace("[postgres]\n", "[postgres]\nstatement_timeout_seconds = 1\n", 1))
    holder = await asyncpg.connect(pg_dsn)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE app.contacts IN ACCESS EXCLUSIVE MODE")
            failed = await asyncio.to_thread(run_cli, slow, "verify", "--table", "contacts")
    finally:
        await holder.close()
    assert "ERROR: Postgres: timed out" in failed.stdout, failed.stdout + failed.stderr
    for args in (("rollback", "--dry-run"), ("rollback",)):
        r = run_cli(cfg, *args)
        assert r.returncode == 1 and 'table "contacts": the last verification found 1 row(s) that differ' in r.stdout, \
            r.stdout + r.stderr
    assert (await pg_rows(pg_dsn, "SELECT count(*) FROM syncd.switches WHERE kind = 'rollback'")) == [(0,)]


async def test_the_comparison_begun_last_is_the_latest_even_when_an_earlier_one_ends_after_it(
        tmp_path, make_config, pg_dsn):
    """Two verifications that overlap (one waiting for rows in flight): the one begun
    later compared the newer rows, as `syncd status` and the report take it. A clean run
    begun before the one that found the difference, and ending after it, does not make
    the rollback's preflight pass (its own verification would find the row and undo it)."""
    db, cfg = await cut_over_and_stopped(make_config, tmp_path, pg_dsn)
    assert run_cli(cfg, "verify", "--table", "contacts").returncode == 0
    tamper_sqlite(db, "UPDATE contacts SET email = 'tampered' WHERE id = 3")
    assert run_cli(cfg, "verify", "--table", "contacts").returncode == 1
    [(clean, found)] = await pg_rows(pg_dsn, "SELECT min(id), max(id) FROM syncd.verify_runs "
                                             "WHERE table_name = 'contacts' AND started_at > (SELECT max(finished_at) "
                                             "FROM syncd.switches WHERE kind = 'cutover')")
    assert clean != found
    await pg_rows(pg_dsn, f"UPDATE syncd.verify_runs SET finished_at = (SELECT finished_at + interval '1 second' "
                          f"FROM syncd.verify_runs WHERE id = {found}) WHERE id = {clean}")
    r = run_cli(cfg, "rollback", "--dry-run")
    assert r.returncode == 1 and 'table "contacts": the last verification found 1 row(s) that differ' in r.stdout, \
        r.stdout + r.stderr


async def test_rows_in_flight_to_sqlite_do_not_refuse_a_rollback_with_the_daemon_stopped(
        tmp_path, make_config, pg_dsn):
    """A table the last verification found differing is checked again; rows the
    application wrote in Postgres since are still in flight with no daemon running, and
    are the rollback's own drain to bring back, not a reason to refuse it."""
    db, cfg = await cut_over_and_stopped(make_config, tmp_path, pg_dsn)
    tamper_sqlite(db, "UPDATE contacts SET email = 'tampered' WHERE id = 3")
    assert run_cli(cfg, "verify").returncode == 1
    tamper_sqlite(db, "UPDATE contacts SET email = 'c3@x' WHERE id = 3")  # fixed since
    await pg_rows(pg_dsn, "UPDATE app.contacts SET email = 'new' WHERE id = 5")  # nothing streams back
    started = time.monotonic()
    dry = run_cli(cfg, "rollback", "--dry-run")
    assert dry.returncode == 0 and "ready to roll back (dry run" in dry.stdout, dry.stdout + dry.stderr
    assert time.monotonic() - started < 20  # no wait for a stream that does not run
    # still differing, beside a row in flight: refused, named
    tamper_sqlite(db, "UPDATE contacts SET email = 'tampered' WHERE id = 3")
    assert run_cli(cfg, "verify", "--wait", "0").returncode == 1
    r = run_cli(cfg, "rollback")
    assert r.returncode == 1 and 'table "contacts": the last verification found 1 row(s) that differ' in r.stdout, \
        r.stdout + r.stderr
    tamper_sqlite(db, "UPDATE contacts SET email = 'c3@x' WHERE id = 3")
    r = run_cli(cfg, "rollback")
    assert r.returncode == 0, r.stdout + r.stderr
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT email FROM contacts WHERE id = 5").fetchone() == ("new",)
    conn.close()


async def test_rollback_is_refused_with_every_reason_and_changes_nothing(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, stream=RECHECK)
    r = run_cli(cfg, "rollback", "--source", "nope")
    assert r.returncode == 2 and "no source named 'nope'" in r.stderr
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0 and "not cut over (never cut over)" in r.stdout
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.contacts DROP COLUMN email")  # SQLite cannot follow that
        await eventually(lambda: _state(pg_dsn, "contacts", "paused"), 30, "the table paused", d)
        r = run_cli(cfg, "rollback")
        assert r.returncode == 1, r.stdout
        assert "app: REFUSED" in r.stdout and 'table "contacts" does not follow Postgres (paused)' in r.stdout
        assert '"email" exist in SQLite but no longer in Postgres' in r.stdout
        assert await postgres_refusal(pg_dsn) is None and not sqlite_writable(db)
        assert await direction(pg_dsn) == "to_sqlite"


async def test_a_source_never_cut_over_whose_file_is_gone_has_nothing_to_roll_back(tmp_path, make_config, pg_dsn):
    """A source set up and never cut over whose file was removed since (a tenant given up):
    SQLite was the application's database all along, so nothing is to be rolled back; said
    so, naming the source, not refused for the file."""
    db = tmp_path / "app.db"
    make_app(db).close()
    cfg = make_config([{"name": "app", "path": str(db)}])
    assert run_cli(cfg, "init").returncode == 0
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"app.db{suffix}").unlink(missing_ok=True)
    for dry_run in ((), ("--dry-run",)):
        r = run_cli(cfg, "rollback", *dry_run)
        assert r.returncode == 0 and r.stdout.startswith("app: not cut over (never cut over); nothing to do"), \
            r.stdout + r.stderr
        assert "does not exist" not in r.stdout + r.stderr, r.stdout


async def test_sources_never_cut_over_are_not_counted_as_rolled_back(tmp_path, make_config, pg_dsn):
    """`syncd rollback` over every source, most of them never cut over: its last line
    counted them "rolled back already", which none of them ever was; it says they are on
    SQLite already, as each one's own line does."""
    sources = []
    for name in ("app", "crm"):
        make_app(tmp_path / f"{name}.db").close()
        sources.append({"name": name, "path": str(tmp_path / f"{name}.db")})
    cfg = make_config(sources)
    assert run_cli(cfg, "init").returncode == 0
    dry = run_cli(cfg, "rollback", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("not cut over (never cut over); nothing to do") == 2, dry.stdout
    assert dry.stdout.rstrip().endswith(
        "syncd rollback: dry run: 0 of 2 source(s) ready, 2 on SQLite already, 0 not"), dry.stdout
    r = run_cli(cfg, "rollback")
    assert r.returncode == 0 and r.stdout.rstrip().endswith(
        "syncd rollback: 2 of 2 source(s) rolled back (or on SQLite already), 0 not: see each above"), r.stdout
    assert "rolled back already" not in dry.stdout + r.stdout


async def _state(dsn: str, table: str, state: str) -> bool:
    rows = await pg_rows(dsn, "SELECT state FROM syncd.tables WHERE table_name = $1", table)
    return rows == [(state,)]


async def test_a_reader_holding_a_rollback_journal_file_refuses_the_rollback_before_any_freeze(
        tmp_path, make_config, pg_dsn):
    """The rollback must write SQLite while Postgres is frozen for the application; in a
    rollback-journal file an open read transaction holds every write off, so a rollback
    started under one would freeze Postgres as long as the reader reads."""
    db = tmp_path / "app.db"
    make_app(db).execute("PRAGMA journal_mode=delete")
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "UPDATE app.deals SET title = 'written in Postgres' WHERE id = 1")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        reader = sqlite3.connect(db, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM deals").fetchone()  # holds the file's shared lock
        try:
            started = time.monotonic()
            r = run_cli(cfg, "rollback")
            took = time.monotonic() - started
        finally:
            reader.execute("COMMIT")
            reader.close()
        assert r.returncode == 1 and "stayed locked by another connection" in r.stdout, r.stdout + r.stderr
        assert took < 60, took  # refused within its wait, never frozen for as long as the reader
        assert await postgres_refusal(pg_dsn) is None and await direction(pg_dsn) == "to_sqlite"
        assert await pg_rows(pg_dsn, "SELECT kind, state FROM syncd.switches ORDER BY id") == [("cutover", "done")]
        r = run_cli(cfg, "rollback")  # the reader is gone
        assert r.returncode == 0, r.stdout + r.stderr
        assert await compare_all(str(db), pg_dsn, "app", TABLES) == []


# Ctrl-C, a kill (SIGTERM) or the terminal gone (SIGHUP): each stops the rollback the same way.
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"])
async def test_an_interrupted_rollback_undoes_itself_and_says_so(tmp_path, make_config, pg_dsn, sig):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        with held_at(cfg, "rollback", "verified") as proc:
            assert await postgres_refusal(pg_dsn) is not None  # frozen while it runs
            proc.send_signal(sig)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert "syncd rollback: interrupted" in out and "app: UNDONE: interrupted" in out, out
        assert await postgres_refusal(pg_dsn) is None and await direction(pg_dsn) == "to_sqlite"
        assert not sqlite_writable(db)


async def test_while_a_rollback_runs_postgres_does_not_send_the_application_to_the_frozen_file(
        tmp_path, make_config, pg_dsn):
    """Postgres's refusal while a rollback runs (or after one was killed there): it said
    "the application writes its SQLite file again" while that file still refused every
    write, sending the application to a database that would not take it either."""
    db, cfg = await cut_over_and_stopped(make_config, tmp_path, pg_dsn)
    with held_at(cfg, "rollback", "verified") as proc:
        refusal = await postgres_refusal(pg_dsn)
        assert refusal is not None and "moved back to SQLite by syncd" in refusal, refusal
        assert not sqlite_writable(db)
        assert "writes its SQLite file again" not in refusal, refusal
        assert "once `syncd rollback` has finished, not before" in refusal, refusal
        proc.kill()
        proc.wait(10)
    refusal = await postgres_refusal(pg_dsn)  # killed: so it stays, until undone
    assert refusal is not None and "once `syncd rollback` has finished, not before" in refusal, refusal
    r = run_cli(cfg, "rollback")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sqlite_writable(db) and await direction(pg_dsn) == "to_postgres"


async def test_a_signal_while_the_rollback_stops_its_own_stream_still_undoes_it(tmp_path, make_config, pg_dsn):
    """With no daemon, the rollback brings SQLite up to date with its own reverse stream; a
    SIGTERM that lands while that stream winds down interrupts the rollback."""
    db, cfg = await cut_over_and_stopped(make_config, tmp_path, pg_dsn)
    with held_at(cfg, "rollback", "stopping-stream") as proc:
        assert await postgres_refusal(pg_dsn) is not None
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert "app: UNDONE: interrupted" in out, out
    assert await postgres_refusal(pg_dsn) is None and await direction(pg_dsn) == "to_sqlite"
    assert not sqlite_writable(db)


async def test_rollback_with_the_daemon_stopped(tmp_path, make_config, pg_dsn):
    db, cfg = await cut_over_and_stopped(make_config, tmp_path, pg_dsn)
    await pg_rows(pg_dsn, "UPDATE app.settings SET value = 'light' WHERE key = 'theme'")  # nothing streams back
    r = run_cli(cfg, "rollback")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "by syncd's reverse stream run in this process" in r.stdout
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM settings").fetchone() == ("light",)
    conn.close()
    assert sqlite_writable(db)


# After the turn commits the rollback is done, whatever fails next: it says so, and what is
# left (a file still frozen, a record without its downtime) is named, not called a refusal.
async def test_a_rollback_whose_file_cannot_be_unfrozen_after_the_turn_says_it_rolled_back(
        tmp_path, make_config, pg_dsn):
    db, cfg = await cut_over_and_stopped(make_config, tmp_path, pg_dsn)
    resume = tmp_path / "resume"
    with held_at(cfg, "rollback", "turned", resume_on=resume) as proc:
        # No file of the command's may grow past its first byte from here: SQLite's write
        # of the unfreeze fails (a full disk fails it alike).
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1, 1))
        resume.touch()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "app: rolled back to SQLite, but the SQLite file is STILL FROZEN" in out, out
    assert "REFUSED" not in out and "UNDONE" not in out
    assert await direction(pg_dsn) == "to_postgres" and not sqlite_writable(db)
    r = run_cli(cfg, "rollback")  # as the message says: a second run unfreezes it
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not cut over (rolled back" in r.stdout, r.stdout
    assert "unfroze the SQLite file a rollback left frozen after it switched back" in r.stdout, r.stdout
    assert sqlite_writable(db)


async def test_a_rollback_whose_record_cannot_take_its_downtime_still_rolled_back(tmp_path, make_config, pg_dsn):
    db, cfg = await cut_over_and_stopped(make_config, tmp_path, pg_dsn)
    resume = tmp_path / "resume"
    with held_at(cfg, "rollback", "turned", resume_on=resume) as proc:
        await pg_rows(pg_dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        resume.touch()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "app: rolled back to SQLite; write downtime" in out, out
    assert "the write downtime is not in Postgres's record of the rollback" in out, out
    assert await direction(pg_dsn) == "to_postgres" and sqlite_writable(db)


@pytest.mark.parametrize("step", ["started", "frozen", "drained", "verified", "finishing"])
async def test_a_rollback_killed_at_any_step_never_leaves_postgres_frozen(tmp_path, make_config, pg_dsn, step):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, stream=RECHECK)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        with held_at(cfg, "rollback", step) as proc:
            try:
                if step == "finishing":  # the turn's open transaction holds every table: a write waits, refused
                    assert await postgres_refusal(pg_dsn, lock_wait="1s") is not None
                elif step not in ("started",):
                    assert await postgres_refusal(pg_dsn) is not None  # frozen while it runs
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        # the daemon's way back sees a frozen Postgres nobody holds and gives it back to the application
        async def open_again() -> bool:
            return await postgres_refusal(pg_dsn) is None

        await eventually(open_again, 30, "Postgres unfrozen", d)
        assert await direction(pg_dsn) == "to_sqlite" and not sqlite_writable(db)

        async def closed() -> bool:
            rows = await pg_rows(pg_dsn, "SELECT state FROM syncd.switches WHERE kind = 'rollback'")
            return rows == [("undone",)]

        await eventually(closed, 30, "the killed rollback's record closed", d)
        r = run_cli(cfg, "rollback")  # and a new run goes through
        assert r.returncode == 0, r.stdout + r.stderr
        assert sqlite_writable(db)
        wait_for(lambda: "the source now flows SQLite -> Postgres" in d.log(), 30, "the forward stream back", d)


async def test_no_id_is_handed_out_twice_across_a_rollback(tmp_path, make_config, pg_dsn):
    """Ids Postgres handed out and that left no row (deleted, or rolled back) are never
    handed out again: not by SQLite's AUTOINCREMENT after the rollback, nor by Postgres
    after the next cutover."""
    db = tmp_path / "app.db"
    app = make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            gone = await pg.fetchval("INSERT INTO app.deals (title, amount) VALUES ('short-lived', 1) RETURNING id")
            await pg.execute("DELETE FROM app.deals WHERE id = $1", gone)
            with pytest.raises(asyncpg.PostgresError):
                async with pg.transaction():
                    await pg.execute("INSERT INTO app.deals (title, amount) VALUES ('rolled back', 1)")
                    await pg.execute("SELECT 1 / 0")
        finally:
            await pg.close()
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert app.execute("SELECT max(id) FROM deals").fetchone()[0] < gone
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"deals: AUTOINCREMENT continues after {gone + 1}" in r.stdout
        new_id = app.execute("INSERT INTO deals (title, amount) VALUES ('back on SQLite', 2) RETURNING id").fetchone()[0]
        assert new_id == gone + 2
        app.execute("DELETE FROM deals WHERE id = ?", (new_id,))
        await cut_over(cfg, db, pg_dsn, daemon=d)
        assert await pg_rows(pg_dsn, "INSERT INTO app.deals (title, amount) VALUES ('Postgres again', 3) "
                                     "RETURNING id") == [(new_id + 1,)]
        assert d.stop() == 0


async def test_the_dry_run_of_a_cutover_after_a_rollback_says_where_each_identity_will_continue(
        tmp_path, make_config, pg_dsn):
    """Ids Postgres handed out before a rollback, whose rows are gone, keep its identity
    past them at the next cutover; the dry run, which the change ticket takes its numbers
    from, says the same number the cutover then sets, where before it said SQLite's
    highest id alone."""
    db = tmp_path / "app.db"
    app = make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            for i in range(3):
                await pg.execute("INSERT INTO app.contacts (email) VALUES ($1)", f"pg{i}@x")
            await pg.execute("DELETE FROM app.contacts WHERE id > 16")
        finally:
            await pg.close()
        await wait_back(cfg, db, pg_dsn, daemon=d)
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        assert app.execute("SELECT max(id) FROM contacts").fetchone()[0] == 16
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        dry = run_cli(cfg, "cutover", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "identity contacts.id would continue after 19 " in dry.stdout, dry.stdout
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        assert "contacts.id continues after 19" in out, out
        assert d.stop() == 0


async def test_a_lock_of_a_few_seconds_while_the_rollback_drains_only_delays_it(tmp_path, make_config, pg_dsn):
    """The application holds its rollback-journal file for 3 s (past syncd's 2 s busy
    timeout) while `syncd rollback` drains the last changes: the drain waits for it,
    as for the changes themselves, instead of undoing the rollback."""
    db = tmp_path / "app.db"
    make_app(db).execute("PRAGMA journal_mode=delete")  # rollback-journal: a lock keeps readers out
    cfg = backup_and_config(make_config, tmp_path, db)
    await cut_over_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    # Changes SQLite has yet to apply: the rollback drains them with a stream of its own.
    await pg_rows(pg_dsn, "INSERT INTO app.contacts SELECT g, 'n' || g || '@x' FROM generate_series(100, 5099) g")
    proc = subprocess.Popen(syncd_cmd(cfg, "rollback"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=str(cfg.parent))
    pg = await asyncpg.connect(pg_dsn)
    holder = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        deadline = time.monotonic() + 60
        while not await pg.fetchval("SELECT count(*) FROM syncd.switches WHERE kind = 'rollback' "
                                    "AND state = 'frozen'"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            await asyncio.sleep(0.005)
        holder.execute("BEGIN EXCLUSIVE")
        await asyncio.sleep(3)
        holder.execute("COMMIT")
        out, _ = proc.communicate(timeout=120)
    finally:
        holder.close()
        await pg.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "rolled back to SQLite" in out, out
    assert await compare_all(str(db), pg_dsn, "app", TABLES) == []


@pytest.mark.parametrize("nocase", ["icu", "citext"])
async def test_keys_sqlite_holds_apart_are_never_merged_after_a_rollback(tmp_path, make_config, pg_dsn, nocase):
    """The cutover makes a COLLATE NOCASE key compare case-insensitively in Postgres, and
    the column stays so after a rollback; it folds all of Unicode, SQLite's NOCASE only
    A-Z. A SQLite row 'É' beside 'é' would have been upserted onto 'é' there: the table is
    held instead, naming both keys, and nothing is merged; a case-only key change made in
    Postgres comes back to SQLite as the one row it is."""
    db = tmp_path / "app.db"
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("PRAGMA journal_mode=wal")
    app.executescript("CREATE TABLE tags (name TEXT COLLATE NOCASE PRIMARY KEY, uses TEXT);"
                      "CREATE TABLE pairs (a TEXT COLLATE NOCASE, b TEXT COLLATE NOCASE, PRIMARY KEY (a, b));"
                      "INSERT INTO tags VALUES ('sales', 'one'); INSERT INTO pairs VALUES ('x', 'y');")
    cfg = backup_and_config(make_config, tmp_path, db, cutover={"nocase": nocase}, stream=RECHECK)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "UPDATE app.tags SET name = 'SALES', uses = 'moved' WHERE name = 'sales'")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert app.execute("SELECT * FROM tags").fetchall() == [("SALES", "moved")]
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        app.execute("INSERT INTO tags VALUES ('é', 'small')")
        app.execute("INSERT INTO pairs VALUES ('é', 'y')")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        app.execute("INSERT INTO tags VALUES ('É', 'capital')")  # another key to SQLite
        app.execute("INSERT INTO pairs VALUES ('É', 'y')")
        for table in ("tags", "pairs"):
            await eventually(lambda: _held(pg_dsn, table), 30, f"{table} held", d)
        reasons = dict(await pg_rows(pg_dsn, "SELECT table_name, reason FROM syncd.tables WHERE source = 'app'"))
        assert "SQLite's key 'É' and Postgres's row under key 'é' are one key to Postgres" in reasons["tags"]
        assert "SQLite's key ('É', 'y') and Postgres's row under key ('é', 'y')" in reasons["pairs"]
        assert await pg_rows(pg_dsn, "SELECT name, uses FROM app.tags ORDER BY uses") == [
            ("SALES", "moved"), ("é", "small")]  # nothing merged
        assert await pg_rows(pg_dsn, 'SELECT a, b FROM app.pairs ORDER BY a COLLATE "C"') == [("x", "y"), ("é", "y")]
        app.execute("DELETE FROM tags WHERE name = 'É'")  # the key SQLite held apart goes: the table resumes
        app.execute("DELETE FROM pairs WHERE a = 'É'")
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=90)
        assert await pg_rows(pg_dsn, "SELECT name, uses FROM app.tags ORDER BY uses") == [
            ("SALES", "moved"), ("é", "small")]  # the delete of 'É' did not take 'é' along
        assert await pg_rows(pg_dsn, 'SELECT a, b FROM app.pairs ORDER BY a COLLATE "C"') == [("x", "y"), ("é", "y")]
        # Two spellings new to Postgres in one transaction, so in one batch: named alike.
        app.executescript("BEGIN; INSERT INTO tags VALUES ('ü', 'small'); INSERT INTO tags VALUES ('Ü', 'capital'); "
                          "COMMIT;")
        await eventually(lambda: _held(pg_dsn, "tags"), 30, "tags held", d)
        reasons = dict(await pg_rows(pg_dsn, "SELECT table_name, reason FROM syncd.tables WHERE source = 'app'"))
        assert "SQLite's keys 'ü' and 'Ü' are one key to Postgres" in reasons["tags"], reasons["tags"]
        app.execute("DELETE FROM tags WHERE name = 'Ü'")
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=90)
        assert await pg_rows(pg_dsn, "SELECT name, uses FROM app.tags ORDER BY uses") == [
            ("SALES", "moved"), ("é", "small"), ("ü", "small")]
        assert d.stop() == 0
    assert run_cli(cfg, "verify").returncode == 0


async def _held(dsn: str, table: str) -> bool:
    return (await pg_rows(dsn, "SELECT state FROM syncd.tables WHERE source = 'app' AND table_name = $1",
                          table)) == [("held",)]


async def _rollback_meeting_a_reader(cfg, pg_dsn, go, hold_seconds: float | None) -> tuple[int, str, int]:
    """`syncd rollback` paused after its verification; a session of the application's
    then opens a transaction reading "contacts" (reads work while Postgres is frozen),
    the rollback goes on, and the transaction ends after `hold_seconds` (None: only once
    the command has ended). Returns (exit code, its output, the session's backend pid)."""
    go.unlink(missing_ok=True)
    proc = subprocess.Popen(syncd_cmd(cfg, "rollback"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=str(cfg.parent), env={**os.environ, "SYNCD_ROLLBACK_HOLD_AT": "verified",
                                                      "SYNCD_ROLLBACK_RESUME_ON": str(go)})
    reader = await asyncpg.connect(pg_dsn)
    try:
        assert proc.stdout.readline().strip() == "holding at verified"
        await reader.execute("BEGIN; SELECT count(*) FROM app.contacts")
        go.touch()
        if hold_seconds is not None:
            await asyncio.sleep(hold_seconds)
            await reader.execute("COMMIT")
        out, _ = await asyncio.to_thread(proc.communicate, timeout=120)
        return proc.returncode, out, reader.get_server_pid()
    finally:
        await reader.close()
        if proc.poll() is None:
            proc.kill()


async def test_a_transaction_that_takes_a_table_while_postgres_is_frozen_delays_the_switch_or_is_named(
        tmp_path, make_config, pg_dsn):
    """The switch's last transaction takes each table for a moment. A transaction of the
    application's that took a table after the rollback's checks is waited for (named in
    the log) for as long as a statement may run, instead of giving up after one 2 s lock
    wait and leaving the undo to meet the same lock. Kept longer, the rollback is undone
    naming it; the undo, meeting the same transaction, is left to the daemon, which
    unfreezes Postgres once it ends."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, postgres={"statement_timeout_seconds": 6}, stream=RECHECK)
    go = tmp_path / "go"
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)

        rc, out, pid = await _rollback_meeting_a_reader(cfg, pg_dsn, go, None)
        assert rc == 1, out
        held_by = rf'Postgres backend {pid} \(an unnamed client, idle in transaction\) on "contacts"'
        assert re.search(rf"the switch's last transaction waits for {held_by}", out), out
        assert re.search(rf"app: UNDO PENDING: the switch's last transaction could not take the source's tables for "
                         rf"6 s: {held_by} kept one busy .*; not undone yet: the undo of the freeze could not take the "
                         r"source's tables: .*Postgres stays frozen for the application until that transaction ends; "
                         r"the daemon then undoes the rollback", out), out
        assert await direction(pg_dsn) == "to_sqlite" and not sqlite_writable(db)

        async def undone() -> bool:  # the reader's session ended once the command had
            rows = await pg_rows(pg_dsn, "SELECT state FROM syncd.switches WHERE kind = 'rollback'")
            return rows == [("undone",)] and await postgres_refusal(pg_dsn) is None

        await eventually(undone, 30, "the daemon undoing the rollback", d)

        rc, out, pid = await _rollback_meeting_a_reader(cfg, pg_dsn, go, 3)  # past one 2 s lock wait
        assert rc == 0, out
        assert re.search(rf'the switch\'s last transaction waits for Postgres backend {pid} \(an unnamed client, '
                         r'idle in transaction\) on "contacts"', out), out
        assert "rolled back to SQLite" in out and downtime(out) >= 3, out
        assert await direction(pg_dsn) == "to_postgres" and sqlite_writable(db)
        assert await pg_rows(pg_dsn, "SELECT state FROM syncd.switches WHERE kind = 'rollback' ORDER BY id") == \
            [("undone",), ("done",)]


async def test_a_file_unfrozen_while_cut_over_is_frozen_again_by_the_way_back(tmp_path, make_config, pg_dsn):
    from syncd.sqlite import freeze

    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    await cut_over_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        freeze.unfreeze(conn, 1000)  # as a hand-made "fix" would: Postgres is still the one written
        conn.execute("INSERT INTO contacts VALUES (9001, 'written to SQLite while unfrozen')")
        conn.execute("UPDATE contacts SET email = 'changed in SQLite while unfrozen' WHERE id = 1")
        conn.execute("DELETE FROM contacts WHERE id = 2")
        with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
            d.wait_log("event=refrozen", timeout=30)
            with pytest.raises(sqlite3.IntegrityError, match="moved to PostgreSQL"):
                conn.execute("INSERT INTO contacts VALUES (9002, 'refused again')")
            assert d.stop() == 0
        # What the warning tells the user: those writes are not in Postgres, and stay in the
        # file until `syncd verify --repair` brings it back to Postgres's rows.
        assert "syncd verify --repair" in d.log(), d.log()
        assert conn.execute("SELECT count(*) FROM contacts WHERE id IN (9001, 2) OR email LIKE 'changed%'").fetchone() \
            == (2,)
        found = run_cli(cfg, "verify")
        assert found.returncode != 0, found.stdout
        # Worded for SQLite following Postgres: what the file should not have, what it lacks.
        assert '"contacts" DIFFERS (16 rows in SQLite, 16 in Postgres' in found.stdout, found.stdout
        assert "1 only in SQLite, 1 missing in SQLite, 1 different" in found.stdout, found.stdout
        assert '"contacts" only in SQLite: key 9001' in found.stdout, found.stdout
        assert '"contacts" missing in SQLite: key 2' in found.stdout, found.stdout
        report = run_cli(cfg, "report")  # the run, as the report's history tells it
        assert "1 only in SQLite, 1 missing in SQLite, 1 different" in report.stdout, report.stdout
        assert '"contacts" different: key 1: column "email"' in found.stdout, found.stdout
        assert run_cli(cfg, "verify", "--repair").returncode == 0
        assert conn.execute("SELECT count(*) FROM contacts WHERE id = 9001 OR email LIKE 'changed%'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM contacts WHERE id = 2").fetchone() == (1,)
        assert run_cli(cfg, "verify").returncode == 0
    finally:
        conn.close()


async def freeze_triggers(dsn: str) -> list[str]:
    """The tables of the source still holding the rollback's freeze trigger."""
    return [r[0] for r in await pg_rows(dsn, "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                                             "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'app' "
                                             "AND t.tgname = '_syncd_freeze' ORDER BY 1")]


async def test_a_cutover_after_a_rollback_passes_a_report_reading_postgres_all_along(tmp_path, make_config, pg_dsn):
    """After a rollback Postgres stays frozen for the application; the next cutover lifts
    that freeze without DDL in its last transaction (DROP TRIGGER would wait for every
    reader of the table, and queue the later ones behind it, while the file is frozen).
    A report keeping a transaction open on a table for the whole cutover does not stop
    it; the application writes Postgres as soon as it has finished, that table too, and
    the freeze's triggers go once the report has ended."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, postgres={"statement_timeout_seconds": 5},
                            stream={"held_table_retry_seconds": 1})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        assert await freeze_triggers(pg_dsn) == sorted(TABLES)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        go = tmp_path / "go"
        proc = subprocess.Popen(syncd_cmd(cfg, "cutover"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=str(cfg.parent), env={**os.environ, "SYNCD_CUTOVER_HOLD_AT": "verified",
                                                                     "SYNCD_CUTOVER_RESUME_ON": str(go)})
        report = await asyncpg.connect(pg_dsn)
        try:
            assert proc.stdout.readline().strip() == "holding at verified"
            await report.execute("BEGIN; SELECT count(*) FROM app.deals")  # once the checks are done
            go.touch()
            out, _ = await asyncio.to_thread(proc.communicate, timeout=120)
            assert proc.returncode == 0, out
            assert "cut over to Postgres" in out and downtime(out) < 5, out
            assert report.is_in_transaction()
            assert await direction(pg_dsn) == "to_sqlite" and not sqlite_writable(db)
            assert await postgres_refusal(pg_dsn) is None  # the report still reads
            pg = await asyncpg.connect(pg_dsn)
            try:
                new_id = await pg.fetchval("INSERT INTO app.deals (title, amount) "
                                           "VALUES ('written beside the report', 1) RETURNING id")
                await pg.execute("UPDATE app.deals SET title = 'after the cutover' WHERE id = 3")
            finally:
                await pg.close()
            assert await report.fetchval("SELECT count(*) FROM app.deals") == 21 and report.is_in_transaction()
        finally:
            await report.close()
            if proc.poll() is None:
                proc.kill()

        async def dropped() -> bool:
            return await freeze_triggers(pg_dsn) == []

        await eventually(dropped, 30, "the freeze's triggers dropped once the report ended", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("SELECT title FROM deals WHERE id = ?", (new_id,)).fetchone() == \
                ("written beside the report",)
        finally:
            conn.close()
        assert d.stop() == 0


async def test_a_difference_found_after_a_cutover_made_on_a_host_whose_clock_is_ahead_refuses_the_rollback(
        tmp_path, make_config, pg_dsn):
    """The cutover's end was dated by the clock of the host that ran it, verifications by
    Postgres's: cut over from a host an hour ahead, a difference found since counted as
    found before the cutover, and the rollback froze Postgres for the application, then
    undid itself on its own verification's finding."""
    from tests.test_verifications_dated_in_the_future import _clock_behind

    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        r = run_cli(cfg, "cutover", env=_clock_behind(tmp_path, -1))  # its host's clock an hour ahead
        assert r.returncode == 0, r.stdout + r.stderr
        tamper_sqlite(db, "UPDATE contacts SET email = 'tampered' WHERE id = 3")
        assert run_cli(cfg, "verify").returncode == 1
        r = run_cli(cfg, "rollback")
        assert r.returncode == 1 and "app: REFUSED" in r.stdout, r.stdout + r.stderr
        assert "still there when checked again now" in r.stdout, r.stdout
        assert (await pg_rows(pg_dsn, "SELECT count(*) FROM syncd.switches WHERE kind = 'rollback'")) == [(0,)]
        assert d.stop() == 0


async def test_a_drain_that_does_not_finish_in_time_says_what_it_waited_for_and_what_to_do(
        tmp_path, make_config, pg_dsn, monkeypatch):
    """The application holds the SQLite file locked while the rollback drains the last
    change (its wait shortened to 2 s here): the rollback is undone with one line saying
    what did not happen, within how long, and what to do, not a bare exception name."""
    from syncd import rollback as rb
    from syncd.cli.rollback import render
    from syncd.config import load_settings

    db, cfg = await cut_over_and_stopped(make_config, tmp_path, pg_dsn)
    await pg_rows(pg_dsn, "UPDATE app.settings SET value = 'light' WHERE key = 'theme'")  # nothing streams back
    resume = tmp_path / "resume"
    monkeypatch.setattr(rb, "DRAIN_SECONDS", 2.0)
    monkeypatch.setenv("SYNCD_ROLLBACK_HOLD_AT", "frozen")
    monkeypatch.setenv("SYNCD_ROLLBACK_RESUME_ON", str(resume))
    settings = load_settings(cfg)
    task = asyncio.ensure_future(rb.rollback(settings, settings.source("app")))
    holder = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        async def frozen() -> bool:
            return bool(await pg_rows(pg_dsn, "SELECT 1 FROM syncd.switches WHERE kind = 'rollback' "
                                              "AND state = 'frozen'"))

        await eventually(frozen, 60, "the rollback's freeze")
        holder.execute("BEGIN IMMEDIATE")  # the application's write transaction: the way back cannot write
        resume.touch()
        result = await asyncio.wait_for(task, 60)
    finally:
        holder.close()
    [line, *_] = render(result)
    assert line.startswith("app: UNDONE: the last changes did not reach SQLite: "), line
    assert "TimeoutError" not in line and "within 2 s" in line and "`syncd rollback` again" in line, line
    assert await direction(pg_dsn) == "to_sqlite"


async def test_a_write_lock_not_had_after_the_freeze_says_the_rollback_was_undone(
        tmp_path, make_config, pg_dsn, monkeypatch):
    """The application keeps its SQLite file locked once Postgres is frozen, so the rollback
    cannot move AUTOINCREMENT past Postgres's ids (its wait shortened to 1 s here): the
    rollback is undone, and says so (UNDONE, with why), not REFUSED as if nothing had been
    frozen. No daemon runs the source, so nothing brings Postgres's writes to SQLite until
    one starts: said so, with `syncd run` (it said "SQLite keeps following it")."""
    from syncd.cli.rollback import _all, render
    from syncd.config import load_settings
    from syncd.sqlite import capture

    db, cfg = await cut_over_and_stopped(make_config, tmp_path, pg_dsn)
    # An id Postgres handed out that left no row (an INSERT rolled back): SQLite's
    # AUTOINCREMENT must go past it, a write after the freeze.
    await pg_rows(pg_dsn, "SELECT nextval(pg_get_serial_sequence('app.deals', 'id'))")
    resume = tmp_path / "resume"
    monkeypatch.setattr(capture, "write_wait", lambda: 1.0)
    monkeypatch.setenv("SYNCD_ROLLBACK_HOLD_AT", "verified")
    monkeypatch.setenv("SYNCD_ROLLBACK_RESUME_ON", str(resume))
    settings = load_settings(cfg)
    task = asyncio.ensure_future(_all(settings, [settings.source("app")], False))
    holder = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        async def verified() -> bool:
            return bool(await pg_rows(pg_dsn, "SELECT 1 FROM syncd.verify_runs WHERE source = 'app' AND started_at > "
                                              "(SELECT max(frozen_at) FROM syncd.switches WHERE kind = 'rollback')"))

        await eventually(verified, 60, "the rollback's verification")
        holder.execute("BEGIN IMMEDIATE")  # the application's write transaction
        resume.touch()
        [result] = await asyncio.wait_for(task, 60)
    finally:
        holder.close()
    [line, *_] = render(result)
    assert line.startswith("app: UNDONE: the SQLite file: could not get a write lock"), line
    assert "undone: Postgres takes the application's writes again" in line, line
    assert "SQLite keeps following it" not in line, line
    assert "no daemon holds this source now" in line and "`syncd run`" in line, line
    assert result.undone and not result.done
    assert await direction(pg_dsn) == "to_sqlite" and await postgres_refusal(pg_dsn) is None
    assert await pg_rows(pg_dsn, "SELECT state FROM syncd.switches WHERE kind = 'rollback'") == [("undone",)]


async def test_a_cutover_run_after_a_killed_rollback_gives_postgres_back_to_the_application(
        tmp_path, make_config, pg_dsn):
    """A rollback killed once it froze Postgres, no daemon running: the source is still cut
    over, and `syncd cutover` run to stay on Postgres undoes the rollback's freeze, as
    `syncd rollback` run again would, and says so from its first line; it said "already cut
    over; nothing to do", exit 0, while Postgres went on refusing the application's writes,
    and then kept that headline above the line saying what it undid."""
    db, cfg = await cut_over_and_stopped(make_config, tmp_path, pg_dsn)
    with held_at(cfg, "rollback", "frozen") as proc:
        proc.kill()
        proc.wait(10)
    assert await postgres_refusal(pg_dsn) is not None
    r = run_cli(cfg, "cutover")
    assert r.returncode == 0, r.stdout + r.stderr
    [head, *rest] = [line for line in r.stdout.splitlines() if line.startswith(("app:", "  ."))]
    assert head.startswith("app: already cut over (") and "nothing to do" not in head, r.stdout
    assert "undid a rollback that stopped before finishing" in head, r.stdout
    assert rest == ["  . unfroze Postgres, which a rollback left frozen when it stopped before finishing"], r.stdout
    assert await postgres_refusal(pg_dsn) is None and not sqlite_writable(db)
    assert await direction(pg_dsn) == "to_sqlite"
    assert await pg_rows(pg_dsn, "SELECT state FROM syncd.switches WHERE kind = 'rollback'") == [("undone",)]


async def test_a_rollback_interrupted_after_its_turn_says_the_file_is_still_frozen(tmp_path, make_config, pg_dsn):
    """Ctrl-C once the rollback's turn has committed, before the SQLite file was unfrozen
    (its write waiting for the application's open write transaction, say): the rollback is
    done, and the interrupted command says so and that the file is STILL FROZEN, with who
    unfreezes it; it said only "rolled back to SQLite", while the file refused every write."""
    db, cfg = await cut_over_and_stopped(make_config, tmp_path, pg_dsn)
    with held_at(cfg, "rollback", "turned") as proc:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert await direction(pg_dsn) == "to_postgres" and not sqlite_writable(db)
    [line] = [x for x in out.splitlines() if x.startswith("app: ")]
    assert line.startswith("app: rolled back to SQLite before the interrupt, but the SQLite file is STILL FROZEN"), out
    assert "`syncd rollback` again" in line, line


async def test_a_rollback_interrupted_after_its_turn_with_its_file_out_of_reach_says_it_may_still_be_frozen(
        tmp_path, make_config, pg_dsn):
    """Ctrl-C once the rollback's turn has committed, before the SQLite file was unfrozen,
    and the file cannot be opened to look (moved away meanwhile): the rollback is done, and
    the interrupted command says the file may still be frozen and why it cannot tell; it
    said only "rolled back to SQLite before the interrupt", as if the file took writes."""
    db, cfg = await cut_over_and_stopped(make_config, tmp_path, pg_dsn)
    away = tmp_path / "away.db"
    with held_at(cfg, "rollback", "turned") as proc:
        db.rename(away)
        try:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=30)
        finally:
            away.rename(db)
    assert proc.returncode == 130, out
    assert await direction(pg_dsn) == "to_postgres" and not sqlite_writable(db)
    [line] = [x for x in out.splitlines() if x.startswith("app: ")]
    assert line.startswith("app: rolled back to SQLite before the interrupt, but the SQLite file MAY STILL BE "
                           "FROZEN for the application: it could not be read ("), out
    assert "`syncd rollback` again" in line, line


async def test_a_negative_zero_written_in_postgres_does_not_reload_its_table_after_a_rollback(
        tmp_path, make_config, pg_dsn):
    """Postgres's -0 (round(-0.4), say) in a REAL column reaches SQLite as 0.0, the value a
    REAL column holds for it. After the rollback the forward stream resumes on the table as
    it is: the zero is no sign that the column was renamed, swapped, or dropped and added
    again in SQLite, and no reason to copy the whole table into Postgres once more."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "UPDATE app.deals SET amount = round(-0.4::float8) WHERE id = 3")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert sqlite3.connect(db).execute("SELECT amount FROM deals WHERE id = 3").fetchone() == (0.0,)
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert "event=table_reloading" not in d.own_log() and "snapshot_started" not in d.own_log().split(
            "now flows SQLite -> Postgres")[-1], d.own_log()[-3000:]
        v = run_cli(cfg, "verify")
        assert v.returncode == 0 and "3 of 3 table(s) equal" in v.stdout, v.stdout + v.stderr
        assert d.stop() == 0


async def test_a_value_sqlite_cannot_hold_written_while_no_daemon_ran_refuses_the_rollback_at_once_naming_it(
        tmp_path, make_config, pg_dsn):
    """The application wrote a NaN in Postgres while no daemon ran: the rollback's own
    stream holds the table at that row. The rollback is undone at once, naming the table,
    the row and the value, instead of keeping Postgres frozen for the application for the
    whole drain and then saying only that SQLite was not brought up to date."""
    db, cfg = await cut_over_and_stopped(make_config, tmp_path, pg_dsn)
    await pg_rows(pg_dsn, "UPDATE app.deals SET amount = 'NaN' WHERE id = 4")
    began = time.monotonic()
    r = run_cli(cfg, "rollback")
    took = time.monotonic() - began
    assert r.returncode == 1, r.stdout + r.stderr
    assert "app: UNDONE" in r.stdout and '"deals"' in r.stdout and "NaN" in r.stdout, r.stdout
    assert took < 60, (took, r.stdout)
    assert await postgres_refusal(pg_dsn) is None and await direction(pg_dsn) == "to_sqlite"


async def test_a_table_held_for_a_value_sqlite_cannot_take_says_to_start_the_daemon_when_none_runs(
        tmp_path, make_config, pg_dsn):
    """A table held on the way back for a value SQLite cannot take (NaN in a REAL column),
    the daemon stopped: the rollback's refusal said "(the table is copied again once it
    fits)", and a user who fixed the value and ran the rollback again met the same
    refusal, since nothing copies the table until a daemon runs the source. With no
    daemon it says to start one; with the daemon running, the copy is the daemon's."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, stream=RECHECK)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "UPDATE app.deals SET amount = 'NaN' WHERE id = 3")
        await eventually(lambda: _held(pg_dsn, "deals"), 30, "deals held", d)
        r = run_cli(cfg, "rollback")
        assert r.returncode == 1 and 'table "deals" does not follow Postgres (held)' in r.stdout, r.stdout
        assert "(the table is copied again once it fits)" in r.stdout and "syncd run" not in r.stdout, r.stdout
        assert d.stop() == 0
    await pg_rows(pg_dsn, "UPDATE app.deals SET amount = 3000 WHERE id = 3")  # fixed, the daemon stopped
    r = run_cli(cfg, "rollback")
    assert r.returncode == 1 and 'table "deals" does not follow Postgres (held)' in r.stdout, r.stdout
    assert "copied again once it fits)" not in r.stdout, r.stdout
    assert "no daemon runs" in r.stdout and "`syncd run`" in r.stdout, r.stdout
    assert await direction(pg_dsn) == "to_sqlite" and not sqlite_writable(db)


async def test_a_value_sqlite_cannot_take_met_by_the_rollbacks_own_stream_says_to_start_the_daemon(
        tmp_path, make_config, pg_dsn):
    """The daemon stopped, the application writes a value SQLite cannot take (NaN in a
    REAL column) into Postgres, and `syncd rollback` brings the changes back with a
    stream of its own: the table held there refused the rollback with "(the table is
    copied again once it fits)", which nothing does once the rollback has ended. It says
    to fix the value and start the daemon, and the switch is undone."""
    db, cfg = await cut_over_and_stopped(make_config, tmp_path, pg_dsn)
    await pg_rows(pg_dsn, "UPDATE app.deals SET amount = 'NaN' WHERE id = 3")
    r = run_cli(cfg, "rollback")
    assert r.returncode == 1 and 'table "deals" does not follow Postgres (held)' in r.stdout, r.stdout + r.stderr
    assert "copied again once it fits)" not in r.stdout, r.stdout
    assert "no daemon runs" in r.stdout and "`syncd run`" in r.stdout, r.stdout
    assert await direction(pg_dsn) == "to_sqlite" and not sqlite_writable(db)
    assert await postgres_refusal(pg_dsn) is None


def test_the_rollback_brings_back_only_the_autoincrement_records_of_tables_syncd_carries(tmp_path):
    """An AUTOINCREMENT record stuck at SQLite's largest id is brought back to the highest
    id there for a table syncd carries (the way back took it there from a row Postgres has
    since given a smaller id); a table syncd does not carry is the application's own, its
    ids never in Postgres: its record is left as it is, whatever rows it holds now (it
    was set to the highest row, handing out again ids the application had deleted)."""
    from syncd.rollback import keep_autoincrement_past

    top = 2 ** 63 - 1
    conn = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    for name in ("orders", "audit"):
        conn.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)")
        conn.executemany(f"INSERT INTO {name} (id, v) VALUES (?, 'x')", [(i,) for i in range(1, 6)])
        conn.execute(f"INSERT INTO {name} (id, v) VALUES ({top}, 'sentinel')")
        conn.execute(f"DELETE FROM {name} WHERE id = {top}")
    raised = keep_autoincrement_past(conn, {}, 1000, frozenset({"orders"}))
    assert raised == {"orders": 5}
    assert dict(conn.execute("SELECT name, seq FROM sqlite_sequence")) == {"orders": 5, "audit": top}
    conn.close()
