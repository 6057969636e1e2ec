"""A batch's fingerprint is kept in Postgres and compared with the file's entries when
the daemon restarts (a file restored from a backup is told apart by it), so its digest
must never change between syncd versions: it is the blake2b of each entry's repr()
with trailing NULL key slots dropped, one line per entry. The reader builds it as one
text; this checks it against that definition, entry by entry."""

from __future__ import annotations

import hashlib
import random
import sqlite3

from syncd.sqlite.reader import _batch_entries, fingerprint
from syncd.stream import batch_limit


def by_definition(entries: list[tuple]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for e in entries:
        e = tuple(e)
        while len(e) > 3 and e[-1] is None:
            e = e[:-1]
        h.update(repr(e).encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()


TRICKY = [None, 0, 1, -7, 2**63 - 1, 1.0, -0.0, 2.5, float("inf"), "", "a", "None", ", None)", "x\ny",
          "', None)\n", "\udcff", "é", b"", b"\x00\n", b", None)\n"]


def test_fingerprint_is_the_defined_digest():
    rnd = random.Random(16)
    for _ in range(2000):
        n = rnd.randint(0, 30)
        slots = rnd.randint(1, 6)
        entries = [(seq, rnd.randint(1, 4), rnd.randint(1, 3), *[rnd.choice(TRICKY) for _ in range(slots)])
                   for seq in range(1, n + 1)]
        assert fingerprint(entries) == by_definition(entries), entries


def test_fingerprint_drops_only_trailing_null_slots():
    assert fingerprint([(1, 2, 3, "k", None, None)]) == by_definition([(1, 2, 3, "k")])
    assert fingerprint([(1, 2, 3, None, "k", None)]) != fingerprint([(1, 2, 3, "k")])


def test_the_reader_digests_a_batch_as_defined_however_wide_its_keys(tmp_path):
    """The reader reads a batch's entries only as wide as its widest key; the digest is
    the defined one of the whole entries all the same."""
    conn = sqlite3.connect(tmp_path / "cl.db")
    conn.execute("CREATE TABLE _syncd_changelog (seq INTEGER PRIMARY KEY, tid INTEGER NOT NULL, op INTEGER NOT NULL, "
                 "k0, k1, k2, k3, k4)")
    values = [None, 0, 1, -7, 2**63 - 1, -2**63, 1.0, -0.0, 2.5, float("inf"), "", "a", "None", ", None)", "x\ny",
              "é", b"", b"\x00\n"]
    rnd = random.Random(1202)
    seq = 0
    for run in range(200):
        width = rnd.randint(1, 5)  # most runs: every key this wide or narrower
        for _ in range(rnd.randint(1, 30)):
            seq += 1
            key = [rnd.choice(values) for _ in range(rnd.randint(1, width))]
            conn.execute(f"INSERT INTO _syncd_changelog VALUES (?, ?, ?{', ?' * len(key)}{', NULL' * (5 - len(key))})",
                         (seq, rnd.randint(1, 4), rnd.randint(1, 3), *key))
    after = 0
    while after < seq:
        limit = rnd.randint(1, 40)
        entries = _batch_entries(conn, "seq > ?", (after,), limit)
        digest = fingerprint(entries)
        whole = conn.execute("SELECT * FROM _syncd_changelog WHERE seq > ? ORDER BY seq LIMIT ?",
                             (after, limit)).fetchall()
        assert [e[:3] for e in entries] == [w[:3] for w in whole]
        assert digest == by_definition(whole) == fingerprint(whole)
        after = entries[-1][0]
    tid = conn.execute("SELECT tid FROM _syncd_changelog LIMIT 1").fetchone()[0]
    entries = _batch_entries(conn, "seq > ? AND tid = ?", (0, tid), 25)
    assert fingerprint(entries) == by_definition(conn.execute("SELECT * FROM _syncd_changelog WHERE tid = ? ORDER BY seq LIMIT 25",
                                                (tid,)).fetchall())


def test_a_backlog_is_read_in_larger_batches_in_wal_mode_only():
    assert batch_limit(100, 5000) == 5000
    assert batch_limit(7000, 5000) == 20_000  # the same bound to the end of a backlog
    assert batch_limit(1_000_000, 5000) == 20_000
    assert batch_limit(1_000_000, 5000, "delete") == 5000
