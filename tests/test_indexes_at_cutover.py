"""Every index of the dual-write plan is in Postgres when the application switches. One
Postgres refused while SQLite was the application's is named with Postgres's reason
(the log, the report's "not migrated" list, its schema table, `cutover --dry-run`) and
built by `syncd cutover` in its final transaction, or listed there with why not: never
silently missing after the switch."""

from __future__ import annotations

import base64
import json
import os
import sqlite3

import asyncpg

from syncd import parity
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import first_source, pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over

# A title no Postgres btree entry can hold (random, so it does not compress under 2704 bytes).
LONG = base64.b64encode(os.urandom(6000)).decode()
INDEX = 'notes: index "notes_title" on (title)'


def notes_file(db) -> sqlite3.Connection:
    """100 notes indexed by title, note 7's title too long for a Postgres index; the
    application's connection."""
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("PRAGMA journal_mode=WAL")
    app.executescript("CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT);"
                      "CREATE INDEX notes_title ON notes (title);")
    app.executemany("INSERT INTO notes VALUES (?, ?)", ((i, f"note {i}") for i in range(1, 101)))
    app.execute("UPDATE notes SET title = ? WHERE id = 7", (LONG,))
    return app


async def title_index(dsn) -> tuple[str, str | None] | None:
    rows = await pg_rows(dsn, "SELECT indexdef, obj_description(format('app.%I', indexname)::regclass, 'pg_class') "
                              "FROM pg_indexes WHERE schemaname = 'app' AND indexname = 'notes_title'")
    return tuple(rows[0]) if rows else None


def report(cfg) -> dict:
    return json.loads(run_cli(cfg, "report", "--format", "json").stdout)["sources"][0]


async def finalize_rolled_back(cfg, dsn) -> parity.FinalizeResult:
    settings, source, specs = first_source(cfg)
    pg = await asyncpg.connect(dsn)
    try:
        tx = pg.transaction()
        await tx.start()
        try:
            return await parity.finalize(pg, settings, source, specs)
        finally:
            await tx.rollback()
    finally:
        await pg.close()


async def test_an_index_postgres_refused_is_named_and_the_cutover_builds_it_once_the_rows_allow(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    app = notes_file(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        d.wait_log(f"not created: {INDEX}: index row size")
        assert await title_index(pg_dsn) is None
        src = report(cfg)
        entry = next(lo for lo in src["not_migrated"] if lo["name"] == INDEX)
        assert entry["why"].startswith("not in Postgres: Postgres refused it: index row size")
        assert "syncd cutover" in entry["todo"]
        now = next(o["now"] for o in src["schema"]["objects"] if o["postgres_name"] == "notes_title")
        assert now == entry["why"]
        assert run_cli(cfg, "verify").returncode == 0  # the checklist wants a clean verification
        dry = run_cli(cfg, "cutover", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert f'schema: will build {INDEX} as "notes_title": not in Postgres now' in dry.stdout

        # While the long title is there, the final transaction cannot build it either: listed, with why.
        result = await finalize_rolled_back(cfg, pg_dsn)
        refused = next(o for o in result.not_created if o.name == "notes_title")
        assert refused.detail.startswith("Postgres refused it: index row size")
        assert "notes_title" not in {o.name for o in result.created}

        app.execute("UPDATE notes SET title = 'a short title' WHERE id = 7")  # the user fixes the row
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        assert (f'created: {INDEX} as "notes_title": built in the cutover\'s transaction (it was not in '
                "Postgres)") in out
    made = await title_index(pg_dsn)
    assert made is not None and made[0].endswith("USING btree (title)")
    assert made[1].startswith("syncd parity dual-write ")  # as the dual-write plan has it: a rollback keeps it
    assert not [lo for lo in report(cfg)["not_migrated"] if lo["name"] == INDEX]


async def test_an_index_in_postgres_is_not_built_again_at_cutover(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    app = notes_file(db)
    app.execute("UPDATE notes SET title = 'short' WHERE id = 7")
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        d.wait_log(f"created {INDEX}")
        before = await pg_rows(pg_dsn, "SELECT 'app.notes_title'::regclass::oid")
        assert not [lo for lo in report(cfg)["not_migrated"] if lo["name"] == INDEX]
        assert run_cli(cfg, "verify").returncode == 0
        dry = run_cli(cfg, "cutover", "--dry-run")
        assert dry.returncode == 0 and "will build" not in dry.stdout, dry.stdout + dry.stderr
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
    assert "notes_title" not in out
    assert await pg_rows(pg_dsn, "SELECT 'app.notes_title'::regclass::oid") == before  # the same index


async def test_an_index_postgres_still_refuses_is_listed_by_the_cutover_and_the_report_after_it(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    notes_file(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log(f"not created: {INDEX}: index row size", timeout=60)
        out = await cut_over(cfg, db, pg_dsn, daemon=d)  # the switch goes on, the index named with why
        assert f'NOT created: {INDEX} as "notes_title": Postgres refused it: index row size' in out
    assert await title_index(pg_dsn) is None
    entry = next(lo for lo in report(cfg)["not_migrated"] if lo["name"] == INDEX)
    assert entry["why"].startswith("not in Postgres: Postgres refused it: index row size")
    assert entry["todo"].startswith("create it by hand in Postgres")  # nothing of syncd's builds it now
