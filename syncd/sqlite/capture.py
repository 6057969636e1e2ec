"""The capture objects syncd keeps inside a SQLite file: changelog, registry, triggers.

The changelog records only *which* row changed (table id + key) with an increasing
sequence; the reader fetches current values later, in the same read transaction.
`seq` is a plain rowid alias (cheapest to write); it stays monotonic because the
pruner never deletes the newest applied entry, so max(seq) never falls back.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass, field

from syncd.identifiers import quote_ident
from syncd.model import TableSpec
from syncd.sqlite.connection import is_busy, surrogate_text, write_wait
from syncd.sqlite.hold import RowsPerHold

CHANGELOG = "_syncd_changelog"
REGISTRY = "_syncd_tables"
META = "_syncd_meta"
TRIGGER_PREFIX = "_syncd_t"
FORMAT_VERSION = "1"
INITIAL_KEY_SLOTS = 4

OP_INSERT, OP_UPDATE, OP_DELETE = 1, 2, 3
SLOW_WRITE_SECONDS = 1.0  # a write lock held longer is logged: application writers queue behind it

log = logging.getLogger(__name__)


class LockTimeout(Exception):
    """syncd could not get a short write lock on the SQLite file in time."""


def contended(exc: BaseException) -> bool:
    """The application holds the file: SQLite said busy or locked, or a write lock was
    not had in time. A reason to try again soon, not a failure."""
    return isinstance(exc, LockTimeout) or is_busy(exc)


class CaptureStateError(sqlite3.DatabaseError):
    """syncd's own bookkeeping inside the SQLite file holds a value it cannot read."""


def _file_of(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA main.database_list").fetchone()
    return (row[2] if row else "") or "(in memory)"


def _meta_position(conn: sqlite3.Connection, meta: dict, key: str) -> int:
    value = meta.get(key, 0)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise CaptureStateError(
            f"SQLite file {_file_of(conn)}: {META} key {key!r} holds {str(value)[:40]!r}, not a number; "
            f"delete that row (DELETE FROM {META} WHERE key = '{key}') and syncd writes it anew") from None


def slot(i: int) -> str:
    return f"k{i}"


# The names trigger_names gives, and gave in earlier releases (rid, ridu: a file armed
# then still has them, writing to the changelog): an application trigger that merely
# begins with the prefix (_syncd_touch) is the application's, and never dropped.
_CAPTURE_TRIGGER = re.compile(re.escape(TRIGGER_PREFIX) + r"[0-9]+_(?:ins|upd|key|del|rep|repu|rid|ridu)")


def is_capture_trigger(name: str) -> bool:
    return _CAPTURE_TRIGGER.fullmatch(name) is not None


def capture_triggers(conn: sqlite3.Connection) -> list[str]:
    """The names of syncd's capture triggers in the file (is_capture_trigger)."""
    return [name for (name,) in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'trigger' "
                                             "AND substr(name, 1, ?) = ?", (len(TRIGGER_PREFIX), TRIGGER_PREFIX))
            if is_capture_trigger(name)]


def changelog_ends(conn: sqlite3.Connection) -> tuple[int, int]:
    """The changelog's lowest and highest seq (0, 0 when empty). Two subqueries, each a
    lookup at one end: min() and max() side by side in one SELECT walk every entry,
    under a read lock that holds a rollback-journal file's writers back."""
    cl = f"main.{quote_ident(CHANGELOG)}"
    return conn.execute(f"SELECT (SELECT coalesce(min(seq), 0) FROM {cl}), "
                        f"(SELECT coalesce(max(seq), 0) FROM {cl})").fetchone()


# Every table's reload reason from a suspension of capture (disk_guard.suspend) begins so.
SUSPENDED_RELOAD = "capture was suspended to protect the disk"


def trigger_names(tid: int) -> dict[str, str]:
    return {
        "ins": f"{TRIGGER_PREFIX}{tid}_ins",
        "upd": f"{TRIGGER_PREFIX}{tid}_upd",
        "key": f"{TRIGGER_PREFIX}{tid}_key",
        "del": f"{TRIGGER_PREFIX}{tid}_del",
        # Older syncd versions looked up REPLACE victims in triggers naming non-key
        # columns; listed so re-arming drops them (collisions.py does that job now).
        "rep": f"{TRIGGER_PREFIX}{tid}_rep",
        "repu": f"{TRIGGER_PREFIX}{tid}_repu",
    }


