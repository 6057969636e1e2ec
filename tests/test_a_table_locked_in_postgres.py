"""Another Postgres session holding a lock on one replicated table (LOCK TABLE in an
open transaction, a long ALTER of a DBA's): Postgres is up, and only that table waits.
The daemon holds the table, naming it and the backend that holds the lock, never
"Postgres unreachable"; the source's other tables keep streaming meanwhile, and the
held table catches up once the lock is gone, losing nothing. The holder is named
whether or not syncd's role may read other roles' session details (pg_read_all_stats)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from typing import Any

import asyncpg
import pytest

from tests.support.compare import compare_keyless, compare_table
from tests.support.daemon import DaemonProcess, held_at, run_cli, wait_for
from tests.support.sync import eventually, pg_rows, pg_statements, table_states, wait_caught_up
from tests.support.way_back import backup_and_config


def locked_and_free(db, unique: bool = False, free_row: bool = False) -> sqlite3.Connection:
    """An application's file (WAL, autocommit) with tables `locked` (a row; `v` UNIQUE with
    `unique`) and `free` (a row too with `free_row`); the connection to write to it."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute(f"CREATE TABLE locked (id INTEGER PRIMARY KEY, v TEXT{' UNIQUE' if unique else ''})")
    conn.execute("CREATE TABLE free (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO locked VALUES (1, 'x')")
    if free_row:
        conn.execute("INSERT INTO free VALUES (1, 'x')")
    return conn


@contextlib.asynccontextmanager
async def syncd_dsn(pg_dsn: str, superuser: bool):
    """The DSN syncd connects with: the test's superuser, or a login role of its own
    owning the test's database (dropped with what it owns afterwards)."""
    if superuser:
        yield pg_dsn
        return
    role = f"syncd_plain_{secrets.token_hex(4)}"
    database = pg_dsn.rsplit("/", 1)[1]
    await pg_statements(pg_dsn, f"CREATE ROLE {role} LOGIN", f'ALTER DATABASE "{database}" OWNER TO {role}')
    try:
        yield pg_dsn.replace("postgres@", f"{role}@")
    finally:
        await pg_statements(pg_dsn, f'ALTER DATABASE "{database}" OWNER TO postgres', f"DROP OWNED BY {role} CASCADE",
                            f"DROP ROLE {role}")


@pytest.mark.parametrize("superuser", [True, False], ids=["superuser", "role_of_its_own"])
async def test_a_table_another_session_locks_is_held_by_name_while_the_others_stream(tmp_path, make_config, pg_dsn,
                                                                                   superuser):
    db = tmp_path / "app.db"
    conn = locked_and_free(db, free_row=True)
    async with syncd_dsn(pg_dsn, superuser) as dsn:
        cfg = make_config([{"name": "app", "path": str(db)}], sections={
            "postgres": {"dsn": dsn}, "verify": {"interval_seconds": 0}, "stream": {"held_table_retry_seconds": 1}})
        await locked_and_freed(cfg, db, conn, tmp_path, pg_dsn)


async def locked_and_freed(cfg, db, conn, tmp_path, pg_dsn) -> None:
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        holder = await asyncpg.connect(pg_dsn)
        try:
            pid = holder.get_server_pid()
            async with holder.transaction():
                await holder.execute("LOCK TABLE app.locked IN ACCESS EXCLUSIVE MODE")
                conn.execute("UPDATE locked SET v = 'changed' WHERE id = 1")
                conn.execute("INSERT INTO locked VALUES (2, 'new')")
                conn.execute("INSERT INTO free VALUES (2, 'meanwhile')")

                async def free_streamed():
                    return await pg_rows(pg_dsn, "SELECT v FROM app.free WHERE id = 2") == [("meanwhile",)]

                # Well within [postgres] statement_timeout_seconds (60 s): not waited out.
                await eventually(free_streamed, 30, "the other table's change, while the lock is held", d)
                wait_for(lambda: "table held" in d.log(), 30, "the held table in the log", d)
                held = next(line for line in d.log().splitlines() if "table held" in line)
                assert "table=locked" in held and f"backend {pid}" in held, held
                assert (await table_states(pg_dsn, "app"))["locked"][0] == "held"
                status = run_cli(cfg, "status")
                assert '"locked"' in status.stdout + status.stderr and "held" in status.stdout, status.stdout
        finally:
            await holder.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO locked VALUES (3, 'after')")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    assert "unreachable" not in log and "event=failing" not in log, log
    assert "table resumed" in log, log
    for table in ("locked", "free"):
        assert await compare_table(str(db), pg_dsn, "app", table) == []


