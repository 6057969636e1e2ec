"""The checklist's backup item credits a file to a source by what the file holds: a copy
of another source is no backup of this one, whatever its name or the pattern says, and
files a pattern without {source} matches for every source are told apart by content."""

from __future__ import annotations

import datetime as dt
import gzip
import os
import shutil
import sqlite3
import time

from syncd.report.backups import find_backups, live_identity
from syncd.report.checklist import backup
from syncd.report.facts import MigrationFacts, SourceFacts
from syncd.sqlite import capture
from tests.test_file_permissions import portable_syncd  # noqa: F401 - a fixture

SCHEMAS = {
    "sales": "CREATE TABLE deals (id INTEGER PRIMARY KEY, amount REAL); CREATE TABLE contacts (id INTEGER PRIMARY KEY);"
             "INSERT INTO deals VALUES (1, 1158000);",
    "markets": "CREATE TABLE regions (code TEXT PRIMARY KEY, name TEXT); INSERT INTO regions VALUES ('eu', 'Europe');",
    "crm": "CREATE TABLE deals (id INTEGER PRIMARY KEY, amount REAL); CREATE TABLE contacts (id INTEGER PRIMARY KEY);",
}


def make_source(path, name: str, installed: bool) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript(SCHEMAS[name])
    conn.close()
    if installed:
        install(path)


def sources_and_folder(tmp_path, names=("sales", "markets"), installed: bool = True) -> None:
    """The sources' live files beside an empty backups folder."""
    for name in names:
        make_source(tmp_path / f"{name}.db", name, installed)
    (tmp_path / "backups").mkdir()


def install(path) -> None:
    """What `syncd init` writes into the file first: the capture id among it."""
    conn = sqlite3.connect(path, isolation_level=None)
    capture.install_base(conn, 5000)
    conn.close()


def take_backup(live, dest, days_old: float) -> None:
    """As a nightly job would: SQLite's online backup of the live file."""
    src, dst = sqlite3.connect(live), sqlite3.connect(dest)
    src.backup(dst)
    src.close(), dst.close()
    os.utime(dest, (time.time() - days_old * 86400,) * 2)


def judged(tmp_path, pattern: str, names=("sales", "markets")):
    now = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)
    live = {n: live_identity(tmp_path / f"{n}.db", 2000) for n in names}
    sources = [SourceFacts(n, str(tmp_path / f"{n}.db"), n,
                           backup=find_backups(pattern, n, tmp_path, now, tmp_path / f"{n}.db", live))
               for n in names]
    item = backup(MigrationFacts(now, None, sources, [], 14, 30, 3600, pattern, 30))
    return item, {s.name: s.backup for s in sources}


def test_a_shared_backup_folder_credits_each_file_to_the_source_it_copies(tmp_path):
    sources_and_folder(tmp_path)
    take_backup(tmp_path / "sales.db", tmp_path / "backups" / "nightly-1.db", 3)
    take_backup(tmp_path / "markets.db", tmp_path / "backups" / "nightly-2.db", 1)

    item, found = judged(tmp_path, "backups/*.db")
    assert item.ok, item.problems
    assert (found["sales"].count, found["sales"].newest) == (1, str(tmp_path / "backups" / "nightly-1.db"))
    assert (found["markets"].count, found["markets"].newest) == (1, str(tmp_path / "backups" / "nightly-2.db"))
    assert all("1 other file(s) matched hold other sources' backups" in line for line in item.evidence), item.evidence
    # Reading a backup leaves nothing beside it (no -wal, no -shm): it is opened immutable.
    assert sorted(p.name for p in (tmp_path / "backups").iterdir()) == ["nightly-1.db", "nightly-2.db"]

    # Only markets is backed up: sales has no backup, though the folder holds a fresh file.
    (tmp_path / "backups" / "nightly-1.db").unlink()
    item, found = judged(tmp_path, "backups/*.db")
    assert not item.ok and found["sales"].count == 0
    assert item.problems == [f"sales: no backup matches {tmp_path}/backups/*.db; "
                             "1 other file(s) matched hold other sources' backups"], item.problems


