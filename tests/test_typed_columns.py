"""Date columns become typed in Postgres (date, timestamp, timestamptz) only when every
stored value converts exactly and back in the one spelling the column uses, proven
value by value; the spelling is recorded for the way back, and syncd keeps using the
type afterwards. A column with values that do not fit stays text, named with sample
keys."""

from __future__ import annotations

import datetime as dt
import sqlite3

import asyncpg
import pytest

from syncd import parity
from syncd.parity import dates
from syncd.types import PgType
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import first_source, pg_rows, wait_caught_up


def verdict(values, declared="DATETIME", override=None):
    audit = dates.ColumnAudit("t", "c", declared)
    for i, v in enumerate(values, start=1):
        audit.add((i,), v)
    return audit.verdict(override)


@pytest.mark.parametrize("values, spec, pgtype", [
    (["2024-01-02 10:00:00", "2024-02-29 23:59:59"], "%Y-%m-%d %H:%M:%S", PgType.TIMESTAMP),
    (["2024-01-02T10:00:00", "2024-01-02T10:00:01"], "%Y-%m-%dT%H:%M:%S", PgType.TIMESTAMP),
    (["2024-01-02 10:00", None], "%Y-%m-%d %H:%M", PgType.TIMESTAMP),
    (["2024-01-02 10:00:00.123", "2024-01-02 10:00:00.120"], "%Y-%m-%d %H:%M:%S.%3f", PgType.TIMESTAMP),
    # Python's sqlite3 adapter writes isoformat(" "): microseconds only when not zero
    (["2024-01-02 10:00:00", "2024-01-02 10:00:00.000001"], "%Y-%m-%d %H:%M:%S[.%6f]", PgType.TIMESTAMP),
    (["2024-01-02T10:00:00Z", "2024-01-02T11:00:00Z"], "%Y-%m-%dT%H:%M:%SZ", PgType.TIMESTAMPTZ),
    (["2024-01-02 10:00:00+02:00"], "%Y-%m-%d %H:%M:%S+02:00", PgType.TIMESTAMPTZ),
    ([1700000000, 0, -86400], "unixepoch", PgType.TIMESTAMPTZ),
    (["2024-01-02", "1999-12-31"], "%Y-%m-%d", PgType.DATE),
])
def test_a_column_in_one_spelling_gets_the_type_its_values_name(values, spec, pgtype):
    v = verdict(values)
    assert (v.format.spec, v.pgtype, v.misfits) == (spec, pgtype, 0)
    for value in values:
        if value is not None:
            assert dates.render(dates.python_value(value, v.format, pgtype), v.format) == value


@pytest.mark.parametrize("values, why, keys", [
    (["2024-01-02 10:00:00", "2024-01-02T10:00:00", "2024-01-03 10:00:00"], "spelled %Y-%m-%dT%H:%M:%S", [(2,)]),
    (["2024-02-30 10:00:00", "2024-01-02 10:00:00"], "day is out of range", [(1,)]),
    (["2024-01-02 10:00:00", "yesterday", "2024-01-03 10:00:00"], "not a date", [(2,)]),
    (["2024-01-02T10:00:00Z", "2024-01-02T10:00:00+02:00", "2024-01-02T10:00:00Z"], "+02:00", [(2,)]),
    (["2024-01-02 10:00:00", 2460000.5, "2024-01-03 10:00:00"], "julian", [(2,)]),
    (["2024-01-02 10:00:00.1234567", "2024-01-02 10:00:00", "2024-01-02 10:00:00"], "not a date", [(1,)]),
    (["2024-01-02 24:00:00", "2024-01-02 10:00:00"], "hour", [(1,)]),
])
def test_a_value_that_does_not_come_back_exactly_keeps_the_column_text(values, why, keys):
    v = verdict(values)
    assert v.pgtype is None and v.misfits == len(keys)
    assert why in v.why or why in repr(v.example), (v.why, v.example)
    assert v.keys == keys


def test_integers_that_are_all_yyyymmdd_dates_are_not_read_as_seconds_since_1970():
    v = verdict([20240105, 19991231, None], declared="DATE")
    assert (v.pgtype, v.format, v.why, v.keys, v.example) == (None, None, dates.YYYYMMDD, [(1,), (2,)], 20240105)
    # sentinels and typos kept beside YYYYMMDD dates are no seconds since 1970 either
    for other in (0, 99999999, 19000000, 20240230, 20230229, 7, -1):
        v = verdict([20240105, other, 19991231], declared="DATE")
        assert (v.pgtype, v.format, v.why, v.example) == (None, None, dates.YYYYMMDD, 20240105), other
    # integers beyond 8 digits (epochs after 1973-03-03 or before 1966-10-31) ten times as many
    # as the YYYYMMDD dates: the column is an epoch (an 8-digit epoch, 1970-1973, may read as a date)
    for other in (1714557600, 100000000, -100000000):
        v = verdict([20240105, 0] + [other] * 10, declared="DATE")
        assert (v.format.spec, v.pgtype) == ("unixepoch", PgType.TIMESTAMPTZ), other
    # fewer: a stray sentinel beyond 8 digits (2147483647) among dates is no epoch column
    for stray in ([2147483647], [-100000000] * 9, [1714557600] * 19):
        v = verdict([20240105, 19991231] + stray, declared="DATE")
        assert (v.pgtype, v.format, v.why, v.example) == (None, None, dates.YYYYMMDD, 20240105), stray
    # no YYYYMMDD date at all: integers are read as seconds since 1970, as ever
    v = verdict([0, 99999999, 20240230], declared="DATE")
    assert (v.format.spec, v.pgtype) == ("unixepoch", PgType.TIMESTAMPTZ)


