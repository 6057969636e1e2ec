"""After a cutover the application shapes Postgres: a TEXT key holding UUIDs may become a
`uuid` column, a code a `character(n)` one (types of the text family the way back
follows, reverse/values.family). `syncd verify` goes on comparing the table, names a row
changed in SQLite under such a key for what it is, and `--repair` writes Postgres's row
over it. Postgres has no operator between uuid and text: a check that compared the key
as text failed on every run (and with it the verification `syncd rollback` makes). And
character(n) compared as text drops the padding the way back writes into SQLite: a key
shorter than n was looked up in vain, its row called only in SQLite."""

from __future__ import annotations

import sqlite3
import uuid

from tests.support.daemon import DaemonProcess
from tests.support.sync import eventually
from tests.support.verifying import pg_execute, verify
from tests.support.way_back import backup_and_config, cut_over, tamper_sqlite, typeof, wait_back

ROWS = 400  # more than one cell of a chunk: the key is compared in ranges, not only read whole


def key(i: int) -> str:
    return str(uuid.UUID(int=i * 7919))


async def test_a_key_retyped_to_uuid_is_compared_and_repaired(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE devices (id TEXT PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO devices VALUES (?, ?)", [(key(i), f"device {i}") for i in range(ROWS)])
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        await pg_execute(pg_dsn, "ALTER TABLE app.devices ALTER COLUMN id TYPE uuid USING id::uuid")
        d.wait_log("table copied again from Postgres")  # rewritten: the way back copies it again
        await pg_execute(pg_dsn, "UPDATE app.devices SET name = 'renamed' WHERE id = $1::uuid", key(5))

        async def arrived() -> bool:
            return typeof(db, "SELECT name FROM devices WHERE id = ?", key(5)) == [("renamed",)]

        await eventually(arrived, 30, "the change to reach SQLite", daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)

        out = verify(cfg, "--wait", "5")
        assert out.returncode == 0, out.stdout + out.stderr
        assert f'app: "devices" equal ({ROWS} rows in SQLite, {ROWS} in Postgres' in out.stdout, out.stdout

        tamper_sqlite(db, f"UPDATE devices SET name = 'tampered' WHERE id = '{key(7)}'")
        out = verify(cfg, "--wait", "2")
        assert out.returncode == 1, out.stdout + out.stderr
        assert f"app: \"devices\" different: key '{key(7)}': column \"name\"" in out.stdout.splitlines(), out.stdout

        out = verify(cfg, "--wait", "5", "--repair")
        assert out.returncode == 0, out.stdout + out.stderr
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT name FROM devices WHERE id = ?", key(7)) == [("device 7",)]
        assert verify(cfg, "--wait", "2").returncode == 0
        assert d.stop() == 0

    # With no daemon to bring it back, a change made in Postgres is in flight: pending, not a failure.
    await pg_execute(pg_dsn, "UPDATE app.devices SET name = 'moved' WHERE id = $1::uuid", key(9))
    out = verify(cfg, "--wait", "1")
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"app: \"devices\" pending: key '{key(9)}'" in out.stdout, out.stdout


async def test_a_key_retyped_to_character_is_looked_up_padded(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE codes (code TEXT PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO codes VALUES (?, ?)", [(f"c{i:07d}", f"code {i}") for i in range(ROWS)])
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        await pg_execute(pg_dsn, "ALTER TABLE app.codes ALTER COLUMN code TYPE character(8)")
        d.wait_log("table copied again from Postgres")  # rewritten: the way back copies it again
        await pg_execute(pg_dsn, "INSERT INTO app.codes VALUES ('ab', 'short')")

        async def arrived() -> bool:
            return typeof(db, "SELECT code FROM codes WHERE name = 'short'") == [("ab      ",)]

        await eventually(arrived, 30, "the new row to reach SQLite", daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert verify(cfg, "--wait", "5").returncode == 0

        tamper_sqlite(db, "UPDATE codes SET name = 'tampered' WHERE code = 'ab      '")
        out = verify(cfg, "--wait", "2")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "app: \"codes\" different: key 'ab      ': column \"name\"" in out.stdout.splitlines(), out.stdout

        out = verify(cfg, "--wait", "5", "--repair")
        assert out.returncode == 0, out.stdout + out.stderr
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT name FROM codes WHERE code = 'ab      '") == [("short",)]


def keys_and_codes(db, keys: list[str]) -> None:
    """`t`, keyed by `keys` as TEXT, and `codes`, keyed by a short code and a full one."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE codes (code TEXT PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(k, f"v{i}") for i, k in enumerate(keys)])
    conn.executemany("INSERT INTO codes VALUES (?, ?)", [("c1", "short"), ("c2345678", "full")])
    conn.commit()
    conn.close()


async def cut_over_and_retype(cfg, db, pg_dsn: str, d) -> None:
    """The cutover; then the application makes t's key uuid and codes' key character(8)
    in Postgres, and the way back copies each table again."""
    await cut_over(cfg, db, pg_dsn, daemon=d)
    await wait_back(cfg, db, pg_dsn, daemon=d)
    await pg_execute(pg_dsn, "ALTER TABLE app.t ALTER COLUMN id TYPE uuid USING id::uuid")
    d.wait_log('table copied again from Postgres: 10 row(s)')
    await pg_execute(pg_dsn, "ALTER TABLE app.codes ALTER COLUMN code TYPE character(8)")
    d.wait_log('table copied again from Postgres: 2 row(s)')
    await wait_back(cfg, db, pg_dsn, daemon=d)


async def test_rows_under_the_old_spelling_of_a_retyped_key_leave_sqlite(tmp_path, make_config, pg_dsn):
    """The application's TEXT key held UUIDs in capitals (or codes shorter than the
    character(n) they become): Postgres now spells every key its own way, and the way back
    copies the table again in that spelling. The rows under the old spelling are keys
    Postgres no longer has: they leave SQLite, which ends with exactly Postgres's rows."""
    db = tmp_path / "app.db"
    upper = [key(i).upper() for i in range(10)]
    keys_and_codes(db, upper)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over_and_retype(cfg, db, pg_dsn, d)

        assert sorted(typeof(db, "SELECT id, v FROM t")) == sorted((k.lower(), f"v{i}") for i, k in enumerate(upper))
        assert sorted(typeof(db, "SELECT code, name FROM codes")) == [("c1      ", "short"), ("c2345678", "full")]
        out = verify(cfg, "--wait", "5")
        assert out.returncode == 0, out.stdout + out.stderr
        assert 'app: "t" equal (10 rows in SQLite, 10 in Postgres' in out.stdout, out.stdout
        assert d.stop() == 0


async def test_repair_removes_rows_under_the_old_spelling_of_a_retyped_key(tmp_path, make_config, pg_dsn):
    """Rows under a spelling Postgres's type no longer gives a key (a uuid in capitals, a
    code without the padding of its character(n)) are only in SQLite: `--repair` removes
    them, and leaves the row Postgres's spelling names."""
    db = tmp_path / "app.db"
    keys_and_codes(db, [key(i) for i in range(10)])
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over_and_retype(cfg, db, pg_dsn, d)
        assert verify(cfg, "--wait", "5").returncode == 0

        tamper_sqlite(db, f"INSERT INTO t VALUES ('{key(3).upper()}', 'stale')")
        tamper_sqlite(db, "INSERT INTO codes VALUES ('c1', 'stale')")
        out = verify(cfg, "--wait", "2")
        assert out.returncode == 1, out.stdout + out.stderr
        assert f'app: "t" only in SQLite: key \'{key(3).upper()}\'' in out.stdout.splitlines(), out.stdout
        assert 'app: "codes" only in SQLite: key \'c1\'' in out.stdout.splitlines(), out.stdout

        out = verify(cfg, "--wait", "5", "--repair")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "copied again in full from Postgres by the way back" in out.stdout, out.stdout
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert sorted(typeof(db, "SELECT id, v FROM t")) == sorted((key(i), f"v{i}") for i in range(10))
        assert sorted(typeof(db, "SELECT code, name FROM codes")) == [("c1      ", "short"), ("c2345678", "full")]
        assert verify(cfg, "--wait", "2").returncode == 0
        assert d.stop() == 0


async def test_repair_removes_a_row_whose_key_postgres_type_cannot_hold(tmp_path, make_config, pg_dsn):
    """A SQLite row whose key is no uuid at all, in a table whose key Postgres made uuid:
    no Postgres row can have it, and `--repair` removes it (the way back copies the table
    again, and that copy asks Postgres about every SQLite key)."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(key(i), f"v{i}") for i in range(10)])
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        await pg_execute(pg_dsn, "ALTER TABLE app.t ALTER COLUMN id TYPE uuid USING id::uuid")
        d.wait_log('table copied again from Postgres: 10 row(s)')
        await wait_back(cfg, db, pg_dsn, daemon=d)

        tamper_sqlite(db, "INSERT INTO t VALUES ('not-a-uuid', 'stale')")
        out = verify(cfg, "--wait", "2")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "app: \"t\" only in SQLite: key 'not-a-uuid'" in out.stdout.splitlines(), out.stdout

        out = verify(cfg, "--wait", "5", "--repair")
        assert out.returncode == 0, out.stdout + out.stderr
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert sorted(typeof(db, "SELECT id, v FROM t")) == sorted((key(i), f"v{i}") for i in range(10))
        assert verify(cfg, "--wait", "2").returncode == 0
        assert d.stop() == 0