def trigger_sql(tid: int, spec: TableSpec) -> dict[str, str]:
    """CREATE TRIGGER statements capturing every change to `spec`'s table."""
    names = trigger_names(tid)
    table = quote_ident(spec.name)
    cl = quote_ident(CHANGELOG)
    slots = ", ".join(slot(i) for i in range(len(spec.key)))
    ref = spec.sqlite_ref
    new = ", ".join(f"NEW.{ref(k)}" for k in spec.key)
    old = ", ".join(f"OLD.{ref(k)}" for k in spec.key)
    # COLLATE BINARY: under a NOCASE key, 'abc' -> 'ABC' is still a key change for Postgres.
    # typeof: in a column without a type, 1 and 1.0 are one key to SQLite but two to Postgres.
    key_changed = " OR ".join(f"OLD.{ref(k)} IS NOT NEW.{ref(k)} COLLATE BINARY OR "
                              f"typeof(OLD.{ref(k)}) IS NOT typeof(NEW.{ref(k)})" for k in spec.key)
    # The old key is recorded by a trigger of its own, limited to UPDATEs that set a key
    # column (or the rowid, which an INTEGER PRIMARY KEY aliases): SQLite skips it for
    # every other UPDATE, which keeps bulk updates cheap.
    stored = {c.name for c in spec.stored_columns}
    of_columns = [quote_ident(k) for k in spec.key if k in stored] + (
        [] if spec.without_rowid else ["rowid", "oid", "_rowid_"])
    # A generated key column changes when a column it is computed from is set, and
    # SQLite fires UPDATE OF only for the columns the UPDATE names: such a key's trigger
    # looks at every UPDATE.
    of = "" if any(spec.column(k).generated for k in spec.key) else f" OF {', '.join(of_columns)}"
    out = {
        "ins": (
            f"CREATE TRIGGER {quote_ident(names['ins'])} AFTER INSERT ON {table} BEGIN "
            f"INSERT INTO {cl}(tid, op, {slots}) VALUES ({tid}, {OP_INSERT}, {new}); END"
        ),
        "upd": (
            f"CREATE TRIGGER {quote_ident(names['upd'])} AFTER UPDATE ON {table} BEGIN "
            f"INSERT INTO {cl}(tid, op, {slots}) VALUES ({tid}, {OP_UPDATE}, {new}); END"
        ),
        "key": (
            f"CREATE TRIGGER {quote_ident(names['key'])} AFTER UPDATE{of} ON {table} "
            f"WHEN {key_changed} BEGIN "
            f"INSERT INTO {cl}(tid, op, {slots}) VALUES ({tid}, {OP_DELETE}, {old}); END"
        ),
        "del": (
            f"CREATE TRIGGER {quote_ident(names['del'])} AFTER DELETE ON {table} BEGIN "
            f"INSERT INTO {cl}(tid, op, {slots}) VALUES ({tid}, {OP_DELETE}, {old}); END"
        ),
    }
    # Not captured: INSERT OR REPLACE with an explicit rowid (or UPDATE OR REPLACE setting
    # one) on a table keyed by something else deletes the row at that rowid without a
    # trigger. Finding that row in a trigger means naming the table in the trigger's
    # body, which SQLite does not rewrite on ALTER TABLE RENAME under legacy_alter_table:
    # the application's next write would fail. The periodic verification finds such a
    # row and repairs it (docs/operations.md). Nor is a BLOB written in place through
    # incremental I/O (sqlite3_blob_write): no UPDATE runs, so no trigger fires at all.
    return out


@dataclass
class CaptureState:
    """What capture currently looks like inside one SQLite file."""

    capture_id: str | None = None
    format_version: str | None = None
    registry: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)  # name -> (tid, key)
    # Tables Postgres must re-snapshot, with why: capture had a gap (triggers were missing)
    # or a keyless table's rowids may have moved (the schema moved without syncd).
    rearmed: dict[str, str] = field(default_factory=dict)
    schema_seen: int | None = None  # the schema_version syncd last accounted for (see note_schema)
    triggers: dict[str, tuple[str, str]] = field(default_factory=dict)  # trigger name -> (table, sql)
    key_slots: int = 0
    # Tables with an application trigger that can end the row's trigger programs
    # (RAISE(IGNORE)) created after syncd's: it fires first, and syncd's would not run.
    outrun: dict[str, str] = field(default_factory=dict)  # table -> the application's trigger
    max_seq: int = 0
    pruned_seq: int = 0  # the checkpoint the last prune in this file recorded (see record_pruned)

    @property
    def installed(self) -> bool:
        return self.capture_id is not None

    def tid_of(self, table: str) -> int | None:
        entry = self.registry.get(table)
        return entry[0] if entry else None

    def triggers_match(self, tid: int, spec: TableSpec) -> bool:
        if spec.name in self.outrun:
            return False
        expected = trigger_sql(tid, spec)
        names = trigger_names(tid)
        for kind, name in names.items():
            have = self.triggers.get(name)
            want = expected.get(kind)
            if want is None and have is None:
                continue
            if want is None or have is None or have[1] != want or have[0] != spec.name:
                return False
        return True


