"""`syncd verify` never says "equal" unless it is: rows are counted, not merged. Two
SQLite rows whose keys are distinct in SQLite but one key in Postgres (integer 1 and
text '1' in a column with no declared type; three spellings of one instant under a
`timestamp` override) are reported by key, each counted as missing, and the row
totals are part of the verdict."""

from __future__ import annotations

import sqlite3

from tests.support.daemon import DaemonProcess
from tests.support.sync import wait_caught_up
from tests.support.verifying import SETTLED, found, pg_fetch, tables, verify, verify_json, verify_section


async def test_integer_and_text_spellings_of_one_key_are_not_merged(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE k (id PRIMARY KEY, v TEXT)")  # no declared type: inferred text
    conn.executemany("INSERT INTO k VALUES (?, ?)", [(1, "alice-balance=100"), ("2", "x")])
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, settled=SETTLED)
        conn.execute("INSERT INTO k VALUES ('1', 'bob-balance=0')")  # a distinct key in SQLite
        conn.commit()
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, settled=SETTLED)
        assert d.stop() == 0
    assert conn.execute("SELECT count(*) FROM k").fetchone()[0] == 3

    rc, doc = verify_json(cfg, "--wait", "2")
    k = tables(doc)["k"]
    assert rc == 1 and not k["equal"], k
    if k["compared"]:  # whatever capture made of the table, verify sees the two rows
        assert found(doc, "k") >= {("missing", (1,), ()), ("missing", ("1",), ())}
        notes = [d["note"] for d in k["differences"] if tuple(d["key"]) in ((1,), ("1",))]
        assert all("one key in Postgres" in n for n in notes), notes
        out = verify(cfg, "--wait", "2")
        assert out.returncode == 1
        assert 'app: "k" DIFFERS (3 rows in SQLite, ' in out.stdout
        assert "missing in Postgres: key 1 (" in out.stdout and "missing in Postgres: key '1' (" in out.stdout


async def test_timestamp_spellings_of_one_instant_are_not_merged(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE ev (at TEXT PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO ev VALUES (?, ?)", [("2024-01-01 00:00:00", "a"), ("2024-01-02 00:00:00", "b")])
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": {"ev": {"at": "timestamp"}}}],
                      extra=verify_section())
    spellings = ["2024-01-01T00:00:00", "2024-01-01 00:00:00Z", "2024-01-02T00:00:00"]
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, settled=SETTLED)
        for s in spellings:  # one at a time: each is its own batch in the stream
            conn.execute("INSERT INTO ev VALUES (?, 'later')", (s,))
            conn.commit()
            await wait_caught_up(app_db, pg_dsn, "app", daemon=d, settled=SETTLED)
        assert d.stop() == 0

    rc, doc = verify_json(cfg, "--wait", "2")
    ev = tables(doc)["ev"]
    assert rc == 1 and not ev["equal"], ev
    if ev["compared"]:
        assert ev["rows_sqlite"] == 5
        assert ev["rows_postgres"] == (await pg_fetch(pg_dsn, "SELECT count(*) FROM app.ev"))[0][0]
        assert found(doc, "ev") == {("missing", (k,), ()) for k in
                                    ["2024-01-01 00:00:00", "2024-01-02 00:00:00", *spellings]}
        assert ev["missing"] == 5
