"""The README's walkthrough, run exactly as written (only the Postgres database, the
directory and the metrics port are this test's own)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from tests.support.daemon import ROOT
from tests.support.pgcluster import free_port

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Five minutes with syncd", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_walkthrough_runs(tmp_path, pg_dsn):
    for tool in ("sqlite3", "psql"):
        assert shutil.which(tool), f"the walkthrough needs the {tool} command-line tool"
    script = walkthrough()
    assert DEFAULT_DSN in script and "/tmp/syncd-walkthrough" in script
    script = script.replace(DEFAULT_DSN, pg_dsn).replace("/tmp/syncd-walkthrough", str(tmp_path / "walk"))
    env = {**os.environ, "SYNCD_METRICS__LISTEN": f"127.0.0.1:{free_port()}",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    r = subprocess.run(["bash", "-euc", script + "\nwait\n"], capture_output=True, text=True, timeout=180,
                       env=env, cwd=tmp_path)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert 'CREATE TABLE IF NOT EXISTS "shop"."orders"' in out  # syncd schema
    rows = re.findall(r"^\s+(\d) \| (\w+)\s+\|\s+([\d.]+) \| (.+)$", out, re.M)  # psql's table
    assert rows == [("1", "ada", "10", "2026-11-23 10:00:00"), ("2", "grace", "20.25", "2026-11-23 11:00:00")]
    assert out.rstrip().endswith("OK: 1 source(s), 0 problem(s)")  # syncd status, exit 0