async def test_a_locked_table_with_a_unique_column_is_held_while_the_others_stream(tmp_path, make_config, pg_dsn):
    """The same lock on a table with a UNIQUE column, whose rows a REPLACE may have
    removed through it (looked for in Postgres before the batch is written): held as
    well, the other table streaming, and caught up once the lock is gone."""
    db = tmp_path / "app.db"
    conn = locked_and_free(db, unique=True)
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        holder = await asyncpg.connect(pg_dsn)
        try:
            async with holder.transaction():
                await holder.execute("LOCK TABLE app.locked IN ACCESS EXCLUSIVE MODE")
                conn.execute("REPLACE INTO locked VALUES (2, 'x')")
                conn.execute("INSERT INTO free VALUES (1, 'meanwhile')")

                async def free_streamed():
                    return await pg_rows(pg_dsn, "SELECT v FROM app.free") == [("meanwhile",)]

                await eventually(free_streamed, 30, "the other table's change, while the lock is held", d)
                assert (await table_states(pg_dsn, "app"))["locked"][0] == "held"
        finally:
            await holder.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    assert "unreachable" not in log and "event=failing" not in log, log
    for table in ("locked", "free"):
        assert await compare_table(str(db), pg_dsn, "app", table) == []


async def test_a_resync_of_a_locked_table_waits_for_the_lock_naming_it_and_stops_nothing_else(
        tmp_path, make_config, pg_dsn):
    """`syncd resync` of a table another session keeps locked: the request waits, said
    with the session holding the lock, never as "Postgres unreachable", while the other
    tables stream on; once the lock is gone the table is rebuilt."""
    db = tmp_path / "app.db"
    conn = locked_and_free(db)
    cfg = make_config([{"name": "app", "path": str(db)}], sections={
        "postgres": {"statement_timeout_seconds": 4}, "verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        holder = await asyncpg.connect(pg_dsn)
        try:
            pid = holder.get_server_pid()
            async with holder.transaction():
                await holder.execute("LOCK TABLE app.locked IN ACCESS EXCLUSIVE MODE")
                assert run_cli(cfg, "resync", "--source", "app", "--table", "locked").returncode == 0
                wait_for(lambda: "resync requested but not done" in d.log(), 30, "the resync waiting", d)
                conn.execute("INSERT INTO free VALUES (1, 'meanwhile')")

                async def free_streamed():
                    return await pg_rows(pg_dsn, "SELECT v FROM app.free") == [("meanwhile",)]

                await eventually(free_streamed, 30, "the other table's change, while the lock is held", d)
                line = next(x for x in d.log().splitlines() if "resync requested but not done" in x)
                assert "table=locked" in line and f"backend {pid}" in line, line
        finally:
            await holder.close()
        d.wait_log("resync requested: Postgres table dropped")
        await eventually(lambda: _no_request(pg_dsn), 30, "the resync done", d)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    assert "unreachable" not in log and "event=failing" not in log, log
    for table in ("locked", "free"):
        assert await compare_table(str(db), pg_dsn, "app", table) == []


async def _no_request(dsn: str) -> bool:
    return await pg_rows(dsn, "SELECT count(*) FROM syncd.tables WHERE request IS NOT NULL") == [(0,)]


async def test_each_retry_of_a_locked_table_waits_for_the_lock_once_while_the_others_stream(
        tmp_path, make_config, pg_dsn):
    """While the lock lasts, the held table is tried again every
    [stream] held_table_retry_seconds; each try stalls the source's stream for one lock
    wait, not two (the try of the whole batch, then its table alone): Postgres's own
    record of syncd's lock waits shows each stall made of one wait, and the other
    table's rows, written all along, arrive meanwhile."""
    db = tmp_path / "app.db"
    conn = locked_and_free(db)
    cfg = make_config([{"name": "app", "path": str(db)}], sections={
        "verify": {"interval_seconds": 0}, "stream": {"held_table_retry_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        holder = await asyncpg.connect(pg_dsn)
        watch = await asyncpg.connect(pg_dsn)
        waits: dict[tuple, Any] = {}  # (backend, statement start) -> last seen waiting (server clock)
        try:
            async with holder.transaction():
                await holder.execute("LOCK TABLE app.locked IN ACCESS EXCLUSIVE MODE")
                conn.execute("INSERT INTO locked VALUES (2, 'new')")
                written = 0
                loop = asyncio.get_running_loop()
                until = loop.time() + 9  # the first meeting, then a few retries
                while loop.time() < until:
                    written += 1
                    conn.execute("INSERT INTO free VALUES (?, 'meanwhile')", (written,))
                    for pid, started, seen in await watch.fetch(
                            "SELECT pid, query_start, clock_timestamp() FROM pg_stat_activity "
                            "WHERE datname = current_database() AND wait_event_type = 'Lock' "
                            "AND starts_with(application_name, 'syncd ')"):
                        waits[(pid, started)] = seen
                    await asyncio.sleep(0.05)

                async def free_streamed():
                    return await pg_rows(pg_dsn, "SELECT count(*) FROM app.free") == [(written,)]

                await eventually(free_streamed, 30, "the other table's rows, while the lock is held", d)
                assert (await table_states(pg_dsn, "app"))["locked"][0] == "held"
        finally:
            await holder.close()
            await watch.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    # Lock waits one right after the other (the next begun before a poll could see the
    # last one end, well under the retry interval) are one stall of the stream.
    stalls: list[list[tuple]] = []
    for key in sorted(waits, key=lambda k: k[1]):
        if stalls and (key[1] - waits[stalls[-1][-1]]).total_seconds() < 0.5:
            stalls[-1].append(key)
        else:
            stalls.append([key])
    assert len(stalls) >= 2, waits  # the first meeting and a retry at least
    assert all(len(s) == 1 for s in stalls), [[(k[0], f"{(waits[k] - k[1]).total_seconds():.1f} s") for k in s]
                                              for s in stalls]
    assert "unreachable" not in log and "event=failing" not in log, log
    for table in ("locked", "free"):
        assert await compare_table(str(db), pg_dsn, "app", table) == []


async def test_the_session_in_the_way_is_named_first_and_the_hold_said_once(tmp_path, make_config, pg_dsn):
    """Beside the session keeping the table from syncd's writes (a SHARE lock: CREATE
    INDEX, say), plain readers hold a lock on it too, busy one moment and idle the
    next. The hold names the session in the way, however many readers came before it,
    and is said once while the lock lasts, not again at a retry that finds the readers
    in another state."""
    db = tmp_path / "app.db"
    conn = locked_and_free(db)
    cfg = make_config([{"name": "app", "path": str(db)}], sections={
        "verify": {"interval_seconds": 0}, "stream": {"held_table_retry_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        readers = [await asyncpg.connect(pg_dsn) for _ in range(6)]  # before the holder: named first by pid
        holder = await asyncpg.connect(pg_dsn)
        pid = holder.get_server_pid()
        try:
            for r in readers:
                await r.execute("BEGIN; SELECT count(*) FROM app.locked")
            async with holder.transaction():
                await holder.execute("LOCK TABLE app.locked IN SHARE MODE")
                conn.execute("INSERT INTO locked VALUES (2, 'new')")
                wait_for(lambda: "table held" in d.log(), 30, "the held table in the log", d)
                # Idle when the hold was said, busy through the next retries.
                await asyncio.gather(*(r.execute("SELECT pg_sleep(4)") for r in readers))
                conn.execute("INSERT INTO free VALUES (1, 'meanwhile')")

                async def free_streamed():
                    return await pg_rows(pg_dsn, "SELECT v FROM app.free") == [("meanwhile",)]

                await eventually(free_streamed, 30, "the other table's change, while the lock is held", d)
                assert (await table_states(pg_dsn, "app"))["locked"][0] == "held"
                reason = (await table_states(pg_dsn, "app"))["locked"]
        finally:
            await holder.close()
            for r in readers:
                await r.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    said = [line for line in log.splitlines() if "table held" in line and "table=locked" in line]
    assert len(said) == 1, said
    assert f"backend {pid}" in said[0], said[0]
    assert f"backend {pid}" in str(reason), reason
    assert "unreachable" not in log and "event=failing" not in log, log
    for table in ("locked", "free"):
        assert await compare_table(str(db), pg_dsn, "app", table) == []


async def test_a_resync_waiting_for_a_lock_does_not_wait_for_it_again_at_each_recheck(tmp_path, make_config, pg_dsn):
    """A resync request pending while another session keeps its table locked is looked
    at again at every recheck ([stream] held_table_retry_seconds): the drop of the table
    waits for the lock once, and while the same transaction keeps it, the rechecks do
    not wait again (each wait stalled the source's stream): Postgres's own record of
    syncd's lock waits shows one. The other table's rows arrive meanwhile, and the
    table is rebuilt once the lock is gone."""
    db = tmp_path / "app.db"
    conn = locked_and_free(db)
    cfg = make_config([{"name": "app", "path": str(db)}], sections={
        "postgres": {"statement_timeout_seconds": 4}, "verify": {"interval_seconds": 0},
        "stream": {"held_table_retry_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        holder = await asyncpg.connect(pg_dsn)
        watch = await asyncpg.connect(pg_dsn)
        waits: set[tuple] = set()  # (backend, statement start) of syncd's lock waits
        try:
            async with holder.transaction():
                await holder.execute("LOCK TABLE app.locked IN ACCESS SHARE MODE")  # a long report, say
                assert run_cli(cfg, "resync", "--source", "app", "--table", "locked").returncode == 0
                written = 0
                loop = asyncio.get_running_loop()
                until = loop.time() + 8  # several rechecks
                while loop.time() < until:
                    written += 1
                    conn.execute("INSERT INTO free VALUES (?, 'meanwhile')", (written,))
                    waits |= {tuple(r) for r in await watch.fetch(
                        "SELECT pid, query_start FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND starts_with(application_name, 'syncd ')")}
                    await asyncio.sleep(0.05)

                async def free_streamed():
                    return await pg_rows(pg_dsn, "SELECT count(*) FROM app.free") == [(written,)]

                await eventually(free_streamed, 30, "the other table's rows, while the lock is held", d)
                assert "resync requested but not done" in d.log()
                assert not await _no_request(pg_dsn)
        finally:
            await holder.close()
            await watch.close()
        await eventually(lambda: _no_request(pg_dsn), 30, "the resync done", d)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    assert len(waits) == 1, sorted(waits)
    assert log.count("resync requested but not done") == 1, log
    assert "unreachable" not in log and "event=failing" not in log, log
    for table in ("locked", "free"):
        assert await compare_table(str(db), pg_dsn, "app", table) == []


async def test_a_cutover_whose_drain_meets_a_table_held_for_a_lock_names_it(tmp_path, make_config, pg_dsn):
    """A table another session locks while `syncd cutover` runs (after the freeze) is held
    by the drain, its last changes queued: the cutover refuses, saying that table is
    held for a lock and by whom, not that the final verification found its rows
    different; it undoes the freeze, and the table catches up once the lock is gone."""
    db = tmp_path / "app.db"
    conn = locked_and_free(db, free_row=True)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify", "--source", "app").returncode == 0
        assert d.stop() == 0
    # The last changes, for the cutover's drain to apply (no daemon runs the source).
    conn.execute("INSERT INTO locked VALUES (2, 'new')")
    conn.execute("INSERT INTO free VALUES (2, 'new')")
    holder = await asyncpg.connect(pg_dsn)
    pid = holder.get_server_pid()
    try:
        with held_at(cfg, "cutover", "frozen", resume_on=tmp_path / "go") as proc:
            async with holder.transaction():
                await holder.execute("LOCK TABLE app.locked IN SHARE MODE")  # readers go on, writes wait
                (tmp_path / "go").touch()
                out, _ = await asyncio.to_thread(proc.communicate, timeout=120)
    finally:
        await holder.close()
    assert proc.returncode != 0, out
    refused = next(line for line in out.splitlines() if "REFUSED" in line or "UNDONE" in line)
    assert 'table "locked" is held' in refused and f"backend {pid}" in refused, out
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO free VALUES (3, 'after')")  # the freeze undone
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    for table in ("locked", "free"):
        assert await compare_table(str(db), pg_dsn, "app", table) == []


async def test_a_table_another_session_locks_during_its_load_is_held_by_name_while_the_others_stream(
        tmp_path, make_config, pg_dsn):
    """The lock met by a table's load (a DBA's CREATE INDEX on it, non-concurrently, in
    the first hours of the dual-write window): the load waits for it, held by name, while
    the source's other tables stream on; it was a chunk waiting out the whole statement
    timeout, over and over, the source stalled and called "Postgres unreachable"."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE a_free (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE z_big (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO z_big VALUES (?, ?)", [(i, f"row {i}") for i in range(1, 40_001)])
    conn.execute("COMMIT")
    cfg = make_config([{"name": "app", "path": str(db)}], sections={
        "postgres": {"statement_timeout_seconds": 20}, "verify": {"interval_seconds": 0},
        "stream": {"held_table_retry_seconds": 1, "snapshot_chunk_rows": 100}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        watcher = await asyncpg.connect(pg_dsn)
        try:
            async def loading():
                try:
                    row = await watcher.fetchrow("SELECT state, snapshot_rows FROM syncd.tables WHERE source = 'app' "
                                                 "AND table_name = 'z_big'")
                except asyncpg.UndefinedTableError:
                    return False
                return row is not None and row["state"] == "loading" and row["snapshot_rows"] > 0

            await eventually(loading, 30, "the big table's load under way", d)
        finally:
            await watcher.close()
        holder = await asyncpg.connect(pg_dsn)
        try:
            pid = holder.get_server_pid()
            async with holder.transaction():
                await holder.execute("LOCK TABLE app.z_big IN SHARE MODE")  # as CREATE INDEX takes it
                conn.execute("INSERT INTO a_free VALUES (1, 'meanwhile')")

                async def free_streamed():
                    return await pg_rows(pg_dsn, "SELECT v FROM app.a_free WHERE id = 1") == [("meanwhile",)]

                # Well within [postgres] statement_timeout_seconds: not waited out.
                await eventually(free_streamed, 10, "the other table's change, while the lock is held", d)
                wait_for(lambda: "table held" in d.log(), 10, "the held table in the log", d)
                held = next(line for line in d.log().splitlines() if "table held" in line)
                assert "table=z_big" in held and f"backend {pid}" in held, held
                assert (await table_states(pg_dsn, "app"))["z_big"][0] == "held"
        finally:
            await holder.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=120)
        assert d.stop() == 0
        log = d.log()
    assert "unreachable" not in log and "event=failing" not in log, log
    assert "table resumed" in log, log
    for table in ("a_free", "z_big"):
        assert await compare_table(str(db), pg_dsn, "app", table) == []


async def test_a_reload_whose_table_another_session_locks_is_held_by_name_while_the_others_stream(
        tmp_path, make_config, pg_dsn):
    """A keyless table reloaded aside (a VACUUM renumbered its rowids) whose live table
    another session keeps locked when the reloaded rows are to replace its rows: the table
    is held by name while the others stream on, and the reload ends once the lock is gone;
    it was the replacement waiting out the whole statement timeout, over and over, the
    source stalled and called "Postgres unreachable"."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE a_free (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE z_log (host TEXT, v INTEGER)")
    conn.executemany("INSERT INTO z_log VALUES (?, ?)", [(f"h{i % 3}", i) for i in range(200)])
    cfg = make_config([{"name": "app", "path": str(db)}], sections={
        "postgres": {"statement_timeout_seconds": 20}, "verify": {"interval_seconds": 0},
        "stream": {"held_table_retry_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("DELETE FROM z_log WHERE v % 2 = 0")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        holder = await asyncpg.connect(pg_dsn)
        try:
            pid = holder.get_server_pid()
            async with holder.transaction():
                await holder.execute("LOCK TABLE app.z_log IN SHARE MODE")  # as CREATE INDEX takes it
                conn.execute("VACUUM")  # renumbers the rowids: reloaded aside
                conn.execute("INSERT INTO a_free VALUES (1, 'meanwhile')")

                async def free_streamed():
                    return await pg_rows(pg_dsn, "SELECT v FROM app.a_free WHERE id = 1") == [("meanwhile",)]

                wait_for(lambda: "table held" in d.log(), 10, "the held table in the log", d)
                # Well within [postgres] statement_timeout_seconds: not waited out.
                await eventually(free_streamed, 10, "the other table's change, while the lock is held", d)
                held = next(line for line in d.log().splitlines() if "table held" in line)
                assert "table=z_log" in held and f"backend {pid}" in held, held
        finally:
            await holder.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    assert "unreachable" not in log and "event=failing" not in log, log
    assert await compare_table(str(db), pg_dsn, "app", "a_free") == []
    assert await compare_keyless(str(db), pg_dsn, "app", "z_log") == []
