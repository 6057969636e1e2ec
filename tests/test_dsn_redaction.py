"""No password leaves syncd: not in logs, status, errors, reports, pages or metrics.

DSNs are rebuilt without their password wherever they are shown, and every configured
secret is scrubbed from any text, in every spelling (raw, URL-encoded, JSON-escaped).
The end-to-end tests run every verb and the daemon's endpoint with hostile passwords
(space, @, :, /, %, quotes, unicode, newline) and search everything they print.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import urllib.request
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd import redact
from syncd.redact import dsn_passwords, redact_dsn, register_secret, scrub
from tests.conftest import write_config
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.ports import free_port

HOSTILE = ["k1 X9qa", "k2@Y8rb@Z7sc", "k3:W6td", "k4/V5ue", "k5%2FU4vf%", "k6'T3wg\"", "k7üñï€Hhq", "k8\nS2xi"]


def spellings(pw: str) -> set[str]:
    """Every way a password could show up in output, and every distinctive piece of it."""
    forms = {pw, quote(pw, safe=""), quote(pw), quote_plus(pw), json.dumps(pw)[1:-1],
             json.dumps(pw, ensure_ascii=False)[1:-1], repr(pw)[1:-1], " ".join(pw.split())}
    forms |= {piece for piece in re.findall(r"\w{4,}", pw)}
    return {f for f in forms if len(f) >= 4}


def assert_no_secret(text: str, passwords, where: str) -> None:
    for pw in passwords:
        for form in spellings(pw):
            assert form not in text, f"{where} shows {form!r} of password {pw!r}:\n{text[-3000:]}"


# --- the functions themselves ------------------------------------------------------------


@pytest.mark.parametrize("dsn, shown", [
    ("postgresql://postgres:pa ss@host/db", "postgresql://postgres:***@host/db"),
    ("postgresql://postgres:p@ss@w0rd@host:5432/db", "postgresql://postgres:***@host:5432/db"),
    ("postgresql://u:pw1@h1:5432,u:pw2@h2:5433/db", "postgresql://u:***@h2:5433/db"),
    ("postgresql://u@h/db?sslmode=require&password=s3cr3t&x=1", "postgresql://u@h/db?sslmode=require&password=***&x=1"),
    ("host=h password = 'x y\\' z' dbname=d", "host=h password = *** dbname=d"),
    ("host=h PASSWORD=plain user=u", "host=h PASSWORD=*** user=u"),
    ("cannot connect to postgresql://a:b%40c@h/d: refused", "cannot connect to postgresql://a:***@h/d: refused"),
    # The client key's passphrase is a password too; so is a key asyncpg decodes to one.
    ("postgresql://u@h/db?sslpassword=K3y-77&x=1", "postgresql://u@h/db?sslpassword=***&x=1"),
    ("host=h sslpassword=K3y-77 user=u", "host=h sslpassword=*** user=u"),
    ("postgresql://u@h/db?pass%77ord=Enc0ded-99", "postgresql://u@h/db?pass%77ord=***"),
])
def test_dsns_are_shown_without_their_password(dsn, shown):
    assert redact_dsn(dsn) == shown


def test_a_dsn_yields_its_passwords_raw_and_decoded():
    assert dsn_passwords("postgresql://u:a%20b%40c@h/d") == {"a%20b%40c", "a b@c"}
    assert dsn_passwords("postgresql://u@h/d?password=x%2Fy") == {"x%2Fy", "x/y"}
    assert dsn_passwords("host=h password='it\\'s here'") == {"it's here"}
    assert dsn_passwords("postgresql://u@h/d?sslpassword=K3y-77&PASS%57ORD=pw-88") == {"K3y-77", "pw-88"}


@settings(max_examples=300, deadline=None)
@given(pw=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24),
       user=st.from_regex(r"[a-z]{1,8}", fullmatch=True))
def test_no_password_survives_in_a_url(pw, user):
    marker = "Qz7" + pw + "Jx4"  # a password nothing else in the text could contain
    dsn = f"postgresql://{user}:{quote(marker, safe='')}@db.example:5432/synapse"
    assert quote(marker, safe="") not in redact_dsn(dsn)
    assert redact_dsn(dsn).startswith(f"postgresql://{user}:***@db.example")


def test_registered_secrets_are_scrubbed_in_every_spelling():
    secret = "pa ss@w/ö'rd\nx"
    try:
        register_secret(secret)
        for form in (secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1],
                     repr(secret)[1:-1], " ".join(secret.split())):
            assert scrub(f'database "{form}" does not exist') == 'database "***" does not exist'
        register_secret("abc")  # too short to scrub everywhere
        assert scrub("abc") == "abc"
    finally:
        redact.forget_secrets()


# --- everything syncd prints ---------------------------------------------------------


def _source_files(tmp_path, n: int) -> list:
    paths = []
    for i in range(n):
        p = tmp_path / f"s{i}.db"
        conn = sqlite3.connect(p)
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("INSERT INTO t VALUES (1, 'a')")
        conn.commit()
        conn.close()
        paths.append(p)
    return paths


VERBS = [("init",), ("status",), ("status", "--json"), ("verify",), ("verify", "--json"), ("report",),
         ("report", "--format", "json"), ("report", "--format", "html"), ("schema",),
         ("resync", "--source", "s0", "--table", "t"), ("cutover", "--dry-run"), ("cutover",),
         ("rollback", "--dry-run"), ("rollback",), ("uninstall",)]


def _every_verb(cfg, env=None) -> dict[str, str]:
    out = {}
    for verb in VERBS:
        r = run_cli(cfg, *verb, env=env)
        out[" ".join(verb)] = r.stdout + r.stderr
    return out


def _daemon(cfg, tmp_path, port, name, env=None, args=()) -> dict[str, str]:
    with DaemonProcess(cfg, tmp_path / f"{name}.log", env=env, args=args) as d:
        wait_for(lambda: "Postgres" in d.log() and "syncd running" in d.log(), 60, "the daemon's first errors", d)
        wait_for(lambda: _get(port, "/status") is not None, 30, "the endpoint", d)
        bodies = {f"{name} /status": _get(port, "/status"), f"{name} /metrics": _get(port, "/metrics"),
                  f"{name} /": _get(port, "/")}
        assert d.stop() == 0
        bodies[f"{name} log"] = d.log()
    return bodies


def _get(port: int, path: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return None


def test_passwords_inside_dsns_never_show(tmp_path, pg_dsn):
    """Each source's DSN carries a hostile password (URL-encoded) and points where no
    Postgres answers, so every verb and the daemon report connection failures."""
    dead = free_port()
    # URL-encoded, and as people write them when a client accepts that: raw
    raw = ["k1 X9qa", "k6'T3wg\"", "k7üñï€Hhq"]
    userinfos = [quote(pw, safe="") for pw in HOSTILE] + raw
    paths = _source_files(tmp_path, len(userinfos))
    sources = [{"name": f"s{i}", "path": str(p), "dsn": f"postgresql://postgres:{u}@127.0.0.1:{dead}/app"}
               for i, (p, u) in enumerate(zip(paths, userinfos))]
    port = free_port()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, sources, metrics_listen=f"127.0.0.1:{port}",
                       sections={"postgres": {"connect_timeout_seconds": 2}})
    outputs = _every_verb(cfg)
    assert "cannot connect to postgresql://postgres:***@127.0.0.1" in outputs["status"], outputs["status"]
    outputs.update(_daemon(cfg, tmp_path, port, "daemon"))
    assert "Postgres unreachable" in outputs["daemon log"]
    for where, text in outputs.items():
        assert_no_secret(text or "", HOSTILE, where)


def test_a_configured_password_never_shows_even_where_postgres_quotes_it(tmp_path, pg_dsn):
    """The password comes from the environment. A DSN whose database name is, by
    mistake, the password itself makes Postgres quote it back in every error."""
    password = "".join(HOSTILE)
    paths = _source_files(tmp_path, 2)
    host = pg_dsn.rsplit("/", 1)[0]
    sources = [{"name": "s0", "path": str(paths[0]), "dsn": f"{host}/{quote(password, safe='')}"},
               {"name": "s1", "path": str(paths[1])}]
    port = free_port()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, sources, metrics_listen=f"127.0.0.1:{port}")
    env = {"SYNCD_POSTGRES__PASSWORD": password}
    outputs = _every_verb(cfg, env)
    assert 'database "***" does not exist' in outputs["status"], outputs["status"]
    for verb in ("cutover", "rollback"):  # the switches quote Postgres's refusal too
        assert 'database "***" does not exist' in outputs[verb], outputs[verb]
    outputs.update(_daemon(cfg, tmp_path, port, "daemon-json", env=env, args=("--log-format", "json")))
    for where, text in outputs.items():
        assert_no_secret(text or "", HOSTILE + [password], where)


@pytest.mark.parametrize("userinfo", ["postgres:k2@Y8rb@Z7sc", "postgres:k4/V5ue", "postgres:k8\nS2xi"])
def test_a_dsn_clients_would_misread_is_refused_without_quoting_it(tmp_path, pg_dsn, userinfo):
    db = _source_files(tmp_path, 1)[0]
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "s0", "path": str(db)}])
    env = {"SYNCD_POSTGRES__DSN": f"postgresql://{userinfo}@127.0.0.1:5432/app"}
    for verb in (("status",), ("status", "--json"), ("init",), ("run",)):
        r = run_cli(cfg, *verb, env=env)
        assert r.returncode in (2, 3), r.stdout + r.stderr
        assert "environment variable SYNCD_POSTGRES__DSN" in r.stdout + r.stderr  # where the DSN came from
        assert_no_secret(r.stdout + r.stderr, [userinfo.split(":", 1)[1]], " ".join(verb))


def _one_table_file(tmp_path):
    path = tmp_path / "s0.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize("query, secret", [
    ("sslpassword={}", "K3yPassphrase-77"),  # the client key's passphrase
    ("password={}", "Lk7Qa Zp9Wx"),  # a raw space, as asyncpg takes it: no piece of it either
    ("pass%77ord={}", "Enc0dedKey-99"),  # a key asyncpg decodes to `password`
], ids=["sslpassword", "raw_space", "encoded_key"])
def test_a_password_in_a_dsn_query_never_shows(tmp_path, pg_dsn, query, secret):
    """A DSN's query carries passwords in more spellings than `password=value`; a server
    that cannot be reached makes every verb quote the DSN."""
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/app?{query.format(secret)}"
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "s0", "path": str(_one_table_file(tmp_path))}],
                       sections={"postgres": {"connect_timeout_seconds": 2}})
    for verb in (("status",), ("status", "--json"), ("init",)):
        r = run_cli(cfg, *verb)
        assert "cannot connect" in r.stdout + r.stderr, r.stdout + r.stderr
        assert_no_secret(r.stdout + r.stderr, [secret], f"syncd {' '.join(verb)}")


def test_a_lock_dsn_password_never_shows(tmp_path, pg_dsn):
    """[postgres] lock_dsn (pooler = "transaction") carries a password of its own: given
    as the database name by mistake, Postgres quotes it back."""
    secret = "Lk7QaZp9Wx-Qv3m"
    host = pg_dsn.rsplit("/", 1)[0].replace("postgresql://postgres@", f"postgresql://postgres:{secret}@")
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "s0", "path": str(_one_table_file(tmp_path))}],
                       sections={"postgres": {"connect_timeout_seconds": 2, "pooler": "transaction",
                                              "lock_dsn": f"{host}/{secret}"}})
    text = "\n".join(r.stdout + r.stderr for r in (run_cli(cfg, *verb) for verb in
                                                   (("init",), ("status",), ("status", "--json"))))
    assert 'database "***" does not exist' in text, text  # the lock connection was tried, Postgres answered
    assert_no_secret(text, [secret], "init and status")


def test_the_demo_never_puts_a_password_on_a_command_line(tmp_path):
    """A child's command line is every local user's to read (ps, /proc/PID/cmdline): the
    demo asks pg_isready about a server by host and port only, whatever the DSN in
    SYNCD_POSTGRES__DSN carries (a `?password=` here)."""
    secret = "Dm7Qa-pa55-w0rd"
    # Something that accepts TCP connections, so that the demo goes on to ask pg_isready.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    threading.Thread(target=lambda: [listener.accept()[0].close() for _ in range(16)], daemon=True).start()
    # pg_isready recording the command line it was given, and saying nothing answers.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    argv_log = tmp_path / "argv.log"
    fake = bindir / "pg_isready"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {argv_log}\nexit 2\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env["PATH"] = f"{bindir}:{env['PATH']}"
    env["SYNCD_POSTGRES__DSN"] = f"postgresql://postgres@127.0.0.1:{port}/postgres?password={secret}"
    try:
        r = subprocess.run([sys.executable, "-m", "syncd", "demo", "--listen", "127.0.0.1:0"], env=env,
                           capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    finally:
        listener.close()
    assert "does not answer" in r.stdout + r.stderr, r.stdout + r.stderr
    assert_no_secret(r.stdout + r.stderr, [secret], "syncd demo")
    argv = argv_log.read_text()
    assert f"-p {port}" in argv, argv  # it was asked
    assert_no_secret(argv, [secret], "pg_isready's command line")
