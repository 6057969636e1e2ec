"""A batch's fingerprint is kept in Postgres and compared with the file's entries when
the daemon restarts (a file restored from a backup is told apart by it), so its digest
must never change between syncd versions: it is the blake2b of each entry's repr()
with trailing NULL key slots dropped, one line per entry. The reader builds it as one
text; this checks it against that definition, entry by entry."""

from __future__ import annotations

import hashlib
import random

from syncd.sqlite.reader import fingerprint
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


def test_a_backlog_is_read_in_larger_batches_in_wal_mode_only():
    assert batch_limit(100, 5000) == 5000
    assert batch_limit(7000, 5000) == 7000
    assert batch_limit(1_000_000, 5000) == 20_000
    assert batch_limit(1_000_000, 5000, "delete") == 5000
