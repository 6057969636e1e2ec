"""Names Postgres cannot hold, names syncd reserves, and names built to forge output.

A table or column name over Postgres's 63-byte limit is a refusal of that one table,
said in one line; the source and its other tables go on. A user table named
`_syncd_...` is refused by name, not silently skipped. A name holding a line break is
shown escaped in the text log, `syncd status` and the markdown report, so it cannot
pass for a line of its own. A malformed value in syncd's `_syncd_meta` is a clear
error naming the file and the key.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3

from tests.conftest import write_config
from tests.support.compare import compare_keyless, compare_table
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.sync import table_states, wait_caught_up

LONG_TABLE = "t" * 64
LONG_COLUMN = "c" * 40 + "é" * 12  # 64 bytes in UTF-8, 52 characters
FORGED = "nokey\n2026-01-01T00:00:00.000Z ERROR   source=app: forged line"
LINE_START = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) ")


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _app(path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE good (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute(f"CREATE TABLE {q(LONG_TABLE)} (id INTEGER PRIMARY KEY)")
    conn.execute(f"CREATE TABLE wide (id INTEGER PRIMARY KEY, {q(LONG_COLUMN)} TEXT)")
    conn.execute("CREATE TABLE _syncd_mine (id INTEGER PRIMARY KEY)")
    conn.execute(f"CREATE TABLE {q(FORGED)} (id INTEGER PRIMARY KEY, v TEXT)")
    for t in ("good", FORGED):
        conn.executemany(f"INSERT INTO {q(t)} VALUES (?, ?)", [(i, str(i)) for i in range(10)])
    conn.commit()
    conn.close()


async def test_odd_names_are_refused_or_escaped_and_the_rest_replicates(tmp_path, pg_dsn):
    db = tmp_path / "app.db"
    _app(db)
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    states = await table_states(pg_dsn, "app")
    assert states["good"][0] == states[FORGED][0] == "streaming"
    assert states[LONG_TABLE] == ("refused", "its name is 64 bytes long; Postgres names hold at most 63 bytes "
                                             "(it would cut the name short), so rename it to replicate it")
    assert states["wide"][0] == "refused" and "column 'cccc" in states["wide"][1] and "64 bytes" in states["wide"][1]
    assert states["_syncd_mine"][0] == "refused" and "reserves for its own tables" in states["_syncd_mine"][1]
    for t in ("good", FORGED):
        assert await compare_table(str(db), pg_dsn, "app", t) == []

    # Every line of the text log is a line syncd wrote: none begins with the forged text.
    lines = log.splitlines()
    assert all(LINE_START.match(line) or line.startswith("    ") for line in lines), log
    assert "forged line" in log and not any(line.startswith("2026-01-01") for line in lines)
    assert "Traceback" not in log and "FAILING" not in log.upper().replace("_", " ")

    status = run_cli(cfg, "status")
    assert f"{LONG_TABLE}\" not replicated: its name is 64 bytes long" in status.stdout
    assert 'table "_syncd_mine" not replicated' in status.stdout
    assert not any(line.startswith("2026-01-01") for line in status.stdout.splitlines())
    report = run_cli(cfg, "report")
    assert "nokey\\n2026-01-01" in report.stdout, report.stdout
    assert not any(line.startswith("2026-01-01") for line in report.stdout.splitlines())
    schema = run_cli(cfg, "schema")
    assert "-- refused '_syncd_mine': its name starts with _syncd_" in schema.stdout


async def test_a_malformed_meta_value_is_a_clear_error(tmp_path, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE good (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}])
    assert run_cli(cfg, "init").returncode == 0
    conn = sqlite3.connect(db)
    conn.execute("INSERT OR REPLACE INTO _syncd_meta(key, value) VALUES ('pruned_seq', 'not a number')")
    conn.commit()
    conn.close()
    expected = f"SQLite file {db}: _syncd_meta key 'pruned_seq' holds 'not a number', not a number"

    r = run_cli(cfg, "status")
    assert r.returncode == 3 and expected in r.stdout and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    r = run_cli(cfg, "init")
    assert expected in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        wait_for(lambda: expected in d.log(), 30, "the error line", d)
        assert d.alive()
        assert d.stop() == 0
        assert "Traceback" not in d.log()


async def test_verify_names_the_refusal_of_a_long_named_table(tmp_path, pg_dsn):
    """The refused table is one the check cannot compare, said with the refusal's reason:
    not a check failed on a Postgres error about the name (a consistency error in the
    window `syncd report` judges, for a table syncd said at once it would not replicate)."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE good (id INTEGER PRIMARY KEY)")
    conn.execute(f"CREATE TABLE {q(LONG_TABLE)} (id INTEGER PRIMARY KEY)")
    conn.execute(f"INSERT INTO {q(LONG_TABLE)} VALUES (1)")
    conn.commit()
    conn.close()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}])
    assert run_cli(cfg, "init").returncode == 1  # the long-named table is refused

    r = run_cli(cfg, "verify", "--table", LONG_TABLE)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert f'"{LONG_TABLE}" not comparable (refused)' in out and "its name is 64 bytes long" in out, out
    assert "identifier too long" not in out and "ERROR" not in out, out


