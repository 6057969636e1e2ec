"""The just-in-case full check of a quiet source still streaming forward (a reconcile
every [stream] schema_check_interval_seconds) asks Postgres the same few transactions
however many tables the source has, and writes nothing when nothing changed.

Each source is streamed in this process, as the daemon runs it, its statements
counted as they reach Postgres."""

from __future__ import annotations

import asyncio

from syncd.config import load_settings
from syncd.pipeline import Pipeline
from syncd.postgres import bookkeeping as bk
from tests.support.statements import noted, tenant, transactions, writes

CHECK_SECONDS = 1.0


class Counted(Pipeline):
    """One source's forward stream, each statement its steps send Postgres noted with
    whether a transaction was open after it (none: the statement ended one)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.statements: list[tuple[str, bool]] = []
        self.steps = 0  # steps that borrowed a Postgres connection

    async def _postgres_steps(self) -> bool:
        self.steps += 1
        with noted(self.session.pg, self.statements):
            return await super()._postgres_steps()

    def quiet(self) -> bool:
        return (self.reconciled and not self.needs_reconcile and not self.events
                and all(t.state == bk.STREAMING for t in self.session.tables.values())
                and self.session.applied_seq >= self.max_seq_seen)


async def full_check(cfg, source: str) -> tuple[list[tuple[str, bool]], int]:
    """The statements of one full check of the quiet source, and the steps it took that
    borrowed a Postgres connection: the step that finds it due and the steps after it,
    until the source is quiet again."""
    settings = load_settings(cfg)
    p = Counted(settings, settings.source(source))
    try:
        for _ in range(200):
            await p._step()
            if p.quiet():
                break
        assert p.quiet(), "the source did not catch up"
        await p._step()  # the pruner's note, and anything else left of the load
        await asyncio.sleep(CHECK_SECONDS + 0.1)  # the full check (and a recheck) due
        p.statements.clear()
        p.steps = 0
        checked = p.last_full_check
        await p._step()
        while not p.quiet():
            await p._step()
        assert p.last_full_check > checked, "the full check did not run"
        return p.statements, p.steps
    finally:
        await p.pruner.stop()
        await p.session.close()


def reads(statements: list[tuple[str, bool]]) -> list[str]:
    """The statements but each table's savepoint (one table that cannot follow stops
    only itself), which costs Postgres no catalog read."""
    return [q for q, _ in statements if not q.lstrip().upper().startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]



async def test_a_full_check_of_a_quiet_forward_source_costs_the_same_few_transactions_whatever_its_tables(
        tmp_path, make_config, pg_dsn):
    small, wide = tmp_path / "small.db", tmp_path / "wide.db"
    tenant(small, 3)
    tenant(wide, 12)
    cfg = make_config([{"name": db.stem, "path": str(db)} for db in (small, wide)],
                      sections={"stream": {"schema_check_interval_seconds": CHECK_SECONDS,
                                           "held_table_retry_seconds": CHECK_SECONDS}})
    (few, steps), (many, _) = await full_check(cfg, "small"), await full_check(cfg, "wide")
    # 36 statements (7 transactions, two steps) for 3 tables and 63 for 12 before: each
    # table's lookup indexes were a query, the source's row and followed schema version
    # were written every time, the reads before capture was looked at were a transaction
    # each, and the step that found the check due left it to a step of its own. Now each
    # table costs its savepoint alone, and the transactions are the recheck's flags, the
    # reads before capture, the reconcile and schema parity's, in one step.
    assert steps == 1, steps
    assert len(reads(many)) == len(reads(few)), (len(few), len(many))
    assert transactions(few) <= 4, [q for q, open_after in few if not open_after]
    assert not writes(few + many), "a quiet full check wrote"
