"""A fleet (one `[[sources]]` glob of many small files) through `syncd cutover` and back:
one file in the middle its application keeps locked must not stop the others' switch,
nor be left half-switched itself; it is refused in one line naming its file, and the
command goes on to the rest and sums them up."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli, syncd_cmd, wait_for
from tests.support.sync import wait_caught_up
from tests.support.way_back import back_up

FILES = 10  # files cut over before the locked one in the middle and after it (half a second a file)

# The application's write transaction on its file, held until told: readers go on
# (WAL mode), but no other writer gets the file's write lock meanwhile.
HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO items (v) VALUES ('written under the lock')")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("released", flush=True)
"""


def make_tenant(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO items (v) VALUES (?)", [(f"{path.stem}-{i}",) for i in range(3)])
    conn.close()


def fleet(tmp_path: Path, make_config, files: int = FILES) -> tuple[Path, list[Path]]:
    tenants = tmp_path / "tenants"
    tenants.mkdir()
    paths = [tenants / f"t{i:03d}.db" for i in range(files)]
    for p in paths:
        make_tenant(p)
    backups = tmp_path / "backups"
    cfg = make_config([{"name": "tenant_{stem}", "path": str(tenants / "*.db")}],
                      sections={"cutover": {"min_days": 0, "backup_glob": str(backups / "{source}-*.db")},
                                "verify": {"interval_seconds": 0}, "stream": {"held_table_retry_seconds": 1}})
    return cfg, paths


def backed_up(paths: list[Path], backups: Path) -> None:
    backups.mkdir(exist_ok=True)
    for p in paths:
        back_up(p, backups)
        (backups / f"{p.stem}-latest.db").rename(backups / f"tenant_{p.stem}-latest.db")


def sqlite_write(path: Path, v: str) -> str | None:
    conn = sqlite3.connect(path, timeout=5)
    try:
        conn.execute("INSERT INTO items (v) VALUES (?)", (v,))
        conn.commit()
        return None
    except sqlite3.Error as e:
        return str(e)
    finally:
        conn.close()


class _Undo(Exception):
    pass


async def postgres_refusal(pg: asyncpg.Connection, table: str) -> str | None:
    """The error a write to `table` in Postgres meets, or None (the write rolled back)."""
    try:
        async with pg.transaction():
            await pg.execute(f"UPDATE {table} SET v = v WHERE id = 1")
            raise _Undo
    except _Undo:
        return None
    except asyncpg.PostgresError as e:
        return str(e)


async def directions(pg: asyncpg.Connection) -> dict[str, str]:
    return {r[0]: r[1] for r in await pg.fetch("SELECT source, direction FROM syncd.sources")}


async def test_a_locked_file_in_the_middle_of_a_fleet_cutover(tmp_path, make_config, pg_dsn):
    cfg, paths = fleet(tmp_path, make_config)
    locked = paths[FILES // 2]
    pg = await asyncpg.connect(pg_dsn)
    holder = None
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            for p in paths:
                await wait_caught_up(p, pg_dsn, f"tenant_{p.stem}", timeout=120, daemon=d)
            v = run_cli(cfg, "verify")
            assert v.returncode == 0, v.stdout[-2000:] + v.stderr[-2000:]
            backed_up(paths, tmp_path / "backups")
            holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(locked)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
            assert holder.stdout.readline().strip() == "locked"

            began = time.monotonic()
            r = run_cli(cfg, "cutover", timeout=600)
            took = time.monotonic() - began
            out = r.stdout + r.stderr
            assert r.returncode == 1, out[-3000:]
            assert "Traceback" not in out, out[-3000:]
            # The locked file: one line naming it, its source not switched.
            line = next((ln for ln in r.stdout.splitlines() if ln.startswith(f"tenant_{locked.stem}: ")), "")
            assert str(locked) in line and "locked" in line, r.stdout[-3000:]
            assert "REFUSED" in line or "UNDONE" in line, line
            # Every other file is switched, and the command says how many.
            assert f"syncd cutover: {FILES - 1} of {FILES} source(s) cut over" in r.stdout, r.stdout[-3000:]
            went = await directions(pg)
            assert went.pop(f"tenant_{locked.stem}") == "to_postgres"
            assert set(went.values()) == {"to_sqlite"}, went
            # A lock held by one file's application costs that file seconds, not minutes.
            assert took < 300, took

            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "released"
            # Not left half-switched: its application writes SQLite as before and the
            # change reaches Postgres (whose tables take the application's writes too).
            assert sqlite_write(locked, "after the lock") is None
            await wait_caught_up(locked, pg_dsn, f"tenant_{locked.stem}", timeout=60, daemon=d)
            assert await pg.fetchval(f'SELECT count(*) FROM "tenant_{locked.stem}".items '
                                     "WHERE v IN ('written under the lock', 'after the lock')") == 2
            assert await postgres_refusal(pg, f'"tenant_{locked.stem}".items') is None
            # The others are frozen for their applications, as a cutover leaves them.
            assert "moved to PostgreSQL by syncd" in (sqlite_write(paths[0], "refused") or "")
            # And the locked one cuts over once free.
            again = run_cli(cfg, "cutover", "--source", f"tenant_{locked.stem}")
            assert again.returncode == 0, again.stdout + again.stderr
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        await pg.close()


async def peak_connections(pg_dsn: str, during, daemon: DaemonProcess) -> tuple[int, object]:
    """The most connections syncd's commands (the daemon's left out) held at once in the
    test's database while `during()` (a blocking call: a CLI command) ran in a thread, and
    what it returned."""
    watcher = await asyncpg.connect(pg_dsn)
    peak = 0
    job = asyncio.ensure_future(asyncio.to_thread(during))
    try:
        while not job.done():
            n = await watcher.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                       "AND application_name LIKE 'syncd%' AND application_name NOT LIKE $1", f"% pid {daemon.pid}")
            peak = max(peak, n)
            await asyncio.sleep(0.02)
        return peak, await job
    finally:
        await watcher.close()


CUT_OVER = 10  # five times the two connections `syncd status` may take; one per source at once shows as all ten


async def test_status_of_a_cut_over_fleet_on_one_connection(tmp_path, make_config, pg_dsn):
    """After a fleet's cutover, `syncd status` reports every source's way back (SQLite
    following Postgres) on the one connection per target database it uses before the
    cutover, not one per cut-over source at once: at hundreds of files those would take
    Postgres's connection slots (max_connections, 100 by default) from the application."""
    cfg, paths = fleet(tmp_path, make_config, CUT_OVER)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        for p in paths:
            await wait_caught_up(p, pg_dsn, f"tenant_{p.stem}", timeout=120, daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        backed_up(paths, tmp_path / "backups")
        r = run_cli(cfg, "cutover", timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        # The daemon turns each source around after its switch: until its way back holds the
        # source, status says no daemon runs it (a CI run measured in that moment).
        wait_for(lambda: run_cli(cfg, "status", "--all", timeout=120).returncode == 0, 120,
                 "the daemon following every cut-over source back", d)
        peak, st = await peak_connections(pg_dsn, lambda: run_cli(cfg, "status", "--all", timeout=120), d)
        assert st.returncode == 0, st.stdout[-3000:] + st.stderr[-3000:]
        rows = [ln.split() for ln in st.stdout.splitlines() if ln.startswith("tenant_")]
        assert len(rows) == CUT_OVER and all("sqlite" in row for row in rows), st.stdout[-3000:]
        assert peak <= 2, peak


async def test_a_file_gone_from_the_glob_is_named_by_the_switch_not_left_out(tmp_path, make_config, pg_dsn):
    """A file syncd ran that is gone (deleted, renamed away) is still a source to
    `syncd cutover` and `syncd rollback` of the fleet, as to status, verify and the
    report: each names it in one line, refused where it cannot be switched, and counts it
    in the summary, instead of a fleet "switched" without a word of it. Gone after its
    cutover, it is the one source left cut over; gone before it, it has nothing to roll back. (`syncd uninstall --forget` ends a
    source whose file is gone for good.)"""
    cfg, paths = fleet(tmp_path, make_config, 6)
    before, after = paths[1], paths[2]
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        for p in paths:
            await wait_caught_up(p, pg_dsn, f"tenant_{p.stem}", timeout=120, daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        backed_up(paths, tmp_path / "backups")
        before.unlink()
        d.wait_log(f"{before} does not exist", timeout=30)
        r = run_cli(cfg, "cutover", timeout=300)
        assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith(f"tenant_{before.stem}: ")), "")
        assert "REFUSED" in line and f"{before} does not exist" in line, r.stdout[-3000:]
        assert "syncd cutover: 5 of 6 source(s) cut over" in r.stdout, r.stdout[-3000:]
        # The dry run after it (new tenant files to check, say) counts the sources cut over
        # already apart from those ready to be.
        dry = run_cli(cfg, "cutover", "--dry-run", timeout=300)
        assert dry.stdout.rstrip().endswith("syncd cutover: dry run: 0 of 6 source(s) ready, 5 cut over already, "
                                            "1 not"), dry.stdout[-3000:]

        after.unlink()
        d.wait_log(f"{after} does not exist", timeout=30)
        r = run_cli(cfg, "rollback", timeout=300)
        assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith(f"tenant_{after.stem}: ")), "")
        assert "REFUSED" in line and f"{after} does not exist" in line, r.stdout[-3000:]
        # Gone before its cutover: SQLite was its database all along, nothing to roll back.
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith(f"tenant_{before.stem}: ")), "")
        assert line == f"tenant_{before.stem}: not cut over (never cut over); nothing to do", r.stdout[-3000:]
        assert "syncd rollback: 5 of 6 source(s) rolled back (or on SQLite already), 1 not" in r.stdout, r.stdout[-3000:]
        pg = await asyncpg.connect(pg_dsn)
        try:
            went = await directions(pg)
        finally:
            await pg.close()
        assert went[f"tenant_{after.stem}"] == "to_sqlite", went
        assert went[f"tenant_{before.stem}"] == "to_postgres", went


