"""One SQLite file streamed by two syncd configurations, each into a Postgres database of
its own: either one prunes the changelog entries it has applied, which the other may not
have read yet. The other must notice that the file's changelog no longer holds what it
still needs and load the file again, never stream on past the changes it missed."""

from __future__ import annotations

import signal
import sqlite3

from tests.conftest import write_config
from tests.support.app import Writer, create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import eventually, pg_rows, wait_caught_up


def changelog_min(db) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT coalesce(min(seq), 0) FROM _syncd_changelog").fetchone()[0]
    finally:
        conn.close()


async def test_changes_the_other_configuration_pruned_are_not_lost(tmp_path, make_config, pg_dsn, pg_server,
                                                                    fresh_databases):
    from tests.conftest import with_database

    db = tmp_path / "app.db"
    create_items(db, rows=200, journal="wal")
    quiet = {"verify": {"interval_seconds": 0}}
    cfg_a = make_config([{"name": "app", "path": str(db)}], name="a.toml", sections=quiet)
    other = fresh_databases.take()
    try:
        dsn_b = with_database(pg_server, other)
        cfg_b = write_config(tmp_path / "b.toml", dsn_b, [{"name": "app", "path": str(db)}], sections=quiet)
        with DaemonProcess(cfg_a, tmp_path / "a.log") as a, DaemonProcess(cfg_b, tmp_path / "b.log") as b:
            await wait_caught_up(db, pg_dsn, "app", daemon=a)
            await wait_caught_up(db, dsn_b, "app", daemon=b)
            b.proc.send_signal(signal.SIGSTOP)  # b is held up (a slow host, a long pause)...
            try:
                applied_b = (await pg_rows(dsn_b, "SELECT applied_seq FROM syncd.sources"))[0][0]
                Writer(db, seconds=2, seed=1, rate=100).result()
                await wait_caught_up(db, pg_dsn, "app", daemon=a)

                async def pruned_past_b() -> bool:  # ...while a prunes what b has not read
                    return changelog_min(db) > applied_b + 1

                await eventually(pruned_past_b, 60, "a to prune past b's position", a)
            finally:
                b.proc.send_signal(signal.SIGCONT)
            Writer(db, seconds=1, seed=2, rate=50).result()
            await wait_caught_up(db, dsn_b, "app", daemon=b, timeout=120)
            await wait_caught_up(db, pg_dsn, "app", daemon=a)
            assert a.stop() == 0 and b.stop() == 0
            assert "event=pruned_elsewhere" in b.log() and "event=pruned_elsewhere" not in a.log()
        assert await compare_table(str(db), pg_dsn, "app", "items") == []
        assert await compare_table(str(db), dsn_b, "app", "items") == []
    finally:
        fresh_databases.give_back(other)


async def test_a_file_pruned_before_syncd_follows_it_into_a_new_database_loads_once(tmp_path, make_config, pg_dsn,
                                                                                   pg_server, fresh_databases):
    """A file streamed before (its changelog pruned, the prune noted in it) followed by a new
    configuration into an empty database: loaded once, without a word of another syncd."""
    from tests.conftest import with_database

    db = tmp_path / "app.db"
    create_items(db, rows=200, journal="wal")
    quiet = {"verify": {"interval_seconds": 0}}
    cfg_a = make_config([{"name": "app", "path": str(db)}], name="a.toml", sections=quiet)
    with DaemonProcess(cfg_a, tmp_path / "a.log") as a:
        await wait_caught_up(db, pg_dsn, "app", daemon=a)
        Writer(db, seconds=2, seed=1, rate=100).result()
        await wait_caught_up(db, pg_dsn, "app", daemon=a)

        async def pruned() -> bool:
            return changelog_min(db) > 1

        await eventually(pruned, 60, "a prune", a)
        assert a.stop() == 0
    other = fresh_databases.take()
    try:
        dsn_b = with_database(pg_server, other)
        cfg_b = write_config(tmp_path / "b.toml", dsn_b, [{"name": "app", "path": str(db)}], sections=quiet)
        with DaemonProcess(cfg_b, tmp_path / "b.log") as b:
            await wait_caught_up(db, dsn_b, "app", daemon=b, timeout=120)
            assert b.stop() == 0
            log = b.log()
        assert "pruned_elsewhere" not in log and log.count("table=items event=snapshot_started") == 1, log
        assert await compare_table(str(db), dsn_b, "app", "items") == []
    finally:
        fresh_databases.give_back(other)
