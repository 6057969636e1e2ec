"""The way back's just-in-case full check of a quiet cut-over source (a reconcile every
[stream] schema_check_interval_seconds) asks Postgres the same few statements however
many tables the source has, and writes nothing when nothing changed. An idle fleet's
Postgres transactions were nearly all these checks: some 30 per check of a source of
3 tables, a few more for each further table (its triggers, its capture function).

The sources are cut over by a daemon, then each is followed back in this process, as
the daemon runs it, its statements counted as they reach Postgres."""

from __future__ import annotations

import asyncio
import time

from syncd.config import load_settings
from syncd.reverse.pipeline import ReversePipeline
from tests.support.daemon import DaemonProcess
from tests.support.statements import noted, tenant, transactions, writes
from tests.support.way_back import back_up, backup_and_config, cut_over, wait_back

CHECK_SECONDS = 1.0


class Counted(ReversePipeline):
    """The way back of one source, each statement its cycles send Postgres noted with
    whether a transaction was open after it (none: the statement ended one)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.statements: list[tuple[str, bool]] = []

    async def _cycle_on_connection(self) -> bool:
        with noted(self.session.pg, self.statements):
            return await super()._cycle_on_connection()


async def full_check(cfg, source: str) -> list[tuple[str, bool]]:
    """The statements of one full check of the quiet source: the cycle that finds it due
    and the cycles after it, until the source is quiet again."""
    settings = load_settings(cfg)
    p = Counted(settings, settings.source(source))
    try:
        while not p._quiet():
            await p._step()
        await asyncio.sleep(CHECK_SECONDS + 0.1)  # the full check (and a recheck) due
        p.statements.clear()
        checked = p.last_full_check
        # The source's direction is the daemon's watch's to ask, for every source at once,
        # and outside what is counted here.
        p.last_direction_check = time.monotonic()
        await p._step()
        while not p._quiet():
            await p._step()
        assert p.last_full_check > checked, "the full check did not run"
        return p.statements
    finally:
        await p.session.close()



async def test_a_full_check_of_a_quiet_cut_over_source_costs_the_same_few_statements_whatever_its_tables(
        tmp_path, make_config, pg_dsn):
    small, wide = tmp_path / "small.db", tmp_path / "wide.db"
    tenant(small, 3)
    tenant(wide, 12)
    back_up(wide, tmp_path / "backups")
    # Each backup told by its name: the two files share their tables, and a backup taken
    # before capture carries nothing else that tells whose it is.
    cfg = backup_and_config(make_config, tmp_path, small, [{"name": db.stem, "path": str(db)} for db in (small, wide)],
                            stream={"schema_check_interval_seconds": CHECK_SECONDS,
                                    "held_table_retry_seconds": CHECK_SECONDS},
                            cutover={"backup_glob": str(tmp_path / "backups" / "{source}-*.db")})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        for db in (small, wide):
            await cut_over(cfg, db, pg_dsn, db.stem, daemon=d)
        for db in (small, wide):
            await wait_back(cfg, db, pg_dsn, db.stem, daemon=d)
        assert d.stop() == 0
    few, many = await full_check(cfg, "small"), await full_check(cfg, "wide")
    # 36 statements (28 transactions) for 3 tables and 54 (46) for 12 before: each table's
    # triggers and capture function were a query each, every catalog read a transaction,
    # and the check took two cycles. Now one cycle: the catalog, the changelog, the lag
    # and the recheck's reads, a transaction each.
    assert len(many) == len(few), (len(few), len(many))
    for catalog in ("pg_trigger", "pg_proc", "pg_attribute"):  # what the check is for: it still looks
        assert any(catalog in q for q, _ in few), catalog
    assert transactions(few) <= 4, [q for q, open_after in few if not open_after]
    assert not writes(few + many), "a quiet full check wrote"