GAP_REASON = ("capture triggers were missing (table rebuilt?): re-armed them and re-snapshotting the table so "
              "changes made in between are not lost")
GENERATED_KEY_REASON = ("the table is keyed on a generated column, whose changes an older syncd's key trigger "
                        "missed (rows under an old key may have stayed in Postgres): re-armed it and "
                        "re-snapshotting the table")


def missed_generated_key(state: CaptureState, tid: int, spec: TableSpec) -> bool:
    """An older syncd's key trigger on a table keyed on a generated column: it fired only
    for UPDATEs naming a key column, never for one setting a column the key is computed from."""
    have = state.triggers.get(trigger_names(tid)["key"])
    return (have is not None and any(spec.column(k).generated for k in spec.key)
            and " UPDATE OF " in have[1].upper())


def outrun_reason(trigger: str) -> str:
    return (f"the application's trigger {quote_ident(trigger)} (RAISE(IGNORE)) fired before syncd's capture "
            "triggers, which may not have recorded the changes it ended: created syncd's again to fire first, "
            "and re-snapshotting the table")


REBUILT_REASON = ("the table was rebuilt (a new table took its name, with syncd's capture triggers copied onto it): "
                  "re-snapshotting the table so changes made in between are not lost")
ROWIDS_MOVED_REASON = ("the SQLite file's schema changed without syncd (the application's DDL, or a VACUUM, "
                       "which renumbers the rowids this keyless table is keyed by; SQLite cannot tell the two "
                       "apart): reloading the table aside")


def _has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    return any(r[1] == column for r in conn.execute(f"PRAGMA main.table_info({quote_ident(table)})"))


def _schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA main.schema_version").fetchone()[0]


def _own_schema_change(conn: sqlite3.Connection, fn):
    """Inside a write transaction: run fn, which changes the schema, and account for
    the version it moves, so note_schema later tells syncd's own changes from the
    application's. If the version had already moved without syncd, it stays unaccounted."""
    before = _schema_version(conn)
    result = fn(conn)
    seen = conn.execute(f"SELECT value FROM main.{quote_ident(META)} WHERE key = 'schema_version'").fetchone()
    if seen is None or seen[0] == str(before):
        conn.execute(f"INSERT OR REPLACE INTO main.{quote_ident(META)}(key, value) VALUES ('schema_version', ?)",
                     (str(_schema_version(conn)),))
    return result


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    """syncd's meta rows (the table must exist), the positions kept there checked to be
    numbers: a damaged value is a clear error, never a silent 0."""
    meta = dict(conn.execute(f"SELECT key, value FROM main.{quote_ident(META)}").fetchall())
    for key in ("pruned_seq", "schema_version"):
        if key in meta:
            _meta_position(conn, meta, key)
    return meta


def registry_key(conn: sqlite3.Connection, name: str, key: str) -> tuple:
    """A registry row's key columns, or CaptureStateError naming the damaged row."""
    try:
        return tuple(json.loads(key))
    except (TypeError, ValueError):
        raise CaptureStateError(
            f"SQLite file {_file_of(conn)}: {REGISTRY} row for table {name!r} holds key_columns "
            f"{str(key)[:40]!r}, not a JSON list; run `syncd uninstall` and `syncd init`") from None


_ENDS_TRIGGERS = re.compile(r"\bRAISE\s*\(\s*(?:IGNORE|FAIL)\b", re.IGNORECASE)  # not RAISE(ABORT, 'failed')
_QUOTED = r'(?:"(?:[^"]|"")*"|\[[^\]]*\]|`(?:[^`]|``)*`)'
_BARE = r'[^\s.("\[`]+'
# A trigger that clearly fires before the change (BEFORE, or no timing: SQLite's default);
# anything else, a header this does not read included, counts as firing after it. A bare
# name ends at whitespace: "trg_delete AFTER" is not "trg_" + "DELETE".
_BEFORE_TRIGGER = re.compile(
    rf"\s*CREATE\s+TRIGGER\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:(?:{_QUOTED}|{_BARE})\s*\.\s*)?"
    rf"(?:{_QUOTED}\s*|{_BARE}\s+)(?:BEFORE|INSERT|UPDATE|DELETE)\b", re.IGNORECASE)


