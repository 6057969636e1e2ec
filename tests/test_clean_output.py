"""Every command prints nothing but syncd's own lines: no warning from a dependency
(a newer release of one once made every command print one), no stray traceback."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time

from syncd.cli import build_parser
from tests.support.daemon import run_cli, syncd_cmd

# A log line (text format) or a one-line error: "syncd: ...".
OWN_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) |syncd: )")


def foreign_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line and not OWN_LINE.match(line)]


def verbs() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # noqa: SLF001 - argparse has no listing
    return set(sub.choices)


def test_every_verb_writes_only_its_own_lines_to_stderr(app_db, make_config, tmp_path):
    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');"
                       "CREATE TABLE log (line TEXT); INSERT INTO log VALUES ('x');")
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    ran: set[str] = set()

    def check(*args: str) -> None:
        r = run_cli(cfg, *args, env={"PYTHONWARNINGS": "default"})
        assert foreign_lines(r.stderr) == [], (args, r.stderr)
        assert "Traceback" not in r.stdout, (args, r.stdout)
        ran.add(args[0])

    check("schema")
    check("init")
    proc = subprocess.Popen(syncd_cmd(cfg, "run"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(tmp_path), env={**os.environ, "PYTHONWARNINGS": "default"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and run_cli(cfg, "status").returncode not in (0, 1):
            time.sleep(0.2)
        check("status")
        check("verify")
        check("report")
        check("resync", "--source", "app", "--table", "t")
        check("cutover", "--dry-run")
        check("rollback", "--dry-run")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert foreign_lines(err) == [], err
    ran.add("run")
    check("rehearse")
    check("uninstall")
    assert ran >= verbs() - {"demo"}, verbs() - ran  # `syncd demo` has a test of its own