def test_a_file_named_for_one_source_that_copies_another_is_not_counted(tmp_path):
    sources_and_folder(tmp_path)
    take_backup(tmp_path / "sales.db", tmp_path / "backups" / "sales-old.db", 40)
    take_backup(tmp_path / "markets.db", tmp_path / "backups" / "sales-new.db", 1)  # the job copied the wrong file

    item, found = judged(tmp_path, "backups/{source}-*.db")
    assert found["sales"].count == 1 and found["sales"].newest.endswith("sales-old.db")
    assert found["sales"].not_counted == [f"{tmp_path}/backups/sales-new.db (a backup of markets)"]
    sales = [line for line in item.problems if line.startswith("sales:")]
    assert len(sales) == 1 and sales[0].startswith("sales: too old: newest ") and "(a backup of markets)" in sales[0]


def test_backups_taken_before_syncd_was_installed_are_told_apart_by_their_tables(tmp_path):
    sources_and_folder(tmp_path, installed=False)
    take_backup(tmp_path / "sales.db", tmp_path / "backups" / "a.db", 2)
    take_backup(tmp_path / "markets.db", tmp_path / "backups" / "b.db", 2)
    for name in ("sales", "markets"):  # syncd arrives after the backups were taken
        install(tmp_path / f"{name}.db")
    (tmp_path / "backups" / "stray.db").write_bytes(b"")
    conn = sqlite3.connect(tmp_path / "backups" / "other-app.db")
    conn.execute("CREATE TABLE sessions (token TEXT)")
    conn.close()

    item, found = judged(tmp_path, "backups/*.db")
    assert item.ok, item.problems
    assert found["sales"].newest.endswith("/a.db") and found["markets"].newest.endswith("/b.db")
    assert f"{tmp_path}/backups/other-app.db (holds none of sales's tables)" in found["sales"].not_counted
    assert f"{tmp_path}/backups/stray.db (empty)" in found["sales"].not_counted


def test_a_compressed_backup_counts_only_where_the_pattern_names_the_source(tmp_path):
    sources_and_folder(tmp_path)
    for name in ("sales", "markets"):
        take_backup(tmp_path / f"{name}.db", tmp_path / f"{name}.copy", 0)
        with open(tmp_path / f"{name}.copy", "rb") as f, gzip.open(tmp_path / "backups" / f"{name}-1.db.gz", "wb") as g:
            shutil.copyfileobj(f, g)

    item, found = judged(tmp_path, "backups/{source}-*.db.gz")
    assert item.ok and found["sales"].newest.endswith("sales-1.db.gz") and found["sales"].newest_is_sqlite is False
    assert all("not a plain SQLite file (compressed?)" in line for line in item.evidence), item.evidence

    item, found = judged(tmp_path, "backups/*.db.gz")
    assert not item.ok and found["sales"].count == 0 and found["markets"].count == 0
    assert any(f"2 files ({tmp_path}/backups/markets-1.db.gz and {tmp_path}/backups/sales-1.db.gz): not a plain "
               "SQLite file (compressed?), so nothing tells which source it backs up; put {source} in backup_glob"
               in line for line in item.problems), item.problems

    item, found = judged(tmp_path, "backups/sales-*.db.gz", names=("sales",))  # one source: nothing to tell apart
    assert item.ok and found["sales"].count == 1


def test_a_file_that_holds_no_sqlite_database_compressed_or_not_is_no_backup(tmp_path):
    """A file the pattern matches that is neither a SQLite database nor a compressed one
    (a job's log beside its backups, a gzip of an error page) showed nothing syncd could
    read as a backup, yet counted as the fresh one: it is named instead, as not counted."""
    sources_and_folder(tmp_path, names=("sales",))
    take_backup(tmp_path / "sales.db", tmp_path / "backups" / "sales-1.db", 40)
    (tmp_path / "backups" / "sales-2.db").write_text("backup failed: disk full\n")
    with gzip.open(tmp_path / "backups" / "sales-3.db.gz", "wb") as g:
        g.write(b"<html>502 Bad Gateway</html>")
    item, found = judged(tmp_path, "backups/{source}-*", names=("sales",))
    assert not item.ok and found["sales"].count == 1 and found["sales"].newest.endswith("sales-1.db"), item.problems
    for name in ("sales-2.db", "sales-3.db.gz"):
        assert any(f"{name} (holds no SQLite database" in line for line in item.problems), item.problems


