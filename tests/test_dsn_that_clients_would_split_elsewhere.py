"""A DSN whose user name or password holds a character clients split a URL at is a
configuration error, in one line naming the key and the fix, without the password.

asyncpg and libpq end a URL's host part at its first '/', '?' or '#', and take the
userinfo up to an '@' before it: `postgresql://postgres:Hu@nter2/Secret@127.0.0.1/db`
is to them user "postgres", password "Hu" and host "nter2", a piece of the password
sent to DNS. Whatever the mix of '@', '/', '?' and '#' in the password, syncd refuses
the DSN before any connection is tried; a percent-encoded password, or an '@' in the
query, is no reason to refuse."""

from __future__ import annotations

import sqlite3

import pytest

from syncd.config import check_dsn
from tests.conftest import write_config
from tests.support.daemon import run_cli

SPLIT_ELSEWHERE = [
    "postgres:Hu@nter2/Secret",  # '@' then '/': the host would be "nter2"
    "postgres:Hu/nter2@Sec@ret",
    "postgres:Hu@nter2?Secret",
    "postgres:Hu#nter2@Secret",
    "postgres:Hu@nter2#Secret",
    "postgres:a:b@c",
    "postgres:Hu/nter2",
    "postgres:Hu@nter2",
    "postgres:4821?Tr0ub4dor",
]


@pytest.mark.parametrize("userinfo", SPLIT_ELSEWHERE)
def test_a_password_clients_would_split_is_refused_without_quoting_it(userinfo):
    with pytest.raises(ValueError) as e:
        check_dsn(f"postgresql://{userinfo}@127.0.0.1:5432/nu_bad")
    msg = str(e.value)
    assert "percent-encode" in msg and "%40" in msg and "%2F" in msg
    assert "[postgres] password" in msg and "SYNCD_POSTGRES__PASSWORD" in msg
    assert userinfo.split(":", 1)[1] not in msg and "\n" not in msg


@pytest.mark.parametrize("dsn", [
    "postgresql://postgres:Hu%40nter2%2FSecret@127.0.0.1:5432/db",
    "postgresql://postgres:p:w@127.0.0.1:5432/db",  # ':' in a password: clients split at the first
    "postgresql://postgres@127.0.0.1:5432/db?application_name=a@b",
    "postgresql://postgres:pw@127.0.0.1:5432/db?application_name=a@b",
    "postgresql://u:pw@[::1]:5432/db",
    "postgresql:///db?host=/run/postgresql",
    "postgresql://db.example.com:5432/app?user=admin@myserver",  # no userinfo; an '@' in the query (Azure)
    "postgresql:///app?host=/tmp&user=a@b",
])
def test_a_dsn_every_client_reads_alike_is_accepted(dsn):
    assert check_dsn(dsn) == dsn


def test_syncd_refuses_the_dsn_before_connecting(tmp_path):
    db = tmp_path / "app.db"
    sqlite3.connect(db).close()
    cfg = write_config(tmp_path / "syncd.toml", "postgresql://postgres:Hu@nter2/Secret@127.0.0.1:5432/nu_bad",
                       [{"name": "app", "path": str(db)}])
    r = run_cli(cfg, "init")
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert out.strip().startswith(f"syncd: config {cfg}: postgres.dsn: the user name or password holds a character"), out
    assert "cannot connect" not in out and "nter2" not in out and "Secret" not in out, out
