"""An application that meets the frozen SQLite file while `syncd cutover` runs and turns to
Postgres loses no write: until the switch's last transaction has committed (identities
set, the way back capturing), Postgres refuses the application's writes to the source's
tables, saying so, and the SQLite file's message says to write Postgres once the cutover
has finished, not before. Written then, each write reaches SQLite by the way back."""

from __future__ import annotations

import asyncio
import signal

import asyncpg

from tests.conftest import write_config
from tests.support.daemon import DaemonProcess, held_at, run_cli, wait_for
from tests.support.sync import eventually, pg_rows, wait_caught_up
from tests.support.way_back import back_up, backup_and_config, orders_app, sqlite_write, typeof, wait_back
from tests.test_pgbouncer import pgbouncer  # noqa: F401 - the fixture

UPDATE = "UPDATE app.orders SET item = 'b, changed in Postgres' WHERE id = 2"
INSERT = "INSERT INTO app.orders (item) VALUES ('c, new in Postgres') RETURNING id"
GUARDS = "SELECT count(*) FROM pg_trigger WHERE tgname = '_syncd_cutover_guard'"


async def postgres(dsn: str, sql: str) -> tuple[object, str | None]:
    """The application's statement in Postgres: (its result, None), or (None, the error)."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql), None
    except asyncpg.PostgresError as e:
        return None, str(e)
    finally:
        await conn.close()


async def test_the_applications_postgres_writes_during_a_cutover_are_refused_never_lost(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify", "--source", "app").returncode == 0
        # The cutover stops after its verification, before its last transaction: the
        # file is frozen, identities are not set, the way back does not capture yet.
        with held_at(cfg, "cutover", "verified", resume_on=tmp_path / "go") as proc:
            frozen = sqlite_write(db, "c, new in SQLite")
            assert frozen is not None
            # The application turns to Postgres at once.
            _, update_refused = await postgres(pg_dsn, UPDATE)
            _, insert_refused = await postgres(pg_dsn, INSERT)
            (tmp_path / "go").touch()
            out, _ = await asyncio.to_thread(proc.communicate, timeout=120)
        assert proc.returncode == 0, out
        # What Postgres refused the application writes again, once the cutover has returned.
        if update_refused:
            assert (await postgres(pg_dsn, UPDATE))[1] is None
        if insert_refused:
            got, error = await postgres(pg_dsn, INSERT)
            assert error is None and got == 3  # past SQLite's high mark
        await wait_back(cfg, db, pg_dsn, daemon=d)
        # Every write Postgres took is in SQLite too: none was made where the drain could
        # overwrite it or the way back not capture it.
        assert typeof(db, "SELECT id, item FROM orders ORDER BY id") == [
            (1, "a"), (2, "b, changed in Postgres"), (3, "c, new in Postgres")]
        assert await pg_rows(pg_dsn, "SELECT id, item FROM app.orders ORDER BY id") == [
            (1, "a"), (2, "b, changed in Postgres"), (3, "c, new in Postgres")]
        # Each was refused with a message saying why and until when.
        for refused in (update_refused, insert_refused):
            assert refused is not None and 'table app.orders: ' in refused and "syncd cutover" in refused, refused
            assert "once `syncd cutover` has finished" in refused, refused
        # The frozen file's message sends the application to Postgres only once the cutover has finished.
        assert frozen.startswith("this database was moved to PostgreSQL by syncd"), frozen
        assert "once `syncd cutover` has finished" in frozen and "instead" not in frozen, frozen
        # The guard goes once the switch is done: nothing is left on the application's tables.
        assert await pg_rows(pg_dsn, GUARDS) == [(0,)]
        assert d.stop() == 0


async def test_a_killed_cutover_keeps_postgres_refusing_until_it_is_undone(tmp_path, make_config, pg_dsn):
    """Killed after the freeze, the cutover leaves both sides refusing the application's
    writes (it cannot know which side will hold them) until it is undone: then SQLite
    takes them again, Postgres is as it was, and the guard is gone."""
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify", "--source", "app").returncode == 0
        assert d.stop() == 0
    with held_at(cfg, "cutover", "frozen") as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert sqlite_write(db, "refused") is not None
    _, refused = await postgres(pg_dsn, UPDATE)
    assert refused is not None and "syncd cutover" in refused, refused
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        wait_for(lambda: sqlite_write(db, "c") is None, 30, "the file unfrozen", d)

        async def guard_gone() -> bool:
            return await pg_rows(pg_dsn, GUARDS) == [(0,)]

        await eventually(guard_gone, 30, "the guard dropped", d)
        assert await pg_rows(pg_dsn, "SELECT direction FROM syncd.sources WHERE source = 'app'") == [("to_postgres",)]
        assert d.stop() == 0


async def test_syncd_sessions_pass_the_guard_through_pgbouncer_in_transaction_mode(tmp_path, pg_dsn, pgbouncer):
    """The guard knows syncd's sessions by their application_name, which PgBouncer in
    transaction mode sets on whichever server connection serves each transaction."""
    pooled, _home = pgbouncer
    db = tmp_path / "app.db"
    orders_app(db)
    back_up(db, tmp_path / "backups")
    cfg = write_config(tmp_path / "syncd.toml", pooled, [{"name": "app", "path": str(db)}], sections={
        "postgres": {"pooler": "transaction", "lock_dsn": pg_dsn},
        "cutover": {"min_days": 0, "backup_glob": str(tmp_path / "backups" / "*.db")},
        "verify": {"interval_seconds": 0}})
    nothing = "UPDATE app.orders SET item = item WHERE id = -1"  # no row: the statement's trigger fires all the same

    async def through_the_pooler(application_name: str) -> str | None:
        conn = await asyncpg.connect(pooled, statement_cache_size=0,
                                     server_settings={"application_name": application_name})
        try:
            async with conn.transaction():
                await conn.execute(nothing)
            return None
        except asyncpg.PostgresError as e:
            return str(e)
        finally:
            await conn.close()

    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify", "--source", "app").returncode == 0
        with held_at(cfg, "cutover", "frozen", resume_on=tmp_path / "go") as proc:
            assert await through_the_pooler("syncd elsewhere pid 1") is None
            refused = await through_the_pooler("the application")
            assert refused is not None and "syncd cutover in progress" in refused, refused
            (tmp_path / "go").touch()
            out, _ = await asyncio.to_thread(proc.communicate, timeout=120)
        assert proc.returncode == 0, out
        assert await through_the_pooler("the application") is None
        assert d.stop() == 0


async def test_a_guard_left_by_a_cutover_killed_once_done_passes_writes_and_the_daemon_drops_it(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify", "--source", "app").returncode == 0
        with held_at(cfg, "cutover", "done") as proc:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        assert await pg_rows(pg_dsn, GUARDS) == [(1,)]  # the kill landed before the triggers went
        got, error = await postgres(pg_dsn, INSERT)
        assert error is None and got == 3

        async def guard_gone() -> bool:
            return await pg_rows(pg_dsn, GUARDS) == [(0,)]

        await eventually(guard_gone, 30, "the guard dropped by the daemon", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT id, item FROM orders WHERE id = 3") == [(3, "c, new in Postgres")]
        assert d.stop() == 0


async def test_a_transaction_whose_snapshot_is_older_than_the_cutover_is_refused_while_it_runs(
        tmp_path, make_config, pg_dsn):
    """A REPEATABLE READ transaction in Postgres that took its snapshot before `syncd
    cutover` began still sees no cutover open in the bookkeeping: its write while the
    cutover runs is refused all the same (else it would commit where the drain may
    overwrite it, or after the verification and before the way back captures, never
    reaching SQLite)."""
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify", "--source", "app").returncode == 0
        stale = await asyncpg.connect(pg_dsn)
        try:
            await stale.execute("CREATE TABLE public.sessions (id int)")  # the application's own, beside syncd's
            tx = stale.transaction(isolation="repeatable_read")
            await tx.start()
            await stale.fetchval("SELECT count(*) FROM public.sessions")  # the snapshot is taken here
            with held_at(cfg, "cutover", "verified", resume_on=tmp_path / "go") as proc:
                try:
                    await stale.execute(UPDATE)
                    await tx.commit()
                    outcome = "committed"
                except asyncpg.PostgresError as e:
                    outcome = str(e)
                    await tx.rollback()
                (tmp_path / "go").touch()
                out, _ = await asyncio.to_thread(proc.communicate, timeout=120)
            assert proc.returncode == 0, out
        finally:
            await stale.close()
        assert "syncd cutover in progress" in outcome, outcome
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT id, item FROM orders ORDER BY id") == [(1, "a"), (2, "b")]
        assert await pg_rows(pg_dsn, "SELECT id, item FROM app.orders ORDER BY id") == [(1, "a"), (2, "b")]
        assert d.stop() == 0


async def test_a_guard_left_on_a_busy_table_passes_every_write_once_the_cutover_is_over(pg_dsn):
    """A guard trigger a busy table kept after its cutover's record closed passes every
    write, a REPEATABLE READ transaction's whose snapshot is older than the guard too: its
    function no longer tells the snapshot's age once the guard is being dropped (it
    refused such a snapshot only while the cutover could run)."""
    from syncd.postgres import cutover_guard

    bk, key = "guard_bk", 7
    admin = await asyncpg.connect(pg_dsn)
    stale = await asyncpg.connect(pg_dsn)
    busy = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f"CREATE SCHEMA {bk}; CREATE TABLE {bk}.switches (source text, kind text, state text); "
                            "CREATE SCHEMA app; CREATE TABLE app.orders (id int)")
        tx = stale.transaction(isolation="repeatable_read")
        await tx.start()
        await stale.fetchval("SELECT count(*) FROM app.orders")  # the snapshot is taken here
        async with admin.transaction():
            await admin.execute(f"INSERT INTO {bk}.switches VALUES ('app', 'cutover', 'started')")
            await cutover_guard.guard(admin, bk, "app", key, "app", ["orders"], "syncd cutover in progress")
        await admin.execute(f"UPDATE {bk}.switches SET state = 'done'")  # the cutover's last transaction
        held = busy.transaction()
        await held.start()
        await busy.execute("LOCK app.orders IN ROW EXCLUSIVE MODE")  # a writer keeps the table busy
        assert await cutover_guard.unguard(admin, bk, "app", key, "app") == 1  # its trigger is left for later
        await held.rollback()
        assert await stale.execute("INSERT INTO app.orders VALUES (1)") == "INSERT 0 1"
        await tx.commit()
        # A cutover of the source begun since is still guarded by the trigger left.
        await admin.execute(f"INSERT INTO {bk}.switches VALUES ('app', 'cutover', 'started')")
        refused = await postgres(pg_dsn, "INSERT INTO app.orders VALUES (2)")
        assert refused[1] is not None and "syncd cutover in progress" in refused[1], refused
    finally:
        for c in (stale, busy, admin):
            await c.close()