def test_the_cutovers_reading_of_a_column_past_its_sample_finds_an_epoch_among_yyyymmdd_integers(tmp_path):
    from syncd.config import SourceSettings
    from syncd.sqlite.introspect import introspect

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, day DATE, at DATE, due DATE, far DATE)")
    conn.executemany("INSERT INTO t VALUES (?, 20240105, 20240105, 20240105, 20240105)",
                     [(i,) for i in range(dates.QUICK_SAMPLE)])
    # past the sample: epochs ten times as many as the dates in "at" and "far", one stray
    # integer beyond 8 digits in "day", sentinels and a typo (no epochs) in "due"
    n = dates.QUICK_SAMPLE
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", [
        (n, 2147483647, 1714557600, 0, -9223372036854775808),
        (n + 1, 20231231, 20231231, 99999999, 20231231),
        (n + 2, 20231231, 20231231, 20240230, 20231231)])
    conn.executemany("INSERT INTO t (id, at, far) VALUES (?, ?, ?)",
                     [(i, 1714557600 + i, -100000000 - i) for i in range(n + 3, n + 3 + 10 * (n + 2))])
    conn.commit()
    conn.isolation_level = None  # introspect opens its own transaction
    spec = introspect(conn, SourceSettings(name="app", path=str(db))).tables["t"]
    got = dates.audit_quick(conn, spec, ["day", "at", "due", "far"])
    assert (got["day"].pgtype, got["day"].why) == (None, dates.YYYYMMDD)
    assert (got["due"].pgtype, got["due"].why) == (None, dates.YYYYMMDD)
    for name in ("at", "far"):
        assert (got[name].format.spec, got[name].pgtype, got[name].misfits) == ("unixepoch", PgType.TIMESTAMPTZ, 0)


