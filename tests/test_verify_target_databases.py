"""`syncd verify` on the Postgres setups syncd accepts: a SQL_ASCII database (where
length() counts bytes) and databases whose default collation comes from ICU while
datcollate says "C" (key ranges must still compare byte-wise). Identical data is
equal, tampered rows are found by key, and `--repair` clears them. A database in
another encoding is refused at start with one line."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3

import asyncpg
import pytest

from syncd.config import load_settings
from syncd.sqlite.introspect import introspect
from syncd.verify.keyspace import pg_key_access
from tests.conftest import write_config
from tests.support.compare import compare_table
from tests.support.daemon import run_cli
from tests.support.pgcluster import with_database
from tests.support.verifying import found, pg_execute, sync_and_stop, tables, verify, verify_json, verify_section

TARGETS = {
    "sql_ascii": "ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'",
    "icu_und": "ENCODING 'UTF8' LOCALE 'C' LOCALE_PROVIDER icu ICU_LOCALE 'und'",
    "icu_c": "ENCODING 'UTF8' LOCALE 'C' LOCALE_PROVIDER icu ICU_LOCALE 'C'",
}
WORDS = ["apple", "Banana", "cherry", "Ärger", "zebra", "漢字", "_x", "a b", "B", "a", "ö", "🚀"]
N = 400


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def target(request, pg_server):
    """(kind, DSN) of a database created with the options of TARGETS[kind], dropped afterwards."""
    name = f"syncd_test_{request.param}_{secrets.token_hex(4)}"
    asyncio.run(_admin(pg_server, f'CREATE DATABASE "{name}" {TARGETS[request.param]} TEMPLATE template0'))
    try:
        yield request.param, with_database(pg_server, name)
    finally:
        asyncio.run(_admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def seed(db) -> None:
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE words (k TEXT PRIMARY KEY, v TEXT, n INTEGER);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
    """)
    conn.executemany("INSERT INTO words VALUES (?, ?, ?)",
                     [(f"{WORDS[i % len(WORDS)]}{i}", f"wert {WORDS[(i * 7) % len(WORDS)]} é", i) for i in range(N)])
    conn.executemany("INSERT INTO notes VALUES (?, ?)", [(i, "naïve café 漢字 🚀" * (i % 3)) for i in range(50)])
    conn.commit()
    conn.close()


@pytest.mark.parametrize("target", list(TARGETS), indirect=True)
async def test_verify_and_repair_on_the_target(target, app_db, tmp_path):
    kind, target = target
    seed(app_db)
    cfg = write_config(tmp_path / "syncd.toml", target, [{"name": "app", "path": str(app_db)}],
                       extra=verify_section(chunk_rows=16))
    await sync_and_stop(cfg, app_db, target, tmp_path / "syncd.log")

    # Text keys compare byte-wise in Postgres only under COLLATE "C": ICU never orders so.
    spec = introspect(sqlite3.connect(app_db), load_settings(cfg).sources[0]).tables["words"]
    pg = await asyncpg.connect(target)
    try:
        assert await pg_key_access(pg, "app", spec) == (kind != "sql_ascii",)
    finally:
        await pg.close()

    rc, doc = verify_json(cfg, "--wait", "1")
    assert rc == 0, [(t["table"], t["differences"][:3]) for t in tables(doc).values()]
    assert (tables(doc)["words"]["rows_sqlite"], tables(doc)["words"]["rows_postgres"]) == (N, N)

    await pg_execute(target, """
        UPDATE app.words SET v = 'wert Ärger é' WHERE k = 'Ärger3';
        DELETE FROM app.words WHERE k = '漢字5';
        INSERT INTO app.words VALUES ('Ärger3~', 'extra', 0);
        UPDATE app.notes SET body = 'naïve café 漢字 🚀!' WHERE id = 1;
    """)
    rc, doc = verify_json(cfg, "--wait", "1")
    assert rc == 1
    assert found(doc, "words") == {("different", ("Ärger3",), ("v",)), ("missing", ("漢字5",), ()),
                                   ("extra", ("Ärger3~",), ())}
    assert found(doc, "notes") == {("different", (1,), ("body",))}

    out = verify(cfg, "--repair", "--wait", "20")
    assert out.returncode == 0, out.stdout + out.stderr
    for table in ("words", "notes"):
        assert await compare_table(str(app_db), target, "app", table) == [], table
    assert verify(cfg, "--wait", "1").returncode == 0


@pytest.mark.parametrize("encoding", ["LATIN1"])
async def test_other_encodings_are_refused_at_start(encoding, pg_server, app_db, tmp_path):
    name = f"syncd_test_{encoding.lower()}_{secrets.token_hex(4)}"
    await _admin(pg_server, f"CREATE DATABASE \"{name}\" ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' "
                            "TEMPLATE template0")
    try:
        seed(app_db)
        cfg = write_config(tmp_path / "syncd.toml", with_database(pg_server, name),
                           [{"name": "app", "path": str(app_db)}], extra=verify_section())
        want = (f'Postgres database "{name}" uses encoding {encoding}: syncd needs UTF8 (or SQL_ASCII), so that '
                "every SQLite text value fits and compares byte for byte; create the database with ENCODING 'UTF8'")
        # A database syncd can never run with: exit status 2, which the unit does not restart
        # on (RestartPreventExitStatus=2), and one line naming the database and its encoding.
        run = run_cli(cfg, "run", timeout=60)
        assert run.returncode == 2, run.stderr
        assert run.stderr.strip().splitlines()[-1] == f"syncd: {want}", run.stderr
        out = verify(cfg)
        assert out.returncode == 2 and out.stdout.strip().splitlines() == [f"app: ERROR {want}"]
        init = run_cli(cfg, "init", timeout=60)
        assert init.returncode == 1 and f"app: ERROR {want}" in init.stdout
        rehearse = run_cli(cfg, "rehearse", timeout=60)  # the reason is the line: no traceback above it
        out = rehearse.stdout + rehearse.stderr
        assert rehearse.returncode == 1 and f"app: REHEARSAL FAILED: load: {want}" in out, out
        assert "Traceback" not in out, out
    finally:
        await _admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_which_collations_order_bytes():
    """From the catalog rows of PostgreSQL 13 to 17: only libc C/POSIX and the builtin
    C / C.UTF-8 providers order text byte by byte; ICU never does, whatever its locale."""
    from syncd.verify.keyspace import byte_order

    default = {"collprovider": "d"}
    assert byte_order(default, {"datcollate": "C"})  # before PostgreSQL 15: no provider column
    assert byte_order(default, {"datcollate": "POSIX", "datlocprovider": "c"})
    assert not byte_order(default, {"datcollate": "C.UTF-8", "datlocprovider": "c"})
    assert not byte_order(default, {"datcollate": "C", "datlocprovider": "i", "daticulocale": "C"})
    assert not byte_order(default, {"datcollate": "C", "datlocprovider": "i", "datlocale": "und"})
    assert byte_order(default, {"datcollate": "C", "datlocprovider": "b", "datlocale": "C.UTF-8"})
    assert byte_order({"collprovider": "c", "collcollate": "C"}, {"datlocprovider": "i"})
    assert not byte_order({"collprovider": "c", "collcollate": "en_US.utf8"}, {"datcollate": "C"})
    assert not byte_order({"collprovider": "i", "colliculocale": "und"}, {"datcollate": "C"})
    assert byte_order({"collprovider": "b", "colllocale": "C"}, {"datcollate": "en_US.utf8"})
    assert not byte_order({"collprovider": "x"}, {"datcollate": "C"})
    assert byte_order({}, {"datcollate": "C"})  # no collation row: the database's default
