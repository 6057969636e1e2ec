"""A file syncd can read but not write (its permissions, a read-only mount, a full
disk): the stream goes on, but applied changelog entries cannot be pruned and the
application's file grows with every write. syncd says so, once, and says when pruning
works again; it never fails in silence."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess

import pytest

from tests.support.app import create_items
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.sync import wait_caught_up


@contextlib.contextmanager
def read_only_view(directory, at):
    """`directory` seen read-only at `at` (a read-only bind mount: root only)."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (as CI has)")
    at.mkdir()
    subprocess.run(["mount", "--bind", str(directory), str(at)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(at)], check=True)
        yield at
    finally:
        subprocess.run(["umount", str(at)], check=True)


def writes(db, n: int) -> None:
    conn = sqlite3.connect(db, timeout=5)
    conn.executemany("INSERT INTO items (v, n) VALUES (?, ?)", [(f"w{i}", i) for i in range(n)])
    conn.commit()
    conn.close()


def changelog_entries(db) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM _syncd_changelog").fetchone()[0]
    finally:
        conn.close()


async def test_applied_changes_that_cannot_be_pruned_are_said(tmp_path, make_config, pg_dsn):
    data = tmp_path / "data"
    data.mkdir()
    db = data / "app.db"
    create_items(db, rows=10, journal="delete")
    assert run_cli(make_config([{"name": "app", "path": str(db)}], name="init.toml"), "init").returncode == 0
    with read_only_view(data, tmp_path / "ro") as ro:
        cfg = make_config([{"name": "app", "path": str(ro / "app.db")}])
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await wait_caught_up(db, pg_dsn, "app", daemon=d)
            for _ in range(3):  # applied each time, never pruned: syncd cannot write the file
                writes(db, 50)
                await wait_caught_up(db, pg_dsn, "app", daemon=d)
            wait_for(lambda: "changelog" in d.log() and "cannot be pruned" in d.log(), 90, "the failure said", d)
            line = next(x for x in d.log().splitlines() if "cannot be pruned" in x)
            assert "source=app" in line and "readonly" in line, line
            assert changelog_entries(db) >= 150
            assert d.log().count("cannot be pruned") == 1  # once, not once per try
            subprocess.run(["mount", "-o", "remount,rw,bind", str(ro)], check=True)  # writable again
            writes(db, 1)
            d.wait_log("the changelog is pruned again", 90)
            wait_for(lambda: changelog_entries(db) < 150, 60, "the applied entries pruned", d)
            assert d.stop() == 0


async def test_capture_that_cannot_be_installed_is_one_line_naming_the_file(tmp_path, make_config, pg_dsn):
    """A file syncd may read but not write before capture is in it: `syncd init` and the
    daemon say in one line that syncd cannot write it, never a traceback of SQLite's
    "attempt to write a readonly database"; the daemon lives on and tries again."""
    data = tmp_path / "data"
    data.mkdir()
    create_items(data / "app.db", rows=10, journal="delete")
    with read_only_view(data, tmp_path / "ro") as ro:
        db = ro / "app.db"
        cfg = make_config([{"name": "app", "path": str(db)}])
        said = f"syncd cannot write the SQLite file {db} (attempt to write a readonly database)"
        r = run_cli(cfg, "init")
        out = r.stdout + r.stderr
        assert r.returncode == 1 and f"app: ERROR {said}" in out and "Traceback" not in out, out
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            wait_for(lambda: said in d.log(), 30, "the daemon's line on the file", d)
            assert d.alive()
            assert d.stop() == 0
            assert "Traceback" not in d.log() and "unexpected error" not in d.log(), d.log()
