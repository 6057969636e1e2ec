"""deploy/docker-compose.yml: the local stack references files that exist and wires
Prometheus and Grafana to the shipped configuration. (No Docker engine runs in CI, so
this checks the file itself; the Postgres part is exercised below for real.)"""

from __future__ import annotations

import re

import asyncpg
import yaml

from syncd.demo.data import TARGET_DATABASES
from tests.support.daemon import ROOT
from tests.support.pgcluster import with_database

DEPLOY = ROOT / "deploy"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_services_and_mounts_exist():
    doc = compose()
    services = doc["services"]
    assert set(services) == {"postgres", "prometheus", "grafana"}
    assert services["postgres"]["image"].startswith("postgres:15")
    for svc in services.values():
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), volume
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert services["prometheus"]["network_mode"] == "host"  # syncd's /metrics is loopback-only
    assert "prometheus:host-gateway" in services["grafana"]["extra_hosts"]
    for svc in ("postgres", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in services[svc]["ports"])


async def test_init_script_creates_the_three_target_databases(pg_dsn):
    sql = (DEPLOY / "postgres" / "init.sql").read_text()
    names = re.findall(r"CREATE DATABASE (\w+);", sql)
    assert names == list(TARGET_DATABASES) == ["synapse_core", "synapse_business", "synapse_analytics"]
    # run it, renamed into this test's namespace so it cannot clash with real databases
    suffix = pg_dsn.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_dsn)
    try:
        for statement in re.findall(r"^CREATE DATABASE \w+;", sql, re.M):
            name = statement.split()[2].rstrip(";")
            await admin.execute(statement.replace(name, f'"{suffix}_{name}"'))
        for name in names:
            conn = await asyncpg.connect(with_database(pg_dsn, f"{suffix}_{name}"))
            await conn.close()
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{suffix}_{name}"')
        await admin.close()
