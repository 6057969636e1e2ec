"""One SQLite file is one source. Two sources on one file would each take the other's
capture id for a copy's and re-snapshot the file, one after the other, forever (and
each prune its changelog at its own pace): the configuration refuses two [[sources]]
naming one file, however it is spelled; two globs matching one file give it one
source and name the other; and a file that becomes another running source's file
later is not streamed twice."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from syncd.config import ConfigError, load_settings
from tests.conftest import write_config
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import wait_caught_up


def app_file(path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes VALUES (1, 'first')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("second, how", [
    ("./d.db", ""),
    ("sub/../d.db", ""),
    ("alias.db", "a symlink"),
    ("linked.db", "hard links"),
    ("later.db", "a symlink"),  # a symlink to a file not created yet: its resolved path
])
def test_two_sources_naming_one_file_are_refused(tmp_path, pg_dsn, second, how):
    (tmp_path / "sub").mkdir()
    if second != "later.db":
        app_file(tmp_path / "d.db")
    (tmp_path / "alias.db").symlink_to(tmp_path / "d.db")
    (tmp_path / "later.db").symlink_to("d.db")
    if second == "linked.db":
        os.link(tmp_path / "d.db", tmp_path / "linked.db")
    cfg = tmp_path / "syncd.toml"
    cfg.write_text(f'[postgres]\ndsn = "{pg_dsn}"\n\n[[sources]]\nname = "d1"\npath = "d.db"\n\n'
                   f'[[sources]]\nname = "d2"\npath = "{second}"\n')
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    msg = str(e.value)
    assert msg.startswith(f"config {cfg}: sources[1].path: source 'd2' names the file of source 'd1' (sources[0]), "
                          f"{tmp_path / 'd.db'}"), msg
    assert "one file is one source" in msg and "\n" not in msg
    assert (how in msg) if how else "is that file too" not in msg
    r = run_cli(cfg, "init")
    assert r.returncode == 2 and "names the file of source 'd1'" in r.stdout + r.stderr, r.stdout + r.stderr


def test_sources_on_different_files_not_created_yet_are_accepted(tmp_path, pg_dsn):
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "d1", "path": str(tmp_path / "a.db")},
                                                         {"name": "d2", "path": str(tmp_path / "b.db")}])
    assert [s.name for s in load_settings(cfg).sources] == ["d1", "d2"]


def test_two_globs_matching_one_file_give_it_one_source_and_name_the_other(tmp_path, pg_dsn):
    d = tmp_path / "tenants"
    d.mkdir()
    for stem in ("acme", "big_globex"):
        app_file(d / f"{stem}.db")
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [
        {"name": "t_{stem}", "path": str(d / "*.db")},
        {"name": "big_{stem}", "path": str(d / "big_*.db")}])
    settings = load_settings(cfg)
    assert sorted((s.name, s.path.name) for s in settings.sources) == [
        ("t_acme", "acme.db"), ("t_big_globex", "big_globex.db")]
    assert settings.discovery_problems == [
        f"{d / 'big_globex.db'} (from {d / 'big_*.db'}) is not picked up as 'big_big_globex': it is source "
        f"'t_big_globex' already (from {d / '*.db'}); one file is one source: make the globs match different files"]
    doc = json.loads(run_cli(cfg, "status", "--json").stdout)
    assert any("is not picked up as 'big_big_globex'" in p for p in doc["not_picked_up"]), doc


def test_a_glob_added_before_a_registered_sources_glob_does_not_take_its_file(tmp_path, pg_dsn):
    """A fleet's region set up with its own glob (eu_{stem}), then a glob over every
    region (t_{stem}) added above it: eu/acme.db, which syncd registered as eu_acme, was
    taken by the first glob as t_acme, a source never set up (loaded again from the
    file into a schema of its own), and eu_acme, its replica and its history left out of
    `syncd status` without a word of their own. The name syncd registered the file under
    keeps it, and the new glob's name for it is said not picked up."""
    d = tmp_path / "tenants"
    (d / "eu").mkdir(parents=True)
    app_file(d / "eu" / "acme.db")
    app_file(d / "eu" / "globex.db")
    eu = {"name": "eu_{stem}", "path": str(d / "eu" / "*.db")}
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [eu])
    r = run_cli(cfg, "init", "--source", "eu_acme")
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "t_{stem}", "path": str(d / "*" / "*.db")}, eu])
    doc = json.loads(run_cli(cfg, "status", "--json").stdout)
    assert sorted(s["name"] for s in doc["sources"]) == ["eu_acme", "t_globex"], doc["sources"]
    assert any(f"{d / 'eu' / 'acme.db'} (from {d / '*' / '*.db'}) is not picked up as 't_acme': it is source "
               f"'eu_acme' already (from {d / 'eu' / '*.db'})" in p for p in doc["not_picked_up"]), doc


async def test_a_file_that_becomes_another_running_sources_file_is_not_resnapshotted(tmp_path, make_config, pg_dsn):
    """d2's file does not exist when the configuration is read; it appears as a symlink
    to d1's file while the daemon runs. d1 keeps streaming it; d2 fails naming d1,
    and neither re-snapshots the file. `syncd status` and a reload refuse the
    configuration from then on."""
    app_file(tmp_path / "a.db")
    cfg = make_config([{"name": "d1", "path": str(tmp_path / "a.db")},
                       {"name": "d2", "path": str(tmp_path / "b.db")}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as dp:
        await wait_caught_up(tmp_path / "a.db", pg_dsn, "d1", daemon=dp)
        (tmp_path / "b.db").symlink_to(tmp_path / "a.db")
        dp.wait_log("is the SQLite file of source 'd1' too")
        conn = sqlite3.connect(tmp_path / "a.db")
        conn.executemany("INSERT INTO notes VALUES (?, 'after the link')", [(i,) for i in range(2, 12)])
        conn.commit()
        conn.close()
        await wait_caught_up(tmp_path / "a.db", pg_dsn, "d1", daemon=dp)

        # `syncd status` reads the configuration again, which now names one file twice
        r = run_cli(cfg, "status")
        assert r.returncode == 3 and "UNKNOWN: config" in r.stdout and "source 'd2' names the file of source 'd1'" in r.stdout, r.stdout
        assert "capture_cloned" not in dp.log() and "re-snapshotting" not in dp.log()
        assert dp.stop() == 0
