"""What `syncd status` and `syncd report` say about the way back (Postgres -> SQLite,
after a cutover) when they have only the database to ask: the last apply is the way
back's own, and the lag is the age of the oldest change SQLite has not applied,
measured in Postgres, not the time since the last change that flowed the other way."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import threading
import time

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_rows
from tests.support.way_back import backup_and_config, cut_over, wait_back


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("CREATE TABLE deals (id INTEGER PRIMARY KEY, stage TEXT);"
                       "INSERT INTO deals VALUES (1, 'lead'), (2, 'won');")
    conn.commit()
    conn.close()


def status(cfg) -> dict:
    r = run_cli(cfg, "status", "--json")
    return json.loads(r.stdout)["sources"][0]


def lag_metric(port: int) -> float:
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return next(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                if line.startswith("syncd_replication_lag_seconds{") and 'direction="to_sqlite"' in line
                and 'source="app"' in line)


def report_lag(cfg) -> dict:
    r = run_cli(cfg, "report", "--format", "json")
    assert r.returncode in (0, 1, 2) and r.stdout.startswith("{"), r.stdout + r.stderr
    return json.loads(r.stdout)["sources"][0]["lag"]


async def test_status_and_report_measure_the_way_back(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)  # no metrics listener: status asks the database
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await asyncio.sleep(2.5)  # the cutover's last apply (to Postgres) is now visibly older
        written = dt.datetime.now(dt.timezone.utc)
        await pg_rows(pg_dsn, "UPDATE app.deals SET stage = 'proposal' WHERE id = 1")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        await asyncio.sleep(1.2)  # the last apply is written at most once a second
        src = status(cfg)
        assert src["direction"] == "to_sqlite"
        assert dt.datetime.fromisoformat(src["last_applied_at"]) >= written - dt.timedelta(seconds=1), src  # shown to the second
        assert src["pending_changes"] == 0 and src["lag_seconds"] == 0, src
        assert d.stop() == 0

    # The daemon is away long after the last apply; one change waits, just written.
    await asyncio.sleep(3)
    await pg_rows(pg_dsn, "UPDATE app.deals SET stage = 'lost' WHERE id = 2")
    written = time.monotonic()
    src = status(cfg)
    waited = time.monotonic() - written
    assert src["pending_changes"] == 1, src
    assert src["lag_seconds"] is not None and src["lag_seconds"] <= waited + 0.5, (src, waited)
    lag = report_lag(cfg)
    waited = time.monotonic() - written
    assert lag["pending_changes"] == 1 and lag["seconds"] <= waited + 0.5, (lag, waited)
    assert "Postgres" in lag["source"]


async def test_a_held_table_counts_in_the_lag_of_the_way_back(tmp_path, make_config, pg_dsn):
    """A table held on the way back (a value SQLite cannot take) follows Postgres no
    more until it is copied again: its age is the source's lag, from the daemon and
    from the database alone, not the 0 of a stream with nothing else to do. The
    report, which times lookups in Postgres, is not thrown by the value either."""
    from tests.support.pgcluster import free_port
    from tests.support.sync import eventually, table_states

    db = tmp_path / "app.db"
    make_app(db)
    port = free_port()
    cfg = backup_and_config(lambda sources, sections: make_config(sources, metrics_listen=f"127.0.0.1:{port}",
                                                                  sections=sections), tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.deals ADD COLUMN closed date")
        await pg_rows(pg_dsn, "UPDATE app.deals SET closed = '0044-03-15 BC' WHERE id = 1")
        held_at = time.monotonic()

        async def held() -> bool:
            return (await table_states(pg_dsn, "app"))["deals"][0] == "held"

        await eventually(held, 30, "deals held", d)
        await asyncio.sleep(3)
        src = status(cfg)  # the daemon's endpoint answers
        assert src["lag_seconds"] >= 2.5, src
        assert src["lag_seconds"] <= time.monotonic() - held_at + 1, src
        await asyncio.sleep(0.5)  # the gauge is set every poll_interval_seconds
        assert lag_metric(port) >= 2.5  # and the metric alerts are made of
        assert d.stop() == 0
    src = status(cfg)  # the database alone
    assert src["lag_seconds"] >= 2.5, src
    assert report_lag(cfg)["seconds"] >= 2.5
    v = run_cli(cfg, "verify")  # a date Python cannot hold: named, not a traceback
    assert v.returncode == 1 and '"deals" not comparable (held)' in v.stdout and "0044-03-15 BC" in v.stdout, \
        v.stdout + v.stderr

    await pg_rows(pg_dsn, "UPDATE app.deals SET closed = '2026-12-01' WHERE id = 1")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_back(cfg, db, pg_dsn, daemon=d)
        src = status(cfg)
        assert src["lag_seconds"] < 2, src
        assert d.stop() == 0


async def test_a_table_held_and_retried_keeps_its_age_in_the_lag(tmp_path, make_config, pg_dsn):
    """A table held for rows SQLite refuses (a unique index Postgres no longer has) is
    copied again every held_table_retry_seconds, and held again each time: it has been
    behind since the first hold, not since the last retry. Without the daemon's
    endpoint, status reads that age from the database."""
    from tests.support.sync import eventually, table_states

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("CREATE TABLE deals (id INTEGER PRIMARY KEY, code TEXT UNIQUE);"
                       "INSERT INTO deals VALUES (1, 'a'), (2, 'b');")
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)  # no endpoint: status asks the database
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.deals DROP CONSTRAINT deals_code_key")
        await pg_rows(pg_dsn, "UPDATE app.deals SET code = 'a' WHERE id = 2")
        held_at = time.monotonic()

        async def held() -> bool:
            return (await table_states(pg_dsn, "app"))["deals"][0] == "held"

        await eventually(held, 30, "deals held", d)
        await asyncio.sleep(4)  # several retries (every 0.5 s here)
        assert d.log().count("copying the table again from Postgres") >= 3, d.log()[-3000:]
        for _ in range(3):  # each look spans a second or more: several retries (every 0.5 s) in all
            src = status(cfg)
            assert src["lag_seconds"] >= 3.5, src
            assert src["lag_seconds"] <= time.monotonic() - held_at + 1, src
            await asyncio.sleep(0.3)
        assert report_lag(cfg)["seconds"] >= 3.5
        assert d.stop() == 0
    src = status(cfg)  # the daemon stopped in the middle of a retry or not: behind since the first hold
    assert src["lag_seconds"] >= 3.5, src


async def test_status_names_a_held_table_while_a_retry_copies_it_again(tmp_path, make_config, pg_dsn):
    """A table held on the way back for rows SQLite refuses is copied again from Postgres
    at each retry, and held again while Postgres still holds them. While a retry's copy
    runs the table follows Postgres no more than before: `syncd status` names it and why,
    as while it waits, where before it said OK (a table being loaded) for as long as each
    copy ran, while `syncd rollback` refused the source for that very table."""
    from tests.support.sync import eventually, table_states

    rows = 20_000
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE deals (id INTEGER PRIMARY KEY, code TEXT UNIQUE)")
    conn.executemany("INSERT INTO deals VALUES (?, ?)", [(i, f"c{i}") for i in range(1, rows + 1)])
    conn.commit()
    conn.close()
    # Retries every 0.1 s, each copying every row before it meets the last one, which
    # SQLite refuses: the table is being copied again much of the time.
    cfg = backup_and_config(make_config, tmp_path, db, stream={"held_table_retry_seconds": 0.1})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.deals DROP CONSTRAINT deals_code_key")
        await pg_rows(pg_dsn, f"UPDATE app.deals SET code = 'c1' WHERE id = {rows}")

        async def held() -> bool:
            return (await table_states(pg_dsn, "app"))["deals"][0] == "held"

        await eventually(held, 30, "deals held", d)
        states: list[str] = []
        while "loading" not in states and len(states) < 40:
            r = run_cli(cfg, "status", "--json")
            src = json.loads(r.stdout)["sources"][0]
            states.append(next(t["state"] for t in src["tables"] if t["name"] == "deals"))
            named = [p for p in src["problems"] if 'table "deals"' in p["message"] and "UNIQUE" in p["message"]]
            assert r.returncode == 2 and named, (states, src["problems"])
        assert "loading" in states, states  # a status taken while a retry copied the table
        assert d.stop() == 0


async def test_a_row_sqlite_refuses_on_the_way_back_is_named_by_its_key(tmp_path, make_config, pg_dsn):
    """A row the application wrote in Postgres that breaks a CHECK of SQLite's syncd could
    not carry (json_valid() has no Postgres form), or a unique index Postgres no longer
    has, holds its table on the way back; the reason names the row's key, as for a value
    SQLite cannot hold, where before it said "a row" and left the operator to find which
    one in Postgres breaks a SQLite function or index."""
    from tests.support.sync import eventually, table_states

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT CHECK (json_valid(body)));"
                       "INSERT INTO docs VALUES (1, '{}'), (2, '[]');"
                       "CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT UNIQUE);"
                       "INSERT INTO tags VALUES (1, 'a');")
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "INSERT INTO app.docs VALUES (7, 'not json'), (8, '{\"a\": 1}')")

        # A unique index Postgres no longer has (dropped there): the row that breaks SQLite's.
        await pg_rows(pg_dsn, "ALTER TABLE app.tags DROP CONSTRAINT tags_name_key")
        await pg_rows(pg_dsn, "INSERT INTO app.tags VALUES (9, 'a')")

        async def held() -> bool:
            states = await table_states(pg_dsn, "app")
            return states["docs"][0] == "held" and states["tags"][0] == "held"

        await eventually(held, 30, "docs and tags held", d)
        reason = (await table_states(pg_dsn, "app"))["docs"][1]
        assert "json_valid(body)" in reason and "key 7" in reason, reason
        reason = (await table_states(pg_dsn, "app"))["tags"][1]
        assert "UNIQUE constraint failed: tags.name" in reason and "key 9" in reason, reason
        assert d.stop() == 0


async def test_status_names_a_way_back_it_cannot_measure(tmp_path, make_config, pg_dsn):
    """The way back's changelog gone from Postgres (dropped by hand): `syncd status`
    cannot count what SQLite lacks, and says so with Postgres's error, where before it
    showed no problem and left pending and lag empty."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    changelog = (await pg_rows(pg_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'syncd' "
                                       "AND tablename LIKE 'rlog\\_%'"))[0][0]
    await pg_rows(pg_dsn, f'DROP TABLE syncd."{changelog}"')
    r = run_cli(cfg, "status")
    assert r.returncode == 2 and "the way back's position could not be read" in r.stdout \
        and changelog in r.stdout, r.stdout