def read_state(conn: sqlite3.Connection) -> CaptureState:
    state = CaptureState()
    if not _table_exists(conn, META):
        return state
    meta = read_meta(conn)
    state.capture_id = meta.get("capture_id")
    state.format_version = meta.get("format_version")
    state.pruned_seq = _meta_position(conn, meta, "pruned_seq")
    state.schema_seen = _meta_position(conn, meta, "schema_version") if "schema_version" in meta else None
    if _table_exists(conn, REGISTRY):
        has_reason = _has_column(conn, REGISTRY, "reload_reason")
        reason_col = "reload_reason" if has_reason else "NULL"
        for tid, name, key, rearmed, reason in conn.execute(
            f"SELECT tid, name, key_columns, rearmed_at, {reason_col} FROM main.{quote_ident(REGISTRY)}"
        ):
            state.registry[name] = (tid, registry_key(conn, name, key))
            if rearmed is not None:
                state.rearmed[name] = reason or GAP_REASON
    for name, tbl, sql in conn.execute(
        "SELECT name, tbl_name, sql FROM main.sqlite_master WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
        (len(TRIGGER_PREFIX), TRIGGER_PREFIX),
    ):
        state.triggers[name] = (tbl, sql)
    # SQLite fires a table's triggers newest first (by their place in sqlite_master). Only
    # an AFTER trigger matters: RAISE(IGNORE) in a BEFORE trigger skips the change itself.
    # RAISE(FAIL) ends the statement keeping the rows it changed before; ABORT and
    # ROLLBACK undo the change, capture included.
    # (Told by their exact names: an application trigger may begin with the prefix too.)
    # An application trigger's text is whatever bytes it was given: read with any that are
    # not UTF-8 kept (surrogates).
    old_factory = conn.text_factory
    conn.text_factory = surrogate_text
    try:
        later = conn.execute(
            "SELECT DISTINCT s.name, s.tbl_name, a.name, a.sql FROM main.sqlite_master s JOIN main.sqlite_master a "
            "ON a.type = 'trigger' AND a.tbl_name = s.tbl_name COLLATE NOCASE AND a.rowid > s.rowid "
            "AND (a.sql LIKE '%raise%(%ignore%' OR a.sql LIKE '%raise%(%fail%') "
            "WHERE s.type = 'trigger' AND substr(s.name, 1, ?1) = ?2 ORDER BY a.name",
            (len(TRIGGER_PREFIX), TRIGGER_PREFIX),
        ).fetchall()
    finally:
        conn.text_factory = old_factory
    for own, tbl, app, sql in later:
        if (is_capture_trigger(own) and not is_capture_trigger(app) and _ENDS_TRIGGERS.search(sql or "")
                and not _BEFORE_TRIGGER.match(sql or "")):
            state.outrun.setdefault(tbl, app)
    if _table_exists(conn, CHANGELOG):
        cols = [r[1] for r in conn.execute(f"PRAGMA main.table_info({quote_ident(CHANGELOG)})")]
        state.key_slots = sum(1 for c in cols if c.startswith("k") and c[1:].isdigit())
        state.max_seq = conn.execute(f"SELECT coalesce(max(seq), 0) FROM main.{quote_ident(CHANGELOG)}").fetchone()[0]
    return state


def write_transaction(conn: sqlite3.Connection, fn, *, busy_timeout_ms: int, deadline_seconds: float = 120.0):
    """Run fn(conn) in a short BEGIN IMMEDIATE transaction.

    The busy timeout is short so an application writer never queues behind syncd for
    long; on SQLITE_BUSY syncd steps back, sleeps, and tries again until the deadline.
    The connection's own busy timeout (for its reads) is restored afterwards. A worker
    whose pipeline holds a Postgres connection bounds the deadline (write_wait).
    """
    bound = write_wait()
    if bound is not None:
        deadline_seconds = min(deadline_seconds, bound)
    start = time.monotonic()
    delay = 0.01
    read_timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    try:
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                locked_at = time.monotonic()
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                    return result
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                finally:  # committed or not: the application's writers waited all the same
                    _note_hold(conn, fn, time.monotonic() - locked_at)
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() - start > deadline_seconds:
                    raise LockTimeout(
                        f"could not get a write lock for {deadline_seconds:.0f} s: "
                        "an application transaction keeps the database locked"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(read_timeout)}")


def wait_write_lock(conn: sqlite3.Connection, busy_timeout_ms: int, deadline_seconds: float) -> None:
    """Return once the file's write lock can be had (taken and given back at once,
    nothing written); LockTimeout after `deadline_seconds`."""
    write_transaction(conn, lambda c: None, busy_timeout_ms=busy_timeout_ms, deadline_seconds=deadline_seconds)


def _note_hold(conn: sqlite3.Connection, fn, held: float) -> None:
    """Log a write lock held past SLOW_WRITE_SECONDS; never raises."""
    if held <= SLOW_WRITE_SECONDS:
        return
    what = getattr(fn, "__qualname__", None) or type(fn).__name__
    try:
        path = _file_of(conn)
    except sqlite3.Error:
        path = "a SQLite file"
    log.warning("syncd held the write lock of %s for %.1f s (%s); application writers waited behind it",
                path, held, what)


