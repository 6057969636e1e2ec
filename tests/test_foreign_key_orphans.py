"""Foreign-key orphans are counted all along, before the cutover needs them: the daemon
exports syncd_foreign_key_orphans{source,table,constraint}, and `syncd report` and the
status page fail "Foreign keys hold" naming each foreign key with its orphan count (the
report with sample keys; the served page, like `syncd status`, without), until the rows
are fixed."""

from __future__ import annotations

import asyncio
import html
import json
import sqlite3
import urllib.request

from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.pgcluster import free_port
from tests.support.sync import wait_caught_up
from tests.test_metrics import scrape

SERIES = 'syncd_foreign_key_orphans{constraint="%s",source="app",table="%s"}'


async def test_orphans_are_counted_in_the_metric_and_the_report(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE org (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE person (id INTEGER PRIMARY KEY, org_id INTEGER REFERENCES org(id), boss INTEGER,
                             FOREIGN KEY (boss) REFERENCES person(id));
        INSERT INTO org VALUES (1, 'a');
        INSERT INTO person VALUES (1, 1, NULL), (2, 7, 1), (3, 8, 99), (4, NULL, NULL);
    """)
    port = free_port()
    cfg = make_config([{"name": "app", "path": str(app_db)}], metrics_listen=f"127.0.0.1:{port}",
                      sections={"cutover": {"orphan_check_interval_seconds": 0.5}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        org, boss = SERIES % ("person_org_id_fkey", "person"), SERIES % ("person_boss_fkey", "person")
        wait_for(lambda: scrape(port).get(org) == 2 and scrape(port).get(boss) == 1, 30, "orphan counts", d)
        doc = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
        fk = next(i for i in doc["checklist"] if i["key"] == "foreign_keys")
        assert fk["ok"] is False
        assert "app.person: FOREIGN KEY (org_id) REFERENCES org (id): 2 orphan row(s) (keys 2, 3)" in \
            fk["problems"]
        assert "app.person: FOREIGN KEY (boss) REFERENCES person (id): 1 orphan row(s) (keys 3)" in \
            fk["problems"]
        status = run_cli(cfg, "status")
        assert ("WARNING: app: person: FOREIGN KEY (org_id) REFERENCES org (id): 2 orphan row(s) (their foreign key "
                "names no parent row)") in status.stdout
        # the served page counts them too, but shows no row's key (as `syncd status`)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            page = html.unescape(r.read().decode())
        assert "REFERENCES org (id): 2 orphan row(s)" in page and "(keys 2, 3)" not in page
        orphans = doc["sources"][0]["schema"]["orphans"]
        assert {(o["constraint"], o["orphans"]) for o in orphans} == {("person_org_id_fkey", 2),
                                                                      ("person_boss_fkey", 1)}
        # the application fixes its rows: the counts follow
        conn.execute("UPDATE person SET org_id = 1 WHERE id IN (2, 3)")
        conn.execute("UPDATE person SET boss = 1 WHERE id = 3")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        wait_for(lambda: scrape(port).get(org) == 0 and scrape(port).get(boss) == 0, 30, "orphans fixed", d)
        doc = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
        fk = next(i for i in doc["checklist"] if i["key"] == "foreign_keys")
        assert fk["ok"] is True and fk["evidence"] == ["app: 2 foreign key(s), no orphan rows"]
        assert d.stop() == 0


async def test_orphans_not_counted_this_time_keep_their_last_count(app_db, make_config, pg_dsn, tmp_path):
    """A count that fails (here: the parent table locked, and the database's lock_timeout
    ends the count's wait) knows nothing new: the orphans counted before stay in the
    metric and in `syncd status`, not dropped as if they were gone."""
    import asyncpg

    admin = await asyncpg.connect(pg_dsn)
    await admin.execute("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET lock_timeout = 1000', "
                        "current_database()); END $$")
    await admin.close()
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE org (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE person (id INTEGER PRIMARY KEY, org_id INTEGER REFERENCES org(id));
        INSERT INTO org VALUES (1, 'a');
        INSERT INTO person VALUES (1, 1), (2, 7);
    """)
    port = free_port()
    cfg = make_config([{"name": "app", "path": str(app_db)}], metrics_listen=f"127.0.0.1:{port}",
                      sections={"cutover": {"orphan_check_interval_seconds": 0.5}})
    org = SERIES % ("person_org_id_fkey", "person")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        wait_for(lambda: scrape(port).get(org) == 1, 30, "the orphan counted", d)
        locker = await asyncpg.connect(pg_dsn)
        watcher = await asyncpg.connect(pg_dsn)
        try:
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE app.org IN ACCESS EXCLUSIVE MODE")
            waiting = ("SELECT query_start FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                       "AND query LIKE '%person%' AND pid <> pg_backend_pid()")
            seen: list = []

            async def counts_waited(n: int) -> bool:
                for _ in range(600):
                    at = await watcher.fetchval(waiting)
                    if at is not None and at not in seen:
                        seen.append(at)
                    if len(seen) >= n:
                        return True
                    await asyncio.sleep(0.05)
                return False

            # A count waits on the lock until lock_timeout ends it; the next
            # count waiting means the failed one's outcome has been published.
            assert await counts_waited(2), d.log()[-2000:]
            assert scrape(port).get(org) == 1, d.log()[-2000:]
            status = run_cli(cfg, "status")
            assert "REFERENCES org (id): 1 orphan row(s)" in status.stdout, status.stdout
            await tx.rollback()
        finally:
            await locker.close()
            await watcher.close()
        assert d.stop() == 0


async def test_a_source_removed_while_its_orphans_are_counted_leaves_no_series_behind(app_db, pg_dsn, tmp_path):
    """A source removed by SIGHUP while its orphan count waits in Postgres (a lock on its
    table): the count ends after the source's series were dropped, and brings none back."""
    import signal

    import asyncpg

    from tests.conftest import write_config
    from tests.support.app import create_items

    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE org (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE person (id INTEGER PRIMARY KEY, org_id INTEGER REFERENCES org(id));
        INSERT INTO org VALUES (1, 'a');
        INSERT INTO person VALUES (1, 1), (2, 7);
    """)
    conn.close()
    other = tmp_path / "other.db"
    create_items(other, rows=3)
    port = free_port()
    cfg = tmp_path / "syncd.toml"
    sections = {"cutover": {"orphan_check_interval_seconds": 0.5}, "verify": {"interval_seconds": 0}}
    write_config(cfg, pg_dsn, [{"name": "app", "path": str(app_db)}, {"name": "other", "path": str(other)}],
                 metrics_listen=f"127.0.0.1:{port}", sections=sections)
    of_app = lambda: [k for k in scrape(port) if 'source="app"' in k]  # noqa: E731
    pg = await asyncpg.connect(pg_dsn)
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
            wait_for(lambda: scrape(port).get(SERIES % ("person_org_id_fkey", "person")) == 1, 30, "the count", d)
            tx = pg.transaction()
            await tx.start()
            await pg.execute("LOCK TABLE app.person IN ACCESS EXCLUSIVE MODE")
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'syncd%' " \
                      "AND wait_event_type = 'Lock' AND datname = current_database()"
            watcher = await asyncpg.connect(pg_dsn)
            try:
                for _ in range(300):  # the next count waits for the lock
                    if await watcher.fetchval(waiting):
                        break
                    await asyncio.sleep(0.1)
                assert await watcher.fetchval(waiting), "no count waiting for the table"
                write_config(cfg, pg_dsn, [{"name": "other", "path": str(other)}],
                             metrics_listen=f"127.0.0.1:{port}", sections=sections)
                d.proc.send_signal(signal.SIGHUP)
                d.wait_log("source removed from the configuration")
                wait_for(lambda: not of_app(), 30, "app's series dropped", d)
                await tx.rollback()
                for _ in range(300):  # the count that waited has ended
                    if not await watcher.fetchval(waiting):
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1)  # and its result was taken in
            finally:
                await watcher.close()
            assert of_app() == [], of_app()
            assert d.stop() == 0
    finally:
        await pg.close()