async def test_just_cut_over_the_last_apply_shown_is_none_of_the_forward_streams(tmp_path, make_config, pg_dsn):
    # The way back has applied nothing yet: LAST APPLIED is not the forward stream's last
    # apply (into Postgres), with the daemon running or not.
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        src = status(cfg)
        assert src["direction"] == "to_sqlite" and src["last_applied_at"] is None, src
        assert "never" in run_cli(cfg, "status").stdout.splitlines()[1]
        assert d.stop() == 0
    src = status(cfg)
    assert src["last_applied_at"] is None, src


async def test_the_daemon_holds_the_source_while_it_turns_it_around_to_the_way_back(tmp_path, make_config, pg_dsn):
    """`syncd status` says a daemon runs a source while the source's lock is held. When a
    cutover ends, the daemon stops the forward pipeline and starts the way back's: the
    lock stays held all along, so status never says in that moment that no daemon runs
    the source (as it did for a few seconds); once the daemon stops, it does."""
    import asyncpg

    from syncd.postgres.bookkeeping import LOCK_CLASS
    from tests.support.daemon import wait_for
    from tests.support.sync import wait_caught_up
    from tests.support.way_back import back_up

    db = tmp_path / "app.db"
    make_app(db)
    back_up(db, tmp_path / "backups")
    cfg = make_config([{"name": "app", "path": str(db)}],
                      sections={"cutover": {"min_days": 0, "backup_glob": str(tmp_path / "backups" / "*.db")},
                                "verify": {"interval_seconds": 0}})
    held = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1::oid AND objsubid = 2 "
            "AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    samples: list[int] = []
    done = threading.Event()

    async def sample() -> None:  # on a thread of its own: the steps below block theirs
        probe = await asyncpg.connect(pg_dsn)
        try:
            while not done.is_set():
                samples.append(await probe.fetchval(held, LOCK_CLASS))
                await asyncio.sleep(0.005)
        finally:
            await probe.close()

    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        sampler = threading.Thread(target=asyncio.run, args=(sample(),))
        sampler.start()
        try:
            await cut_over(cfg, db, pg_dsn, daemon=d)
            d.wait_log("event=direction_switched")
            await wait_back(cfg, db, pg_dsn, daemon=d)
        finally:
            done.set()
            sampler.join(30)
        assert len(samples) > 50 and all(n == 1 for n in samples), (len(samples), samples.count(0))
        src = status(cfg)
        assert (src["direction"], src["daemon_running"], src["state"]) == ("to_sqlite", True, "streaming"), src
        assert d.stop() == 0
    wait_for(lambda: status(cfg)["state"] == "daemon_not_running", 30, "a stopped daemon shown as not running")


