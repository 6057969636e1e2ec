"""A source whose path is missing, a directory or not a SQLite file: every command says
so in one line naming the file (never a traceback, never SQLite's bare "disk I/O error"),
and none creates the file."""

from __future__ import annotations

import os

import pytest

from tests.support.daemon import run_cli

VERBS = [("cutover", "--dry-run"), ("cutover",), ("rollback", "--dry-run"), ("rollback",), ("schema",),
         ("rehearse",), ("status",), ("report",), ("verify",), ("init",), ("resync", "--source", "app", "--table", "t")]


@pytest.mark.parametrize("kind", ["missing", "directory", "not-sqlite", "named-pipe"])
def test_every_command_names_a_source_file_that_cannot_be_a_database(tmp_path, make_config, kind):
    path = tmp_path / "app.db"
    if kind == "directory":
        path.mkdir()
        said = [f"SQLite file {path} is a directory, not a file"]
    elif kind == "named-pipe":  # it was said to be "empty (0 bytes): not a database yet, or being replaced"
        os.mkfifo(path)
        said = [f"SQLite file {path} is a named pipe, not a file"]
    elif kind == "not-sqlite":
        path.write_text("not a database, just text that is long enough to have a header page\n" * 20)
        said = [str(path), ": file is not a database"]  # SQLite's words, after the file's name
    else:
        said = [f"SQLite file {path} does not exist"]
    cfg = make_config([{"name": "app", "path": str(path)}])
    for verb in VERBS:
        r = run_cli(cfg, *verb)
        out = r.stdout + r.stderr
        assert "Traceback" not in out, (verb, out)
        assert "disk I/O error" not in out, (verb, out)
        assert all(part in out for part in said), (verb, out)
        assert r.returncode != 0, (verb, out)
    assert path.exists() == (kind != "missing")



def test_status_does_not_call_a_running_daemon_not_running_for_a_file_it_cannot_open(tmp_path, make_config):
    """A file a glob finds while the daemon runs that is not SQLite: the daemon runs and
    reports it, and `syncd status` says what the daemon says, never 'daemon not running'."""
    import json

    from tests.support.app import create_items
    from tests.support.daemon import DaemonProcess, wait_for
    from tests.support.pgcluster import free_port

    (tmp_path / "t").mkdir()
    create_items(tmp_path / "t" / "good.db", rows=5)
    port = free_port()
    cfg = make_config([{"name": "t_{stem}", "path": str(tmp_path / "t" / "*.db")}],
                      metrics_listen=f"127.0.0.1:{port}", sections={"stream": {"discover_interval_seconds": 0.5}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("every table is streaming", 60)
        (tmp_path / "t" / "bad.db").write_text("not a database, just text long enough for a header page\n" * 20)
        wait_for(lambda: "file is not a database" in d.log(), 60, "the daemon's complaint", d)

        def bad_source():
            doc = json.loads(run_cli(cfg, "status", "--json").stdout)
            s = next((s for s in doc["sources"] if s["name"] == "t_bad"), None)
            return s if s is not None and s["state"] == "source_missing" else None

        s = wait_for(bad_source, 60, "the daemon's state in status", d)
        messages = [p["message"] for p in s["problems"]]
        assert s["daemon_running"] is True, s
        assert not any(m.startswith("daemon not running") for m in messages), messages
        assert any("file is not a database" in m for m in messages), messages
        assert d.stop() == 0


def test_a_file_damaged_inside_is_named_in_one_line(tmp_path, make_config):
    """Pages of the file overwritten (a bad disk, a copy cut short): `syncd init`, `syncd
    verify` and the daemon each name the damaged file in one line, never a traceback of
    SQLite's "database disk image is malformed"; the daemon lives on, waiting for the file."""
    import sqlite3

    from tests.support.daemon import DaemonProcess, wait_for

    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "x" * 200) for i in range(2000)])
    conn.commit()
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(path, "r+b") as f:  # leaf pages of t, past sqlite_master (page 1) and t's root
        f.seek(page * 5)
        f.write(b"\xff" * page * 3)
    cfg = make_config([{"name": "app", "path": str(path)}])
    said = f"SQLite file {path} is damaged: database disk image is malformed"
    for verb in (("init",), ("verify",)):
        r = run_cli(cfg, *verb)
        out = r.stdout + r.stderr
        assert "Traceback" not in out and said in out and r.returncode != 0, (verb, out)
    r = run_cli(cfg, "rehearse")  # its copy is as damaged, and named as such
    out = r.stdout + r.stderr
    assert "Traceback" not in out and "is damaged: database disk image is malformed" in out and r.returncode != 0, out
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        wait_for(lambda: said in d.log(), 30, "the daemon's line on the damaged file", d)
        assert d.alive()
        assert d.stop() == 0
        assert "Traceback" not in d.log() and "unexpected error" not in d.log(), d.log()


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_resync_from_a_damaged_file_is_refused(tmp_path, make_config, journal):
    """A resync drops the table's Postgres copy to load it again from SQLite: from a file
    damaged inside, which the rebuild could not read, the copy in Postgres may be the
    only whole one left. Refused, naming the file, and nothing requested (in WAL mode
    every page is checked, which holds no application writer back; in rollback-journal
    mode the table's rows are read a short transaction at a time)."""
    import sqlite3

    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode={journal}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "x" * 200) for i in range(2000)])
    conn.commit()
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    cfg = make_config([{"name": "app", "path": str(path)}])
    assert run_cli(cfg, "init").returncode == 0
    with open(path, "r+b") as f:  # leaf pages of t, past sqlite_master (page 1) and t's root
        f.seek(page * 5)
        f.write(b"\xff" * page * 3)
    r = run_cli(cfg, "resync", "--source", "app", "--table", "t")
    out = r.stdout + r.stderr
    assert r.returncode == 1 and f"SQLite file {path} is damaged" in out and "requested" not in out, out
    assert "Traceback" not in out and out.count("\n") == 1, out


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_a_resync_requested_before_the_file_was_damaged_keeps_the_postgres_copy(tmp_path, make_config, pg_dsn,
                                                                                journal):
    """A resync requested while the file was sound, taken up by the daemon after pages of
    the table were damaged: the daemon checks the table's pages before it drops the
    Postgres copy, which may be the only whole one left. The copy stays, the request stays
    pending, and one line names the file; once the file is mended the resync goes ahead.
    In rollback-journal mode too, where the check reads the table in short transactions
    (one long read would hold the application's commits back)."""
    import asyncio
    import sqlite3
    import time

    from tests.support.daemon import DaemonProcess, wait_for
    from tests.support.sync import pg_rows

    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode={journal}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "x" * 200) for i in range(2000)])
    conn.commit()
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    cfg = make_config([{"name": "app", "path": str(path)}])
    assert run_cli(cfg, "init").returncode == 0
    count = lambda: asyncio.run(pg_rows(pg_dsn, "SELECT count(*) FROM app.t"))[0][0]  # noqa: E731
    pending = lambda: asyncio.run(pg_rows(  # noqa: E731
        pg_dsn, "SELECT request FROM syncd.tables WHERE source = 'app' AND table_name = 't'"))[0][0]
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("every table is streaming", 60)
        assert d.stop() == 0
    assert count() == 2000
    r = run_cli(cfg, "resync", "--source", "app", "--table", "t")  # the file is sound: requested
    assert r.returncode == 0 and "requested" in r.stdout, r.stdout + r.stderr
    with open(path, "r+b") as f:  # leaf pages of t, past sqlite_master (page 1) and t's root
        f.seek(page * 5)
        sound = f.read(page * 3)
        f.seek(page * 5)
        f.write(b"\xff" * page * 3)
    said = f"SQLite file {path} is damaged"
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        held = lambda: [ln for ln in d.log().splitlines() if "resync requested but not done" in ln]  # noqa: E731
        wait_for(held, 60, "the daemon's line on the held resync", d)
        time.sleep(3)  # several rechecks (held_table_retry_seconds = 0.5): still one line
        assert len(held()) == 1 and said in held()[0] and "table=t " in held()[0], d.log()
        assert count() == 2000, "the Postgres copy was dropped"
        assert pending() == "resync"
        assert d.stop() == 0
    st = run_cli(cfg, "status")
    assert 'table "t": `syncd resync` requested, not taken up yet' in st.stdout, st.stdout
    with open(path, "r+b") as f:  # mended (put back from a backup)
        f.seek(page * 5)
        f.write(sound)
    with DaemonProcess(cfg, tmp_path / "syncd3.log") as d:
        wait_for(lambda: pending() is None and "resync requested: Postgres table dropped" in d.log(), 60,
                 "the resync once the file is mended", d)
        d.wait_log("every table is streaming", 60)
        wait_for(lambda: count() == 2000, 60, "the table loaded again", d)
        assert d.stop() == 0
        assert "Traceback" not in d.log() and "unexpected error" not in d.log(), d.log()


