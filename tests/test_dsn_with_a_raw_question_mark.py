"""A password holding a raw '?' is a configuration error saying how to write it.

Clients split a postgresql:// URL at its first '?': `postgresql://syncd:4821?Tr0ub4dor@db/app`
is to them host "syncd", port 4821, and a query "Tr0ub4dor@db/app" they cannot parse.
syncd refuses such a DSN when it loads the configuration, in one line naming the key
and the fix (percent-encode it as %3F), without quoting the DSN; it does not start and
report "Postgres unreachable" with a message that names neither the cause nor the key.
"""

from __future__ import annotations

import sqlite3

import pytest

from tests.conftest import write_config
from tests.support.daemon import run_cli

SECRET = "Tr0ub4dorXq7"


@pytest.mark.parametrize("password", [f"4821?{SECRET}", f"?{SECRET}"], ids=["digits_first", "question_first"])
def test_a_raw_question_mark_in_the_password_is_a_clear_config_error(tmp_path, pg_dsn, password):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.close()
    host = pg_dsn.split("@", 1)[1]
    cfg = write_config(tmp_path / "syncd.toml", f"postgresql://postgres:{password}@{host}",
                       [{"name": "app", "path": str(db)}], sections={"postgres": {"connect_timeout_seconds": 2}})
    for verb, code in ((("status",), 3), (("init",), 2)):
        r = run_cli(cfg, *verb)
        out = r.stdout + r.stderr
        assert r.returncode == code, out
        assert "postgres.dsn" in out and "%3F" in out, out
        assert SECRET not in out, out