async def test_a_table_held_on_the_way_back_is_halted_in_the_report_and_metrics_while_a_retry_copies_it(
        tmp_path, make_config, pg_dsn):
    """The report's "no halted tables" item and `syncd_table_halted`, while a retry copies a
    held table again from Postgres: the table is held all the same (as `syncd status` says),
    not "none of the 1 table(s) is held or paused", nor 0, which kept SyncdTableHalted (5
    minutes of 1) from firing for a table whose copies take much of the time."""
    import functools
    import urllib.request

    from tests.support.pgcluster import free_port
    from tests.support.sync import eventually, table_states

    rows = 20_000
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE deals (id INTEGER PRIMARY KEY, code TEXT UNIQUE)")
    conn.executemany("INSERT INTO deals VALUES (?, ?)", [(i, f"c{i}") for i in range(1, rows + 1)])
    conn.commit()
    conn.close()
    port = free_port()
    cfg = backup_and_config(functools.partial(make_config, metrics_listen=f"127.0.0.1:{port}"), tmp_path, db,
                            stream={"held_table_retry_seconds": 0.1})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.deals DROP CONSTRAINT deals_code_key")
        await pg_rows(pg_dsn, f"UPDATE app.deals SET code = 'c1' WHERE id = {rows}")

        async def held() -> bool:
            return (await table_states(pg_dsn, "app"))["deals"][0] == "held"

        await eventually(held, 30, "deals held", d)
        states: list[str] = []
        while "loading" not in states and len(states) < 30:
            r = run_cli(cfg, "report", "--format", "json")
            doc = json.loads(r.stdout)
            states.append(next(t["state"] for t in doc["sources"][0]["tables"] if t["table"] == "deals"))
            halted = next(i for i in doc["checklist"] if i["key"] == "halted")
            assert not halted["ok"] and any(p.startswith("app.deals: held") and "UNIQUE" in p
                                            for p in halted["problems"]), (states, halted)
        assert "loading" in states, states  # a report made while a retry copied the table
        scraped: list[tuple[float, float]] = []  # (loading, halted) of "deals" in one scrape
        while not any(loading for loading, _ in scraped) and len(scraped) < 200:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            series = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                      if 'table="deals"' in line}
            scraped.append((series['syncd_table_state{source="app",state="loading",table="deals"}'],
                            series['syncd_table_halted{source="app",table="deals"}']))
            time.sleep(0.05)
        assert any(loading for loading, _ in scraped), scraped  # a scrape while a retry copied the table
        assert all(halted == 1 for _, halted in scraped), scraped
        assert d.stop() == 0