@pytest.mark.parametrize("kind", ["not-sqlite", "damaged"])
def test_a_file_that_cannot_be_opened_holds_no_more_open_files_the_longer_it_waits(tmp_path, make_config, kind):
    """A fleet's file that is no database (or whose pages were overwritten) is tried
    again and again while the daemon waits for it: each try leaves nothing open, so the
    daemon's open files do not grow with the time the file stays bad."""
    import re
    import sqlite3
    import urllib.request

    from tests.support.app import create_items
    from tests.support.daemon import DaemonProcess, wait_for
    from tests.support.pgcluster import free_port

    (tmp_path / "t").mkdir()
    create_items(tmp_path / "t" / "good.db", rows=5)
    bad = tmp_path / "t" / "bad.db"
    if kind == "not-sqlite":
        bad.write_text("not a database, just text long enough for a header page\n" * 20)
    else:
        conn = sqlite3.connect(bad)
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.commit()
        conn.close()
        with open(bad, "r+b") as f:  # the header past its magic string: every open fails
            f.seek(100)
            f.write(b"\xff" * 2000)
    port = free_port()
    cfg = make_config([{"name": "t_{stem}", "path": str(tmp_path / "t" / "*.db")}],
                      metrics_listen=f"127.0.0.1:{port}",
                      sections={"stream": {"discover_interval_seconds": 0.5, "retry_max_backoff_seconds": 0.1}})

    def tries() -> int:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        m = re.search(r'^syncd_retries_total\{source="t_bad"\} (\S+)$', text, re.M)
        return int(float(m.group(1))) if m else 0

    def open_on_bad(pid: int) -> int:
        n = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(bad))
            except OSError:
                pass
        return n

    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("every table is streaming", 60)
        wait_for(lambda: tries() >= 5, 60, "five tries of the bad file", d)
        first = open_on_bad(d.pid)
        wait_for(lambda: tries() >= 40, 60, "forty tries of the bad file", d)
        assert open_on_bad(d.pid) <= max(first, 3), (first, open_on_bad(d.pid), tries())
        assert d.stop() == 0