def ensure_meta(conn: sqlite3.Connection) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS main.{quote_ident(META)} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def _install_base(conn: sqlite3.Connection) -> None:
    ensure_meta(conn)
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS main.{quote_ident(REGISTRY)} "
        "(tid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, key_columns TEXT NOT NULL, rearmed_at TEXT, "
        "reload_reason TEXT)"
    )
    if not _has_column(conn, REGISTRY, "reload_reason"):  # installed by an older syncd
        conn.execute(f"ALTER TABLE main.{quote_ident(REGISTRY)} ADD COLUMN reload_reason TEXT")
    slots = ", ".join(slot(i) for i in range(INITIAL_KEY_SLOTS))
    # Key slots have no declared type, so values keep their exact storage class.
    # ON CONFLICT FAIL: these constraints can never fire (seq is always a new rowid, tid
    # and op are constants in the triggers), but with the default ABORT SQLite must be
    # able to undo a statement halfway, so every UPDATE of many rows copied each page it
    # touched to a statement journal first: 13% of a bulk UPDATE's CPU time
    # (bench/capture_overhead.py). An application statement that can itself abort
    # still gets its statement journal, and a failed trigger insert (a full disk) ends
    # the whole transaction, as before: the change and its entry stay together.
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS main.{quote_ident(CHANGELOG)} "
        f"(seq INTEGER PRIMARY KEY ON CONFLICT FAIL, tid INTEGER NOT NULL ON CONFLICT FAIL, "
        f"op INTEGER NOT NULL ON CONFLICT FAIL, {slots})"
    )
    meta = quote_ident(META)
    conn.execute(
        f"INSERT OR IGNORE INTO main.{meta}(key, value) VALUES ('capture_id', ?)", (str(uuid.uuid4()),)
    )
    conn.execute(f"INSERT OR IGNORE INTO main.{meta}(key, value) VALUES ('format_version', ?)", (FORMAT_VERSION,))
    conn.execute(
        f"INSERT OR IGNORE INTO main.{meta}(key, value) VALUES ('installed_at', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))"
    )


def install_base(conn: sqlite3.Connection, busy_timeout_ms: int) -> CaptureState:
    """Create the changelog, registry and meta tables if missing; return the state.
    Takes no write lock when everything is already there."""
    state = read_state(conn)
    if (state.installed and state.key_slots and _table_exists(conn, REGISTRY)
            and _has_column(conn, REGISTRY, "reload_reason")):
        return state
    write_transaction(conn, lambda c: _own_schema_change(c, _install_base), busy_timeout_ms=busy_timeout_ms)
    return read_state(conn)


def new_capture_id(conn: sqlite3.Connection, busy_timeout_ms: int) -> str:
    """Give the file a capture id of its own, in place of the one it was copied with
    (see reconcile._own_capture_id); returns it."""
    fresh = str(uuid.uuid4())
    write_transaction(conn, lambda c: c.execute(f"UPDATE main.{quote_ident(META)} SET value = ? "
                                                "WHERE key = 'capture_id'", (fresh,)),
                      busy_timeout_ms=busy_timeout_ms)
    return fresh


def note_schema(conn: sqlite3.Connection, keyless: list[str], busy_timeout_ms: int) -> bool:
    """Account for the file's schema version. When it moved without syncd (the
    application's DDL, or a VACUUM, which moves the version and nothing else), the
    keyless tables named are marked for a reload, durably and in the same transaction,
    until Postgres has scheduled it (clear_rearmed): a VACUUM may have renumbered the
    rowids they are keyed by, and SQLite offers no surer way to tell it happened.
    Returns True when it marked tables. Takes no write lock when nothing moved."""
    state = read_state(conn)
    if state.schema_seen is not None and state.schema_seen == _schema_version(conn):
        return False

    def note(c: sqlite3.Connection) -> bool:
        seen = c.execute(f"SELECT value FROM main.{quote_ident(META)} WHERE key = 'schema_version'").fetchone()
        now = _schema_version(c)
        marked = False
        if seen is not None and seen[0] != str(now):
            for name in keyless:
                c.execute(f"UPDATE main.{quote_ident(REGISTRY)} SET rearmed_at = strftime('%Y-%m-%dT%H:%M:%SZ', "
                          "'now'), reload_reason = ? WHERE name = ?", (ROWIDS_MOVED_REASON, name))
                marked = True
        c.execute(f"INSERT OR REPLACE INTO main.{quote_ident(META)}(key, value) VALUES ('schema_version', ?)",
                  (str(now),))
        return marked

    return write_transaction(conn, note, busy_timeout_ms=busy_timeout_ms)