async def test_resync_of_a_refused_table_says_why_it_cannot(tmp_path, pg_dsn):
    """The daemon never rebuilds a table it refuses (it drops the request): `syncd resync`
    says so with the reason and exits 1, rather than promise a rebuild that never comes."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE good (id INTEGER PRIMARY KEY)")
    conn.execute(f"CREATE TABLE {q(LONG_TABLE)} (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}])
    assert run_cli(cfg, "init").returncode == 1  # the long-named table is refused

    r = run_cli(cfg, "resync", "--source", "app", "--table", LONG_TABLE)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert f"'{LONG_TABLE}' is not replicated: its name is 64 bytes long" in out and "requested" not in out, out
    r = run_cli(cfg, "resync", "--source", "app", "--table", "good")
    assert r.returncode == 0 and "resync of 'good' requested" in r.stdout, r.stdout + r.stderr


async def test_an_empty_table_or_column_name_is_a_refusal_of_that_table(tmp_path, pg_dsn):
    """SQLite takes `CREATE TABLE "" (...)` and a column named "", Postgres holds no
    empty name: each such table is refused, saying why, with no promise that `syncd
    resync` rebuilds it; the file's other tables replicate."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute('CREATE TABLE "" (a TEXT)')
    conn.execute('CREATE TABLE nameless_column ("" TEXT, b INTEGER)')
    conn.execute("CREATE TABLE good (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute('INSERT INTO "" VALUES (1)')
    conn.execute("INSERT INTO nameless_column VALUES ('x', 2)")
    conn.execute("INSERT INTO good VALUES (1, 'one')")
    conn.commit()
    conn.close()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}])
    schema = run_cli(cfg, "schema")
    assert "-- refused '': its name is empty" in schema.stdout, schema.stdout
    assert "-- refused 'nameless_column': column '' is empty" in schema.stdout, schema.stdout
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    states = await table_states(pg_dsn, "app")
    assert states[""][0] == "refused" and "its name is empty" in states[""][1], states
    assert states["nameless_column"][0] == "refused" and "column '' is empty" in states["nameless_column"][1], states
    assert states["good"][0] == "streaming"
    assert await compare_table(str(db), pg_dsn, "app", "good") == []
    r = run_cli(cfg, "verify")
    out = r.stdout + r.stderr
    assert r.returncode == 1 and '"" not comparable (refused)' in out and "resync" not in out, out


async def test_a_column_named_like_a_column_kept_aside_is_the_applications(tmp_path, pg_dsn):
    """syncd keeps a column dropped in SQLite aside in Postgres as <name>__dropped_<time>.
    An application column of such a name is the application's all the same: a reload of
    its keyless table after a VACUUM renumbered the rowids leaves each row's value as
    SQLite holds it, never the value of the row that had its rowid before."""
    column = "note__dropped_20240101T000000"
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute(f"CREATE TABLE log (a TEXT, {q(column)} TEXT)")
    conn.executemany("INSERT INTO log VALUES (?, ?)", [(f"r{i}", f"n{i}") for i in range(10)])
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute(f"UPDATE log SET {q(column)} = 'changed' WHERE a = 'r5'")
        conn.execute("DELETE FROM log WHERE a IN ('r0', 'r2')")
        conn.execute("VACUUM")  # renumbers the rowids: the table is reloaded
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        for _ in range(100):
            if not await compare_keyless(str(db), pg_dsn, "app", "log"):
                break
            await asyncio.sleep(0.1)
        assert d.stop() == 0
        log = d.log()
    assert "ERROR" not in log, log[-3000:]
    assert await compare_keyless(str(db), pg_dsn, "app", "log") == []
    r = run_cli(cfg, "verify")
    assert r.returncode == 0 and 'app: "log" equal' in r.stdout, r.stdout + r.stderr