def test_a_backup_in_a_tar_archive_counts_where_the_database_is_its_first_member(tmp_path):
    """`tar czf sales.tar.gz sales.db` (or a plain tar) holds the database behind a 512-byte
    header: it was named "a gzip file of something else". The first member's header is
    read through the archive: a database there counts; another first member is named."""
    import tarfile

    sources_and_folder(tmp_path, names=("sales",))
    take_backup(tmp_path / "sales.db", tmp_path / "sales-copy.db", 0)
    (tmp_path / "notes.txt").write_text("nightly\n")
    with tarfile.open(tmp_path / "backups" / "sales-1.tar.gz", "w:gz") as t:
        t.add(tmp_path / "sales-copy.db", "sales.db")
    with tarfile.open(tmp_path / "backups" / "sales-2.tar", "w") as t:
        t.add(tmp_path / "sales-copy.db", "sales.db")
    with tarfile.open(tmp_path / "backups" / "sales-3.tar.gz", "w:gz") as t:
        t.add(tmp_path / "notes.txt", "notes.txt")
        t.add(tmp_path / "sales-copy.db", "sales.db")
    for name, days in (("sales-1.tar.gz", 2), ("sales-2.tar", 1), ("sales-3.tar.gz", 0)):
        os.utime(tmp_path / "backups" / name, (time.time() - days * 86400,) * 2)

    item, found = judged(tmp_path, "backups/{source}-*", names=("sales",))
    assert item.ok and found["sales"].count == 2 and found["sales"].newest.endswith("sales-2.tar"), item.problems
    assert found["sales"].not_counted == [
        f"{tmp_path}/backups/sales-3.tar.gz (holds no SQLite database syncd can find: a gzip tar archive whose first "
        "file, notes.txt, is none (syncd looks only at the first): put the database first in the archive, or keep "
        "a plain, gzip, bzip2 or xz copy)"], found["sales"].not_counted


def test_a_backup_in_a_form_syncd_cannot_look_into_is_named_for_what_it_is(tmp_path):
    """zstd, gpg, age and zip backups hold a database syncd cannot see: they were said to
    hold none at all. Each is named for its form, and what to keep instead."""
    sources_and_folder(tmp_path, names=("sales",))
    take_backup(tmp_path / "sales.db", tmp_path / "backups" / "sales-0.db", 3)
    forms = {
        "sales-1.db.zst": (b"\x28\xb5\x2f\xfd" + bytes(40), "a zstd file"),
        "sales-2.db.gpg": (b"\x8c\x0d\x04\x09\x03\x08" + bytes(40), "an OpenPGP (gpg) encrypted file"),
        "sales-3.db.asc": (b"-----BEGIN PGP MESSAGE-----\n\nhQEMA\n", "an OpenPGP (gpg) encrypted file"),
        "sales-4.db.age": (b"age-encryption.org/v1\n-> X25519 abc\n", "an age encrypted file"),
        "sales-5.zip": (b"PK\x03\x04" + bytes(40), "a zip archive"),
    }
    for name, (data, _) in forms.items():
        (tmp_path / "backups" / name).write_bytes(data)
    item, found = judged(tmp_path, "backups/{source}-*", names=("sales",))
    assert item.ok and found["sales"].count == 1 and found["sales"].newest.endswith("sales-0.db"), item.problems
    for name, (_, what) in forms.items():
        assert (f"{tmp_path}/backups/{name} ({what} syncd cannot look into: keep a plain, gzip, bzip2 or xz copy "
                "(or a tar of one, the database first) it can read)") in found["sales"].not_counted, found["sales"]


def test_a_backup_gone_before_syncd_could_read_it_is_said_to_be_gone(tmp_path):
    """A backup job rotating its files removes one between the listing and the reading:
    it was said to be one syncd may not read, to be fixed by its group or mode."""
    from syncd.report.backups import _unreadable_file

    why = _unreadable_file(str(tmp_path / "sales-1.db"))
    assert why == "gone before syncd could read it (removed or renamed meanwhile: a backup job rotating its files?)"


def test_many_files_not_counted_for_one_reason_are_one_entry(tmp_path):
    """Thirty nightly zstd backups made the item a wall of five identical lines and "25
    more": the files one reason holds back are counted in one entry."""
    sources_and_folder(tmp_path, names=("sales",))
    for i in range(30):
        (tmp_path / "backups" / f"sales-{i:02}.db.zst").write_bytes(b"\x28\xb5\x2f\xfd" + bytes(20))
    (tmp_path / "backups" / "sales-job.db").write_text("backup failed: disk full\n")
    item, found = judged(tmp_path, "backups/{source}-*", names=("sales",))
    assert not item.ok and found["sales"].count == 0 and len(found["sales"].not_counted) == 31
    assert len(item.problems) == 1, item.problems
    problem = item.problems[0]
    assert problem.count("syncd cannot look into") == 1, problem
    assert (f"30 files ({tmp_path}/backups/sales-00.db.zst, {tmp_path}/backups/sales-01.db.zst and 28 more): "
            "a zstd file syncd cannot look into" in problem), problem
    assert f"{tmp_path}/backups/sales-job.db (holds no SQLite database" in problem, problem