def test_the_cutovers_reading_finds_yyyymmdd_dates_past_a_sample_of_sentinels(tmp_path):
    """Old rows holding a sentinel (0, or 2147483647 for "never") fill the cutover's
    sample; the YYYYMMDD dates after them make the column as ambiguous as the full audit
    finds it, not an epoch."""
    from syncd.config import SourceSettings
    from syncd.sqlite.introspect import introspect

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    n = dates.QUICK_SAMPLE
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, day DATE, at DATE, never DATE)")
    conn.executemany("INSERT INTO t VALUES (?, 0, 0, 2147483647)", [(i,) for i in range(n)])
    conn.execute("INSERT INTO t VALUES (?, 20240105, 20240105, NULL)", (n,))
    conn.execute("INSERT INTO t VALUES (?, 20240230, 1714557600, NULL)", (n + 1,))
    conn.executemany("INSERT INTO t VALUES (?, 0, ?, NULL)", [(n + i, 1714557600 + i) for i in range(2, 11)])
    # more dates past the sample than a tenth of its sentinels
    conn.executemany("INSERT INTO t (id, never) VALUES (?, 20240105)", [(i,) for i in range(n + 11, n + 12 + n // 10)])
    conn.commit()
    conn.isolation_level = None  # introspect opens its own transaction
    spec = introspect(conn, SourceSettings(name="app", path=str(db))).tables["t"]
    got = dates.audit_quick(conn, spec, ["day", "at", "never"])
    assert (got["day"].pgtype, got["day"].why, got["day"].example) == (None, dates.YYYYMMDD, 20240105)
    assert (got["never"].pgtype, got["never"].why, got["never"].example) == (None, dates.YYYYMMDD, 20240105)
    assert (got["at"].format.spec, got["at"].pgtype, got["at"].misfits) == ("unixepoch", PgType.TIMESTAMPTZ, 0)


def test_the_timestamp_flavour_can_be_overridden():
    assert verdict(["2024-01-02 10:00:00"], override=PgType.TIMESTAMPTZ).pgtype is PgType.TIMESTAMPTZ
    assert verdict(["2024-01-02T10:00:00Z"], override=PgType.TIMESTAMP).pgtype is PgType.TIMESTAMP
    assert verdict(["2024-01-02"], override=PgType.TIMESTAMP).pgtype is PgType.DATE
    # naive text read as UTC, and back
    f = dates.parse_spec("%Y-%m-%d %H:%M:%S")
    v = dates.python_value("2024-01-02 10:00:00", f, PgType.TIMESTAMPTZ)
    assert v == dt.datetime(2024, 1, 2, 10, tzinfo=dt.timezone.utc) and dates.render(v, f) == "2024-01-02 10:00:00"


SCHEMA = """
CREATE TABLE event (id INTEGER PRIMARY KEY, at DATETIME, day DATE, stamp TIMESTAMP, epoch DATETIME,
                    messy DATETIME, note TEXT, at_default DATETIME DEFAULT CURRENT_TIMESTAMP);
INSERT INTO event (id, at, day, stamp, epoch, messy, note) VALUES
  (1, '2024-01-02 10:00:00', '2024-01-02', '2024-01-02T10:00:00Z', 1700000000, '2024-01-02 10:00:00', 'a'),
  (2, '2024-03-04 05:06:07.250000', '2024-03-04', '2024-03-04T05:06:07Z', 1700000060, 'soon', 'b'),
  (3, NULL, NULL, NULL, NULL, '2024-01-02 10:00:00', 'c');
"""


async def test_the_cutover_types_date_columns_and_records_their_spelling(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript(SCHEMA)
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"stream": {"schema_check_interval_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    settings, source, specs = first_source(cfg)
    pg = await asyncpg.connect(pg_dsn)
    try:
        async with pg.transaction():
            result = await parity.finalize(pg, settings, source, specs)
        types = dict(await pg.fetch("SELECT column_name, data_type FROM information_schema.columns "
                                    "WHERE table_schema = 'app' AND table_name = 'event'"))
        assert types == {"id": "bigint", "at": "timestamp without time zone", "day": "date",
                         "stamp": "timestamp with time zone", "epoch": "timestamp with time zone", "messy": "text",
                         "note": "text", "at_default": "timestamp without time zone"}
        recorded = {r[0]: (r[1], r[2]) for r in await pg.fetch(
            "SELECT column_name, pgtype, sqlite_format FROM syncd.columns WHERE source = 'app'")}
        assert recorded == {"at": ("timestamp", "%Y-%m-%d %H:%M:%S[.%6f]"), "day": ("date", "%Y-%m-%d"),
                            "stamp": ("timestamptz", "%Y-%m-%dT%H:%M:%SZ"), "epoch": ("timestamptz", "unixepoch"),
                            "at_default": ("timestamp", "%Y-%m-%d %H:%M:%S")}
        messy = next(o.detail for o in result.not_created if o.name == "messy")
        assert "1 of 3 value(s) do not convert exactly and back" in messy and "keys 2" in messy
        row = await pg.fetchrow("SELECT at, day, stamp, epoch FROM app.event WHERE id = 2")
        assert row["at"] == dt.datetime(2024, 3, 4, 5, 6, 7, 250000)
        assert row["day"] == dt.date(2024, 3, 4)
        assert row["epoch"] == dt.datetime(2023, 11, 14, 22, 14, 20, tzinfo=dt.timezone.utc)
        # SQLite's CURRENT_TIMESTAMP default follows the type
        await pg.execute("INSERT INTO app.event (id, note) VALUES (100, 'x')")
        assert isinstance(await pg.fetchval("SELECT at_default FROM app.event WHERE id = 100"), dt.datetime)
        await pg.execute("DELETE FROM app.event WHERE id = 100")
    finally:
        await pg.close()
    # The forward stream again (after a rollback): syncd keeps the typed columns as they
    # are, converts new SQLite values to them, and verification agrees.
    conn.execute("INSERT INTO event (id, at, day, stamp, epoch, messy) VALUES "
                 "(4, '2025-06-07 08:09:10', '2025-06-07', '2025-06-07T08:09:10Z', 1750000000, 'x')")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert "reloading" not in d.log() and "retyped" not in d.log()
        assert await pg_rows(pg_dsn, "SELECT at, day FROM app.event WHERE id = 4") == [
            (dt.datetime(2025, 6, 7, 8, 9, 10), dt.date(2025, 6, 7))]
        assert d.stop() == 0
    out = run_cli(cfg, "verify")
    assert out.returncode == 0, out.stdout + out.stderr


async def test_typed_columns_during_dual_write_when_asked(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript(SCHEMA)
    cfg = make_config([{"name": "app", "path": str(app_db)}],
                      sections={"cutover": {"typed_columns": "dual-write", "timestamps": "timestamptz"},
                                "stream": {"schema_check_interval_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log('column "at" is timestamptz now')
        conn.execute("INSERT INTO event (id, at, day) VALUES (5, '2025-01-01 00:00:00', '2025-01-01')")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT at, day FROM app.event WHERE id = 5") == [
            (dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc), dt.date(2025, 1, 1))]
        assert await pg_rows(pg_dsn, "SELECT data_type FROM information_schema.columns WHERE table_schema = 'app' "
                                     "AND table_name = 'event' AND column_name = 'messy'") == [("text",)]
        assert d.stop() == 0
    out = run_cli(cfg, "verify")
    assert out.returncode == 0, out.stdout + out.stderr


async def test_a_retype_past_the_statement_timeout_leaves_the_columns_text_and_streaming_goes_on(
        app_db, make_config, pg_dsn, tmp_path):
    # Someone's long transaction holds the table: the ALTER waits, and the statement
    # timeout (2 s, before the 5 s lock bound) cancels it. The columns stay text, said in
    # the log as what it is (not as Postgres unreachable), and the source streams on.
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    conn.executescript("CREATE TABLE visit (id INTEGER PRIMARY KEY, at DATETIME);"
                       "INSERT INTO visit VALUES (1, '2024-01-02 10:00:00');"
                       "CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT);")
    plain = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(plain, tmp_path / "one.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    cfg = make_config([{"name": "app", "path": str(app_db)}],
                      sections={"cutover": {"typed_columns": "dual-write"}, "postgres": {"statement_timeout_seconds": 2},
                                "stream": {"schema_check_interval_seconds": 1}})
    holder = await asyncpg.connect(pg_dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("LOCK TABLE app.event, app.visit IN ROW EXCLUSIVE MODE")
        with DaemonProcess(cfg, tmp_path / "two.log") as d:
            d.wait_log("stay text: retyping them ran over", timeout=60)
            conn.execute("INSERT INTO other VALUES (1, 'while event is locked')")
            await wait_caught_up(app_db, pg_dsn, "app", daemon=d, timeout=60)
            assert await pg_rows(pg_dsn, "SELECT v FROM app.other") == [("while event is locked",)]
            assert "unreachable" not in d.log() and "Traceback" not in d.log()
            # the first rewrite over the timeout ends the pass: one step spends one timeout at most
            assert d.log().count("stay text: retyping them ran over") == 1
            assert d.stop() == 0
        await tx.rollback()
    finally:
        await holder.close()
    assert await pg_rows(pg_dsn, "SELECT data_type FROM information_schema.columns WHERE table_schema = 'app' "
                                 "AND table_name = 'event' AND column_name = 'day'") == [("text",)]


async def test_the_way_back_writes_typed_dates_in_the_applications_spelling(tmp_path, make_config, pg_dsn):
    """After the cutover the application writes typed dates in Postgres; SQLite receives
    them spelled as the application spelled them (a fixed offset, a 'T', an optional
    fraction, an epoch), and after a rollback both sides verify equal."""
    from tests.support.way_back import backup_and_config, cut_over, typeof, wait_back

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE visit (id INTEGER PRIMARY KEY, local DATETIME, zoned DATETIME, iso DATETIME, epoch DATETIME,
                            day DATE);
        INSERT INTO visit VALUES (1, '2026-11-01 10:00:00', '2026-11-01 10:00:00+02:00', '2026-11-01T10:00:00',
                                  1793520000, '2026-11-01'),
                                 (2, '2026-11-02 11:30:00.250000', '2026-11-02 11:30:00+02:00',
                                  '2026-11-02T11:30:00.000001', 1793610000, '2026-11-02');
    """)
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        formats = dict(await pg_rows(pg_dsn, "SELECT column_name, sqlite_format FROM syncd.columns "
                                             "WHERE source = 'app' AND table_name = 'visit'"))
        assert formats == {"local": "%Y-%m-%d %H:%M:%S[.%6f]", "zoned": "%Y-%m-%d %H:%M:%S+02:00",
                           "iso": "%Y-%m-%dT%H:%M:%S[.%6f]", "epoch": "unixepoch", "day": "%Y-%m-%d"}
        utc = dt.timezone.utc
        await pg_rows(pg_dsn, "INSERT INTO app.visit VALUES (3, $1, $2, $3, $4, $5)",
                      dt.datetime(2026, 12, 1, 9, 15), dt.datetime(2026, 12, 1, 7, 15, tzinfo=utc),
                      dt.datetime(2026, 12, 1, 9, 15, 0, 500), dt.datetime(2026, 12, 1, tzinfo=utc),
                      dt.date(2026, 12, 1))
        # a fraction the zoned spelling never had: kept, in the same offset
        await pg_rows(pg_dsn, "UPDATE app.visit SET zoned = $1 WHERE id = 1",
                      dt.datetime(2026, 11, 1, 8, 0, 0, 750000, tzinfo=utc))
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT id, local, zoned, iso, epoch, day FROM visit ORDER BY id") == [
            (1, "2026-11-01 10:00:00", "2026-11-01 10:00:00.750000+02:00", "2026-11-01T10:00:00", 1793520000,
             "2026-11-01"),
            (2, "2026-11-02 11:30:00.250000", "2026-11-02 11:30:00+02:00", "2026-11-02T11:30:00.000001",
             1793610000, "2026-11-02"),
            (3, "2026-12-01 09:15:00", "2026-12-01 09:15:00+02:00", "2026-12-01T09:15:00.000500", 1796083200,
             "2026-12-01")]
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0 and "verified equal" in r.stdout, r.stdout + r.stderr
        assert d.stop() == 0
    out = run_cli(cfg, "verify")
    assert out.returncode == 0, out.stdout + out.stderr


def test_schema_names_text_columns_that_hold_only_dates_and_the_override_that_types_them(tmp_path, make_config):
    # Only columns declared DATE, DATETIME or TIMESTAMP are typed; an application that
    # declared its dates TEXT would meet them as text in Postgres (an ORM's datetime
    # refused there). `syncd schema` names each such column with the override to set.
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT DEFAULT CURRENT_TIMESTAMP, day TEXT,
                             name TEXT, n INTEGER, at_utc TEXT);
        INSERT INTO events (created_at, day, name, n, at_utc) VALUES
            ('2026-11-01 10:00:00', '2026-11-01', 'a', 1733443200, '2026-11-01T10:00:00Z'),
            ('2026-11-02 11:30:00', '2026-11-02', '2026-11-02 and more', 1733443201, '2026-11-02T11:30:00Z');
    """)
    conn.close()
    source = {"name": "app", "path": str(db)}
    out = run_cli(make_config([source]), "schema")
    assert out.returncode == 0, out.stdout + out.stderr
    notes = [line for line in out.stdout.splitlines() if "stays text in Postgres" in line]
    assert len(notes) == 3, out.stdout
    assert any('"created_at"' in line and '[sources.columns."events"] created_at = "timestamp"' in line
               for line in notes), notes
    assert any('"day"' in line and '[sources.columns."events"] day = "date"' in line for line in notes), notes
    assert any('"at_utc"' in line and 'at_utc = "timestamptz"' in line for line in notes), notes
    assert not any('"name"' in line or '"n"' in line for line in notes), notes
    # once the override is set, the column is typed and nothing is said of it
    source["columns"] = {"events": {"created_at": "timestamp", "day": "date", "at_utc": "timestamptz"}}
    out = run_cli(make_config([source]), "schema")
    assert out.returncode == 0 and "stays text in Postgres" not in out.stdout, out.stdout
    assert '"created_at" timestamp' in out.stdout, out.stdout



def test_schema_says_nothing_of_a_date_column_set_to_text_under_another_case(tmp_path, make_config):
    """[sources.columns] names columns as SQLite does, A-Z in any case: a column of
    dates the user set to text as "DAY" is the user's choice, not a column to name."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE events (id INTEGER PRIMARY KEY, day TEXT);
        INSERT INTO events (day) VALUES ('2026-11-01'), ('2026-11-02');
    """)
    conn.close()
    source = {"name": "app", "path": str(db), "columns": {"events": {"DAY": "text"}}}
    out = run_cli(make_config([source]), "schema")
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"day" text' in out.stdout and "stays text in Postgres" not in out.stdout, out.stdout

async def test_a_utc_offset_postgres_cannot_read_keeps_the_column_text_from_the_dry_run_on(tmp_path, make_config,
                                                                                             pg_dsn):
    """Postgres reads UTC offsets up to 15:59 either way. A column spelled with a wider
    one (+16:00) cannot become timestamptz: the dry run and `syncd schema` say so, with
    the reason, as the cutover does, instead of promising the type; a column at +15:59
    is typed."""
    from tests.support.way_back import backup_and_config

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE ev (id INTEGER PRIMARY KEY, far DATETIME, near DATETIME);
        INSERT INTO ev VALUES (1, '2024-01-02 10:00:00+16:00', '2024-01-02 10:00:00+15:59'),
                              (2, '2024-01-02 11:00:00+16:00', '2024-01-02 11:00:00+15:59');
    """)
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0  # the cutover's checklist wants a clean verification
        schema = run_cli(cfg, "schema")
        assert schema.returncode == 0, schema.stdout + schema.stderr
        assert '-- cutover: column "near" DATETIME' in schema.stdout, schema.stdout
        assert '-- cutover: column "far"' not in schema.stdout, schema.stdout
        assert '-- NOT CARRIED: column "far" DATETIME: kept as text' in schema.stdout and "+16:00" in schema.stdout
        dry = run_cli(cfg, "cutover", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert 'will type ev: column "near" DATETIME as timestamptz' in dry.stdout, dry.stdout
        assert 'will type ev: column "far"' not in dry.stdout, dry.stdout
        assert 'will not carry ev: column "far" DATETIME: kept as text' in dry.stdout, dry.stdout
        cut = run_cli(cfg, "cutover")
        assert cut.returncode == 0, cut.stdout + cut.stderr
        assert 'NOT created: ev: column "far" DATETIME as "far": kept as text' in cut.stdout, cut.stdout
        assert d.stop() == 0
    assert await pg_rows(pg_dsn, "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                                 "attrelid = 'app.ev'::regclass AND attname IN ('far', 'near') ORDER BY attname") == [
        ("far", "text"), ("near", "timestamp with time zone")]


async def test_a_date_column_a_unique_index_reads_ignoring_case_stays_text_and_the_others_are_typed(
        tmp_path, make_config, pg_dsn):
    """A unique index over a date column under NOCASE (CREATE UNIQUE INDEX ... (z COLLATE
    NOCASE)) needs the column to stay text: Postgres compares ignoring case only text.
    The dry run says so instead of promising a type, and the table's other date columns
    are typed at cutover as promised, the index made unique."""
    from tests.support.way_back import backup_and_config

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE ev (id INTEGER PRIMARY KEY, day DATE, at DATETIME);
        CREATE UNIQUE INDEX ev_at ON ev (at COLLATE NOCASE);
        INSERT INTO ev VALUES (1, '2024-01-02', '2024-01-02T10:00:00Z'), (2, '2024-01-03', '2024-01-03T10:00:00Z');
    """)
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0  # the cutover's checklist wants a clean verification
        dry = run_cli(cfg, "cutover", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert 'will type ev: column "day" DATE as date' in dry.stdout, dry.stdout
        assert 'will type ev: column "at"' not in dry.stdout, dry.stdout
        assert 'will not carry ev: column "at" DATETIME: kept as text' in dry.stdout and "NOCASE" in dry.stdout
        cut = run_cli(cfg, "cutover")
        assert cut.returncode == 0, cut.stdout + cut.stderr
        assert "Postgres refused" not in cut.stdout, cut.stdout
        assert d.stop() == 0
    assert await pg_rows(pg_dsn, "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                                 "attrelid = 'app.ev'::regclass AND attname IN ('day', 'at') ORDER BY attname") == [
        ("at", "text"), ("day", "date")]
    assert await pg_rows(pg_dsn, "SELECT indisunique FROM pg_index WHERE indexrelid = 'app.ev_at'::regclass") == [
        (True,)]


async def test_a_column_postgres_refuses_to_retype_leaves_the_tables_other_columns_typed(tmp_path, make_config,
                                                                                          pg_dsn):
    """A view the team made in Postgres during dual-write reads one date column: Postgres
    refuses to change that column's type. The cutover says so for that column, and types
    the table's other date columns as its dry run promised."""
    from tests.support.way_back import backup_and_config

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE ev (id INTEGER PRIMARY KEY, day DATE, at DATETIME);
        INSERT INTO ev VALUES (1, '2024-01-02', '2024-01-02 10:00:00'), (2, '2024-01-03', '2024-01-03 11:00:00');
    """)
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        await pg_rows(pg_dsn, "CREATE VIEW app.days_seen AS SELECT DISTINCT day FROM app.ev")
        assert run_cli(cfg, "verify").returncode == 0  # the cutover's checklist wants a clean verification
        cut = run_cli(cfg, "cutover")
        assert cut.returncode == 0, cut.stdout + cut.stderr
        assert 'created: ev: column "at" DATETIME as "at": timestamp' in cut.stdout, cut.stdout
        assert 'NOT created: ev: column "day" DATE as "day": kept as text: Postgres refused the new type' in cut.stdout
        assert 'NOT created: ev: column "at"' not in cut.stdout, cut.stdout
        assert d.stop() == 0
    assert await pg_rows(pg_dsn, "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                                 "attrelid = 'app.ev'::regclass AND attname IN ('day', 'at') ORDER BY attname") == [
        ("at", "timestamp without time zone"), ("day", "text")]
    assert await pg_rows(pg_dsn, "SELECT sqlite_format FROM syncd.columns WHERE column_name = 'at'") == [
        ("%Y-%m-%d %H:%M:%S",)]


def typed_ev(app_db, make_config):
    """`ev (id, happened DATETIME)` of two rows, and a configuration that types its dates
    in Postgres during dual-write and looks at the schema every second: (connection, config)."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE ev (id INTEGER PRIMARY KEY, happened DATETIME);"
                       "INSERT INTO ev VALUES (1, '2024-05-01 10:00:00'), (2, '2024-05-02 11:30:00');")
    cfg = make_config([{"name": "app", "path": str(app_db)}],
                      sections={"cutover": {"typed_columns": "dual-write"},
                                "stream": {"schema_check_interval_seconds": 1}})
    return conn, cfg


async def test_a_typed_column_renamed_in_sqlite_keeps_its_values_and_its_type(app_db, make_config, pg_dsn, tmp_path):
    """A column syncd typed during dual-write, renamed in SQLite (twice, the last column
    of the table): Postgres renames it too, values and type kept, as it does an untyped
    column, rather than keep it aside and add an empty one."""
    from tests.support.compare import compare_table
    from tests.support.sync import table_states

    conn, cfg = typed_ev(app_db, make_config)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log('column "happened" is timestamp now')
        conn.execute('ALTER TABLE ev RENAME COLUMN happened TO "Happened"')
        d.wait_log('column "happened" was renamed to "Happened"')
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute('ALTER TABLE ev RENAME COLUMN "Happened" TO occurred')
        conn.execute("INSERT INTO ev VALUES (3, '2024-05-03 09:15:00')")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert (await table_states(pg_dsn, "app"))["ev"][0] == "streaming"
        assert await pg_rows(pg_dsn, "SELECT id, occurred FROM app.ev ORDER BY id") == [
            (1, dt.datetime(2024, 5, 1, 10, 0)), (2, dt.datetime(2024, 5, 2, 11, 30)),
            (3, dt.datetime(2024, 5, 3, 9, 15))]
        assert await pg_rows(pg_dsn, "SELECT column_name FROM syncd.columns WHERE source = 'app' "
                                     "AND table_name = 'ev'") == [("occurred",)]
        assert await compare_table(str(app_db), pg_dsn, "app", "ev") == []
        assert "was dropped" not in d.log(), d.log()
        assert d.stop() == 0
    out = run_cli(cfg, "verify")
    assert out.returncode == 0, out.stdout + out.stderr


async def test_a_table_renamed_in_sqlite_keeps_its_typed_columns(app_db, make_config, pg_dsn, tmp_path):
    """A table whose column syncd typed during dual-write, renamed in SQLite: it streams
    on under its new name with the column still typed (no reload, values as they were),
    and syncd.columns names the table by its new name."""
    from tests.support.compare import compare_table
    from tests.support.sync import eventually, table_states

    conn, cfg = typed_ev(app_db, make_config)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log('column "happened" is timestamp now')
        conn.execute("ALTER TABLE ev RENAME TO events")
        conn.execute("INSERT INTO events VALUES (3, '2024-05-03 09:15:00')")

        async def followed() -> bool:
            return (await table_states(pg_dsn, "app")).get("events", ("",))[0] == "streaming"

        await eventually(followed, 30, "the renamed table streaming", d)
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, happened FROM app.events ORDER BY id") == [
            (1, dt.datetime(2024, 5, 1, 10, 0)), (2, dt.datetime(2024, 5, 2, 11, 30)),
            (3, dt.datetime(2024, 5, 3, 9, 15))]
        assert await pg_rows(pg_dsn, "SELECT table_name, column_name FROM syncd.columns "
                                     "WHERE source = 'app'") == [("events", "happened")]
        assert await compare_table(str(app_db), pg_dsn, "app", "events") == []
        assert "reloading" not in d.log() and "snapshot_started: snapshot started: 3 rows" not in d.log(), d.log()
        assert d.stop() == 0
    out = run_cli(cfg, "verify")
    assert out.returncode == 0, out.stdout + out.stderr


async def test_a_column_added_under_the_name_of_a_dropped_typed_column_is_not_typed(
        app_db, make_config, pg_dsn, tmp_path):
    """A typed column dropped in SQLite (kept aside in Postgres), then a column of the same
    name added: the new column is another column, read as its own declared type, not held
    for not being spelled as the dropped one's dates were."""
    from tests.support.compare import compare_table

    conn, cfg = typed_ev(app_db, make_config)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log('column "happened" is timestamp now')
        conn.execute("ALTER TABLE ev DROP COLUMN happened")
        d.wait_log('column "happened" was dropped')
        conn.execute("ALTER TABLE ev ADD COLUMN happened TEXT")
        conn.execute("INSERT INTO ev VALUES (3, 'soon')")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, happened FROM app.ev ORDER BY id") == [
            (1, None), (2, None), (3, "soon")]
        assert await pg_rows(pg_dsn, "SELECT column_name FROM syncd.columns WHERE source = 'app'") == []
        assert await compare_table(str(app_db), pg_dsn, "app", "ev") == []
        assert d.stop() == 0
    out = run_cli(cfg, "verify")
    assert out.returncode == 0, out.stdout + out.stderr


async def test_a_table_created_under_the_name_of_a_dropped_one_does_not_inherit_its_typed_columns(
        app_db, make_config, pg_dsn, tmp_path):
    """A table whose column syncd typed, dropped in SQLite (kept aside in Postgres), then a
    table of the same name created: its columns are read as their own declared types,
    not held for not being spelled as the dropped table's dates were."""
    from tests.support.compare import compare_table

    conn, cfg = typed_ev(app_db, make_config)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log('column "happened" is timestamp now')
        conn.execute("DROP TABLE ev")
        d.wait_log("table was dropped in SQLite")
        conn.execute("CREATE TABLE ev (id INTEGER PRIMARY KEY, happened TEXT)")
        conn.execute("INSERT INTO ev VALUES (3, 'soon')")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, happened FROM app.ev ORDER BY id") == [(3, "soon")]
        assert await pg_rows(pg_dsn, "SELECT column_name FROM syncd.columns WHERE source = 'app'") == []
        assert await compare_table(str(app_db), pg_dsn, "app", "ev") == []
        assert d.stop() == 0
    out = run_cli(cfg, "verify")
    assert out.returncode == 0, out.stdout + out.stderr


async def test_a_typed_column_dropped_and_added_again_while_syncd_was_stopped_is_not_typed(
        app_db, make_config, pg_dsn, tmp_path):
    """The same as a column added after a typed one was dropped, both done while the
    daemon was stopped: the column of the same name holds other values, so the table is
    loaded again, its new column read as its own declared type, not held for ever."""
    from tests.support.compare import compare_table

    conn, cfg = typed_ev(app_db, make_config)
    with DaemonProcess(cfg, tmp_path / "one.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log('column "happened" is timestamp now')
        assert d.stop() == 0
    conn.execute("ALTER TABLE ev DROP COLUMN happened")
    conn.execute("ALTER TABLE ev ADD COLUMN happened TEXT")
    conn.execute("INSERT INTO ev VALUES (3, 'soon')")
    with DaemonProcess(cfg, tmp_path / "two.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, happened FROM app.ev ORDER BY id") == [
            (1, None), (2, None), (3, "soon")]
        assert await pg_rows(pg_dsn, "SELECT column_name FROM syncd.columns WHERE source = 'app'") == []
        assert await compare_table(str(app_db), pg_dsn, "app", "ev") == []
        assert d.stop() == 0
    out = run_cli(cfg, "verify")
    assert out.returncode == 0, out.stdout + out.stderr


async def test_integers_that_read_as_yyyymmdd_dates_keep_their_column_untyped_through_the_cutover(
        tmp_path, make_config, pg_dsn):
    """An application storing dates as YYYYMMDD integers (20240105) in a DATE column:
    read as seconds since 1970 they would be instants of 1970-08-23, and the application
    switched to Postgres would read those. Integers that are all valid YYYYMMDD dates are
    ambiguous: the column keeps its dual-write type (text), the application reads the
    value it stored, and `syncd schema` says why and which override types it. A sentinel
    such as 0 beside them changes nothing, nor does a stray integer of more than 8 digits;
    ten times as many such integers (real epochs) as dates keep the column an epoch."""
    from tests.test_cutover import ready_config

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE orders (id INTEGER PRIMARY KEY, due DATE, paid DATETIME);
        INSERT INTO orders VALUES (1, 20240105, 20240229), (2, 19991231, 1714557600), (3, 2147483647, NULL);
    """)
    conn.executemany("INSERT INTO orders VALUES (?, NULL, ?)", [(i, 1714557600 + i) for i in range(4, 13)])
    cfg = ready_config(make_config, tmp_path, db)
    out = run_cli(cfg, "schema")
    assert out.returncode == 0, out.stdout + out.stderr
    due = [line for line in out.stdout.splitlines() if '"due"' in line]
    assert any("integers that read as YYYYMMDD dates as well as seconds since 1970 (e.g. 20240105), and "
               "integers of more than 8 digits (seconds since 1970 only) are not ten times as many" in line
               and '[sources.columns."orders"] due = ' in line for line in due), out.stdout
    overridden = make_config([{"name": "app", "path": str(db), "columns": {"orders": {"due": "bigint"}}}],
                             name="overridden.toml")
    out = run_cli(overridden, "schema")
    assert out.returncode == 0 and '"due" bigint' in out.stdout and "YYYYMMDD" not in out.stdout, out.stdout
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        assert d.stop() == 0
    r = run_cli(cfg, "cutover")
    assert r.returncode == 0, r.stdout + r.stderr
    types = dict(await pg_rows(pg_dsn, "SELECT column_name, data_type FROM information_schema.columns "
                                       "WHERE table_schema = 'app' AND table_name = 'orders'"))
    assert (types["due"], types["paid"]) == ("text", "timestamp with time zone"), types
    assert await pg_rows(pg_dsn, "SELECT due, paid FROM app.orders WHERE id <= 3 ORDER BY id") == [
        ("20240105", dt.datetime(1970, 8, 23, 6, 17, 9, tzinfo=dt.timezone.utc)),
        ("19991231", dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.timezone.utc)), ("2147483647", None)]
