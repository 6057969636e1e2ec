"""The documented file-permission recipe keeps the application working beside syncd.

syncd may be the process that creates a database's -wal and -shm files. They must
stay usable by the application, which runs as another user: the unit's UMask=0007
makes them group-writable, and a setgid directory owned by the application's group
gives them that group (docs/operations.md, "File permissions"). Without the setgid
bit the files get syncd's own group and the application is locked out: that is shown
too, so the recipe is known to be what makes the difference. The alternative, the
application's group as syncd's primary group (Group=), works without it.

syncd and the application run here as two unprivileged users (numeric ids, with the
unit's User/Group/SupplementaryGroups/UMask), a real daemon against real files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.daemon import ROOT

UNIT = ROOT / "systemd" / "syncd.service"
APP_UID = APP_GID = 61001  # the application's user and group ("synapse" in the unit)
SYNCD_UID = SYNCD_GID = 61002  # syncd's user and own group
SYSTEM_PYTHON = "/usr/bin/python3"


def unit_value(key: str) -> str:
    m = re.search(rf"^{key}=(.*)$", UNIT.read_text(), re.M)
    assert m, f"{UNIT.name} sets no {key}="
    return m.group(1).strip()


@pytest.fixture(scope="module")
def portable_syncd(tmp_path_factory):
    """syncd and the packages it imports, readable by any user (the test's own
    interpreter may live where another user cannot reach it)."""
    assert os.geteuid() == 0, "runs two users' processes: needs root (as CI has)"
    assert os.access(SYSTEM_PYTHON, os.X_OK), f"{SYSTEM_PYTHON} is required (Debian package python3)"
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    assert version == str(tuple(sys.version_info[:2])), "the system Python must match the tests' (compiled deps)"
    import syncd.cli.run  # noqa: F401 - loads everything the daemon imports
    import syncd.daemon  # noqa: F401
    import watchdog.observers  # noqa: F401

    site = Path(tempfile.mkdtemp(prefix="syncd-site-", dir="/tmp"))
    libs = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    tops = set()
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if not f:
            continue
        path = Path(f).resolve()
        for lib in libs:
            if lib in path.parents:
                tops.add(lib / path.relative_to(lib).parts[0])
    for top in tops | {ROOT / "syncd"}:
        if top.name in ("_pytest", "pytest", "hypothesis", "tests"):
            continue
        dest = site / top.name
        if top.is_dir():
            shutil.copytree(top, dest, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            shutil.copy2(top, dest)
    for root, dirs, files in os.walk(site):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    yield site
    shutil.rmtree(site, ignore_errors=True)


def as_user(uid: int, gid: int, groups: list[int], umask: int, args: list[str], **kw):
    return dict(args=args, user=uid, group=gid, extra_groups=groups, umask=umask, **kw)


APP_WRITE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=5)
conn.execute("INSERT INTO t(v) VALUES ('from the application')")
conn.commit()
print(conn.execute("SELECT count(*) FROM t").fetchone()[0])
"""
APP_CREATE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("PRAGMA journal_mode=wal")
conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
conn.execute("INSERT INTO t(v) VALUES ('first')")
conn.commit()
"""


def _app(script: str, db: Path) -> subprocess.CompletedProcess:
    return subprocess.run(**as_user(APP_UID, APP_GID, [], 0o007, [SYSTEM_PYTHON, "-c", script, str(db)]),
                          capture_output=True, text=True, timeout=30)


def _with_syncd_running(site: Path, pg_dsn: str, setgid: bool, syncd_gid: int) -> tuple[subprocess.CompletedProcess, int]:
    """Lay out the data directory, let the application create its database, start
    syncd as the unit would run it, and have the application write beside it.
    Returns the application's write and the owner uid of the -shm file."""
    base = Path(tempfile.mkdtemp(prefix="syncd-perm-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        data = base / "data"
        data.mkdir()
        os.chown(data, 0, APP_GID)
        os.chmod(data, 0o2770 if setgid else 0o770)
        db = data / "app.db"
        r = _app(APP_CREATE, db)
        assert r.returncode == 0, r.stderr
        assert not (data / "app.db-shm").exists()  # the application closed it: syncd creates the next one
        os.chmod(db, 0o660)  # the recipe: group-writable database files (SQLite creates them 0644)
        cfg = base / "syncd.toml"
        cfg.write_text(f'[postgres]\ndsn = "{pg_dsn}"\n[metrics]\nlisten = ""\n[stream]\npoll_interval_seconds = 0.2\n'
                       f'[[sources]]\nname = "app"\npath = "{db}"\n')
        os.chmod(cfg, 0o644)
        umask = int(unit_value("UMask"), 8)
        log = open(base / "syncd.log", "wb")
        proc = subprocess.Popen(**as_user(SYNCD_UID, syncd_gid, [APP_GID], umask,
                                          [SYSTEM_PYTHON, "-m", "syncd", "--config", str(cfg), "run"]),
                                stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(site), "HOME": str(base)},
                                cwd=base)
        try:
            deadline = time.monotonic() + 60
            while "every table is streaming" not in (base / "syncd.log").read_text(errors="replace"):
                assert proc.poll() is None, (base / "syncd.log").read_text()
                assert time.monotonic() < deadline, (base / "syncd.log").read_text()
                time.sleep(0.2)
            shm_owner = (data / "app.db-shm").stat().st_uid
            return _app(APP_WRITE, db), shm_owner
        finally:
            proc.terminate()
            proc.wait(20)
            log.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_setgid_directory_keeps_files_syncd_creates_usable_by_the_application(portable_syncd, pg_dsn):
    assert unit_value("Group") == "syncd" and unit_value("SupplementaryGroups") == "synapse"
    write, shm_owner = _with_syncd_running(portable_syncd, pg_dsn, setgid=True, syncd_gid=SYNCD_GID)
    assert shm_owner == SYNCD_UID  # syncd created it
    assert write.returncode == 0 and write.stdout.strip() == "2", write.stderr


def test_without_the_setgid_bit_the_application_is_locked_out(portable_syncd, pg_dsn):
    write, shm_owner = _with_syncd_running(portable_syncd, pg_dsn, setgid=False, syncd_gid=SYNCD_GID)
    assert shm_owner == SYNCD_UID
    assert write.returncode != 0 and "unable to open database file" in write.stderr, write.stderr


def test_the_application_group_as_syncds_group_works_without_setgid(portable_syncd, pg_dsn):
    write, shm_owner = _with_syncd_running(portable_syncd, pg_dsn, setgid=False, syncd_gid=APP_GID)
    assert shm_owner == SYNCD_UID
    assert write.returncode == 0 and write.stdout.strip() == "2", write.stderr


def test_unit_writes_only_the_data_directory():
    assert unit_value("ReadWritePaths") == "/var/lib/synapse/data"
    assert unit_value("ProtectSystem") == "strict"