def test_sources_sharing_tables_are_told_apart_only_by_name_or_capture_id(tmp_path):
    """Two sources of one schema (crm gained a table since its backup): without a
    capture id in the backup, its tables say nothing about whose it is."""
    sources_and_folder(tmp_path, ("sales", "crm"), installed=False)
    take_backup(tmp_path / "crm.db", tmp_path / "backups" / "crm-1.db", 1)
    conn = sqlite3.connect(tmp_path / "crm.db")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
    conn.close()
    for name in ("sales", "crm"):
        install(tmp_path / f"{name}.db")

    item, found = judged(tmp_path, "backups/*.db", names=("sales", "crm"))
    assert not item.ok and found["sales"].count == 0 and found["crm"].count == 0
    assert found["sales"].not_counted == [f"{tmp_path}/backups/crm-1.db (shares tables with crm and carries no "
                                          "capture id of either, so nothing tells which it backs up; put {source} "
                                          "in backup_glob)"]

    item, found = judged(tmp_path, "backups/{source}-*.db", names=("sales", "crm"))  # the name says whose
    assert found["crm"].count == 1 and found["sales"].count == 0 and found["crm"].not_counted == []

    take_backup(tmp_path / "crm.db", tmp_path / "backups" / "crm-2.db", 0)  # carries crm's capture id now
    item, found = judged(tmp_path, "backups/*.db", names=("sales", "crm"))
    assert found["crm"].newest.endswith("crm-2.db") and found["sales"].count == 0 and found["sales"].others == 1


