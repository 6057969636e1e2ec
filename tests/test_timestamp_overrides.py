"""A date column given a timestamp type by a `[sources.columns]` override (as
docs/cutover.md suggests for dates the new application queries as `timestamptz`):
every value SQLite holds arrives as the instant it names, or the table is held
naming it. Never another instant, and `syncd verify` never calls one equal."""

from __future__ import annotations

import datetime as dt
import sqlite3

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_rows, table_states, wait_caught_up

UTC = dt.timezone.utc
SETTLED = ("streaming", "refused", "held")


async def _carry(app_db, make_config, pg_dsn, tmp_path, value, pgtype):
    """Load one row whose `at` holds `value` through a real daemon, with `at` overridden
    to `pgtype`; (table state, what Postgres holds, `syncd verify`'s result)."""
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, at DATETIME)")
    conn.execute("INSERT INTO events VALUES (1, " + value + ")")
    conn.commit()
    stored = conn.execute("SELECT at, typeof(at) FROM events").fetchone()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": {"events": {"at": pgtype}}}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, settled=SETTLED)
        assert d.stop() == 0
    state = (await table_states(pg_dsn, "app"))["events"]
    held = await pg_rows(pg_dsn, "SELECT at FROM app.events WHERE id = 1")
    verify = run_cli(cfg, "verify")
    return stored, state, (held[0][0] if held else None), verify


def _verdict(stored, state, pg_value, expected, verify) -> str | None:
    """Why this outcome breaks the promise, or None: the row is held (named), or
    Postgres holds the instant SQLite's value names."""
    if state[0] == "held":
        return None
    if pg_value is not None and abs(pg_value - expected) <= dt.timedelta(microseconds=1):
        return None
    return (f"SQLite holds {stored[0]!r} ({stored[1]}), the instant {expected.isoformat()}; "
            f"Postgres holds {pg_value!r} with table state {state[0]!r}, and `syncd verify` exited "
            f"{verify.returncode}: {verify.stdout.strip()[-300:]!r}")


async def test_a_fraction_finer_than_microseconds_is_not_cut(app_db, make_config, pg_dsn, tmp_path):
    # Seven fraction digits: .NET's round-trip format, which Entity Framework Core writes
    # for a DateTime in SQLite. Postgres keeps microseconds: the 100 ns digit cannot arrive.
    stored, state, pg_value, verify = await _carry(app_db, make_config, pg_dsn, tmp_path,
                                                   "'2026-11-23 10:00:00.1234567'", "timestamp")
    if state[0] != "held":
        # Postgres cannot hold 10:00:00.1234567; whatever it holds is another instant.
        assert False, (f"SQLite holds {stored[0]!r}; Postgres holds {pg_value!r} with table state {state[0]!r} "
                       f"(the 100 ns digit is gone), and `syncd verify` exited {verify.returncode}: "
                       f"{verify.stdout.strip()[-300:]!r}")


async def test_a_julian_day_is_not_read_as_seconds_since_1970(app_db, make_config, pg_dsn, tmp_path):
    # julianday() writes a REAL counting days since noon, 4714 BC; SQLite's own date
    # functions read a number so stored as a julian day. As seconds since 1970 the same
    # number is a moment in late January 1970.
    moment = dt.datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    stored, state, pg_value, verify = await _carry(app_db, make_config, pg_dsn, tmp_path,
                                                   "julianday('2026-11-23 10:00:00')", "timestamptz")
    assert stored[1] == "real"
    why = _verdict(stored, state, pg_value, moment, verify)
    assert why is None, why
    if state[0] == "held":
        assert "julian" in (state[1] or ""), state


async def test_an_offset_that_takes_the_instant_past_the_years_python_holds_holds_only_its_table(
        app_db, make_config, pg_dsn, tmp_path):
    # 0001-01-01T00:30+01:00 is 31 December of the year 0 in UTC, 9999-12-31T23:30-01:00
    # the year 10000: no Python datetime holds either instant. Each holds its table,
    # naming key and column, and the other tables stream on.
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE events (id INTEGER PRIMARY KEY, at DATETIME, atz DATETIME);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
        INSERT INTO events VALUES (1, '2026-11-23T10:00:00+01:00', '2026-11-23T10:00:00+01:00');
    """)
    cfg = make_config([{"name": "app", "path": str(app_db),
                        "columns": {"events": {"at": "timestamp", "atz": "timestamptz"}}}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        for column, value in (("at", "0001-01-01T00:30:00+01:00"), ("atz", "9999-12-31T23:30:00-01:00")):
            conn.execute(f"UPDATE events SET {column} = ? WHERE id = 1", (value,))
            conn.execute("INSERT INTO notes (body) VALUES (?)", (column,))
            await wait_caught_up(app_db, pg_dsn, "app", daemon=d, settled=SETTLED)
            state, why = (await table_states(pg_dsn, "app"))["events"]
            assert state == "held" and f'column "{column}"' in why and "key 1" in why, (state, why)
            assert await pg_rows(pg_dsn, "SELECT count(*) FROM app.notes WHERE body = $1", column) == [(1,)]
            conn.execute(f"UPDATE events SET {column} = '2026-11-24T10:00:00+01:00' WHERE id = 1")
            await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert "unexpected error" not in d.own_log()
        assert d.stop() == 0
    assert run_cli(cfg, "verify").returncode == 0
