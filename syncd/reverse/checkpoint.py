"""The reverse stream's checkpoint: how far SQLite has followed Postgres.

Kept in the SQLite file (`_syncd_meta`, key `reverse_checkpoint`), written in the same
SQLite transaction as the rows it covers, so the file alone says exactly which
changes it holds: a crash anywhere loses and repeats nothing.

A position is made of Postgres snapshots, not sequence numbers (see capture.py):

  done    every changelog entry whose transaction is visible in this snapshot is applied;
  target  while a batch is split (more entries than one SQLite transaction takes): the
          entries visible in `target` and not in `done` are being applied, in
          (txid, seq) order, up to `after`;
  n       how many positions the file has taken: Postgres records the n of each one it
          prunes behind, so a file whose n is lower (an older copy put back) is known to
          lack changes Postgres no longer has.

Those entries all belong to committed transactions, so the set is closed and the
order total: a transaction that commits later is not visible in `target` and waits
for the next one, however small its txid or seq.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

META_KEY = "reverse_checkpoint"
RELOAD_KEY = "reverse_reload"  # tables to copy again in full from Postgres (JSON list)
NOTHING = "1:1:"  # a snapshot in which no transaction is visible: nothing applied yet


@dataclass(frozen=True)
class ReverseCheckpoint:
    generation: str  # the cutover this position belongs to (capture.start_generation)
    done: str = NOTHING
    target: str | None = None
    after: tuple[int, int] | None = None
    n: int = 0

    def encode(self) -> str:
        return json.dumps({"generation": self.generation, "done": self.done, "target": self.target,
                           "after": list(self.after) if self.after else None, "n": self.n}, sort_keys=True)

    @classmethod
    def decode(cls, text: str | None) -> "ReverseCheckpoint | None":
        if not text:
            return None
        try:
            d = json.loads(text)
            after = d.get("after")
            return cls(str(d["generation"]), str(d["done"]), d.get("target"),
                       (int(after[0]), int(after[1])) if after else None, int(d.get("n", 0)))
        except (ValueError, KeyError, TypeError, IndexError):
            raise ValueError(f"malformed reverse checkpoint in _syncd_meta: {text[:80]!r}") from None

    def advanced(self, target: str, last: tuple[int, int] | None, complete: bool) -> "ReverseCheckpoint":
        """The position after a batch read against `target` that ended at entry `last`;
        `complete` when it took every entry left in the target."""
        if complete:
            return ReverseCheckpoint(self.generation, target, None, None, self.n + 1)
        return ReverseCheckpoint(self.generation, self.done, target, last, self.n + 1)


def start(generation: str, n: int = 0) -> ReverseCheckpoint:
    """Nothing applied yet, counting on from `n` (the n Postgres last pruned behind)."""
    return ReverseCheckpoint(generation, n=n)
