"""The Prometheus kit in deploy/: promtool accepts it, every metric it and the Grafana
dashboard name is one a running syncd exports, and a real Prometheus scrapes syncd."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from syncd.metrics import ROLLUPS

from tests.support.app import create_items
from tests.support.daemon import ROOT, DaemonProcess, wait_for
from tests.support.pgcluster import free_port
from tests.support.sync import wait_caught_up

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "syncd.json"
METRIC_NAME = re.compile(r"\b(?:syncd|process)_[a-z_]+\b")

# Series that exist only after an event this test does not cause: errors and retries
# after a failure, consistency results after a check. prometheus_client still declares
# them (# TYPE) from startup, which is what the test holds them to.
AFTER_EVENT = {
    "syncd_errors_total",
    "syncd_retries_total",
    "syncd_rows",
    "syncd_consistency_mismatched_rows",
    "syncd_consistency_last_check_timestamp_seconds",
    "syncd_repaired_rows_total",
}


def tool(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    assert Path(path).exists(), f"{name} is not installed: apt-get install prometheus (it ships {name})"
    return path


@pytest.mark.parametrize("args", [
    ["check", "config", "deploy/prometheus/prometheus.yml"],
    ["check", "rules", "deploy/prometheus/alerts.yml"],
    ["test", "rules", "deploy/prometheus/alerts.test.yml"],
])
def test_promtool_accepts(args):
    r = subprocess.run([tool("promtool"), *args], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def exported(text: str) -> tuple[set[str], set[str]]:
    """(names declared by # TYPE, names with at least one sample) in a /metrics page."""
    declared, sampled = set(), set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            declared.add(name)
            if kind == "histogram":
                declared |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "counter" and not name.endswith("_total"):
                declared.add(f"{name}_total")
        elif line and not line.startswith("#"):
            sampled.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group())
    return declared, sampled


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


@pytest.fixture
def syncd(tmp_path, make_config, pg_dsn):
    """A running syncd with one source, "app", that has streamed one change."""
    db = tmp_path / "app.db"
    create_items(db, rows=10, journal="wal")
    port = free_port()
    cfg = make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{port}")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("every table is streaming")
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO items VALUES (100, 'streamed', 1, 0.5, x'00')")
        yield d, f"127.0.0.1:{port}", db
        assert d.stop() == 0


async def test_every_referenced_metric_is_exported(syncd, pg_dsn):
    d, address, db = syncd
    await wait_caught_up(db, pg_dsn, "app", daemon=d)
    referenced = set(METRIC_NAME.findall(ALERTS.read_text())) | set(METRIC_NAME.findall(DASHBOARD.read_text()))
    # Exported instead of the per-table series under [metrics] per_table = false
    # (tests/test_source_discovery.py scrapes them there).
    referenced -= {name for name, _fold, _doc in ROLLUPS.values()}
    assert "syncd_replication_lag_seconds" in referenced and "syncd_rows" in referenced  # the regex finds names
    declared, _sampled = exported(get(f"http://{address}/metrics"))
    assert referenced - declared == set(), "named in deploy/ but not exported by syncd"
    assert AFTER_EVENT <= declared
    # Everything else has real series once a change has streamed.
    needed = referenced - AFTER_EVENT
    wait_for(lambda: needed <= exported(get(f"http://{address}/metrics"))[1], 60,
             f"samples of {sorted(needed)}", d)


def test_prometheus_scrapes_syncd(syncd, tmp_path):
    d, address, _db = syncd
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "syncd", "static_configs": [{"targets": [address]}]}],
    }))
    with open(tmp_path / "prometheus.log", "wb") as log:
        prometheus = subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list[dict]:
        try:
            return json.loads(get(f"{api}/query?" + urllib.parse.urlencode({"query": expr})))["data"]["result"]
        except OSError:
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            return []

    try:
        [series] = wait_for(lambda: query("syncd_replication_lag_seconds"), 60, "the lag series in Prometheus", d)
        assert series["metric"]["source"] == "app"
        assert series["metric"]["job"] == "syncd"
        assert float(series["value"][1]) >= 0
        # The shipped rules load and evaluate against real series without errors.
        def evaluated() -> list[dict] | None:
            rules = [r for g in json.loads(get(f"{api}/rules"))["data"]["groups"] for r in g["rules"]]
            return rules if rules and all(r["health"] != "unknown" for r in rules) else None

        rules = wait_for(evaluated, 60, "the alert rules to be evaluated", d)
        assert len(rules) == ALERTS.read_text().count("- alert: ")
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(15)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait(5)
