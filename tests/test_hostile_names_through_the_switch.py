"""Names built to break SQL or HTML simply work through the whole switch: `syncd
rehearse` loads, verifies, cuts over (typed date columns, an index, a foreign key, a
CHECK, NOCASE UNIQUE, a view), writes back from Postgres and rolls back a copy of the
file; the HTML report shows every name escaped, the markdown one on one line."""

from __future__ import annotations

import re
import sqlite3

from tests.support.daemon import run_cli

T1 = 'weird "name"; DROP TABLE x;--'
T2 = "<script>alert(1)</script>"
C1 = "it's 100% \\ back\nslash"
C2 = "<img src=x onerror=alert(2)>"
C3 = "dätë ✓"


def q(n: str) -> str:
    return '"' + n.replace('"', '""') + '"'


def _file(path):
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute(f"CREATE TABLE {q(T1)} (id INTEGER PRIMARY KEY, {q(C1)} TEXT COLLATE NOCASE UNIQUE, "
                 f"{q(C3)} DATE, {q(C2)} INTEGER DEFAULT 7)")
    conn.execute(f"CREATE TABLE {q(T2)} (id INTEGER PRIMARY KEY, {q(C2)} INTEGER REFERENCES {q(T1)}(id), "
                 f"{q(C1)} TIMESTAMP CHECK ({q(C2)} > 0))")
    conn.execute(f"CREATE INDEX {q('idx ' + T2)} ON {q(T2)} ({q(C1)}, {q(C2)})")
    conn.execute(f"CREATE VIEW {q('v ' + T2)} AS SELECT {q(C1)} FROM {q(T1)} WHERE {q(C2)} > 1")
    for i in range(1, 21):
        conn.execute(f"INSERT INTO {q(T1)} VALUES (?, ?, ?, ?)", (i, f"v'{i}\\%", f"2024-01-{i:02d}", i))
        conn.execute(f"INSERT INTO {q(T2)} VALUES (?, ?, ?)", (i, i, f"2024-02-{i:02d} 10:00:00"))
    conn.commit()
    conn.close()


def initialized(tmp_path, make_config):
    """The file of hostile names, `syncd init` run on it: its configuration."""
    db = tmp_path / "app.db"
    _file(db)
    cfg = make_config([{"name": "app", "path": str(db)}])
    init = run_cli(cfg, "init", timeout=300)
    assert init.returncode == 0, init.stdout + init.stderr
    return cfg


def test_a_rehearsal_with_hostile_names_cuts_over_and_rolls_back(tmp_path, make_config, pg_dsn):
    cfg = initialized(tmp_path, make_config)
    out = run_cli(cfg, "rehearse", timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "rollback rehearsed on a copy" in text and "40 row(s) verified" in text, text


def test_the_html_report_shows_hostile_names_escaped(tmp_path, make_config, pg_dsn):
    cfg = initialized(tmp_path, make_config)
    checked = run_cli(cfg, "verify", timeout=300).stdout
    # the name in verify's lines as SQL writes it: its quotes doubled, one name, not two
    assert '"weird ""name""; DROP TABLE x;--" ' in checked, checked
    html = run_cli(cfg, "report", "--format", "html", timeout=300).stdout
    assert "<html" in html, html[-2000:]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the name is there, escaped
    assert html.count("<script") == 1, re.findall(r".{80}<script.{80}", html, re.S)  # the page's own
    assert "<img" not in html, re.findall(r".{80}<img.{80}", html, re.S)
    md = run_cli(cfg, "report", timeout=300).stdout
    assert "\nslash" not in md, md
