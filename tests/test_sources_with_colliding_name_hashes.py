"""Two sources whose names hash alike are still two sources.

syncd names some of a source's objects in Postgres, and its advisory locks, by a 31-bit
hash of the source name (`rlog_<hash>`, `rcap_<hash>_<tid>`, the lock keys). In a
fleet of N tenants in one database, two names share that hash with a probability near
N^2 / 2^32 (one in a few hundred fleets of 5,000 tenants; "tenant_229599" and
"tenant_432382" are such a pair). Such two tenants must not share the way back: after
both are cut over, every write the application makes in either Postgres schema
reaches that tenant's SQLite file, and nothing of one tenant reaches the other.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

import asyncpg

from syncd.postgres.bookkeeping import ensure_bookkeeping, lock_key
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.sync import pg_rows, wait_caught_up
from tests.support.way_back import back_up, backup_and_config, cut_over, typeof, wait_back

A, B = "tenant_229599", "tenant_432382"


def _tenant(path, tag: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"{tag} {i}") for i in range(1, 6)])
    conn.commit()
    conn.close()


def _own(name: str) -> set[int]:
    return {100} if name == A else {200}


async def test_two_tenants_whose_names_hash_alike_each_get_their_own_way_back(tmp_path, make_config, pg_dsn):
    assert lock_key(A) == lock_key(B)  # the premise: the pair collides
    dbs = {A: tmp_path / f"{A}.db", B: tmp_path / f"{B}.db"}
    for name, db in dbs.items():
        _tenant(db, name)
    # Each backup told by its name: the two files share their tables, and a backup taken
    # before capture carries nothing else that tells whose it is.
    cfg = backup_and_config(make_config, tmp_path, dbs[A], sources=[{"name": n, "path": str(p)} for n, p in dbs.items()],
                            cutover={"backup_glob": str(tmp_path / "backups" / "{source}-*.db")})
    back_up(dbs[B], tmp_path / "backups")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        for name, db in dbs.items():
            await wait_caught_up(db, pg_dsn, name, daemon=d)
        for name, db in dbs.items():
            await cut_over(cfg, db, pg_dsn, source=name, daemon=d)
            wait_for(lambda: f"source={name} event=streaming: SQLite follows Postgres" in d.log(), 30,
                     f"{name} following Postgres", d)
        # The application now writes Postgres, in each tenant's schema.
        pg = await asyncpg.connect(pg_dsn)
        try:
            await pg.execute(f'INSERT INTO "{A}".items VALUES (100, \'written in A\')')
            await pg.execute(f'UPDATE "{A}".items SET v = \'A changed\' WHERE id = 1')
            await pg.execute(f'INSERT INTO "{B}".items VALUES (200, \'written in B\')')
            await pg.execute(f'DELETE FROM "{B}".items WHERE id = 2')
        finally:
            await pg.close()
        for name, db in dbs.items():
            await wait_back(cfg, db, pg_dsn, source=name, daemon=d)
        # However long it takes: give the way back 30 s more to bring every write.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                dict(typeof(db, "SELECT id, v FROM items")).keys() >= {100, 200} & _own(n) for n, db in dbs.items()):
            await asyncio.sleep(0.2)
        assert d.stop() == 0
    rows = {n: dict(typeof(db, "SELECT id, v FROM items")) for n, db in dbs.items()}
    assert rows[A] == {1: "A changed", 2: f"{A} 2", 3: f"{A} 3", 4: f"{A} 4", 5: f"{A} 5", 100: "written in A"}, rows
    assert rows[B] == {1: f"{B} 1", 3: f"{B} 3", 4: f"{B} 4", 5: f"{B} 5", 200: "written in B"}, rows


async def test_two_tenants_an_older_syncd_set_up_under_one_key_are_named_by_the_log_and_status(
        tmp_path, make_config, pg_dsn):
    dbs = {A: tmp_path / f"{A}.db", B: tmp_path / f"{B}.db"}
    for name, db in dbs.items():
        _tenant(db, name)
    # Each backup told by its name: the two files share their tables, and a backup taken
    # before capture carries nothing else that tells whose it is.
    cfg = backup_and_config(make_config, tmp_path, dbs[A], sources=[{"name": n, "path": str(p)} for n, p in dbs.items()],
                            cutover={"backup_glob": str(tmp_path / "backups" / "{source}-*.db")})
    back_up(dbs[B], tmp_path / "backups")
    # The bookkeeping of a syncd that named both by the hash of their names, and recorded no keys.
    pg = await asyncpg.connect(pg_dsn)
    try:
        await ensure_bookkeeping(pg, "syncd")
        await pg.execute("INSERT INTO syncd.sources(source) VALUES ($1), ($2)", A, B)
        await pg.execute("DROP TABLE syncd.source_keys")
        await pg.execute("UPDATE syncd.meta SET value = 'older' WHERE key = 'version'")
    finally:
        await pg.close()
    line = f"source {A!r} shares its Postgres key {lock_key(A):08x} with {B!r}"
    assert line in run_cli(cfg, "status").stdout
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        for name, db in dbs.items():
            await wait_caught_up(db, pg_dsn, name, daemon=d)
        # Said once, naming both; each keeps the key its objects are named by.
        assert d.log().count("shares its Postgres key") == 1 and line in d.log()
        # One of them may be cut over; the other not after it: their way back would be one.
        await cut_over(cfg, dbs[A], pg_dsn, source=A, daemon=d)
        await wait_caught_up(dbs[B], pg_dsn, B, daemon=d)
        assert run_cli(cfg, "verify", "--source", B).returncode == 0
        r = run_cli(cfg, "cutover", "--source", B)
        assert r.returncode != 0 and f"{A!r} is cut over already" in r.stdout, r.stdout + r.stderr
        assert d.stop() == 0
    assert await pg_rows(pg_dsn, "SELECT source, key FROM syncd.source_keys ORDER BY source") == [
        (A, lock_key(A)), (B, lock_key(B))]
    status = run_cli(cfg, "status").stdout
    assert line in status and f"source {B!r} shares its Postgres key {lock_key(B):08x} with {A!r}" in status
