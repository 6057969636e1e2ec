"""Orphan rows: child rows whose foreign key names no parent row.

SQLite enforces foreign keys only where the application turns `PRAGMA foreign_keys`
on, so its data may hold orphans. Postgres gets the foreign keys at cutover, validated:
they are counted all along (per foreign key, in Postgres, where the validation will
run), shown by `syncd report`, the status page and the metric
syncd_foreign_key_orphans{source,table,constraint}, and the cutover refuses while any
remain (unless --allow-orphans: those foreign keys are then NOT VALID and listed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from syncd.identifiers import qualified, quote_pg_ident
from syncd.model import TableSpec
from syncd.parity.plan import Item
from syncd.postgres.connect import describe

SAMPLE_KEYS = 5


@dataclass
class OrphanCount:
    table: str
    constraint: str  # the Postgres name the foreign key gets at cutover
    parent: str
    what: str  # the SQLite foreign key, for people
    orphans: int | None = None  # None: could not be counted (error says why)
    sample_keys: list[tuple] = field(default_factory=list)
    error: str | None = None

    def describe(self) -> str:
        if self.orphans is None:
            return f'{self.table}: {self.what}: orphans not counted ({self.error})'
        keys = ", ".join(repr(k[0]) if len(k) == 1 else repr(k) for k in self.sample_keys)
        return (f"{self.table}: {self.what}: {self.orphans} orphan row(s)"
                + (f" (keys {keys})" if keys else ""))


def orphan_sql(schema: str, item: Item, child: TableSpec, count: bool) -> str:
    fk = item.fk
    assert fk is not None and item.parent_key
    c = "c"
    notnull = " AND ".join(f"{c}.{quote_pg_ident(col)} IS NOT NULL" for col in fk.columns)
    nocase = item.fk_nocase or (False,) * len(fk.columns)
    match = " AND ".join(_equal(f"p.{quote_pg_ident(p)}", f"{c}.{quote_pg_ident(col)}", ci)
                         for col, p, ci in zip(fk.columns, item.parent_key, nocase))
    where = (f"{notnull} AND NOT EXISTS (SELECT 1 FROM {qualified(schema, _parent_name(item))} AS p "
             f"WHERE {match})")
    table = qualified(schema, child.name)
    if count:
        return f"SELECT count(*) FROM {table} AS {c} WHERE {where}"
    keys = ", ".join(f"{c}.{quote_pg_ident(k)}" for k in child.key)
    return f"SELECT {keys} FROM {table} AS {c} WHERE {where} ORDER BY {keys} LIMIT {SAMPLE_KEYS}"


def _equal(parent: str, child: str, nocase: bool) -> str:
    if not nocase:
        return f"{parent} = {child}"
    # SQLite's NOCASE: A-Z folded, nothing else ("C" makes lower() fold ASCII only). The
    # case-insensitive columns of the cutover fold more, so a row matched here matches there.
    return f'lower({parent}::text COLLATE "C") = lower({child}::text COLLATE "C")'


def _parent_name(item: Item) -> str:
    # plan._plan_fk resolved the parent (case-insensitively) into the REFERENCES clause;
    # keep the spelling it resolved to.
    assert item.fk is not None
    return item.fk_parent or item.fk.parent


async def count(conn: asyncpg.Connection, schema: str, items: list[Item], specs: dict[str, TableSpec],
                samples: bool = True) -> list[OrphanCount]:
    """One count per carried foreign key, each in its own savepoint when `conn` is in a
    transaction (a table missing in Postgres is an error for that one)."""
    out = []
    for item in items:
        if item.kind != "foreign key" or item.left_out or item.fk is None or item.table not in specs:
            continue
        oc = OrphanCount(item.table, item.name or "", _parent_name(item), item.what)
        child = specs[item.table]
        try:
            async with conn.transaction():
                oc.orphans = int(await conn.fetchval(orphan_sql(schema, item, child, True)))
                if oc.orphans and samples:
                    oc.sample_keys = [tuple(r) for r in await conn.fetch(orphan_sql(schema, item, child, False))]
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            oc.error = describe(e)
        out.append(oc)
    return out


# --- the daemon's count ---------------------------------------------------------------------

# How often the watch looks whether a source is due: at most this long, or the interval
# when it is shorter (a source is then counted at its own interval, not the tick's), but
# not more often than WATCH_TICK_MIN_SECONDS: each count borrows a pooled connection.
WATCH_TICK_SECONDS = 5.0
WATCH_TICK_MIN_SECONDS = 0.5


async def watch(settings_fn, pipelines_fn, targets) -> None:
    """Count each streaming source's orphans every [cutover] orphan_check_interval_seconds
    into syncd_foreign_key_orphans, on a connection borrowed from the source's target
    pool for the count only. The foreign keys are those of the pipeline's last
    reconcile (its parity plan)."""
    import asyncio
    import logging
    import time

    from syncd import metrics
    from syncd.parity import _sessions

    log = logging.getLogger("syncd")
    last: dict[str, float] = {}
    shown: dict[str, set[tuple[str, str]]] = {}
    while True:
        settings = settings_fn()
        interval = settings.cutover.orphan_check_interval_seconds
        for name, p in list(pipelines_fn().items()):
            st = _sessions.get(p.session)
            if interval <= 0 or st is None or st.plan is None or getattr(p, "health", "") != "streaming":
                continue
            if time.monotonic() - last.get(name, -interval) < interval:
                continue
            last[name] = time.monotonic()
            if not any(i.kind == "foreign key" and not i.left_out for i in st.plan.items):
                st.orphans = {}
                continue  # nothing to count: no connection borrowed
            specs = {n: t.spec for n, t in p.session.tables.items()}
            try:
                async with targets.for_source(p.source).connection() as conn:
                    if await p.session.bk.switch_open(conn):
                        continue  # counted next interval: the switch's last transaction needs the tables
                    counts = await count(conn, p.session.target_schema, st.plan.items, specs, samples=False)
            except Exception as e:  # noqa: BLE001 - a count that fails is tried again next interval
                log.info(f"foreign-key orphans not counted: {describe(e)}", extra={"source": name,
                                                                                  "event": "orphans_unknown"})
                continue
            if name not in pipelines_fn():
                shown.pop(name, None)
                continue  # removed meanwhile (a reload, forgotten): its series were dropped and stay so
            # A foreign key gone from the plan leaves the metric; one whose count failed this
            # time keeps its last count (its orphans are not known to be gone).
            now = {(o.table, o.constraint) for o in counts}
            for table, constraint in shown.get(name, set()) - now:
                try:
                    metrics.foreign_key_orphans.remove(name, table, constraint)
                except KeyError:
                    pass
            for o in counts:
                if o.orphans is not None:
                    metrics.foreign_key_orphans.labels(name, o.table, o.constraint).set(o.orphans)
            before, st.orphans = st.orphans or {}, {}
            for o in counts:
                key = f"{o.table}: {o.what}"
                if o.orphans is not None or key in before:
                    st.orphans[key] = o.orphans if o.orphans is not None else before[key]
            counted = {(o.table, o.constraint) for o in counts if o.orphans is not None}
            shown[name] = (shown.get(name, set()) & now) | counted
        await asyncio.sleep(max(WATCH_TICK_MIN_SECONDS, min(WATCH_TICK_SECONDS, interval)) if interval > 0
                            else WATCH_TICK_SECONDS)