async def test_a_table_copied_again_on_the_way_back_claims_no_total_of_an_earlier_copy(tmp_path, make_config, pg_dsn):
    """A table emptied in Postgres (TRUNCATE) and filled again is copied again into SQLite.
    While that copy runs, status says nothing of the rows an earlier copy of the table
    counted: it showed "snapshot 0/1 rows (0%)" for the whole copy of thousands of rows,
    the total of the copy before, as if it had not begun."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:  # each in one transaction: the copy reads the table filled
            await pg.execute("BEGIN; TRUNCATE app.deals; INSERT INTO app.deals VALUES (1, 'alone'); COMMIT")
            await wait_back(cfg, db, pg_dsn, daemon=d)  # copied again: 1 row
            await pg.execute("BEGIN; TRUNCATE app.deals; "
                             "INSERT INTO app.deals SELECT g, 'bulk' FROM generate_series(1, 20000) g; COMMIT")
        finally:
            await pg.close()
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            table = next(t for t in status(cfg)["tables"] if t["name"] == "deals")
            if table["state"] == "loading":
                seen.append((table["snapshot_rows"], table["snapshot_total"]))
            elif seen:
                break
            await asyncio.sleep(0.2)
        assert seen, "the copy was never seen under way"
        assert all(total is None or total >= 20000 for _rows, total in seen), seen
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0


async def test_a_table_paused_on_the_way_back_is_as_old_as_its_oldest_change_not_applied(tmp_path, make_config,
                                                                                          pg_dsn):
    """A table the application's migration pauses on the way back (a column dropped in
    Postgres) is as far behind as the oldest of its changes SQLite has not applied: not
    the time since syncd last saved its row (the cutover's, here 4 s before that change:
    status called a table minutes behind that had missed one change a moment ago), nor
    the time since the pause (3 s after that change, here: a backlog would be hidden)."""
    from tests.support.pgcluster import free_port
    from tests.support.sync import eventually, table_states

    db = tmp_path / "app.db"
    make_app(db)
    port = free_port()
    cfg = backup_and_config(lambda sources, sections: make_config(sources, metrics_listen=f"127.0.0.1:{port}",
                                                                  sections=sections), tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "cutover.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    await asyncio.sleep(4)  # the table's row, saved at the cutover, is visibly older than its change
    await pg_rows(pg_dsn, "INSERT INTO app.deals VALUES (3, 'lead')")
    written = time.monotonic()
    await asyncio.sleep(3)  # the pause, at the daemon's start, is visibly younger than the change
    await pg_rows(pg_dsn, "ALTER TABLE app.deals DROP COLUMN stage")

    def within(lag: float | None, before: float) -> bool:
        """The change's age, measured between `before` and now (a second either way)."""
        return lag is not None and before - 1 <= lag <= time.monotonic() - written + 1

    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        async def paused_and_passed() -> bool:  # the checkpoint past the change: pending counts it no more
            return (await table_states(pg_dsn, "app"))["deals"][0] == "paused" and status(cfg)["pending_changes"] == 0

        await eventually(paused_and_passed, 30, "deals paused, its change passed", d)
        before = time.monotonic() - written
        src = status(cfg)  # the daemon's endpoint answers
        assert within(src["lag_seconds"], before), (src, before)
        before = time.monotonic() - written
        assert within(lag_metric(port), before), before
        assert d.stop() == 0
    before = time.monotonic() - written
    src = status(cfg)  # the database alone
    assert within(src["lag_seconds"], before), (src, before)
    before = time.monotonic() - written
    assert within(report_lag(cfg)["seconds"], before), before


