"""A fleet where some applications hold their file under a long exclusive lock
(rollback-journal mode, `BEGIN EXCLUSIVE`) or keep a write transaction open: the other
files keep streaming as before, to Postgres and, after a cutover, back from it, and the
locked ones catch up once their locks are gone. syncd's SQLite threads and its pooled
Postgres connections are shared by every source, so a locked file must give its thread
back instead of waiting on it, and never keep a Postgres connection while it waits."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from syncd.config import load_settings
from syncd.reverse.position import position
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import wait_caught_up
from tests.support.way_back import back_up, typeof, wait_back

THREADS = 2
LOCKED = 5  # more locked files than threads
HEALTHY = 3
# Each locked file's poll ([stream] poll_interval_seconds, 1 s) meets its lock and waits
# its busy timeout ([sqlite] read_busy_timeout_ms, 2 s): measured over a few of them.
LOCKED_MEASURED_SECONDS = 4.0

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT INTO items (v) VALUES ('written under the lock')")
print("locked", flush=True)
sys.stdin.readline()  # held until told
conn.execute("COMMIT")
print("released", flush=True)
"""


def make_file(path) -> None:
    import sqlite3
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = delete")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO items (v) VALUES (?)", [(f"{path.stem}-{i}",) for i in range(5)])
    conn.commit()
    conn.close()


def fleet_files(tmp_path: Path, held: list[str], healthy: int) -> tuple[Path, list[Path], list[Path]]:
    """A folder of files made by make_file: the ones named in `held` (the application
    will lock them) and `healthy` others; (folder, held files, healthy files)."""
    files = tmp_path / "files"
    files.mkdir()
    held_files = [files / f"{name}.db" for name in held]
    healthy_files = [files / f"healthy{i}.db" for i in range(healthy)]
    for p in held_files + healthy_files:
        make_file(p)
    return files, held_files, healthy_files


def write(path, value: str) -> None:
    import sqlite3
    conn = sqlite3.connect(path, timeout=5)
    conn.execute("INSERT INTO items (v) VALUES (?)", (value,))
    conn.commit()
    conn.close()


async def healthy_waits(pg, d, healthy: list, changes: int, first: int = 0) -> list[float]:
    """Seconds from each of `changes` writes, spread over the `healthy` files, until
    Postgres holds it; the writes are numbered from `first` (a marker written before
    would be found at once)."""
    waits = []
    for i in range(first, first + changes):
        p = healthy[i % len(healthy)]
        marker = f"change {i}"
        write(p, marker)
        written = time.monotonic()
        while not await pg.fetchval(f'SELECT count(*) FROM "{p.stem}".items WHERE v = $1', marker):
            assert time.monotonic() - written < 60, f"{marker} of {p.name} never reached Postgres"
            assert d.alive(), d.log()[-3000:]
            await asyncio.sleep(0.02)
        waits.append(time.monotonic() - written)
    return waits


