"""The Grafana dashboard and provisioning in deploy/grafana: well-formed, every panel
queries Prometheus with PromQL that parses, and it shows what operators ask about.
(That every metric it names is exported is checked in test_deploy_prometheus.py.)"""

from __future__ import annotations

import json
import re
import subprocess

from tests.support.daemon import ROOT
from tests.test_deploy_prometheus import tool

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = json.loads((GRAFANA / "syncd.json").read_text())
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every panel target."""
    return [(p["title"], t["expr"]) for p in DASHBOARD["panels"] for t in p["targets"]]


def variable(name: str) -> dict:
    [v] = [v for v in DASHBOARD["templating"]["list"] if v["name"] == name]
    return v


def test_dashboard_header():
    assert DASHBOARD["uid"] == "syncd"
    assert 36 <= DASHBOARD["schemaVersion"] <= 41
    assert variable("DS_PROMETHEUS")["type"] == "datasource"
    source = variable("source")
    assert source["datasource"] == DATASOURCE and source["multi"] and source["includeAll"]
    assert re.fullmatch(r"label_values\(syncd_\w+, source\)", source["definition"])


def test_every_panel_has_a_datasource_and_targets():
    panels = DASHBOARD["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE and t["expr"].strip(), p["title"]


def test_every_query_is_valid_promql(tmp_path):
    rules = [{"record": f"dashboard_query_{i}", "expr": expr.replace("$__rate_interval", "5m")
              .replace("$source", ".*")} for i, (_title, expr) in enumerate(queries())]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    r = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_source_variable_filters_every_per_source_query():
    unfiltered = [title for title, expr in queries() if "$source" not in expr and "syncd_postgres_up" not in expr]
    assert unfiltered == []


def test_panels_cover_what_operators_ask():
    text = "\n".join(expr for _title, expr in queries())
    for wanted in [
        "syncd_replication_lag_seconds", "syncd_pending_changes", "rate(syncd_changes_applied_total",
        "histogram_quantile(0.5, sum by (source, le) (rate(syncd_commit_to_apply_seconds_bucket",
        "histogram_quantile(0.99, sum by (source, le) (rate(syncd_commit_to_apply_seconds_bucket",
        "syncd_apply_duration_seconds_bucket", "rate(syncd_errors_total", "rate(syncd_retries_total",
        "syncd_table_halted", "syncd_consistency_mismatched_rows", "syncd_rows{",
        "time() - max by (source, table) (syncd_consistency_last_check_timestamp_seconds",
        "syncd_postgres_up", "syncd_source_up", "syncd_changelog_bytes",
    ]:
        assert wanted in text, wanted


def test_provisioning_matches_the_dashboard():
    datasource = (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert re.search(r"^\s+uid: prometheus$", datasource, re.M)
    assert re.search(r"^\s+url: http://prometheus:9090$", datasource, re.M)
    assert variable("DS_PROMETHEUS")["current"]["value"] == "prometheus"
    provider = (GRAFANA / "provisioning" / "dashboards" / "syncd.yml").read_text()
    assert re.search(r"^\s+type: file$", provider, re.M) and re.search(r"^\s+path: /\S+$", provider, re.M)
