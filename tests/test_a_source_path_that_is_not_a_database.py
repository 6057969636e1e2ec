"""A source whose path is missing, a directory or not a SQLite file: every command says
so in one line naming the file (never a traceback, never SQLite's bare "disk I/O error"),
and none creates the file."""

from __future__ import annotations

import pytest

from tests.support.daemon import run_cli

VERBS = [("cutover", "--dry-run"), ("cutover",), ("rollback", "--dry-run"), ("rollback",), ("schema",),
         ("rehearse",), ("status",), ("report",), ("verify",), ("init",), ("resync", "--source", "app", "--table", "t")]


@pytest.mark.parametrize("kind", ["missing", "directory", "not-sqlite"])
def test_every_command_names_a_source_file_that_cannot_be_a_database(tmp_path, make_config, kind):
    path = tmp_path / "app.db"
    if kind == "directory":
        path.mkdir()
        said = [f"SQLite file {path} is a directory, not a file"]
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