# Which sqlite_master row each registered table is (meta 'table_rowids', a JSON object).
# A rebuild (CREATE the new table, copy, DROP the old, RENAME the new) gives the table a
# new, higher row; nothing else does (RENAME, ADD and DROP COLUMN update the row in
# place; VACUUM renumbers rows downwards, never up). A rebuild whose tool also copies
# syncd's triggers onto the new table leaves no trigger missing (capture_gap), but the
# rows it copied or changed, and every change before the triggers were back, went
# unrecorded: the higher row tells.
ROWIDS_KEY = "table_rowids"


def _schema_rowids(conn: sqlite3.Connection) -> dict[str, int]:
    old = conn.text_factory
    conn.text_factory = surrogate_text  # a table's name is whatever bytes the application gave SQLite
    try:
        return dict(conn.execute("SELECT name, rowid FROM main.sqlite_master WHERE type = 'table'").fetchall())
    finally:
        conn.text_factory = old


def _remembered_rowids(conn: sqlite3.Connection) -> dict[str, int]:
    row = conn.execute(f"SELECT value FROM main.{quote_ident(META)} WHERE key = ?", (ROWIDS_KEY,)).fetchone()
    try:
        got = json.loads(row[0]) if row else {}
        return {str(k): int(v) for k, v in got.items()} if isinstance(got, dict) else {}
    except (TypeError, ValueError):
        return {}  # damaged: remembered again from now on


def _remember_rowids(conn: sqlite3.Connection, rowids: dict[str, int]) -> None:
    conn.execute(f"INSERT OR REPLACE INTO main.{quote_ident(META)}(key, value) VALUES (?, ?)",
                 (ROWIDS_KEY, json.dumps(rowids, sort_keys=True)))


def note_rebuilt(conn: sqlite3.Connection, busy_timeout_ms: int) -> bool:
    """Mark every registered table whose sqlite_master row is newer than the one
    remembered (rebuilt, see ROWIDS_KEY) for a re-snapshot, durably, as capture_gap's
    tables are, and remember the rows as they are now. Returns True when it marked
    tables. Takes no write lock when nothing moved."""
    if not (_table_exists(conn, META) and _table_exists(conn, REGISTRY)):
        return False

    def compare(c: sqlite3.Connection) -> tuple[dict[str, int], dict[str, int]]:
        """(what to remember now, the registered tables' rows remembered before). A
        registered table missing for now (dropped, its replacement not yet renamed in by
        a rebuild spread over transactions) keeps its row remembered until it is back."""
        rowids = _schema_rowids(c)
        registered = [r[0] for r in c.execute(f"SELECT name FROM main.{quote_ident(REGISTRY)}")]
        before = {n: r for n, r in _remembered_rowids(c).items() if n in registered}
        return {**before, **{n: rowids[n] for n in registered if n in rowids}}, before

    now, before = compare(conn)
    if now == before:
        return False

    def note(c: sqlite3.Connection) -> bool:
        now, before = compare(c)
        rebuilt = [n for n, rowid in now.items() if n in before and rowid > before[n]]
        for name in rebuilt:
            c.execute(f"UPDATE main.{quote_ident(REGISTRY)} SET rearmed_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now'), "
                      "reload_reason = ? WHERE name = ?", (REBUILT_REASON, name))
        _remember_rowids(c, now)
        return bool(rebuilt)

    return write_transaction(conn, note, busy_timeout_ms=busy_timeout_ms)


