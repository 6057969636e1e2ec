"""Helpers acting as the application: create tables, start writer processes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import ROOT
from tests.support.writer import SCHEMA


def create_items(db: Path, table: str = "items", rows: int = 0, journal: str | None = None) -> None:
    conn = sqlite3.connect(db)
    if journal:
        conn.execute(f"PRAGMA journal_mode={journal}")
    t = '"' + table.replace('"', '""') + '"'
    conn.execute(SCHEMA.format(t=t))
    if rows:
        conn.executemany(f"INSERT INTO {t} VALUES (?, ?, ?, ?, ?)",
                         ((i, f"seed{i}", i, i / 3, bytes([i % 256])) for i in range(1, rows + 1)))
    conn.commit()
    conn.close()


class Writer:
    def __init__(self, db: Path, seconds: float, seed: int, table: str = "items", rate: float = 0, ids: int = 2000):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.writer", str(db), "--seconds", str(seconds), "--seed", str(seed),
             "--table", table, "--rate", str(rate), "--ids", str(ids)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
        )

    def result(self, timeout: float = 120) -> dict:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return json.loads(out)
