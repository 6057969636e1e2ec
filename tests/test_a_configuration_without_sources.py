"""A configuration that gives syncd no source to work on (a path glob matching no file,
or no [[sources]] at all) is said as such by every command, naming the glob: a status
check watching nothing is not green, and init does not end in silence."""

from __future__ import annotations

import pytest

from tests.conftest import write_config
from tests.support.daemon import run_cli


@pytest.mark.parametrize("kind", ["glob", "none"])
def test_every_command_says_there_is_no_source(tmp_path, pg_dsn, kind):
    sources = [{"name": "t_{stem}", "path": str(tmp_path / "tenants" / "*.db")}] if kind == "glob" else []
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, sources)
    said = (f"no source: the [[sources]] path glob {tmp_path / 'tenants' / '*.db'} matches no file" if kind == "glob"
            else "no [[sources]] in the configuration")
    for verb, code in (("init", 0 if kind == "glob" else 1), ("schema", 0 if kind == "glob" else 1), ("status", 1),
                       ("verify", 2), ("cutover", 2), ("rollback", 2)):
        r = run_cli(cfg, verb)
        assert said in r.stdout + r.stderr, (verb, r.stdout, r.stderr)
        assert r.returncode == code, (verb, r.returncode, r.stdout, r.stderr)
    assert "WARNING: 0 source(s), 1 problem(s)" in run_cli(cfg, "status").stdout


def test_a_glob_whose_every_file_is_not_picked_up_is_not_said_to_match_none(tmp_path, pg_dsn):
    """A glob matching only files syncd does not pick up is not said to match no file:
    status and init say it matches none syncd picks up, and name each such file (init
    named none, and said the glob matched no file)."""
    import sqlite3

    (tmp_path / "tenants").mkdir()
    sqlite3.connect(tmp_path / "tenants" / "bad name.db").close()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "t_{stem}", "path": str(tmp_path / "tenants" / "*.db")}])
    for verb in ("status", "init"):
        r = run_cli(cfg, verb)
        said = r.stdout + r.stderr
        assert "matches no file syncd picks up (1 not picked up)" in said and "bad name.db" in said, (verb, said)
