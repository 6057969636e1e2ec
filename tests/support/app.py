"""Helpers acting as the application: create tables, start writer processes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
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


class ShortTimeoutWriter(threading.Thread):
    """An application committing a one-row INSERT into `hits` every `pause` seconds with a
    busy_timeout of `timeout` seconds, until stopped: its lock errors and its transactions."""

    def __init__(self, db, timeout: float, pause: float = 0.02):
        super().__init__(daemon=True)
        self.db, self.timeout, self.pause = db, timeout, pause
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.transactions = 0

    def run(self) -> None:
        conn = sqlite3.connect(self.db, timeout=self.timeout)
        while not self.stop.is_set():
            try:
                conn.execute("INSERT INTO hits(v) VALUES ('x')")
                conn.commit()
                self.transactions += 1
            except sqlite3.OperationalError as e:
                self.errors.append(str(e))
                conn.rollback()
            time.sleep(self.pause)
        conn.close()


def heavy_file(db: Path, journal: str, rows: int, size: int) -> None:
    """`docs (id, body, n)` of `rows` rows of `size` bytes, and an empty `hits` for a writer."""
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA journal_mode={journal}")
    conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, n INTEGER)")
    conn.execute("CREATE TABLE hits (id INTEGER PRIMARY KEY, v TEXT)")
    pad = "x" * size
    conn.executemany("INSERT INTO docs VALUES (?, ?, ?)", ((i, f"{i}{pad}", i) for i in range(1, rows + 1)))
    conn.commit()
    conn.close()