async def test_files_locked_by_their_applications_do_not_stall_the_others(tmp_path, make_config, pg_dsn):
    files, locked, healthy = fleet_files(tmp_path, [f"locked{i}" for i in range(LOCKED)], HEALTHY)
    cfg = make_config([{"name": "{stem}", "path": str(files / "*.db")}],
                      sections={"sqlite": {"threads": THREADS}, "verify": {"interval_seconds": 0}})
    pg = await asyncpg.connect(pg_dsn)
    holders: list[subprocess.Popen] = []
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            for p in locked + healthy:
                await wait_caught_up(p, pg_dsn, p.stem, daemon=d)
            holders = [subprocess.Popen([sys.executable, "-c", HOLDER, str(p)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for p in locked]
            for h in holders:
                assert h.stdout.readline().strip() == "locked"
            # Each locked file now costs the daemon a read that cannot succeed; the
            # healthy files' changes must still show up promptly.
            waits: list[float] = []
            started = time.monotonic()
            while len(waits) < 12 or time.monotonic() - started < LOCKED_MEASURED_SECONDS:
                waits += await healthy_waits(pg, d, healthy[:HEALTHY], HEALTHY, first=len(waits))
                await asyncio.sleep(0.1)
            # A generous bound: waiting on a locked file costs seconds per read (its busy
            # timeout); polls and batch reads of healthy files take milliseconds.
            assert max(waits) < 2.0, waits
            assert all(h.poll() is None for h in holders), "a lock ended before the healthy files were measured"
            for h in holders:
                h.stdin.write("go\n")
                h.stdin.flush()
            for h in holders:
                assert h.stdout.readline().strip() == "released"
                h.wait(30)
            # Once their locks are gone, the locked files' own changes arrive too.
            for p in locked:
                await wait_caught_up(p, pg_dsn, p.stem, daemon=d)
                assert await pg.fetchval(f'SELECT count(*) FROM "{p.stem}".items '
                                         "WHERE v = 'written under the lock'") == 1
            assert d.stop() == 0
    finally:
        for h in holders:
            h.kill()
        await pg.close()


MANY_LOCKED = 80  # more than the pool's threads and its extra ones together
MANY_HEALTHY = 5

MANY_HOLDER = """
import sqlite3, sys
conns = []
for path in sys.argv[1:]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("INSERT INTO items (v) VALUES ('written under the lock')")
    conns.append(conn)
print("locked", flush=True)
sys.stdin.readline()  # held until told
for conn in conns:
    conn.execute("COMMIT")
print("released", flush=True)
"""


async def test_many_locked_files_do_not_stall_the_others(tmp_path, make_config, pg_dsn):
    """However many files their applications keep locked, the healthy files' changes
    reach Postgres as promptly as ever; the locked ones are reported, and catch up
    once released."""
    files, locked, healthy = fleet_files(tmp_path, [f"locked{i:03d}" for i in range(MANY_LOCKED)], MANY_HEALTHY)
    cfg = one_pooled_connection(make_config, files)
    pg = await asyncpg.connect(pg_dsn)
    holder = None
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            for p in locked + healthy:
                await wait_caught_up(p, pg_dsn, p.stem, timeout=180, daemon=d)
            holder = subprocess.Popen([sys.executable, "-c", MANY_HOLDER, *map(str, locked)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert holder.stdout.readline().strip() == "locked"
            # `syncd status` reads every file, each locked one waited for its busy timeout
            # (2 s, the locked files side by side), while the healthy files are measured.
            def timed_status():
                began = time.monotonic()
                return run_cli(cfg, "status", "--all", timeout=120), time.monotonic() - began

            status_run = asyncio.create_task(asyncio.to_thread(timed_status))
            await asyncio.sleep(5)  # every locked file's reads are waiting on their locks by now
            waits = await healthy_waits(pg, d, healthy[:MANY_HEALTHY], 20)
            # A generous bound: a read of a locked file waits seconds (its busy timeout);
            # the healthy files' polls and batches take milliseconds.
            assert max(waits) < 2.0, waits
            assert holder.poll() is None, "the locks ended before the healthy files were measured"

            # The locked files are named, in the log and in `syncd status`, which waited
            # for them side by side: one busy timeout (2 s) for the lot (2.2 s here), not
            # a wait per file at the first look (80 x 50 ms) nor one per few dozen files
            # (three rounds of 2 s): either makes it 6 s or more. A monitoring check
            # gives up after some seconds.
            status, took = await status_run
            assert took < 4.5, took
            for p in locked[:3]:
                line = next((ln for ln in status.stdout.splitlines() if ln.split()[:1] == [p.stem]), "")
                assert "locked" in line, status.stdout[-3000:]
            d.wait_log("locked by", timeout=20)
            assert "locked000" in d.log()

            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "released"
            for p in locked:
                await wait_caught_up(p, pg_dsn, p.stem, timeout=120, daemon=d)
                assert await pg.fetchval(f'SELECT count(*) FROM "{p.stem}".items '
                                         "WHERE v = 'written under the lock'") == 1
            assert d.stop() == 0
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        await pg.close()


# The changes before the lock are one transaction, the lock taken right after its commit:
# syncd cannot slip a prune (or its note) in between two of them.
WRITE_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
conn.executemany("INSERT INTO items (v) VALUES (?)", [(f"before the lock {i}",) for i in range(20)])
if sys.argv[2] == "index":  # the schema moved too: syncd notes the new version in the file
    conn.execute("CREATE INDEX items_v ON items (v)")
conn.execute("COMMIT")
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO items (v) VALUES ('written under the lock')")
print("locked", flush=True)
sys.stdin.readline()  # held until told
conn.execute("COMMIT")
print("released", flush=True)
"""

WRITE_HELD = 5  # healthy files beside the one held in a write transaction
# syncd's first tries to write into the held file come within a second or two of the lock
# and are measured, with the waits after them: after a schema change, the step that
# finds it (at the held file's next poll) waits STEP_WRITE_SECONDS for the write lock with
# the fleet's connection in hand, the next ones wait for it without one; changes alone,
# the prune of them starts in the step that sent them (the held file was never pruned:
# not PRUNE_EVERY_SECONDS on) and waits its 1 s for the lock.
WRITE_MEASURED_SECONDS = 5.0
PRUNE_TRY_SECONDS = 2.5  # measured at least this long after the changes before the lock reached Postgres


def one_pooled_connection(make_config, files, **sections):
    """Every file of `files` one source, connections kept open, schema checks often (each
    a step with a Postgres connection) and one pooled connection: a step that waits on a
    file's lock while it holds that connection keeps the whole fleet waiting."""
    return make_config([{"name": "{stem}", "path": str(files / "*.db")}],
                       sections={"verify": {"interval_seconds": 0}, "postgres": {"max_connections": 2},
                                 "stream": {"schema_check_interval_seconds": 2},
                                 "sqlite": {"idle_close_seconds": 600}, **sections})


def changelog_entries_below(path, seq: int) -> int:
    import sqlite3
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT count(*) FROM _syncd_changelog WHERE seq < ?", (seq,)).fetchone()[0]
    finally:
        conn.close()


# A schema change makes syncd write its note into the file before it sends more: the case
# that stalled the fleet, in both journal modes; changes alone, the prune's case, in one.
@pytest.mark.parametrize(("before", "journal"), [("index", "delete"), ("index", "wal"), ("changes", "delete")])
async def test_a_file_held_in_a_write_transaction_does_not_stall_the_others(tmp_path, make_config, pg_dsn, journal,
                                                                           before):
    """An application keeps a write transaction (BEGIN IMMEDIATE) open on its file, with
    changes it committed just before still to be sent: syncd reads and sends them (reads
    still work), but its own writes into that file (the prune of what Postgres took, its
    notes) cannot get the lock. With one pooled Postgres connection for the fleet, the
    other files' changes still reach Postgres promptly; once the transaction ends, the
    held file's change arrives too and its sent entries are pruned."""
    files, (held,), healthy = fleet_files(tmp_path, ["held"], WRITE_HELD)
    if journal == "wal":
        import sqlite3
        sqlite3.connect(held).execute("PRAGMA journal_mode = wal").fetchone()
    cfg = one_pooled_connection(make_config, files)
    pg = await asyncpg.connect(pg_dsn)
    holder = None
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            for p in [held, *healthy]:
                await wait_caught_up(p, pg_dsn, p.stem, daemon=d)
            holder = subprocess.Popen([sys.executable, "-c", WRITE_HOLDER, str(held), before],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert holder.stdout.readline().strip() == "locked"
            waits: list[float] = []
            started = time.monotonic()
            sent: float | None = None  # when the changes before the lock were all in Postgres
            while True:
                if before == "changes" and sent is None and await pg.fetchval(
                        "SELECT count(*) FROM held.items WHERE v LIKE 'before the lock %'") == 20:
                    sent = time.monotonic()
                if time.monotonic() - started >= WRITE_MEASURED_SECONDS and (
                        before != "changes" or sent is not None and time.monotonic() - sent >= PRUNE_TRY_SECONDS):
                    break
                assert time.monotonic() - started < 60, "the changes before the lock never reached Postgres"
                waits += await healthy_waits(pg, d, healthy, len(healthy), first=len(waits))
                await asyncio.sleep(0.2)
            assert holder.poll() is None, "the transaction ended before the healthy files were measured"
            if before == "changes":
                # The changes committed before the transaction began were read and sent
                # meanwhile (after a schema change, syncd notes the new version in the file
                # before it sends more, so they wait for the transaction's end there)...
                assert await pg.fetchval("SELECT count(*) FROM held.items WHERE v LIKE 'before the lock %'") == 20
                # ... and syncd's prune of them could not get the file's write lock all along.
                applied = await pg.fetchval("SELECT applied_seq FROM syncd.sources WHERE source = 'held'")
                assert changelog_entries_below(held, applied) == applied - 1  # seqs from 1, none pruned
            # A generous bound: one of syncd's writes into the held file waits out its
            # lock for seconds; a healthy file's change takes milliseconds.
            print(f"healthy changes into Postgres: {len(waits)}, slowest {sorted(waits)[-5:]}")
            assert max(waits) < 10.0, sorted(waits)[-10:]

            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "released"
            await wait_caught_up(held, pg_dsn, held.stem, daemon=d)
            assert await pg.fetchval("SELECT count(*) FROM held.items WHERE v = 'written under the lock'") == 1
            assert await pg.fetchval("SELECT count(*) FROM held.items WHERE v LIKE 'before the lock %'") == 20
            # Nothing lost, and the entries Postgres confirmed are pruned from the file.
            applied = await pg.fetchval("SELECT applied_seq FROM syncd.sources WHERE source = 'held'")
            deadline = time.monotonic() + 60
            while changelog_entries_below(held, applied):
                assert time.monotonic() < deadline, "the held file's sent entries were never pruned"
                assert d.alive(), d.log()[-3000:]
                await asyncio.sleep(0.5)
            for p in healthy:
                await wait_caught_up(p, pg_dsn, p.stem, daemon=d)
            assert d.stop() == 0
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        await pg.close()


WAY_BACK_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")  # the file's write lock, held; its readers go on
print("locked", flush=True)
sys.stdin.readline()  # held until told
conn.execute("ROLLBACK")
print("released", flush=True)
"""

WAY_BACK_HEALTHY = 3  # cut-over files beside the one held in a write transaction
WAY_BACK_MEASURED_SECONDS = 8.0  # several of syncd's tries to write the held file's changes


def reverse_checkpoint(path) -> str | None:
    rows = typeof(path, "SELECT value FROM _syncd_meta WHERE key = 'reverse_checkpoint'")
    return rows[0][0] if rows else None


async def test_a_cut_over_file_held_in_a_write_transaction_does_not_stall_the_way_back(tmp_path, make_config,
                                                                                      pg_dsn):
    """After the cutover every file follows Postgres. An application keeps a write
    transaction (BEGIN IMMEDIATE) open on one of them while Postgres changes that file's
    rows: syncd cannot write them into it. With one pooled Postgres connection for the
    fleet, the other files still receive their Postgres changes promptly; the held file's
    changes wait in Postgres's changelog meanwhile (its position in the file does not
    move), and reach it, in order, once the transaction ends."""
    files, (held,), healthy = fleet_files(tmp_path, ["held"], WAY_BACK_HEALTHY)
    for p in [held, *healthy]:
        back_up(p, tmp_path / "backups")
    cfg = one_pooled_connection(make_config, files, cutover={
        "min_days": 0, "backup_glob": str(tmp_path / "backups" / "{source}-latest.db")})
    pg = await asyncpg.connect(pg_dsn)
    holder = None
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            for p in [held, *healthy]:
                await wait_caught_up(p, pg_dsn, p.stem, daemon=d)
            v = run_cli(cfg, "verify")  # the checklist wants a clean verification
            assert v.returncode == 0, v.stdout + v.stderr
            r = run_cli(cfg, "cutover")
            assert r.returncode == 0, r.stdout + r.stderr
            for p in [held, *healthy]:
                await wait_back(cfg, p, pg_dsn, p.stem, daemon=d)
            position_before = reverse_checkpoint(held)

            holder = subprocess.Popen([sys.executable, "-c", WAY_BACK_HOLDER, str(held)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert holder.stdout.readline().strip() == "locked"
            # The application, on Postgres now, changes the held file's rows: a row changed
            # twice, one added and changed, one deleted.
            await pg.execute("UPDATE held.items SET v = 'changed in Postgres' WHERE id = 1")
            await pg.execute("UPDATE held.items SET v = 'changed twice' WHERE id = 1")
            await pg.execute("INSERT INTO held.items (id, v) VALUES (100, 'added in Postgres')")
            await pg.execute("UPDATE held.items SET v = 'added, then changed' WHERE id = 100")
            await pg.execute("DELETE FROM held.items WHERE id = 2")

            waits: list[float] = []
            started = time.monotonic()
            while time.monotonic() - started < WAY_BACK_MEASURED_SECONDS:
                p = healthy[len(waits) % len(healthy)]
                marker = f"change {len(waits)}"
                await pg.execute(f'INSERT INTO "{p.stem}".items (id, v) VALUES ($1, $2)', 1000 + len(waits), marker)
                written = time.monotonic()
                while not typeof(p, "SELECT count(*) FROM items WHERE v = ?", marker)[0][0]:
                    # A generous bound: one of syncd's writes into the held file waits for its
                    # lock for a second; a healthy file's change takes milliseconds.
                    assert time.monotonic() - written < 10.0, \
                        f"{marker} of {p.stem} took over 10 s to reach SQLite: the way back stalls behind {held.name}"
                    assert d.alive(), d.log()[-3000:]
                    await asyncio.sleep(0.02)
                waits.append(time.monotonic() - written)
                await asyncio.sleep(0.2)
            print(f"healthy changes back into SQLite: {len(waits)}, slowest {sorted(waits)[-5:]}")
            assert holder.poll() is None, "the transaction ended before the healthy files were measured"
            # None of the held file's changes was written, nor its position moved: they wait
            # in Postgres's changelog.
            assert reverse_checkpoint(held) == position_before
            assert typeof(held, "SELECT id, v FROM items WHERE id IN (1, 2, 100) ORDER BY id") == \
                [(1, "held-0"), (2, "held-1")]
            settings = load_settings(cfg)
            assert (await position(settings, settings.source("held"))).pending > 0
            # Held past the 10 s the application's own locks are waited for unsaid: reported.
            d.wait_log(f"the SQLite file {held} is locked by its application", timeout=20)
            assert "syncd writes Postgres's changes into it as soon as the lock is gone" in d.log()

            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "released"
            await wait_back(cfg, held, pg_dsn, "held", daemon=d)
            d.wait_log("recovered: the SQLite file is no longer locked", timeout=20)
            assert typeof(held, "SELECT id, v FROM items WHERE id IN (1, 2, 100) ORDER BY id") == \
                [(1, "changed twice"), (100, "added, then changed")]
            assert await compare_table(str(held), pg_dsn, "held", "items") == []
            for p in healthy:
                await wait_back(cfg, p, pg_dsn, p.stem, daemon=d)
                assert await compare_table(str(p), pg_dsn, p.stem, "items") == []
            assert d.stop() == 0
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        await pg.close()
