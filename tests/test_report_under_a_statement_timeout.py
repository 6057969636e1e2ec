"""`syncd report` whose measuring of a source outlasts [postgres] statement_timeout_seconds
(here a table locked by another session) ends with one line naming the source it was
measuring and its target database, the password hidden, not a bare "Postgres: timed out"."""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import wait_caught_up
from tests.support.way_back import orders_app

PASSWORD = "report-secret-4d1"  # trust auth ignores it; it must never be printed


async def test_a_report_cut_short_by_the_statement_timeout_names_the_source_and_its_database(
        tmp_path, make_config, pg_dsn):
    parts = urlsplit(pg_dsn)
    dsn = pg_dsn.replace(f"{parts.username}@", f"{parts.username}:{PASSWORD}@")
    assert PASSWORD in dsn
    sources = []
    for name in ("first", "slow"):
        path = tmp_path / f"{name}.db"
        orders_app(path)
        sources.append({"name": name, "path": str(path)})
    cfg = make_config(sources, sections={"postgres": {"dsn": dsn, "statement_timeout_seconds": 2}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        for s in sources:
            await wait_caught_up(tmp_path / f"{s['name']}.db", pg_dsn, s["name"], daemon=d)
        assert d.stop() == 0
    pg = await asyncpg.connect(pg_dsn)
    try:
        async with pg.transaction():  # the table locked past [postgres] statement_timeout_seconds
            await pg.execute("LOCK TABLE slow.orders IN ACCESS EXCLUSIVE MODE")
            out = run_cli(cfg, "report", timeout=60)
    finally:
        await pg.close()
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stdout[-2000:] + out.stderr[-2000:]
    line = lines[0]
    assert "timed out" in line and '"slow"' in line, line
    database = pg_dsn.rsplit("/", 1)[1]
    assert f"{parts.hostname}:{parts.port}/{database}" in line, line
    assert PASSWORD not in out.stdout + out.stderr
