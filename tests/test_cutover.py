"""`syncd cutover`: the checklist is checked, the SQLite file frozen for the application,
the last changes drained, every row verified, identities set past SQLite's high marks
and the switch recorded; anything failing undoes the freeze, and a cutover killed at
any step is undone (by the daemon within seconds, or by the next run), never leaving
the file frozen with nobody holding the switch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import time

import asyncpg
import pytest

from tests.support.daemon import DaemonProcess, held_at, interrupted_waiting, run_cli, syncd_cmd, wait_for
from tests.support.sync import eventually, pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config

SCHEMA = """
CREATE TABLE deals (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT, amount REAL);
CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT);
CREATE TABLE touches (contact_id INTEGER, at TEXT);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT);
"""


def make_app(db) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript(SCHEMA)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO deals (title, amount) VALUES (?, ?)", [(f"deal {i}", 24125.0) for i in range(50)])
    conn.executemany("INSERT INTO contacts VALUES (?, ?)", [(i, f"c{i}@x") for i in range(1, 17)])
    conn.executemany("INSERT INTO touches VALUES (?, ?)", [(1, "2026-11-01")] * 3)
    conn.execute("INSERT INTO settings VALUES ('theme', 'dark')")
    conn.execute("COMMIT")
    conn.execute("DELETE FROM deals WHERE id > 45")  # AUTOINCREMENT never hands out 46..50 again
    return conn


def ready_config(make_config, tmp_path, db, postgres: dict | None = None, name: str = "app", **verify):
    backups = tmp_path / "backups"
    backups.mkdir(exist_ok=True)
    src = sqlite3.connect(db)
    dst = sqlite3.connect(backups / "app-latest.db")
    src.backup(dst)
    src.close()
    dst.close()
    return make_config([{"name": name, "path": str(db)}], sections={
        "cutover": {"min_days": 0, "backup_glob": str(backups / "*.db")},
        "verify": {"interval_seconds": 0, **verify}, **({"postgres": postgres} if postgres else {})})


@contextlib.asynccontextmanager
async def streaming_and_verified(make_config, tmp_path, pg_dsn):
    """The app's file replicated by a running daemon and verified equal, its backup taken:
    (file, config, daemon), ready for `syncd cutover`."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = ready_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        yield db, cfg, d


def writable(db) -> bool:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("UPDATE settings SET value = value WHERE key = 'theme'")
        return True
    except sqlite3.IntegrityError as e:
        assert "moved to PostgreSQL by syncd" in str(e)
        return False
    finally:
        conn.close()


async def direction(dsn: str) -> str:
    return (await pg_rows(dsn, "SELECT direction FROM syncd.sources WHERE source = 'app'"))[0][0]


