"""`syncd verify` never says "equal" unless it is: rows are counted, not merged. Two
SQLite rows whose keys are distinct in SQLite but one key in Postgres (integer 1 and
text '1' in a column with no declared type; spellings of one instant under a
`timestamp` override) are reported by key, each counted as missing, and the row
totals are part of the verdict.

Capture holds such a table today; the replicas here were merged the way an earlier
syncd merged them (each spelling applied as an upsert of the one Postgres key), and
`syncd verify` must see through that."""

from __future__ import annotations

import sqlite3

from tests.support.sync import changelog_max
from tests.support.verifying import found, pg_execute, pg_fetch, sync_and_stop, tables, verify, verify_json, \
    verify_section


async def applied_by_an_earlier_syncd(db, dsn: str, sql: str, *args) -> None:
    """Make `sql` in Postgres and move the checkpoint past every change SQLite recorded,
    as if the stream had applied them that way."""
    await pg_execute(dsn, sql, *args)
    await pg_execute(dsn, "UPDATE syncd.sources SET applied_seq = $1 WHERE source = 'app'", changelog_max(db))


async def test_integer_and_text_spellings_of_one_key_are_not_merged(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE k (id PRIMARY KEY, v TEXT)")  # no declared type: inferred text
    conn.executemany("INSERT INTO k VALUES (?, ?)", [(1, "alice-balance=100"), ("2", "x")])
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    conn.execute("INSERT INTO k VALUES ('1', 'bob-balance=0')")  # a distinct key in SQLite
    conn.commit()
    await applied_by_an_earlier_syncd(app_db, pg_dsn, "UPDATE app.k SET v = 'bob-balance=0' WHERE id = '1'")
    assert conn.execute("SELECT count(*) FROM k").fetchone()[0] == 3

    rc, doc = verify_json(cfg, "--wait", "2")
    k = tables(doc)["k"]
    assert rc == 1 and k["compared"] and not k["equal"], k
    assert (k["rows_sqlite"], k["rows_postgres"], k["missing"]) == (3, 2, 2)
    assert found(doc, "k") == {("missing", (1,), ()), ("missing", ("1",), ())}
    assert all("2 SQLite rows, keys 1, '1', are one key in Postgres" in d["note"] for d in k["differences"])

    out = verify(cfg, "--wait", "2")
    assert out.returncode == 1
    assert out.stdout.startswith('app: "k" DIFFERS (3 rows in SQLite, 2 in Postgres; ')
    assert "missing in Postgres: key 1 (" in out.stdout and "missing in Postgres: key '1' (" in out.stdout

    out = verify(cfg, "--repair", "--wait", "2")  # a replay would merge them again: not attempted
    assert out.returncode == 1
    assert "app: repair: \"k\" key 1 not repaired: 2 SQLite rows" in out.stdout
    assert (await pg_fetch(pg_dsn, "SELECT v FROM app.k WHERE id = '1'"))[0][0] == "bob-balance=0"


async def test_timestamp_spellings_of_one_instant_are_not_merged(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE ev (at TEXT PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO ev VALUES (?, ?)", [("2024-01-01 00:00:00", "a"), ("2024-01-02 00:00:00", "b")])
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": {"ev": {"at": "timestamp"}}}],
                      extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    spellings = ["2024-01-01T00:00:00", "2024-01-01 00:00:00Z", "2024-01-02T00:00:00"]
    conn.executemany("INSERT INTO ev VALUES (?, 'later')", [(s,) for s in spellings])
    conn.commit()
    await applied_by_an_earlier_syncd(app_db, pg_dsn, "UPDATE app.ev SET v = 'later'")

    rc, doc = verify_json(cfg, "--wait", "2")
    ev = tables(doc)["ev"]
    assert rc == 1 and ev["compared"] and not ev["equal"], ev
    assert (ev["rows_sqlite"], ev["rows_postgres"], ev["missing"]) == (5, 2, 5)
    assert found(doc, "ev") == {("missing", (k,), ()) for k in
                                ["2024-01-01 00:00:00", "2024-01-02 00:00:00", *spellings]}
