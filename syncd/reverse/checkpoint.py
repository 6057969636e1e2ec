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
          lack changes Postgres no longer has;
  lineage once an older copy was put back and copied again, the count goes on from
          Postgres's in a new lineage, which Postgres records: a file of another (the
          copy that had been replaced, put back in its turn) is older whatever its n.

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
    lineage: str | None = None

    def encode(self) -> str:
        d = {"generation": self.generation, "done": self.done, "target": self.target,
             "after": list(self.after) if self.after else None, "n": self.n}
        if self.lineage is not None:
            d["lineage"] = self.lineage
        return json.dumps(d, sort_keys=True)

    @classmethod
    def decode(cls, text: str | None) -> "ReverseCheckpoint | None":
        if not text:
            return None
        try:
            d = json.loads(text)
            after = d.get("after")
            return cls(str(d["generation"]), str(d["done"]), d.get("target"),
                       (int(after[0]), int(after[1])) if after else None, int(d.get("n", 0)),
                       None if d.get("lineage") is None else str(d["lineage"]))
        except (ValueError, KeyError, TypeError, IndexError):
            raise ValueError(f"malformed reverse checkpoint in _syncd_meta: {text[:80]!r}") from None

    def advanced(self, target: str, last: tuple[int, int] | None, complete: bool) -> "ReverseCheckpoint":
        """The position after a batch read against `target` that ended at entry `last`;
        `complete` when it took every entry left in the target."""
        if complete:
            return ReverseCheckpoint(self.generation, target, None, None, self.n + 1, self.lineage)
        return ReverseCheckpoint(self.generation, self.done, target, last, self.n + 1, self.lineage)


def start(generation: str, n: int = 0, lineage: str | None = None) -> ReverseCheckpoint:
    """Nothing applied yet, counting on from `n` (the n Postgres last pruned behind)."""
    return ReverseCheckpoint(generation, n=n, lineage=lineage)


def older(cp: ReverseCheckpoint | None, gen) -> bool:
    """Whether the file holding `cp` is an older copy than the way back wrote into, for the
    way back's record `gen` (capture.Generation): it holds no position of this cutover
    (the cutover writes one), or a lower count than Postgres pruned behind, or a count of
    another lineage than the one the last copying again began."""
    return (cp is None or cp.generation != gen.id or cp.n < gen.pruned_n
            or (gen.lineage is not None and cp.lineage != gen.lineage))
