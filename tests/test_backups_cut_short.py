"""A backup the job left cut short (killed half-way, the disk full, a copy that
stopped) is no backup: the report's backup item must not count it as the recent one,
though its name matches and its first bytes are SQLite's."""

from __future__ import annotations

import os
import sqlite3

from tests.test_backup_evidence import install, judged, take_backup


def big_source(path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE deals (id INTEGER PRIMARY KEY, note TEXT)")
    conn.executemany("INSERT INTO deals VALUES (?, ?)", [(i, "x" * 200) for i in range(5000)])
    conn.close()
    install(path)


def test_a_backup_cut_short_is_not_the_recent_backup(tmp_path):
    big_source(tmp_path / "sales.db")
    (tmp_path / "backups").mkdir()
    take_backup(tmp_path / "sales.db", tmp_path / "backups" / "sales-old.db", 40)
    cut = tmp_path / "backups" / "sales-new.db"
    take_backup(tmp_path / "sales.db", cut, 1)
    whole = os.path.getsize(cut)
    os.truncate(cut, whole // 2)  # the nightly job died half-way through
    os.utime(cut, (os.path.getmtime(tmp_path / "backups" / "sales-old.db") + 39 * 86400,) * 2)

    item, found = judged(tmp_path, "backups/{source}-*.db", names=("sales",))
    assert not item.ok, item.evidence
    assert found["sales"].newest.endswith("sales-old.db"), found["sales"]
    assert any("sales-new.db" in n and "cut short" in n for n in found["sales"].not_counted), found["sales"]


def test_a_file_holding_only_sqlites_header_is_no_backup(tmp_path):
    big_source(tmp_path / "sales.db")
    (tmp_path / "backups").mkdir()
    (tmp_path / "backups" / "sales-1.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)

    item, found = judged(tmp_path, "backups/{source}-*.db", names=("sales",))
    assert not item.ok, item.evidence
    assert found["sales"].count == 0 and len(found["sales"].not_counted) == 1, found["sales"]