async def test_a_table_paused_before_it_misses_a_change_is_behind_from_its_first_change_missed(tmp_path, make_config,
                                                                                             pg_dsn):
    """Paused by a column dropped in Postgres with no write yet, the table has missed
    nothing: no lag (not the age of its row's last save, the cutover's). The first
    change it misses after the pause is its age from then on, from the daemon and from
    the database alone, though the checkpoint passes it at once."""
    from tests.support.pgcluster import free_port
    from tests.support.sync import eventually, table_states

    db = tmp_path / "app.db"
    make_app(db)
    port = free_port()
    cfg = backup_and_config(lambda sources, sections: make_config(sources, metrics_listen=f"127.0.0.1:{port}",
                                                                  sections=sections),
                            tmp_path, db, stream={"schema_check_interval_seconds": 1})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await asyncio.sleep(3)  # the table's row, saved at the cutover, is visibly older
        await pg_rows(pg_dsn, "ALTER TABLE app.deals DROP COLUMN stage")

        async def paused() -> bool:
            return (await table_states(pg_dsn, "app"))["deals"][0] == "paused"

        await eventually(paused, 30, "deals paused", d)
        assert status(cfg)["lag_seconds"] < 1.5  # nothing missed yet
        await pg_rows(pg_dsn, "INSERT INTO app.deals VALUES (3)")
        written = time.monotonic()
        await eventually(lambda: asyncio.to_thread(lambda: status(cfg)["pending_changes"] == 0), 30,
                         "the change passed", d)
        await asyncio.sleep(2)
        before = time.monotonic() - written
        src = status(cfg)  # the daemon's endpoint answers
        assert before - 1 <= src["lag_seconds"] <= time.monotonic() - written + 1, (src, before)
        assert d.stop() == 0
    before = time.monotonic() - written
    src = status(cfg)  # the database alone
    assert before - 1 <= src["lag_seconds"] <= time.monotonic() - written + 1, (src, before)


async def test_a_table_held_after_a_restart_is_as_old_as_the_change_it_could_not_take(tmp_path, make_config,
                                                                                        pg_dsn):
    """A change SQLite cannot take, written while the daemon was away, holds its table
    once the daemon is back: the table is as far behind as that change, not as the hold
    (which hid the seconds or hours the change had waited, once the stream caught up)."""
    from tests.support.sync import eventually, table_states

    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)  # no endpoint: status asks the database
    with DaemonProcess(cfg, tmp_path / "cutover.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.deals ADD COLUMN closed date")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    await pg_rows(pg_dsn, "UPDATE app.deals SET closed = '0044-03-15 BC' WHERE id = 1")
    written = time.monotonic()
    await asyncio.sleep(4)  # the change waits for the daemon
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        async def held() -> bool:
            return (await table_states(pg_dsn, "app"))["deals"][0] == "held"

        await eventually(held, 30, "deals held", d)
        before = time.monotonic() - written
        src = status(cfg)
        assert src["pending_changes"] == 0 and before - 1 <= src["lag_seconds"] <= time.monotonic() - written + 1, \
            (src, before)
        assert d.stop() == 0