def arm_table(conn: sqlite3.Connection, spec: TableSpec, busy_timeout_ms: int, gap: bool | str,
              expected_version: int, anew: bool = False) -> int | None:
    """Register `spec`'s table and (re)create its triggers, in one short write
    transaction, if the schema is still at `expected_version` (the one `spec` was read
    at, plus syncd's own arming since): triggers built from a stale column list would
    name a column the application has just renamed, and fail its writes. Returns the
    schema version after arming, or None when the schema moved (nothing was changed).

    With `gap`, capture had a hole (triggers were missing; a text says why else): the registry remembers
    it, durably and in the same transaction, until Postgres has scheduled a
    re-snapshot (`clear_rearmed`), so a crash in between cannot lose the fact.

    With `anew`, every trigger is dropped and created again, even one as it should be:
    the newest triggers fire first, so syncd's then run before any of the application's."""

    def arm(c: sqlite3.Connection) -> int | None:
        if _schema_version(c) != expected_version:
            return None
        reg = quote_ident(REGISTRY)
        row = c.execute(f"SELECT tid, key_columns FROM main.{reg} WHERE name = ?", (spec.name,)).fetchone()
        key_json = json.dumps(list(spec.key))
        if row is None:
            tid = c.execute(f"INSERT INTO main.{reg}(name, key_columns) VALUES (?, ?) RETURNING tid",
                            (spec.name, key_json)).fetchone()[0]
            rowids = _remembered_rowids(c)
            if spec.name not in rowids and spec.name in (now := _schema_rowids(c)):
                _remember_rowids(c, {**rowids, spec.name: now[spec.name]})  # a rebuild from now on is seen
        else:
            tid = row[0]
            if row[1] != key_json:
                c.execute(f"UPDATE main.{reg} SET key_columns = ? WHERE tid = ?", (key_json, tid))
        if gap:
            # Capture suspended to protect the disk (its triggers dropped), not yet scheduled
            # by Postgres: that reason stays where this gap says no other.
            c.execute(f"UPDATE main.{reg} SET rearmed_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now'), "
                      "reload_reason = CASE WHEN ?1 IS NULL AND rearmed_at IS NOT NULL AND "
                      "substr(reload_reason, 1, length(?3)) = ?3 THEN reload_reason ELSE ?1 END WHERE tid = ?2",
                      (gap if isinstance(gap, str) else None, tid, SUSPENDED_RELOAD))
        cols = [r[1] for r in c.execute(f"PRAGMA main.table_info({quote_ident(CHANGELOG)})")]
        have = sum(1 for n in cols if n.startswith("k") and n[1:].isdigit())
        for i in range(have, len(spec.key)):
            c.execute(f"ALTER TABLE main.{quote_ident(CHANGELOG)} ADD COLUMN {slot(i)}")
        existing = {
            name: sql
            for name, sql in c.execute(
                "SELECT name, sql FROM main.sqlite_master WHERE type = 'trigger' AND name IN "
                f"({', '.join('?' * len(trigger_names(tid)))})",
                tuple(trigger_names(tid).values()),
            )
        }
        wanted = {trigger_names(tid)[k]: sql for k, sql in trigger_sql(tid, spec).items()}
        for name, sql in existing.items():
            if anew or wanted.get(name) != sql:
                c.execute(f"DROP TRIGGER main.{quote_ident(name)}")
        for name, sql in wanted.items():
            if anew or existing.get(name) != sql:
                c.execute(sql)
        return _schema_version(c)

    return write_transaction(conn, lambda c: _own_schema_change(c, arm), busy_timeout_ms=busy_timeout_ms)


def dropped_name(tid: int) -> str:
    """The registry's name for a dropped table whose name another table was renamed to:
    syncd's own prefix, which no replicated table has (introspect refuses such tables)."""
    return f"_syncd_dropped_{tid}"


def rename_registered(conn: sqlite3.Connection, tid: int, name: str, busy_timeout_ms: int) -> None:
    """The table `tid` was renamed to `name` (its triggers moved with it): so does its
    registry entry, which keeps its id and its queued changes. A table registered under
    `name` before was dropped: its entry keeps its id (no new table takes it, nor its
    queued changes) under a name no table of the application's has (dropped_name), and
    the sqlite_master row remembered for the name is the renamed table's (ROWIDS_KEY)."""

    def rename(c: sqlite3.Connection) -> None:
        reg = quote_ident(REGISTRY)
        old = c.execute(f"SELECT name FROM main.{reg} WHERE tid = ?", (tid,)).fetchone()
        gone = c.execute(f"SELECT tid FROM main.{reg} WHERE name = ? AND tid <> ?", (name, tid)).fetchone()
        if gone is not None:
            c.execute(f"UPDATE main.{reg} SET name = ? WHERE tid = ?", (dropped_name(gone[0]), gone[0]))
        c.execute(f"UPDATE main.{reg} SET name = ? WHERE tid = ?", (name, tid))
        rowids = _remembered_rowids(c)
        if old is not None and old[0] in rowids:
            rowids[name] = rowids.pop(old[0])
            _remember_rowids(c, rowids)

    write_transaction(conn, rename, busy_timeout_ms=busy_timeout_ms)


def record_pruned(conn: sqlite3.Connection, seq: int) -> None:
    """Inside a prune's write transaction: note in the file itself that every change up
    to `seq` reached Postgres. The file's lineage is then provable: a copy restored from
    a backup carries an older note, and syncd resumes from the note, never from a
    position only Postgres remembers."""
    conn.execute(f"INSERT OR REPLACE INTO main.{quote_ident(META)}(key, value) VALUES ('pruned_seq', ?)", (str(seq),))


def clear_rearmed(conn: sqlite3.Connection, names: list[str], busy_timeout_ms: int) -> None:
    def clear(c: sqlite3.Connection) -> None:
        c.executemany(f"UPDATE main.{quote_ident(REGISTRY)} SET rearmed_at = NULL, reload_reason = NULL WHERE name = ?",
                      [(n,) for n in names])

    write_transaction(conn, clear, busy_timeout_ms=busy_timeout_ms)


