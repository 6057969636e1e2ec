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