def test_another_sources_live_file_is_no_backup_and_a_long_list_is_cut_short(tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("sales", "markets"):
        make_source(tmp_path / "data" / f"{name}.db", name, installed=True)
    for i in range(8):  # each cut short at its own size: eight reasons, not one
        (tmp_path / "data" / f"junk-{i}.db").write_bytes(b"SQLite format 3\x00" + bytes(i + 1))
    now = dt.datetime.now(dt.timezone.utc)
    files = {n: tmp_path / "data" / f"{n}.db" for n in ("sales", "markets")}
    live = {n: live_identity(p, 2000) for n, p in files.items()}
    sources = [SourceFacts(n, str(p), n, backup=find_backups("data/*.db", n, tmp_path, now, p, live, files))
               for n, p in files.items()]
    assert f"{tmp_path}/data/markets.db (the live database of markets)" in sources[0].backup.not_counted
    assert sources[0].backup.others == 0
    item = backup(MigrationFacts(now, None, sources, [], 14, 30, 3600, "data/*.db", 30))
    sales = next(line for line in item.problems if line.startswith("sales:"))
    assert sales.endswith(" and 5 more"), sales  # ten files not counted: five named


def test_a_backup_folder_syncd_may_not_read_is_named_not_taken_for_no_backup(tmp_path, portable_syncd):
    """The runbook's nightly job makes its folder as root (`install -d -m 0750`): the daemon's
    status page and a report run as syncd's user could not list it and said "no backup
    matches" beside a fresh backup. Now the item names the folder syncd may not read."""
    import inspect
    import json
    import subprocess
    import tempfile
    from pathlib import Path

    from tests.test_file_permissions import SYNCD_GID, SYNCD_UID, SYSTEM_PYTHON

    base = Path(tempfile.mkdtemp(prefix="syncd-backups-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        make_source(base / "sales.db", "sales", installed=True)
        os.chmod(base / "sales.db", 0o644)
        (base / "backups").mkdir(mode=0o750)  # root's, as `install -d -m 0750` as root makes it
        take_backup(base / "sales.db", base / "backups" / "sales-nightly.db", 1)
        item, _ = judged(base, "backups/{source}-*.db", names=("sales",))
        assert item.ok, item.problems  # root reads it: the backup counts
        script = ("import json, sys; from pathlib import Path; from tests_judged import judged; "
                  "print(json.dumps(judged(Path(sys.argv[1]), 'backups/{source}-*.db', names=('sales',))[0].problems))")
        (base / "tests_judged.py").write_text(
            "import datetime as dt\n"
            "from syncd.report.backups import find_backups, live_identity\n"
            "from syncd.report.checklist import backup\n"
            "from syncd.report.facts import MigrationFacts, SourceFacts\n"
            + "\n\n" + inspect.getsource(judged))
        os.chmod(base / "tests_judged.py", 0o644)
        r = subprocess.run([SYSTEM_PYTHON, "-c", script, str(base)], user=SYNCD_UID, group=SYNCD_GID, extra_groups=[],
                           capture_output=True, text=True, timeout=60, cwd=base,
                           env={"PYTHONPATH": f"{portable_syncd}:{base}", "HOME": str(base)})
        assert r.returncode == 0, r.stderr
        problems = json.loads(r.stdout)
        assert len(problems) == 1 and problems[0].startswith("sales: "), problems
        assert "no backup matches" not in problems[0], problems
        assert f"{base}/backups" in problems[0] and "may not read" in problems[0], problems
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_backup_file_syncd_may_not_read_is_named_not_counted(tmp_path, portable_syncd):
    """A backup job running as root writes its files 0600 into a folder anyone may list:
    syncd's user sees the file and its date but cannot read a byte of it, so nothing
    shows it is a backup (of this source, or a database at all). It was credited as the
    fresh backup; now it is named as one syncd could not read, and only the backup syncd
    reads counts (here a month old: too old)."""
    import inspect
    import json
    import subprocess
    import tempfile
    from pathlib import Path

    from tests.test_file_permissions import SYNCD_GID, SYNCD_UID, SYSTEM_PYTHON

    base = Path(tempfile.mkdtemp(prefix="syncd-backups-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        make_source(base / "sales.db", "sales", installed=True)
        os.chmod(base / "sales.db", 0o644)
        (base / "backups").mkdir(mode=0o755)
        take_backup(base / "sales.db", base / "backups" / "sales-old.db", 31)
        os.chmod(base / "backups" / "sales-old.db", 0o644)
        take_backup(base / "sales.db", base / "backups" / "sales-nightly.db", 1)
        os.chmod(base / "backups" / "sales-nightly.db", 0o600)  # root's alone
        item, found = judged(base, "backups/{source}-*.db", names=("sales",))
        assert item.ok and found["sales"].newest.endswith("sales-nightly.db"), item.problems  # root reads it
        script = ("import json, sys; from pathlib import Path; from tests_judged import judged; "
                  "item, found = judged(Path(sys.argv[1]), 'backups/{source}-*.db', names=('sales',)); "
                  "print(json.dumps([item.ok, item.problems, found['sales'].count, found['sales'].newest]))")
        (base / "tests_judged.py").write_text(
            "import datetime as dt\n"
            "from syncd.report.backups import find_backups, live_identity\n"
            "from syncd.report.checklist import backup\n"
            "from syncd.report.facts import MigrationFacts, SourceFacts\n"
            + "\n\n" + inspect.getsource(judged))
        os.chmod(base / "tests_judged.py", 0o644)
        r = subprocess.run([SYSTEM_PYTHON, "-c", script, str(base)], user=SYNCD_UID, group=SYNCD_GID, extra_groups=[],
                           capture_output=True, text=True, timeout=60, cwd=base,
                           env={"PYTHONPATH": f"{portable_syncd}:{base}", "HOME": str(base)})
        assert r.returncode == 0, r.stderr
        ok, problems, count, newest = json.loads(r.stdout)
        assert not ok and count == 1 and newest.endswith("sales-old.db"), (ok, problems, count, newest)
        assert len(problems) == 1 and problems[0].startswith("sales: too old: "), problems
        assert f"{base}/backups/sales-nightly.db (syncd may not read it" in problems[0], problems
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_report_or_cutover_of_one_source_tells_its_backups_from_the_other_sources(tmp_path, make_config):
    """`syncd report --source` and `syncd cutover` judge one source, yet the files the
    pattern matches are told apart by every source configured: crm's nightly backup, in
    the folder both share, is no backup of sales, whose own job never ran."""
    import json

    from tests.support.daemon import run_cli

    sources_and_folder(tmp_path, ("sales", "crm"))
    take_backup(tmp_path / "crm.db", tmp_path / "backups" / "nightly-crm.db", 1)
    cfg = make_config([{"name": n, "path": str(tmp_path / f"{n}.db")} for n in ("sales", "crm")],
                      extra='[cutover]\nbackup_glob = "backups/*.db"\n')

    def backup_item(*args: str) -> dict:
        out = run_cli(cfg, "report", "--format", "json", *args)
        assert out.returncode in (0, 1), out.stderr
        return next(i for i in json.loads(out.stdout)["checklist"] if i["key"] == "backup")

    whole = backup_item()
    assert any(p.startswith("sales: no backup matches") for p in whole["problems"]), whole
    alone = backup_item("--source", "sales")
    assert not alone["ok"] and alone["problems"] == [p for p in whole["problems"] if p.startswith("sales:")], alone
    assert run_cli(cfg, "init").returncode == 0
    out = run_cli(cfg, "cutover", "--dry-run", "--source", "sales")
    assert "A recent SQLite backup exists" in out.stdout and "sales: no backup matches" in out.stdout, out.stdout


def test_a_hard_link_to_the_live_file_is_no_backup(tmp_path):
    """A "backup" made with `ln` (or `cp -l`) is the live file under another name: the
    same data on the same disk, as fresh as the file always. It is not counted, as the
    live file itself is not, nor is a hard link to another source's live file."""
    sources_and_folder(tmp_path)
    os.link(tmp_path / "sales.db", tmp_path / "backups" / "sales-today.db")
    os.link(tmp_path / "markets.db", tmp_path / "backups" / "markets-today.db")
    now = dt.datetime.now(dt.timezone.utc)
    files = {n: tmp_path / f"{n}.db" for n in ("sales", "markets")}
    live = {n: live_identity(p, 2000) for n, p in files.items()}
    found = find_backups("backups/{source}-*.db", "sales", tmp_path, now, files["sales"], live, files)
    assert found.count == 0 and found.not_counted == [f"{tmp_path}/backups/sales-today.db (the live database)"], found
    found = find_backups("backups/*.db", "sales", tmp_path, now, files["sales"], live, files)
    assert found.count == 0 and f"{tmp_path}/backups/markets-today.db (the live database of markets)" in \
        found.not_counted, found


def test_a_damaged_or_hostile_tar_backup_is_named_and_never_stops_the_report(tmp_path):
    """A tar.gz or tar.xz damaged part-way (bytes flipped past its first header), and one
    whose first header declares a pax record of a gigabyte: the report raised zlib's or
    lzma's error and stopped, or read the declared gigabyte into memory. Each is named as a
    damaged archive, not counted, and the backup beside them still counts."""
    import gzip
    import tarfile

    sources_and_folder(tmp_path, names=("sales",))
    take_backup(tmp_path / "sales.db", tmp_path / "sales-copy.db", 0)
    take_backup(tmp_path / "sales.db", tmp_path / "backups" / "sales-0.db", 1)
    for name, mode in (("sales-1.tar.gz", "w:gz"), ("sales-2.tar.xz", "w:xz")):
        with tarfile.open(tmp_path / "backups" / name, mode) as t:
            t.add(tmp_path, "folder", recursive=False)
            t.add(tmp_path / "sales-copy.db", "folder/sales.db")
        data = bytearray((tmp_path / "backups" / name).read_bytes())
        data[300:364] = bytes(b ^ 0xFF for b in data[300:364])
        (tmp_path / "backups" / name).write_bytes(bytes(data))
    # A pax header declaring 1 GiB of records, then zeros: small on disk, huge unpacked.
    header = bytearray(512)
    header[0:9] = b"PaxHeader"
    header[100:108] = b"0000644\0"
    header[124:136] = b"%011o\0" % (1 << 30)
    header[156:157] = b"x"
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    with gzip.open(tmp_path / "backups" / "sales-3.tar.gz", "wb") as f:
        f.write(bytes(header))
        for _ in range(64):
            f.write(bytes(1 << 20))
    started = time.monotonic()
    item, found = judged(tmp_path, "backups/{source}-*", names=("sales",))
    assert time.monotonic() - started < 10  # liveness: nothing near the declared gigabyte was read
    assert found["sales"].count == 1 and found["sales"].newest.endswith("sales-0.db"), found["sales"]
    shown = " ".join(found["sales"].not_counted)
    assert "backups/sales-3.tar.gz (holds no SQLite database syncd can read: a damaged" in shown, shown
    for name in ("sales-1.tar.gz", "sales-2.tar.xz"):
        # Where the flipped bytes land in the compressed stream varies with the files' times
        # in the archive: a stream that fails to unpack, or one that unpacks into a first
        # file that is no database. Either way named, and not counted.
        assert (f"backups/{name} (holds no SQLite database syncd can read: a damaged" in shown
                or f"backups/{name} (holds no SQLite database syncd can find: a " in shown), shown