def disarm_table(conn: sqlite3.Connection, tid: int, busy_timeout_ms: int, expected_version: int) -> int | None:
    """Drop one table's triggers (the table left the configured set), if the schema is
    still at `expected_version`; returns the version after, or None when it moved."""

    def disarm(c: sqlite3.Connection) -> int | None:
        if _schema_version(c) != expected_version:
            return None
        for name in trigger_names(tid).values():
            c.execute(f"DROP TRIGGER IF EXISTS main.{quote_ident(name)}")
        return _schema_version(c)

    return write_transaction(conn, lambda c: _own_schema_change(c, disarm), busy_timeout_ms=busy_timeout_ms)


UNINSTALL_REASON = ("`syncd uninstall` stopped halfway (capture's triggers were dropped and its changelog "
                    "emptied): changes made meanwhile were not recorded, so the table is snapshotted again")
EMPTY_BELOW_ENTRIES = 20_000  # a changelog this small is dropped as it is, in the uninstall's one transaction


def _empty_changelog(conn: sqlite3.Connection, busy_timeout_ms: int) -> int:
    """Before `syncd uninstall` drops a large changelog: its entries deleted in short
    write transactions, each followed by a pause twice as long so the application's
    writers go first. One DROP TABLE frees every page the table holds under the write
    lock: half a gigabyte of entries (Postgres away for a while) held the application's
    writers off for seconds. Capture's triggers go first, in a short transaction of their
    own that marks every registered table for a re-snapshot: an uninstall stopped halfway
    leaves a file a daemon started again re-arms and loads again, never one whose
    deleted entries it would miss. The newest entry stays (positions never run back).
    Returns the capture triggers dropped."""
    if not _table_exists(conn, CHANGELOG):
        return 0
    low, high = changelog_ends(conn)
    if high - low < EMPTY_BELOW_ENTRIES:
        return 0

    def stop(c: sqlite3.Connection) -> tuple[int, int]:
        names = capture_triggers(c)
        for name in names:
            c.execute(f"DROP TRIGGER main.{quote_ident(name)}")
        if _table_exists(c, REGISTRY) and _has_column(c, REGISTRY, "reload_reason"):
            c.execute(f"UPDATE main.{quote_ident(REGISTRY)} SET rearmed_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now'), "
                      "reload_reason = ?", (UNINSTALL_REASON,))
        top = c.execute(f"SELECT coalesce(max(seq), 0) FROM main.{quote_ident(CHANGELOG)}").fetchone()[0]
        return len(names), top

    if _table_exists(conn, META):
        dropped, top = write_transaction(conn, lambda c: _own_schema_change(c, stop), busy_timeout_ms=busy_timeout_ms)
    else:
        dropped, top = write_transaction(conn, stop, busy_timeout_ms=busy_timeout_ms)
    # No trigger appends to the changelog any more: the windows below are all there is.
    windows = RowsPerHold(10 * EMPTY_BELOW_ENTRIES, first=EMPTY_BELOW_ENTRIES)
    lo = low - 1
    while lo < top - 1:
        hi = min(top - 1, lo + windows.rows)
        started = time.monotonic()
        write_transaction(conn, lambda c: c.execute(f"DELETE FROM main.{quote_ident(CHANGELOG)} "
                                                    "WHERE seq > ? AND seq <= ?", (lo, hi)),
                          busy_timeout_ms=busy_timeout_ms)
        held = time.monotonic() - started
        windows.held(held, hi - lo)
        time.sleep(max(0.005, 2 * held))
        lo = hi
    return dropped


def uninstall(conn: sqlite3.Connection, busy_timeout_ms: int) -> tuple[int, int]:
    """Remove every syncd object from the file; application tables are untouched. A file
    frozen by a cutover stays frozen (its freeze triggers no longer need syncd's tables).
    Returns the number of capture triggers dropped and of tables that stay frozen."""
    from syncd.sqlite.freeze import outlive_syncd

    emptied = _empty_changelog(conn, busy_timeout_ms)

    def drop(c: sqlite3.Connection) -> tuple[int, int]:
        frozen = outlive_syncd(c)
        names = capture_triggers(c)
        for name in names:
            c.execute(f"DROP TRIGGER main.{quote_ident(name)}")
        for table in (CHANGELOG, REGISTRY, META):
            c.execute(f"DROP TABLE IF EXISTS main.{quote_ident(table)}")
        return emptied + len(names), frozen

    return write_transaction(conn, drop, busy_timeout_ms=busy_timeout_ms)


def describe_trigger_owner(state: CaptureState, tid: int) -> str | None:
    """The table a tid's triggers are currently attached to (it moves on RENAME)."""
    for name in trigger_names(tid).values():
        if name in state.triggers:
            return state.triggers[name][0]
    return None

