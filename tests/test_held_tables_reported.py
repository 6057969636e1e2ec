"""A held table is never reported as streaming or as equal. Here Postgres refuses a row
at the load (text SQLite stores that is not UTF-8): the daemon's log says the source
streams with that table held, and its consistency check says the table was not
compared, as a warning, instead of "equal" over the tables it could compare."""

from __future__ import annotations

import sqlite3

from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.sync import table_states


async def test_a_table_held_at_load_is_not_reported_streaming_or_equal(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE good (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("CREATE TABLE bad (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO good VALUES (1, 'fine'), (2, 'also fine')")
    conn.execute("INSERT INTO bad VALUES (1, 'fine'), (2, CAST(x'61ff62' AS TEXT))")  # not UTF-8
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        wait_for(lambda: "consistency check" in d.log() and "table held" in d.log(), 60,
                 "the hold and the first consistency check", d)
        lines = d.log().splitlines()
        held = next(line for line in lines if "table held" in line)
        assert "table=bad" in held and "key 2" in held, held
        assert (await table_states(pg_dsn, "app"))["bad"][0] == "held"
        assert not any("every table is streaming" in line for line in lines), "\n".join(lines)
        wait_for(lambda: 'streaming; 1 table(s) held or paused, their changes queued: "bad" (held)' in d.log(), 30,
                 "the streaming line naming the held table", d)
        check = next(line for line in d.log().splitlines() if "consistency check" in line)
        assert 'consistency check: 1 table(s) not compared: "bad" (held); 1 equal' in check, check
        assert "WARNING" in check, check
        assert d.stop() == 0
    r = run_cli(cfg, "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'app: "good" equal' in r.stdout and 'app: "bad" not comparable (held)' in r.stdout, r.stdout