async def test_a_fleet_cutover_interrupted_says_how_far_it_got(tmp_path, make_config, pg_dsn):
    """Ctrl-C in the middle of a fleet's cutover: each source switched before it is named,
    and one line sums up how many of the fleet were, and that the others are unchanged
    (not reached, or undone), so the operator knows where the fleet stands."""
    cfg, paths = fleet(tmp_path, make_config, 12)
    pg = await asyncpg.connect(pg_dsn)
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            for p in paths:
                await wait_caught_up(p, pg_dsn, f"tenant_{p.stem}", timeout=120, daemon=d)
            assert run_cli(cfg, "verify").returncode == 0
            backed_up(paths, tmp_path / "backups")
            proc = subprocess.Popen(syncd_cmd(cfg, "cutover"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, cwd=str(cfg.parent))
            deadline = time.monotonic() + 120
            while await pg.fetchval("SELECT count(*) FROM syncd.switches WHERE kind = 'cutover' "
                                    "AND state = 'done'") < 3:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 130, out + err
            went = await directions(pg)
            switched = sorted(name for name, where in went.items() if where == "to_sqlite")
            assert 3 <= len(switched) < len(paths), went
            said = sorted(ln.split(":")[0] for ln in out.splitlines() if ln.endswith("cut over to Postgres before "
                                                                                  "the interrupt"))
            assert said == switched, out
            assert out.rstrip().endswith(f"syncd cutover: interrupted: {len(switched)} of {len(paths)} source(s) cut "
                                         f"over before it; the other {len(paths) - len(switched)} unchanged"), out
    finally:
        await pg.close()


async def test_a_file_archived_after_its_cutover_is_cut_over_already_to_the_fleets_next_cutover(
        tmp_path, make_config, pg_dsn):
    """A tenant cut over, its SQLite file archived later (docs/cutover.md: kept, then
    archived), and the fleet's `syncd cutover` run again for the tenants still to switch:
    the gone file's source is cut over already, said so as for any other, not refused as
    a file that does not exist; the command switches the rest and exits 0."""
    cfg, paths = fleet(tmp_path, make_config, 3)
    archived = paths[0]
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        for p in paths:
            await wait_caught_up(p, pg_dsn, f"tenant_{p.stem}", timeout=120, daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        backed_up(paths, tmp_path / "backups")
        first = run_cli(cfg, "cutover", "--source", f"tenant_{archived.stem}")
        assert first.returncode == 0, first.stdout + first.stderr
        archived.rename(tmp_path / "archived.db")
        for args in (("--dry-run",), ()):
            r = run_cli(cfg, "cutover", *args, timeout=300)
            line = next((ln for ln in r.stdout.splitlines() if ln.startswith(f"tenant_{archived.stem}: ")), "")
            assert "already cut over" in line and "REFUSED" not in line, r.stdout[-3000:]
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "syncd cutover: 3 of 3 source(s) cut over (or already)" in r.stdout, r.stdout[-3000:]
        assert d.stop() == 0


async def test_a_file_not_picked_up_holds_back_no_other_tenants_switch(tmp_path, make_config, pg_dsn):
    """A file the glob matches and syncd does not pick up (a name that makes no source
    name) holds rows that are nowhere in Postgres: the fleet's cutover names it as not cut
    over and exits 1, but cuts over every tenant that is ready, and a tenant's own cutover
    (`--source`) or rehearsal is not about that file at all. Each was refused, every
    tenant of the fleet, for the one file beside them."""
    cfg, paths = fleet(tmp_path, make_config, 3)
    stray = paths[0].parent / "bad name.db"
    make_tenant(stray)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        for p in paths:
            await wait_caught_up(p, pg_dsn, f"tenant_{p.stem}", timeout=120, daemon=d)
        assert run_cli(cfg, "verify", "--source", "tenant_*").returncode == 0
        backed_up(paths, tmp_path / "backups")
        rehearsal = run_cli(cfg, "rehearse", "--source", f"tenant_{paths[0].stem}", timeout=300)
        assert "bad name.db" not in rehearsal.stdout and "REHEARSAL FAILED" not in rehearsal.stdout, \
            rehearsal.stdout[-3000:]
        one = run_cli(cfg, "cutover", "--source", f"tenant_{paths[0].stem}", timeout=300)
        assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
        assert "bad name.db" not in one.stdout, one.stdout[-3000:]
        rest = run_cli(cfg, "cutover", timeout=300)
        assert rest.returncode == 1, rest.stdout[-3000:] + rest.stderr[-3000:]
        assert any(ln.startswith(f"not cut over: {stray}") for ln in rest.stdout.splitlines()), rest.stdout[-3000:]
        for p in paths[1:]:
            line = next((ln for ln in rest.stdout.splitlines() if ln.startswith(f"tenant_{p.stem}: ")), "")
            assert "bad name.db" not in line and "REFUSED" not in line, rest.stdout[-3000:]
        pg = await asyncpg.connect(pg_dsn)
        try:
            went = await directions(pg)
        finally:
            await pg.close()
        assert {went[f"tenant_{p.stem}"] for p in paths} == {"to_sqlite"}, went


async def test_a_sources_own_file_under_a_second_name_holds_back_its_switch(tmp_path, make_config, pg_dsn):
    """A file a glob matches that is a source's own file under another name (a hard link):
    the application may write through that name, whose -wal syncd never reads. The
    source's own cutover is refused on it, as the fleet's is; files not picked up for
    any other reason are other tenants' and hold back no one else's switch."""
    import os

    db = tmp_path / "app.db"
    make_tenant(db)
    links = tmp_path / "links"
    links.mkdir()
    os.link(db, links / "alias.db")
    cfg = make_config([{"name": "app", "path": str(db)}, {"name": "t_{stem}", "path": str(links / "*.db")}],
                      sections={"cutover": {"min_days": 0, "backup_glob": str(tmp_path / "backups" / "{source}-*.db")},
                                "verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", timeout=120, daemon=d)
        assert run_cli(cfg, "verify", "--source", "app").returncode == 0
        back_up(db, tmp_path / "backups")
        one = run_cli(cfg, "cutover", "--source", "app", timeout=300)
        assert one.returncode != 0, one.stdout[-3000:] + one.stderr[-3000:]
        assert "alias.db" in one.stdout and "hard links" in one.stdout, one.stdout[-3000:]
        assert d.stop() == 0
