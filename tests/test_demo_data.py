"""The worked example is the user's own: config.example.toml and the demo data name the
Synapse files and the three planned databases, with shapes like theirs (both journal
modes, a $1,158,000 pipeline in 134 rows, keyless logs with duplicate rows, a NOCASE
key, WITHOUT ROWID, AUTOINCREMENT, a view, FTS5, and hostile names)."""

from __future__ import annotations

import shutil
import sqlite3
import tomllib

import pytest

from syncd.config import load_settings
from syncd.demo.data import BACKUPS, SCRIPT_COLUMN, SOURCES, TARGET_DATABASES, WEIRD_TABLE, make_files
from syncd.identifiers import quote_ident
from tests.support.daemon import ROOT, run_cli

USER_FILES = ["epic7_sales_automation", "linkedin_business_development", "synapse_analytics_intelligence",
              "synapse_business_crm", "synapse_system_infrastructure", "synapse_content_intelligence",
              "epic16_abm_campaigns", "epic16_enterprise_onboarding", "epic16_fortune500_acquisition",
              "epic18_global_expansion"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    make_files(d)
    return d


def db(demo, name) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{demo / (name + '.db')}?mode=ro", uri=True)


def user_tables(conn) -> list[str]:
    return [r[1] for r in conn.execute("PRAGMA table_list") if r[2] == "table" and r[0] == "main"
            and not r[1].startswith("sqlite_")]


def rows(conn, table) -> int:
    return conn.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchone()[0]


def test_the_files_are_the_users(demo):
    assert [s.name for s in SOURCES] == USER_FILES
    made = sorted(p.name for p in demo.iterdir() if not p.name.endswith(("-wal", "-shm")))
    assert made == sorted([f"{n}.db" for n in USER_FILES] + [BACKUPS])
    backups = list((demo / BACKUPS).iterdir())
    assert len(backups) >= 3 and 60_000 < sum(p.stat().st_size for p in backups) < 200_000
    assert all(p.read_bytes()[:16] == b"SQLite format 3\x00" for p in backups)
    modes = {s.name: db(demo, s.name).execute("PRAGMA journal_mode").fetchone()[0] for s in SOURCES}
    assert set(modes.values()) == {"wal", "delete"}
    assert TARGET_DATABASES == ("synapse_core", "synapse_business", "synapse_analytics")
    assert {s.database for s in SOURCES} == set(TARGET_DATABASES)


def test_the_sales_pipeline(demo):
    c = db(demo, "epic7_sales_automation")
    assert sum(rows(c, t) for t in user_tables(c)) == 134
    assert rows(c, "crm_contacts") == 16
    assert c.execute("SELECT sum(amount) FROM deals").fetchone()[0] == 1_158_000


def test_the_shapes_a_migration_meets(demo):
    infra = db(demo, "synapse_system_infrastructure")
    assert [r[1] for r in infra.execute("PRAGMA table_info(system_metrics)") if r[5]] == ["host", "ts"]
    for file, log in (("synapse_system_infrastructure", "metrics_log"), ("linkedin_business_development", "touches")):
        c = db(demo, file)
        assert not any(r[5] for r in c.execute(f"PRAGMA table_info({log})"))  # keyless
        assert not c.execute(f"PRAGMA index_list({log})").fetchall()
        cols = ", ".join(quote_ident(n) for n in _cols(c, log))
        distinct = c.execute(f"SELECT count(*) FROM (SELECT DISTINCT {cols} FROM {log})").fetchone()[0]
        assert rows(c, log) > distinct, f"{log} holds exact duplicate rows"
    crm = db(demo, "synapse_business_crm")
    assert "COLLATE NOCASE" in crm.execute("SELECT sql FROM sqlite_master WHERE name = 'accounts'").fetchone()[0]
    onboarding = db(demo, "epic16_enterprise_onboarding")
    assert any(r[1] == "workflow_steps" and r[4] for r in onboarding.execute("PRAGMA table_list"))  # WITHOUT ROWID
    sales = db(demo, "epic7_sales_automation")
    assert "AUTOINCREMENT" in sales.execute("SELECT sql FROM sqlite_master WHERE name = 'activities'").fetchone()[0]
    assert db(demo, "synapse_analytics_intelligence").execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'view'").fetchone()[0] == 1
    content = db(demo, "synapse_content_intelligence")
    assert "fts5" in content.execute("SELECT sql FROM sqlite_master WHERE name = 'articles_fts'").fetchone()[0]
    abm = db(demo, "epic16_abm_campaigns")
    assert WEIRD_TABLE in user_tables(abm) and rows(abm, WEIRD_TABLE) == 2
    assert SCRIPT_COLUMN in _cols(abm, "landing_pages")
    text_dates = sales.execute("SELECT typeof(close_date), typeof(opted_in) FROM deals, crm_contacts LIMIT 1")
    assert text_dates.fetchone() == ("text", "integer")  # dates as text, booleans as 0/1


def _cols(conn, table) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({quote_ident(table)})")]


def test_make_files_leaves_existing_files_alone(tmp_path):
    first = make_files(tmp_path)
    assert len(first) == len(SOURCES) + len(list((tmp_path / BACKUPS).iterdir()))
    before = (tmp_path / "epic7_sales_automation.db").stat().st_mtime_ns
    assert make_files(tmp_path) == []
    assert (tmp_path / "epic7_sales_automation.db").stat().st_mtime_ns == before


def test_config_example_names_the_demo_world(demo, tmp_path):
    doc = tomllib.loads((ROOT / "config.example.toml").read_text())
    assert doc["postgres"]["dsn"].endswith("/synapse_core")
    assert doc["cutover"]["backup_glob"] == f"demo/{BACKUPS}/{{source}}-*.db"
    by_name = {s["name"]: s for s in doc["sources"]}
    assert list(by_name) and set(by_name) == set(USER_FILES)
    for s in SOURCES:
        entry = by_name[s.name]
        assert entry["path"] == f"demo/{s.filename}"
        assert entry.get("dsn", doc["postgres"]["dsn"]).rsplit("/", 1)[1] == s.database
        assert entry.get("columns", {}) == s.columns
        assert not entry.get("exclude"), f"{s.name}: the example leaves nothing out"
    # it loads, and `syncd schema` reads every demo file through it
    shutil.copy(ROOT / "config.example.toml", tmp_path / "syncd.toml")
    shutil.copytree(demo, tmp_path / "demo")
    settings = load_settings(tmp_path / "syncd.toml")
    assert [s.name for s in settings.sources] == list(by_name)
    out = run_cli(tmp_path / "syncd.toml", "schema")
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'CREATE TABLE IF NOT EXISTS "epic16_abm_campaigns"."weird ""name""; DROP TABLE x;--"' in out.stdout
    assert '"<script>" text' in out.stdout
    assert "-- skipped 'articles_fts'" in out.stdout
    # a view summing reals is not carried (a floating-point sum's rounding depends on its order)
    assert '-- NOT CARRIED: view "kpi_monthly": not translated exactly: sum() of anything but integers' in out.stdout
