"""The way back: after `syncd cutover` the frozen SQLite file follows Postgres, so that
`syncd rollback` is a switch, not a restore.

Modules in the order data flows: capture (statement triggers recording changed keys
into a changelog in the bookkeeping schema, and the freeze a rollback puts on
Postgres), checkpoint (how far SQLite has followed, as Postgres snapshots), reader
(batches of certainly committed entries with the current rows), values (Postgres
values back into SQLite's own shape), applier (one short SQLite transaction per batch,
the checkpoint in it), tables (schema changes followed or paused), pipeline (one
source's way back, as the daemon runs it), evidence (what `syncd verify` counts as in
flight), position (figures for status and the report). syncd/rollback.py turns the
direction around.
"""