async def test_cutover_switches_and_the_application_moves(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = make_app(db)
    cfg = ready_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        dry = run_cli(cfg, "cutover", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "ready to cut over (dry run" in dry.stdout and "expected write downtime" in dry.stdout
        assert "identity deals.id would continue after 50 (today's high mark" in dry.stdout
        assert writable(db)
        conn.execute("INSERT INTO settings VALUES ('late', 'written just before the switch')")
        r = run_cli(cfg, "cutover")
        assert r.returncode == 0, r.stdout + r.stderr
        downtime = float(re.search(r"write downtime ([0-9.]+) s", r.stdout).group(1))
        assert 0 < downtime < 60
        assert "deals.id continues after 50" in r.stdout  # AUTOINCREMENT's high mark, not max(id) = 45
        assert r.stdout.count("deals.id") == 1, r.stdout  # one figure per identity: the one after the drain
        assert not writable(db)
        assert conn.execute("SELECT count(*) FROM deals").fetchone()[0] == 45  # readers unaffected
        assert await direction(pg_dsn) == "to_sqlite"
        pg = await asyncpg.connect(pg_dsn)
        try:
            assert await pg.fetchval("SELECT value FROM app.settings WHERE key = 'late'") is not None
            assert await pg.fetchval("INSERT INTO app.deals (title, amount) VALUES ('first in Postgres', 1) "
                                     "RETURNING id") == 51
            assert await pg.fetchval("INSERT INTO app.contacts (email) VALUES ('new@x') RETURNING id") == 17
            assert await pg.fetchval("INSERT INTO app.touches (contact_id, at) VALUES (2, 'now') "
                                     "RETURNING _syncd_rowid") == 4
        finally:
            await pg.close()
        again = run_cli(cfg, "cutover")
        assert again.returncode == 0 and "already cut over" in again.stdout
        # Rebuilding a table from the frozen file would undo the application's writes
        # (at once, or after a rollback): refused, and nothing recorded.
        resync = run_cli(cfg, "resync", "--source", "app", "--table", "deals")
        assert resync.returncode == 1 and "is cut over" in resync.stderr + resync.stdout, resync
        assert await pg_rows(pg_dsn, "SELECT count(*) FROM syncd.tables WHERE request IS NOT NULL") == [(0,)]
        wait_for(lambda: '"direction": "to_sqlite"' in run_cli(cfg, "status", "--json").stdout, 30,
                 "the daemon sees the cutover", d)
        d.wait_log("the source now flows Postgres -> SQLite")  # the way back takes over
        assert d.stop() == 0
    report = run_cli(cfg, "report", "--format", "json")
    assert '"direction": "to_sqlite"' in report.stdout
    doc = json.loads(report.stdout)
    assert doc["cut_over"] == ["app"] and doc["verdict"].startswith("CUT OVER: PostgreSQL is the source of truth")
    verdict = next(line for line in run_cli(cfg, "report").stdout.splitlines() if line.startswith("**Verdict"))
    assert "CUT OVER" in verdict and "rollback possible until" in verdict and "for cutover" not in verdict


async def test_cutover_is_refused_with_every_reason_and_changes_nothing(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        r = run_cli(cfg, "cutover")
        assert r.returncode == 1
        assert "app: REFUSED" in r.stdout
        assert "backup_glob" in r.stdout and "never verified" in r.stdout and "14 days" in r.stdout
        assert "identity" not in r.stdout  # no plan: a refused switch does nothing
        # The dry run refuses alike, and still shows the plan (the downtime to expect, for
        # the change ticket) while the checklist is not met yet.
        dry = run_cli(cfg, "cutover", "--dry-run")
        assert dry.returncode == 1 and "app: REFUSED" in dry.stdout and "14 days" in dry.stdout
        assert "the plan once every reason above is met (dry run, nothing changed)" in dry.stdout, dry.stdout
        assert "identity deals.id would continue after" in dry.stdout and "expected write downtime" in dry.stdout
        assert writable(db) and await direction(pg_dsn) == "to_postgres"
        assert d.stop() == 0


async def test_a_difference_found_after_the_freeze_undoes_the_cutover(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = make_app(db)
    cfg = ready_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        await pg_rows(pg_dsn, "UPDATE app.contacts SET email = 'tampered' WHERE id = 3")  # behind syncd's back
        r = run_cli(cfg, "cutover")
        assert r.returncode == 1, r.stdout
        assert "app: UNDONE" in r.stdout and "final verification found 1 table(s) not equal" in r.stdout
        assert writable(db) and await direction(pg_dsn) == "to_postgres"
        conn.execute("INSERT INTO contacts VALUES (99, 'streaming goes on')")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert (await pg_rows(pg_dsn, "SELECT email FROM app.contacts WHERE id = 99")) == [("streaming goes on",)]
        assert d.stop() == 0


@pytest.mark.parametrize("step,name", [("verified", 'weird "name"; DROP TABLE x;--'),
                                       ("finalized", 'weird "name"; DROP TABLE x;--'),
                                       ("verified", "an_orm_made_table_name_" + "x" * 60)],
                         ids=["verified", "finalized", "longer_than_postgres_names"])
async def test_a_table_the_application_creates_during_the_freeze_undoes_the_cutover(tmp_path, make_config, pg_dsn,
                                                                                    step, name):
    """The freeze's triggers cannot stop a CREATE TABLE: a table the application creates
    (and writes) after the verification was verified nowhere and is frozen by nothing.
    The switch is undone naming it, not said done with its rows left in SQLite alone; a
    name longer than Postgres takes is named as SQLite holds it (it ended the command in a
    traceback)."""
    quoted = '"' + name.replace('"', '""') + '"'
    async with streaming_and_verified(make_config, tmp_path, pg_dsn) as (db, cfg, d):
        proc = subprocess.Popen(syncd_cmd(cfg, "cutover"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=str(cfg.parent),
                                env={**os.environ, "SYNCD_CUTOVER_HOLD_AT": step,
                                     "SYNCD_CUTOVER_RESUME_ON": str(cfg.parent / "go")})
        try:
            assert proc.stdout.readline().strip() == f"holding at {step}"
            app = sqlite3.connect(db, isolation_level=None)
            app.execute(f"CREATE TABLE {quoted} (id INTEGER PRIMARY KEY, v TEXT)")
            app.execute(f"INSERT INTO {quoted} VALUES (1, 'written while frozen')")
            app.close()
            (cfg.parent / "go").touch()
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 1, out
        assert "app: UNDONE" in out and \
            f"table {quoted} created in the SQLite file during the cutover's freeze" in out, out
        # A name longer than Postgres takes is never streamed: the way on is to rename it.
        assert ("rename it first" in out) == (len(name.encode()) > 63), out
        assert writable(db) and await direction(pg_dsn) == "to_postgres"
        assert d.stop() == 0


async def test_a_difference_in_a_table_with_a_hostile_name_is_named_unambiguously(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = make_app(db)
    conn.execute('CREATE TABLE "weird ""name""; DROP TABLE x;--" (id INTEGER PRIMARY KEY, v TEXT)')
    conn.execute('INSERT INTO "weird ""name""; DROP TABLE x;--" VALUES (1, \'one\')')
    cfg = ready_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        await pg_rows(pg_dsn, 'UPDATE app."weird ""name""; DROP TABLE x;--" SET v = \'tampered\'')
        r = run_cli(cfg, "cutover")
        assert r.returncode == 1, r.stdout
        assert '(first: "weird ""name""; DROP TABLE x;--": ' in r.stdout, r.stdout
        assert writable(db)
        assert d.stop() == 0


async def test_cutover_with_the_daemon_stopped(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = make_app(db)
    cfg = ready_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        assert d.stop() == 0
    conn.execute("UPDATE settings SET value = 'light' WHERE key = 'theme'")  # while nothing streams
    r = run_cli(cfg, "cutover")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "applied by syncd's pipeline run in this process" in r.stdout
    assert (await pg_rows(pg_dsn, "SELECT value FROM app.settings WHERE key = 'theme'")) == [("light",)]
    assert not writable(db)


async def test_a_cutover_of_several_sources_ends_with_where_they_stand(tmp_path, make_config, pg_dsn):
    async with streaming_and_verified(make_config, tmp_path, pg_dsn) as (db, cfg, d):
        cfg.write_text(cfg.read_text() + f'\n[[sources]]\nname = "gone"\npath = "{tmp_path / "gone.db"}"\n')
        dry = run_cli(cfg, "cutover", "--dry-run")
        assert dry.returncode == 1, dry.stdout
        assert dry.stdout.rstrip().endswith("syncd cutover: dry run: 1 of 2 source(s) ready, 1 not"), dry.stdout
        r = run_cli(cfg, "cutover")
        assert r.returncode == 1 and "app: cut over to Postgres" in r.stdout, r.stdout
        assert r.stdout.rstrip().endswith("syncd cutover: 1 of 2 source(s) cut over (or already), 1 not: see each "
                                          "above"), r.stdout
        assert d.stop() == 0
    # a source cut over whose file is gone since (archived) is cut over already, said so
    cfg.write_text(cfg.read_text().replace(str(db), str(tmp_path / "gone-too.db")))
    archived = run_cli(cfg, "cutover", "--dry-run")
    assert archived.stdout.rstrip().endswith("syncd cutover: dry run: 0 of 2 source(s) ready, 1 cut over already, "
                                             "1 not"), archived.stdout
    # a dry run whose every source fails before the switch is still said as a dry run
    cfg.write_text(cfg.read_text().replace('name = "app"', 'name = "never_set_up"'))
    none = run_cli(cfg, "cutover", "--dry-run")
    assert none.stdout.rstrip().endswith("syncd cutover: dry run: 0 of 2 source(s) ready, 2 not"), none.stdout


def test_a_file_a_glob_matches_and_syncd_does_not_pick_up_is_counted_in_the_cutovers_last_line(
        tmp_path, make_config):
    """Two tenants' files a glob picks up, and a third it matches whose name makes no
    source name: the cutover's last line, where a fleet's operator reads where it stands,
    counts that file as not cut over; it said "2 not" of two, as if every file were there."""
    tenants = tmp_path / "tenants"
    tenants.mkdir()
    for stem in ("acme", "globex", "bad name"):
        conn = sqlite3.connect(tenants / f"{stem}.db")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        conn.close()
    cfg = make_config([{"name": "t_{stem}", "path": str(tenants / "*.db")}])
    dry = run_cli(cfg, "cutover", "--dry-run")
    assert dry.returncode == 1, dry.stdout + dry.stderr
    lines = dry.stdout.rstrip().splitlines()
    assert any(x.startswith(f"not cut over: {tenants / 'bad name.db'}") for x in lines), dry.stdout
    assert lines[-1] == ("syncd cutover: dry run: 0 of 2 source(s) ready, 2 not; 1 file a glob matches not picked "
                         "up, not cut over (said above)"), dry.stdout


@pytest.mark.parametrize("step", ["started", "frozen", "drained", "verified", "finishing"])
async def test_a_cutover_killed_at_any_step_never_leaves_the_file_frozen(tmp_path, make_config, pg_dsn, step):
    async with streaming_and_verified(make_config, tmp_path, pg_dsn) as (db, cfg, d):
        with held_at(cfg, "cutover", step) as proc:
            if step != "started":
                assert not writable(db)  # the kill really lands while the file is frozen
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        # the daemon sees a frozen file nobody holds and gives it back to the application
        wait_for(lambda: writable(db), 30, "the file unfrozen", d)
        assert await direction(pg_dsn) == "to_postgres"
        async def closed() -> bool:
            return await pg_rows(pg_dsn, "SELECT state FROM syncd.switches WHERE source = 'app'") == [("undone",)]

        await eventually(closed, 30, "the killed cutover's record closed", d)
        r = run_cli(cfg, "cutover")  # and a new run goes through
        assert r.returncode == 0, r.stdout + r.stderr
        assert not writable(db)
        assert d.stop() == 0


# Ctrl-C, a kill (SIGTERM: `timeout`, a job cancelled) or the terminal gone (SIGHUP: an
# SSH session dropped): each stops the cutover the same way.
@pytest.mark.parametrize("step, sig", [("frozen", signal.SIGINT), ("finalized", signal.SIGINT),
                                       ("frozen", signal.SIGTERM), ("finalized", signal.SIGHUP)],
                         ids=["frozen-ctrl-c", "finalized-ctrl-c", "frozen-sigterm", "finalized-sighup"])
async def test_an_interrupted_cutover_undoes_itself_and_says_so(tmp_path, make_config, pg_dsn, step, sig):
    async with streaming_and_verified(make_config, tmp_path, pg_dsn) as (db, cfg, d):
        with held_at(cfg, "cutover", step) as proc:
            assert not writable(db)
            proc.send_signal(sig)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert "syncd cutover: interrupted" in out and "app: UNDONE: interrupted" in out, out
        assert writable(db) and await direction(pg_dsn) == "to_postgres"  # undone before it stopped
        assert await pg_rows(pg_dsn, "SELECT state FROM syncd.switches WHERE source = 'app'") == [("undone",)]
        assert d.stop() == 0


async def test_ctrl_c_stops_the_cutover_of_a_source_named_run(tmp_path, make_config, pg_dsn):
    """`syncd cutover --source run`: Ctrl-C did nothing, the word "run" on the command line
    taken for `syncd run` (whose start only notes a signal, to act on it once started);
    the cutover of a source so named is interrupted and undone like any other."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = ready_config(make_config, tmp_path, db, name="run")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "run", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        with held_at(cfg, "cutover", "frozen", args=("--source", "run")) as proc:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 130, out
        assert "run: UNDONE: interrupted" in out, out
        assert writable(db)
        assert d.stop() == 0


async def test_an_interrupted_cutover_of_several_counts_a_source_it_cannot_ask_as_not_known(tmp_path, make_config,
                                                                                               pg_dsn):
    """Ctrl-C with a second source whose Postgres does not answer: what became of it is
    not known (its line says so), which the summing-up line says too, instead of counting
    it among those stopped mid-switch (it was never reached)."""
    async with streaming_and_verified(make_config, tmp_path, pg_dsn) as (db, cfg, d):
        cfg.write_text(cfg.read_text() + '\n[[sources]]\nname = "elsewhere"\npath = "{}"\n'
                       'dsn = "postgresql://postgres@127.0.0.1:1/nowhere"\n'.format(tmp_path / "elsewhere.db"))
        with held_at(cfg, "cutover", "frozen") as proc:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, out
        assert "app: UNDONE: interrupted" in out and "elsewhere: cannot tell what became of it" in out, out
        assert out.rstrip().endswith("syncd cutover: interrupted: 0 of 2 source(s) cut over before it; 1 not known "
                                     "(said above); the other 1 unchanged"), out
        assert d.stop() == 0


def test_ctrl_c_while_postgres_does_not_answer_says_at_once_that_nothing_changed(tmp_path, outage):
    """Ctrl-C while `syncd cutover` of three sources waits for a Postgres that drops every
    packet: no switch had started, and it says so at once, exit 130. It asked each
    source's Postgres what had become of a switch it never started, waiting [postgres]
    connect_timeout_seconds for each, to say of each that it could not tell."""
    from tests.conftest import write_config

    proxy, dsn = outage
    sources = []
    for name in ("a", "b", "c"):
        make_app(tmp_path / f"{name}.db").close()
        sources.append({"name": name, "path": str(tmp_path / f"{name}.db")})
    cfg = write_config(tmp_path / "syncd.toml", dsn, sources, sections={"postgres": {"connect_timeout_seconds": 2}})
    proxy.stall()
    code, out, took = interrupted_waiting(cfg, "cutover", proxy)
    assert code == 130, out
    assert "syncd cutover: interrupted" in out and "no switch had started: nothing changed" in out, out
    assert "cannot tell" not in out and "Traceback" not in out, out
    assert took < 1.5, f"{took:.1f} s after Ctrl-C"

async def test_a_cutover_started_under_nohup_runs_on_when_the_terminal_goes(tmp_path, make_config, pg_dsn):
    """`nohup syncd cutover`: SIGHUP (the SSH session dropped) stays ignored, as the
    operator asked; the cutover is not undone by it."""
    async with streaming_and_verified(make_config, tmp_path, pg_dsn) as (db, cfg, d):
        resume = tmp_path / "resume"
        with held_at(cfg, "cutover", "frozen", resume_on=resume, nohup=True) as proc:
            proc.send_signal(signal.SIGHUP)
            time.sleep(2)  # a cutover stopped by it would have undone itself and exited by now
            assert proc.poll() is None and not writable(db)
            resume.touch()
            out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert await direction(pg_dsn) == "to_sqlite" and not writable(db)
        assert d.stop() == 0


async def test_a_signal_while_the_cutover_stops_its_own_stream_still_undoes_it(tmp_path, make_config, pg_dsn):
    """With no daemon, the cutover streams the last changes itself; a SIGTERM that lands
    while that stream winds down interrupts the cutover like one at any other step."""
    async with streaming_and_verified(make_config, tmp_path, pg_dsn) as (db, cfg, d):
        assert d.stop() == 0
    with held_at(cfg, "cutover", "stopping-stream") as proc:
        assert not writable(db)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert "app: UNDONE: interrupted" in out, out
    assert writable(db) and await direction(pg_dsn) == "to_postgres"


async def test_a_rerun_undoes_a_killed_cutover_when_no_daemon_runs(tmp_path, make_config, pg_dsn):
    async with streaming_and_verified(make_config, tmp_path, pg_dsn) as (db, cfg, d):
        assert d.stop() == 0
    with held_at(cfg, "cutover", "verified") as proc:
        proc.kill()
        proc.wait(10)
    assert not writable(db)
    r = run_cli(cfg, "cutover", "--dry-run")
    assert r.returncode == 0, r.stdout
    assert "unfroze the SQLite file a cutover left frozen" in r.stdout
    assert writable(db)


async def test_cutover_creates_the_schema_and_refuses_orphans_unless_allowed(tmp_path, make_config, pg_dsn):
    """The dry run lists what the cutover will create in Postgres; rows pointing at a
    parent that does not exist refuse the cutover (the file stays writable) until
    --allow-orphans, which makes that foreign key NOT VALID; the rest is created."""
    db = tmp_path / "app.db"
    conn = make_app(db)
    conn.executescript("""
        CREATE TABLE companies (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
        CREATE TABLE people (id INTEGER PRIMARY KEY, company_id INTEGER REFERENCES companies(id),
                             email TEXT CHECK (email LIKE '%@%'));
        CREATE UNIQUE INDEX people_email ON people(email);
        CREATE TABLE visits (id INTEGER PRIMARY KEY, company_id INTEGER REFERENCES companies(id));
        INSERT INTO companies VALUES (1, 'Acme');
        INSERT INTO people VALUES (1, 1, 'a@acme.example'), (2, 7, 'b@gone.example');
        INSERT INTO visits VALUES (1, 1), (2, 9);
    """)  # foreign_keys is off (SQLite's default): companies 7 and 9 never existed; the newest visit
    # is an orphan with no unique column, so the cutover's trial INSERT (a copy of it) meets the foreign key
    cfg = ready_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        dry = run_cli(cfg, "cutover", "--dry-run")
        assert dry.returncode == 1 and "orphan row(s) (keys 2)" in dry.stdout, dry.stdout
        dry = run_cli(cfg, "cutover", "--dry-run", "--allow-orphans")
        assert dry.returncode == 0, dry.stdout
        assert "schema: will create people: foreign key" in dry.stdout.lower(), dry.stdout
        assert "schema: will create people: check" in dry.stdout.lower(), dry.stdout
        refused = run_cli(cfg, "cutover")
        assert refused.returncode == 1 and "REFUSED" in refused.stdout, refused.stdout
        assert "orphan" in refused.stdout.lower(), refused.stdout
        assert writable(db) and await direction(pg_dsn) == "to_postgres"
        r = run_cli(cfg, "cutover", "--allow-orphans")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "NOT VALID" in r.stdout, r.stdout
        assert d.stop() == 0
    assert not writable(db) and await direction(pg_dsn) == "to_sqlite"
    pg = await asyncpg.connect(pg_dsn)
    try:
        await pg.execute("INSERT INTO app.people (company_id, email) VALUES (1, 'c@acme.example')")
        with pytest.raises(asyncpg.UniqueViolationError):
            await pg.execute("INSERT INTO app.people (company_id, email) VALUES (1, 'a@acme.example')")
        with pytest.raises(asyncpg.ForeignKeyViolationError):  # NOT VALID still checks new rows
            await pg.execute("INSERT INTO app.people (company_id, email) VALUES (8, 'd@acme.example')")
        with pytest.raises(asyncpg.CheckViolationError):
            await pg.execute("INSERT INTO app.people (company_id, email) VALUES (1, 'no at sign')")
    finally:
        await pg.close()


async def test_a_running_daemon_keeps_what_the_cutover_typed_and_carried(tmp_path, make_config, pg_dsn):
    """The freeze changes the file's schema, so the daemon reconciles while the cutover
    runs: its reconcile must not undo what the cutover's transaction created (a DATETIME
    typed as timestamptz, a case-insensitive key, a UNIQUE)."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE visits (at DATETIME PRIMARY KEY, page TEXT);
        CREATE TABLE tags (name TEXT COLLATE NOCASE PRIMARY KEY, uses INTEGER);
        CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT UNIQUE);
        INSERT INTO visits VALUES ('2026-11-01 10:00:00', '/a'), ('2026-11-02 11:30:00', '/b');
        INSERT INTO tags VALUES ('Sales', 1), ('crm', 2);
        INSERT INTO contacts VALUES (1, 'a@x'), (2, 'b@x');
    """)
    conn.close()
    cfg = ready_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        r = run_cli(cfg, "cutover")
        assert r.returncode == 0, r.stdout + r.stderr
        # the trial INSERT copies contacts' last row, so its UNIQUE refuses it: the identity is read instead
        assert re.search(r"contacts: trial INSERT met unique index \S+ .* its identity gave it 3", r.stdout), r.stdout
        d.wait_log("the source now flows Postgres -> SQLite")
        types = dict(await pg_rows(pg_dsn, "SELECT table_name || '.' || column_name, "
                                           "coalesce(collation_name, data_type) FROM information_schema.columns "
                                           "WHERE table_schema = 'app' AND column_name IN ('at', 'name')"))
        assert types == {"visits.at": "timestamp without time zone", "tags.name": "syncd_nocase"}
        uniques = await pg_rows(pg_dsn, "SELECT conname FROM pg_constraint WHERE conrelid = 'app.contacts'::regclass "
                                        "AND contype = 'u'")
        assert uniques, "the cutover's UNIQUE on contacts.email is gone"
        assert "table_retyped" not in d.log() and "parity_dropped" not in d.log()
        with pytest.raises(asyncpg.UniqueViolationError):
            await pg_rows(pg_dsn, "INSERT INTO app.tags VALUES ('SALES', 3)")
        # A search as docs/schema.md writes it for Postgres before 18 (LIKE on the column,
        # lower() of it too, is refused there), finding 'Sales' for 'sAL' as SQLite's LIKE does.
        assert await pg_rows(pg_dsn, """SELECT name FROM app.tags WHERE lower(name) COLLATE "C" LIKE lower('%sAL%')"""
                             ) == [("Sales",)]


async def test_a_key_unique_under_nocase_on_a_column_that_is_not_stays_so_after_the_cutover(
        tmp_path, make_config, pg_dsn):
    """PRIMARY KEY (name COLLATE NOCASE), or a UNIQUE index on (code COLLATE NOCASE), over
    columns that are not NOCASE: SQLite refuses 'ABC' beside 'abc'. The cutover makes
    Postgres refuse it too (a unique index under the ICU collation, created even where no
    column takes it), so the way back never meets two rows SQLite must hold as one."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE tags (name TEXT, uses INTEGER, PRIMARY KEY (name COLLATE NOCASE));
        CREATE TABLE codes (code TEXT NOT NULL, note TEXT);
        CREATE UNIQUE INDEX codes_code ON codes (code COLLATE NOCASE);
        INSERT INTO tags VALUES ('abc', 1); INSERT INTO codes VALUES ('abc', 'one');
    """)
    conn.close()
    cfg = ready_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        r = run_cli(cfg, "cutover")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "NOT created" not in r.stdout, r.stdout
        assert 'created: tags: PRIMARY KEY on (name)' in r.stdout and 'created: codes: unique index "codes_code"' \
            in r.stdout, r.stdout
        for sql in ("INSERT INTO app.tags VALUES ('ABC', 2)", "INSERT INTO app.codes VALUES ('ABC', 'two')"):
            with pytest.raises(asyncpg.UniqueViolationError):
                await pg_rows(pg_dsn, sql)
        assert "not created" not in d.log()  # the plain index of dual-write needs no ICU collation yet
        assert d.stop() == 0


async def test_a_table_the_source_leaves_out_stays_writable_and_is_named(tmp_path, make_config, pg_dsn):
    """`exclude` keeps a table out of Postgres: after the cutover the application still
    has only SQLite for it, so the freeze leaves it alone, and the cutover says so."""
    db = tmp_path / "app.db"
    conn = make_app(db)
    conn.execute("CREATE TABLE local_cache (k TEXT PRIMARY KEY, v TEXT)")
    backups = tmp_path / "backups"
    backups.mkdir()
    sqlite3.connect(db).backup(sqlite3.connect(backups / "app-latest.db"))
    cfg = make_config([{"name": "app", "path": str(db), "exclude": ["local_cache"]}], sections={
        "cutover": {"min_days": 0, "backup_glob": str(backups / "*.db")}, "verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        dry = run_cli(cfg, "cutover", "--dry-run")
        assert "left writable in SQLite, not frozen: 'local_cache'" in dry.stdout, dry.stdout
        r = run_cli(cfg, "cutover")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "left writable in SQLite, not frozen: 'local_cache'" in r.stdout
        assert not writable(db)
        conn.execute("INSERT INTO local_cache VALUES ('k', 'written after the cutover')")
        assert d.stop() == 0


async def cutover_while_held(cfg, pg_dsn: str, *held: tuple[str, float | None]) -> tuple[int, str, list[int]]:
    """`syncd cutover` with other sessions, each (sql, seconds) of `held` one that, once the
    checks are done, runs `BEGIN; sql` (a report's read, a table taken) and ends its
    transaction `seconds` later, or with None once the cutover has ended (still open
    then: asserted): (exit code, output, those sessions' backends)."""
    proc = subprocess.Popen(syncd_cmd(cfg, "cutover"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=str(cfg.parent), env={**os.environ, "SYNCD_CUTOVER_HOLD_AT": "verified",
                                                      "SYNCD_CUTOVER_RESUME_ON": str(cfg.parent / "go")})
    others = [await asyncpg.connect(pg_dsn) for _ in held]

    async def end_after(other: asyncpg.Connection, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await other.execute("COMMIT")

    try:
        assert proc.stdout.readline().strip() == "holding at verified"
        for other, (sql, _seconds) in zip(others, held):
            await other.execute(f"BEGIN; {sql}")
        (cfg.parent / "go").touch()
        ending = [end_after(other, seconds) for other, (_sql, seconds) in zip(others, held) if seconds is not None]
        out, _ = (await asyncio.gather(asyncio.to_thread(proc.communicate, timeout=120), *ending))[0]
        for other, (sql, seconds) in zip(others, held):
            if seconds is None:
                assert other.is_in_transaction(), f"{sql}: ended before the cutover did"
                await other.execute("COMMIT")
    finally:
        for other in others:
            await other.close()
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, [other.get_server_pid() for other in others]


async def test_the_daemon_leaves_its_periodic_check_to_a_switch_in_progress(tmp_path, make_config, pg_dsn):
    """While a cutover is under way, the daemon's periodic consistency check (due every
    half second here) does not run: the cutover verifies the source itself, and a check
    of the daemon's would keep tables the switch's last transaction must change. It runs
    again once the switch is over."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = ready_config(make_config, tmp_path, db, interval_seconds=0.5)
    runs = "SELECT count(*) FROM syncd.verify_runs"
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)

        async def checked_since(before: int) -> bool:
            return (await pg_rows(pg_dsn, runs))[0][0] > before

        await eventually(lambda: checked_since(0), 60, "the daemon's periodic check", d)
        proc = subprocess.Popen(syncd_cmd(cfg, "cutover"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=str(cfg.parent),
                                env={**os.environ, "SYNCD_CUTOVER_HOLD_AT": "verified",
                                     "SYNCD_CUTOVER_RESUME_ON": str(tmp_path / "go")})
        try:
            assert proc.stdout.readline().strip() == "holding at verified"
            [(before,)] = await pg_rows(pg_dsn, runs)
            await asyncio.sleep(2)  # four of its checks due meanwhile
            assert await pg_rows(pg_dsn, runs) == [(before,)], "the daemon checked the source during the switch"
            (tmp_path / "go").touch()
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, out
        await eventually(lambda: checked_since(before), 60, "the periodic check after the switch", d)
        assert d.stop() == 0


async def cutover_with_a_table_kept(tmp_path, make_config, pg_dsn, held_seconds: float | None,
                                   *extra: tuple[str, float | None],
                                   postgres: dict | None = None) -> tuple[int, str, list[int]]:
    """`syncd cutover` while a session that took "deals" after the checks (ROW EXCLUSIVE,
    which the capture trigger the switch creates on it must wait for) keeps it
    `held_seconds` (None: until the cutover has ended), and the `extra` sessions of
    cutover_while_held: (exit code, output, the sessions' backends, that one first)."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = ready_config(make_config, tmp_path, db, postgres)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        rc, out, pids = await cutover_while_held(
            cfg, pg_dsn, ("LOCK TABLE app.deals IN ROW EXCLUSIVE MODE", held_seconds), *extra)
        assert d.stop() == 0
    return rc, out, pids


async def test_a_table_kept_from_the_guard_refuses_the_cutover_with_nothing_changed(tmp_path, make_config, pg_dsn):
    """A Postgres session begins writing a table once the checks are done, and keeps it
    past the guard's short lock wait: Postgres could not be guarded, nothing was frozen,
    and the cutover says REFUSED (nothing changed), its record closed; it said UNDONE, and
    that the file "takes the application's writes again", which it had never stopped."""
    async with streaming_and_verified(make_config, tmp_path, pg_dsn) as (db, cfg, d):
        resume = tmp_path / "resume"
        other = await asyncpg.connect(pg_dsn)
        try:
            with held_at(cfg, "cutover", "started", resume_on=resume) as proc:
                await other.execute("BEGIN; UPDATE app.settings SET value = value WHERE key = 'theme'")
                resume.touch()
                out, _ = proc.communicate(timeout=60)
        finally:
            await other.close()
        assert proc.returncode == 1, out
        [line] = [x for x in out.splitlines() if x.startswith("app: ")]
        assert line.startswith("app: REFUSED: Postgres could not be guarded against the application's writes: "), line
        assert "undone" not in line and "takes the application's writes again" not in line, line
        assert writable(db) and await direction(pg_dsn) == "to_postgres"
        assert await pg_rows(pg_dsn, "SELECT state FROM syncd.switches WHERE kind = 'cutover'") == [("undone",)]
        assert d.stop() == 0


async def test_a_file_locked_again_before_the_freeze_refuses_the_cutover_with_nothing_changed(
        tmp_path, make_config, pg_dsn, monkeypatch):
    """The application takes its file's write lock again between the cutover's check that
    the file is free and the freeze, and keeps it past the freeze's wait (1 s here): nothing
    was frozen, and the cutover says REFUSED, naming the file; it said UNDONE, and that the
    file "takes the application's writes again", which it had never stopped."""
    from syncd.cli.cutover import render
    from syncd.config import load_settings
    from syncd.cutover import cutover
    from syncd.sqlite import capture

    async with streaming_and_verified(make_config, tmp_path, pg_dsn) as (db, cfg, d):
        resume = tmp_path / "resume"
        monkeypatch.setattr(capture, "write_wait", lambda: 1.0)
        monkeypatch.setenv("SYNCD_CUTOVER_HOLD_AT", "started")
        monkeypatch.setenv("SYNCD_CUTOVER_RESUME_ON", str(resume))
        settings = load_settings(cfg)
        task = asyncio.ensure_future(cutover(settings, settings.source("app")))
        holder = sqlite3.connect(db, isolation_level=None, timeout=30)
        try:
            async def started() -> bool:
                return bool(await pg_rows(pg_dsn, "SELECT 1 FROM syncd.switches WHERE kind = 'cutover'"))

            await eventually(started, 60, "the cutover's start")
            holder.execute("BEGIN IMMEDIATE")  # the application's write transaction
            resume.touch()
            result = await asyncio.wait_for(task, 60)
        finally:
            holder.close()
        [line, *_] = render(result)
        assert line.startswith(f"app: REFUSED: the SQLite file {db}: could not get a write lock"), line
        assert "nothing changed" in line and "undone" not in line, line
        assert writable(db) and await direction(pg_dsn) == "to_postgres"
        assert await pg_rows(pg_dsn, "SELECT state FROM syncd.switches WHERE kind = 'cutover'") == [("undone",)]
        assert d.stop() == 0


async def test_a_table_kept_past_one_lock_wait_delays_the_switch_instead_of_undoing_it(tmp_path, make_config, pg_dsn):
    """Kept past one try's short wait for the table (2 s): the try gives up before schema
    parity's work and is rolled back whole, and the next begins once that session has
    ended its transaction, within [postgres] statement_timeout_seconds: the cutover goes
    through, where it was undone. A report reading another table meanwhile, in no one's
    way, is not waited for: the cutover ends while it is still open."""
    rc, out, (writer, reader) = await cutover_with_a_table_kept(tmp_path, make_config, pg_dsn, 3,
                                                                ("SELECT count(*) FROM app.settings", None))
    assert rc == 0, out
    assert re.search(rf"the switch's last transaction waits for Postgres backend {writer} "
                     r'\(an unnamed client, idle in transaction\) on "deals", which keeps a table busy', out), out
    assert f"backend {reader} " not in out, out
    assert re.search(r"write downtime ([3-9]|\d\d)\.\d+ s", out), out
    assert await direction(pg_dsn) == "to_sqlite" and not writable(tmp_path / "app.db")
    assert await pg_rows(pg_dsn, "SELECT state FROM syncd.switches WHERE kind = 'cutover'") == [("done",)]


async def test_a_table_kept_past_the_statement_timeout_undoes_the_switch_naming_the_session(
        tmp_path, make_config, pg_dsn):
    """Kept past [postgres] statement_timeout_seconds in all (until the cutover has ended):
    the cutover is undone, naming the session, and the application writes SQLite again."""
    rc, out, (pid,) = await cutover_with_a_table_kept(tmp_path, make_config, pg_dsn, None,
                                                      postgres={"statement_timeout_seconds": 4})
    assert rc == 1, out
    assert re.search(rf"UNDONE: the switch's last transaction could not take the source's tables for 4 s: Postgres "
                     rf"backend {pid} \(an unnamed client, idle in transaction\) on \"deals\" kept one busy", out), out
    assert await direction(pg_dsn) == "to_postgres" and writable(tmp_path / "app.db")
    assert await pg_rows(pg_dsn, "SELECT state FROM syncd.switches WHERE kind = 'cutover'") == [("undone",)]


@pytest.mark.parametrize("made", [
    ("CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT CHECK (email LIKE '%@%'));"
     "INSERT INTO people VALUES (1, 'a@acme.example');",
     r"created: people: check",
     "SELECT count(*) FROM pg_constraint WHERE conrelid = 'app.people'::regclass AND contype = 'c'"),
    ("CREATE TABLE people (id INTEGER PRIMARY KEY, joined DATETIME);"
     "INSERT INTO people VALUES (1, '2026-11-01 09:30:00');",
     r'created: people: column "joined" DATETIME as "joined": timestamp',
     "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'app' AND table_name = 'people' "
     "AND data_type LIKE 'timestamp%'"),
], ids=["check", "typed date"])
async def test_an_object_that_met_a_lock_timeout_is_created_by_the_next_try_not_left_out(
        tmp_path, make_config, pg_dsn, made):
    """Where the database (or syncd's role) sets a lock_timeout, a report reading "people"
    makes changing it (a CHECK constraint, a date column typed) give up: that is
    contention, not Postgres refusing the change. The switch's try is rolled back whole
    and the next, once the report has ended, makes it; the cutover does not go on
    without it, nor waits for a report on another table that was in no one's way."""
    db = tmp_path / "app.db"
    app = make_app(db)
    schema, said, counted = made
    app.executescript(schema)
    cfg = ready_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        await pg_rows(pg_dsn, "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET lock_timeout = %L', "
                              "current_database(), '500ms'); END $$")
        # And a report on another table, in no one's way, open until the cutover has ended.
        rc, out, (pid, other) = await cutover_while_held(cfg, pg_dsn, ("SELECT count(*) FROM app.people", 2),
                                                         ("SELECT count(*) FROM app.settings", None))
        assert rc == 0, out
        assert f"the switch's last transaction waits for Postgres backend {pid} " in out, out  # a try given up
        assert f"backend {other} " not in out, out
        assert "lock timeout" not in out and re.search(said, out, re.I), out
        assert await pg_rows(pg_dsn, counted) == [(1,)]
        assert await direction(pg_dsn) == "to_sqlite"
        assert d.stop() == 0


async def test_a_report_keeping_a_table_in_postgres_is_refused_before_the_freeze_or_named_while_waited_for(
        tmp_path, make_config, pg_dsn):
    """A transaction in Postgres that read "meetings" (a report run there during
    dual-write) and stays open: the switch's last transaction must take that table for a
    moment (its DATETIME column becomes a timestamp) and would wait for it with SQLite
    frozen for the application. Open before the cutover, it is refused, naming the backend,
    with nothing frozen; opened after the checks, the switch waits for it and names it in
    the log, then goes through."""
    db = tmp_path / "app.db"
    app = make_app(db)
    app.execute("CREATE TABLE meetings (id INTEGER PRIMARY KEY, at DATETIME)")
    app.executemany("INSERT INTO meetings VALUES (?, ?)", [(i, f"2026-11-{i:02d} 09:30:00") for i in range(1, 9)])
    cfg = ready_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        report = await asyncpg.connect(pg_dsn)
        try:
            await report.execute("BEGIN; SELECT count(*) FROM app.meetings")
            r = run_cli(cfg, "cutover")
        finally:
            await report.close()
        assert r.returncode == 1, r.stdout + r.stderr
        assert re.search(rf"REFUSED: .*Postgres backend {report.get_server_pid()} \(an unnamed client, idle in "
                         r'transaction\) has held a lock on "meetings" inside one transaction for over 1 s',
                         r.stdout), r.stdout
        assert writable(db) and await direction(pg_dsn) == "to_postgres"

        rc, out, (pid,) = await cutover_while_held(cfg, pg_dsn, ("SELECT count(*) FROM app.meetings", 3))
        assert rc == 0, out
        assert re.search(rf"the switch's last transaction waits for Postgres backend {pid} "
                         r'\(an unnamed client, idle in transaction\) on "meetings", which keeps a table busy', out), out
        assert re.search(r"write downtime ([3-9]|\d\d)\.\d+ s", out), out
        assert await direction(pg_dsn) == "to_sqlite" and not writable(db)
        assert await pg_rows(pg_dsn, "SELECT data_type FROM information_schema.columns WHERE table_schema = 'app' "
                                     "AND table_name = 'meetings' AND column_name = 'at'") == \
            [("timestamp without time zone",)]


async def test_a_table_to_change_kept_past_the_statement_timeout_undoes_the_switch_not_the_change(
        tmp_path, make_config, pg_dsn):
    """A report keeping "meetings", whose DATETIME column the switch types, past [postgres]
    statement_timeout_seconds (until the cutover has ended): the cutover is undone,
    naming the session, and the application writes SQLite again. It does not commit with the column kept as text
    because the wait for the report ran out."""
    db = tmp_path / "app.db"
    app = make_app(db)
    app.execute("CREATE TABLE meetings (id INTEGER PRIMARY KEY, at DATETIME)")
    app.executemany("INSERT INTO meetings VALUES (?, ?)", [(i, f"2026-11-{i:02d} 09:30:00") for i in range(1, 9)])
    cfg = ready_config(make_config, tmp_path, db, {"statement_timeout_seconds": 4})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        rc, out, (pid,) = await cutover_while_held(cfg, pg_dsn, ("SELECT count(*) FROM app.meetings", None))
        assert rc == 1, out
        assert re.search(rf"UNDONE: the switch's last transaction could not take the source's tables for 4 s: "
                         rf'Postgres backend {pid} \(an unnamed client, idle in transaction\) on "meetings" kept one '
                         r"busy", out), out
        assert "kept as text" not in out, out
        assert await direction(pg_dsn) == "to_postgres" and writable(db)
        assert await pg_rows(pg_dsn, "SELECT state FROM syncd.switches WHERE kind = 'cutover'") == [("undone",)]
        assert await pg_rows(pg_dsn, "SELECT data_type FROM information_schema.columns WHERE table_schema = 'app' "
                                     "AND table_name = 'meetings' AND column_name = 'at'") == [("text",)]
        assert d.stop() == 0


async def test_a_rowid_at_the_top_of_its_range_refuses_the_switch_before_the_freeze(tmp_path, make_config, pg_dsn):
    """A table holding the largest rowid SQLite has (SQLite then picks unused rowids at
    random; Postgres's identity cannot go past it) refuses the cutover before the file
    is frozen, naming the table and, for one without a key, what renumbers its rowids
    (VACUUM); after it the switch goes through and Postgres numbers new rows."""
    top = 2 ** 63 - 1
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE log (what TEXT)")
    conn.executemany("INSERT INTO log (rowid, what) VALUES (?, ?)", [(1, "first"), (top, "sentinel")])
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        r = run_cli(cfg, "cutover")
        assert r.returncode == 1 and "app: REFUSED" in r.stdout, r.stdout
        assert f'table "log": its highest rowid is {top}' in r.stdout and "VACUUM" in r.stdout, r.stdout
        assert "UNDONE" not in r.stdout and "write downtime" not in r.stdout  # never frozen
        assert await direction(pg_dsn) == "to_postgres"
        conn.execute("INSERT INTO log (what) VALUES ('still writable')")  # at a rowid SQLite picks at random
        conn.execute("VACUUM")  # renumbers the keyless table's rowids; syncd reloads it
        await eventually(lambda: _rowids_followed(pg_dsn), what="the renumbered rowids in Postgres", daemon=d)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        r = run_cli(cfg, "cutover")
        assert r.returncode == 0, r.stdout + r.stderr
        assert (await pg_rows(pg_dsn, "INSERT INTO app.log (what) VALUES ('new') RETURNING _syncd_rowid"))[0][0] == 4
        assert d.stop() == 0
    conn.close()


async def _rowids_followed(dsn: str) -> bool:
    return await pg_rows(dsn, "SELECT max(_syncd_rowid) FROM app.log") == [(3,)]


async def test_a_rowid_at_the_top_of_an_indexed_keyless_table_is_refused_with_a_way_out_that_works(
        tmp_path, make_config, pg_dsn):
    """A table without a key but with an index (a log indexed on its time, say) holding
    the largest rowid: SQLite's VACUUM keeps the rowids of a table that has any index,
    so the refusal tells the user to move that row to a smaller rowid, with the
    statement that does it; syncd follows the move and the switch then goes through."""
    top = 2 ** 63 - 1
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE log (at TEXT, what TEXT)")
    conn.execute("CREATE INDEX log_at ON log (at)")
    conn.executemany("INSERT INTO log (rowid, at, what) VALUES (?, ?, ?)", [(1, "t1", "first"), (top, "t2", "top")])
    conn.execute("VACUUM")
    assert conn.execute("SELECT max(rowid) FROM log").fetchone()[0] == top  # kept: the table has an index
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        r = run_cli(cfg, "cutover")
        assert r.returncode == 1 and f'table "log": its highest rowid is {top}' in r.stdout, r.stdout
        move = re.search(rf'(UPDATE "log" SET _rowid_ = .*? WHERE _rowid_ = {top});', r.stdout)
        assert move, r.stdout
        move = move.group(1)
        conn.execute(move)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT _syncd_rowid, what FROM app.log ORDER BY 1") == [(1, "first"), (2, "top")]
        assert run_cli(cfg, "verify").returncode == 0
        r = run_cli(cfg, "cutover")
        assert r.returncode == 0, r.stdout + r.stderr
        assert d.stop() == 0
    conn.close()


@pytest.mark.parametrize("below", [[], [1, 2 ** 63 - 2]], ids=["the only row", "next to the top"])
async def test_the_move_advised_for_a_rowid_at_the_top_lets_the_cutover_through(tmp_path, make_config, pg_dsn, below):
    """The statement the refusal gives moves the row at the largest rowid also when it is
    the table's only row (no smaller rowid to count from) and when the rowid just below
    it is taken (one more than the highest below would be the top itself): run as given,
    it leaves the row under a free smaller rowid, syncd follows the move and the switch
    goes through."""
    top = 2 ** 63 - 1
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE log (at TEXT, what TEXT)")
    conn.execute("CREATE INDEX log_at ON log (at)")
    conn.executemany("INSERT INTO log (rowid, at, what) VALUES (?, ?, ?)",
                     [(r, f"t{r}", f"row {r}") for r in [*below, top]])
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        r = run_cli(cfg, "cutover")
        assert r.returncode == 1 and f'table "log": its highest rowid is {top}' in r.stdout, r.stdout
        move = re.search(rf"(UPDATE .*? WHERE _rowid_ = {top});", r.stdout)
        assert move, r.stdout
        conn.execute(move.group(1))
        rowids = [x[0] for x in conn.execute("SELECT rowid FROM log ORDER BY rowid")]
        assert len(rowids) == len(below) + 1 and max(rowids) < top, rowids
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT _syncd_rowid FROM app.log ORDER BY 1") == [(x,) for x in rowids]
        assert run_cli(cfg, "verify").returncode == 0
        r = run_cli(cfg, "cutover")
        assert r.returncode == 0, r.stdout + r.stderr
        assert d.stop() == 0
    conn.close()


async def test_a_dry_run_on_a_file_its_application_holds_locked_names_the_file(tmp_path, make_config, pg_dsn):
    """Nothing is frozen by a dry run: its refusal names the locked file and says nothing
    of undoing a freeze."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE deals (id INTEGER PRIMARY KEY, title TEXT)")
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"sqlite": {"read_busy_timeout_ms": 200}})
    assert run_cli(cfg, "init").returncode == 0
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # rollback-journal mode: no reader gets in
    try:
        r = run_cli(cfg, "cutover", "--dry-run")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    out = r.stdout + r.stderr
    assert r.returncode == 1 and f"app: REFUSED: SQLite file {db}: database is locked" in out, out
    assert "frozen" not in out and "Traceback" not in out, out


def test_the_reason_a_switch_was_undone_is_said_in_words():
    """What undid a cutover or a rollback is said as it reads, not as an exception's class
    name: a wait of syncd's own with what it waited for, a file gone, SQLite's error."""
    from syncd.cutover import undo_reason
    from syncd.sqlite.capture import LockTimeout
    from syncd.sqlite.connection import SourceFileError

    waited = "the daemon did not bring SQLite up to date within 120 s"
    assert undo_reason(TimeoutError(waited)) == waited
    assert undo_reason(SourceFileError("SQLite file /x/app.db does not exist")) == "SQLite file /x/app.db does not exist"
    assert undo_reason(sqlite3.OperationalError("disk I/O error")) == "the SQLite file: disk I/O error"
    assert undo_reason(LockTimeout("a write lock was not had within 2 s")) == \
        "the SQLite file: a write lock was not had within 2 s"
    assert undo_reason(TimeoutError()).startswith("Postgres: timed out: a statement got no answer within ")


async def test_a_vacuum_the_daemon_has_not_seen_refuses_the_cutover_before_the_freeze(tmp_path, make_config, pg_dsn):
    """A VACUUM since the daemon last followed SQLite's schema (it ran while the daemon
    was stopped) may have renumbered the rowids a table without a key is kept by in
    Postgres: the cutover refuses before freezing the file, saying the daemon copies the
    table again first, instead of freezing the application's writes for a switch whose
    final verification could only undo it; once the daemon has, the switch goes through."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE touches (contact_id INTEGER, at TEXT)")
    conn.executemany("INSERT INTO touches VALUES (?, ?)", [(i, f"2026-11-{i % 28 + 1:02d}") for i in range(30)])
    conn.execute("DELETE FROM touches WHERE rowid % 3 = 0")  # gaps: a VACUUM closes them
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert run_cli(cfg, "verify").returncode == 0
    conn.execute("VACUUM")
    r = run_cli(cfg, "cutover", "--source", "app")
    assert r.returncode == 1 and "app: REFUSED" in r.stdout and '"touches"' in r.stdout and "VACUUM" in r.stdout, \
        r.stdout + r.stderr
    assert "UNDONE" not in r.stdout and "drained" not in r.stdout, r.stdout
    conn.execute("INSERT INTO touches VALUES (99, 'the application still writes')")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        d.wait_log("reloading the table aside")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        r = run_cli(cfg, "cutover", "--source", "app")
        assert r.returncode == 0, r.stdout + r.stderr
        assert d.stop() == 0
    conn.close()


async def test_changes_waiting_on_the_way_back_with_no_daemon_running_fail_the_lag_item(tmp_path, make_config,
                                                                                        pg_dsn):
    """Cut over, the daemon stopped, and the application writes into Postgres: SQLite
    lacks that change and nothing will apply it. The report's lag item does not pass on
    the change's young age: it fails, naming the change pending and that no daemon runs."""
    async with streaming_and_verified(make_config, tmp_path, pg_dsn) as (db, cfg, d):
        r = run_cli(cfg, "cutover")
        assert r.returncode == 0, r.stdout + r.stderr
        d.wait_log("the source now flows Postgres -> SQLite")
        assert d.stop() == 0
    pg = await asyncpg.connect(pg_dsn)
    try:
        await pg.execute("UPDATE app.settings SET value = 'light' WHERE key = 'theme'")
    finally:
        await pg.close()
    doc = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
    lag = next(i for i in doc["checklist"] if i["key"] == "lag")
    assert not lag["ok"], lag
    assert any("1 change(s) pending" in p and "no daemon runs to apply them" in p for p in lag["problems"]), lag
