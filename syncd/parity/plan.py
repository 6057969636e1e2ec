"""What syncd creates in Postgres for each SQLite object, when, and why. Pure, no I/O.

Two moments (see docs/cutover.md, "What syncd creates in Postgres"):

- DUAL_WRITE, while SQLite is the application's database: secondary indexes (plain,
  partial, expression) so Postgres query speed can be measured before the switch and
  verification can use them; UNIQUE constraints over plain columns as DEFERRABLE
  INITIALLY DEFERRED (a batch carrying two rows that swapped a value must not trip them
  halfway through), once the table streams; unique partial and expression indexes as
  plain indexes (Postgres cannot defer an index).
- CUTOVER, inside the final transaction (finalize): those UNIQUE constraints made
  immediate and those indexes unique, NOCASE columns case-insensitive, date columns
  typed, CHECKs and FOREIGN KEYs (validated) and views. Each runs in a savepoint: what
  Postgres refuses is listed with its reason, never silently dropped.

Each Item says what it is in SQLite, what Postgres gets and why, or why it gets
nothing (`left_out`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from syncd.identifiers import PG_MAX_IDENTIFIER_BYTES, qualified, quote_pg_ident, sqlite_folded
from syncd.model import TableSpec
from syncd.parity import dates, numbers
from syncd.parity.objects import ForeignKey, Index, SourceObjects
from syncd.postgres.ddl import identity_column
from syncd.printable import shorten, text_repr
from syncd.types import PgType, pg_default

if TYPE_CHECKING:
    from syncd.parity.translate import ColumnInfo

# The expression parser and translator (parity/expressions.py, translate.py) are imported
# where an index, CHECK or view is translated: a schema without any (and every `syncd
# init` and daemon start on one) does without their import.

DUAL_WRITE, CUTOVER = "dual-write", "cutover"
NOCASE_COLLATION = "syncd_nocase"  # in the target schema, when [cutover] nocase = "icu"
ICU_LOCALE = "und-u-ks-level2"  # the root locale, compared at strength 2: case ignored, accents not
MARK = "syncd parity"  # every object syncd creates here is commented "syncd parity <hash>: ..."
FK_ACTIONS = {"NO ACTION", "RESTRICT", "CASCADE", "SET NULL", "SET DEFAULT"}


@dataclass(frozen=True)
class Options:
    """The [cutover] settings that shape the plan."""

    nocase: str = "icu"  # icu | citext | none
    timestamps: str = "auto"  # auto | timestamp | timestamptz
    typed_columns: str = "cutover"  # cutover | dual-write | never

    @property
    def timestamp_override(self) -> PgType | None:
        return {"timestamp": PgType.TIMESTAMP, "timestamptz": PgType.TIMESTAMPTZ}.get(self.timestamps)

    @classmethod
    def from_settings(cls, settings) -> "Options":
        c = settings.cutover
        return cls(getattr(c, "nocase", "icu"), getattr(c, "timestamps", "auto"),
                   getattr(c, "typed_columns", "cutover"))


@dataclass
class Item:
    kind: str  # index, unique, foreign key, check, nocase, type, view, trigger, generated
    table: str | None  # the table it belongs to (None: a view)
    what: str  # the SQLite object, for people
    name: str | None = None  # its Postgres name
    dual_write: tuple[str, ...] = ()  # statements run during dual-write
    cutover: tuple[str, ...] = ()  # statements run at cutover (a unique's: its dual-write form dropped, then made)
    why: str = ""  # why it is carried the way it is
    left_out: str | None = None  # why it is not carried at all
    needs_streaming: bool = False  # its dual-write statements wait until the table streams
    # An index: built once the table's first load is over (one build costs Postgres far less
    # than keeping it up row by row through the COPY); one that exists stays through a load.
    after_load: bool = False
    object_kind: str = ""  # "index", "constraint", "view": what COMMENT ON names
    column: str | None = None  # nocase / type items
    verdict: dates.Verdict | None = None  # type items
    fk: ForeignKey | None = None  # foreign key items: finalize counts their orphans first
    fk_parent: str | None = None  # the parent table as replicated (its exact name)
    check_sql: str | None = None  # a CHECK's condition, to find the rows failing it
    # An index's lookup (speed.py): its leading plain columns, else its first expression
    # (Postgres SQL), and a partial index's predicate (Postgres SQL).
    lookup_columns: tuple[str, ...] = ()
    lookup_expr: str | None = None
    lookup_note: str = ""  # why that lookup is not the index's own expression
    predicate: str | None = None
    parent_key: tuple[str, ...] = ()
    # A foreign key's pairs SQLite matches ignoring case (parent key COLLATE NOCASE), one
    # flag per column: counted that way, and carried only with both columns case-insensitive.
    fk_nocase: tuple[bool, ...] = ()
    todo: str = ""  # what to do instead, when it says more than its kind's (summary._todo)
    stage_note: str = ""  # a note on what happens when (for `syncd schema`)

    @property
    def stage(self) -> str:
        if self.left_out:
            return "not carried"
        if self.dual_write:
            return DUAL_WRITE
        return CUTOVER

    def marker(self, stage: str, source: str) -> str:
        """The COMMENT syncd writes on the object: tells its own objects (and which
        source's) from the application's, and whether the definition is the planned one."""
        stmts = self.dual_write if stage == DUAL_WRITE else self.cutover
        digest = hashlib.blake2b("\n".join((stage, *stmts)).encode(), digest_size=6).hexdigest()
        return f"{MARK} {stage} {digest} [{source}]: {self.kind} {self.what}"[:1000]


@dataclass
class SourcePlan:
    schema: str
    items: list[Item] = field(default_factory=list)
    retyped: dict[str, dict[str, PgType]] = field(default_factory=dict)  # final types of retyped columns

    def for_table(self, table: str) -> list[Item]:
        return [i for i in self.items if i.table == table]

    @property
    def left_out(self) -> list[Item]:
        return [i for i in self.items if i.left_out]


# --- names ------------------------------------------------------------------------------


def _fit(name: str) -> str:
    """`name`, or a shortened form with a hash when Postgres would truncate it."""
    raw = name.encode("utf-8")
    if len(raw) <= PG_MAX_IDENTIFIER_BYTES and "\x00" not in name:
        return name
    digest = hashlib.blake2b(raw, digest_size=4).hexdigest()
    head = raw[:PG_MAX_IDENTIFIER_BYTES - 9].decode("utf-8", "ignore").replace("\x00", "")
    return f"{head}_{digest}"


def _named_by_postgres(table: str, column: str | None, label: str) -> str:
    """The name Postgres gives an object it makes for a table (its makeObjectName): the
    primary key's index `<table>_pkey`, an identity's sequence `<table>_<column>_seq`,
    the longer of table and column cut short until it fits in 63 bytes."""
    one, two = table.encode("utf-8"), (column or "").encode("utf-8")
    room = PG_MAX_IDENTIFIER_BYTES - len(label) - 1 - (1 if column is not None else 0)
    n1, n2 = len(one), len(two)
    while n1 + n2 > room:
        if n1 > n2:
            n1 -= 1
        else:
            n2 -= 1
    parts = [one[:n1].decode("utf-8", "ignore")] + ([two[:n2].decode("utf-8", "ignore")] if column is not None else [])
    return "_".join([*parts, label])


class Names:
    """Postgres names for the objects of one schema, none used twice and none taken by
    a table, a primary key's index or an identity's sequence."""

    def __init__(self, tables: list[str], identities: dict[str, str] | None = None):
        self.taken = (set(tables) | {_fit(f"{t}_pkey") for t in tables}
                      | {_named_by_postgres(t, None, "pkey") for t in tables}
                      | {_named_by_postgres(t, c, "seq") for t, c in (identities or {}).items()})

    def claim(self, wanted: str) -> str:
        name = _fit(wanted)
        n = 2
        while name in self.taken:
            name = _fit(f"{wanted}_{n}")
            n += 1
        self.taken.add(name)
        return name


# --- building the plan --------------------------------------------------------------------


def columns_info(spec: TableSpec, collations: dict[str, str], types: dict[str, PgType] | None = None
                 ) -> list[ColumnInfo]:
    """The table's columns as the translator sees them (syncd's rowid column excluded:
    SQLite text cannot name it)."""
    from syncd.parity.translate import ColumnInfo

    types = types or {}
    return [ColumnInfo(c.name, types.get(c.name, c.pgtype), c.declared, collations.get(c.name, "BINARY"))
            for c in spec.stored_columns]


def plan_source(schema: str, specs: dict[str, TableSpec], objects: SourceObjects, options: Options,
                verdicts: dict[tuple[str, str], dates.Verdict] | None = None) -> SourcePlan:
    """Everything syncd will and will not carry for one source. `verdicts` are the
    typed-column audits (dates.ColumnAudit.verdict) per (table, column); without them,
    typed columns are planned from the declared types only (`syncd schema` shows that)."""
    plan = SourcePlan(schema)
    names = Names(list(specs) + [v.name for v in objects.views],
                  {t: c for t, spec in specs.items() if (c := identity_column(spec)) is not None})
    for tname, spec in specs.items():
        obj = objects.table(tname)
        if obj.problem:
            plan.items.append(Item("check", tname, f'the CREATE TABLE text of "{tname}"', left_out=obj.problem))
        _plan_types(plan, spec, obj.collations, options, verdicts, _unique_under_collation(obj))
    for tname, spec in specs.items():
        obj = objects.table(tname)
        _plan_nocase(plan, spec, obj.collations, options)
        uniques: list[Item] = []
        for index in obj.indexes:
            item = _plan_index(schema, spec, index, obj.collations, options, names, plan)
            if item is not None:
                plan.items.append(item)
                uniques.append(item)
        for check in obj.checks:
            plan.items.append(_plan_check(schema, spec, check, obj.collations, plan, names))
    for tname, spec in specs.items():
        for fk in objects.table(tname).foreign_keys:
            plan.items.append(_plan_fk(schema, spec, fk, specs, objects, plan, names, options))
    _plan_views(plan, specs, objects, names)
    for tname, spec in specs.items():
        for c in spec.columns:
            if c.generated:
                plan.items.append(Item(
                    "generated", tname, f'generated column "{c.name}"', column=c.name,
                    left_out="its expression is not carried: the column holds the values SQLite computed, and "
                             "after a cutover Postgres does not compute it for the application's writes"))
    for trig in objects.triggers:
        plan.items.append(Item("trigger", trig.table, f'trigger "{trig.name}" on "{trig.table}"',
                               left_out="an application trigger is never copied: its body is SQLite SQL that runs "
                                        "inside each write; if the application relies on it, write it again as a "
                                        "Postgres trigger function"))
    return plan


def _final_types(plan: SourcePlan, table: str) -> dict[str, PgType]:
    return plan.retyped.get(table, {})


def _unique_under_collation(obj) -> dict[str, str]:
    """Columns a unique index reads under another collation than the column's own
    (UNIQUE (z COLLATE NOCASE) on a BINARY column): Postgres can compare them so only as
    text, so such a column keeps its text type."""
    out: dict[str, str] = {}
    for index in obj.indexes:
        for c in index.columns:
            if index.unique and c.name is not None and c.collation != obj.collations.get(c.name, "BINARY"):
                out.setdefault(c.name, c.collation)
    return out


def _plan_types(plan: SourcePlan, spec: TableSpec, collations: dict[str, str], options: Options,
                verdicts: dict[tuple[str, str], dates.Verdict] | None,
                unique_under: dict[str, str] | None = None) -> None:
    for col in spec.stored_columns:
        if numbers.is_candidate(col):
            _plan_number(plan, spec, col, collations, options, verdicts, unique_under)
            continue
        if not dates.is_candidate(col.declared):
            if "TIME" in col.declared.upper() and col.pgtype is PgType.TEXT:
                plan.items.append(Item("type", spec.name, f'column "{col.name}" {col.declared}', column=col.name,
                                       left_out="a time of day: kept as text (syncd carries dates and timestamps)"))
            continue
        what = f'column "{col.name}" {col.declared}'
        if col.pgtype is not PgType.TEXT:
            plan.items.append(Item("type", spec.name, what, column=col.name,
                                   why=f"already {col.pgtype.value} ({col.type_note or 'from the start'})"))
            continue
        if _kept_text(plan, spec, col, what, collations, options, unique_under):
            continue
        verdict = (verdicts or {}).get((spec.name, col.name))
        if verdict is None:
            plan.items.append(Item("type", spec.name, what, column=col.name,
                                   why="becomes date/timestamp/timestamptz at cutover if every stored value "
                                       "converts exactly and back (checked then, value by value)"))
            continue
        if not verdict.typed and verdict.why == dates.YYYYMMDD:
            key = col.name if re.fullmatch(r"[A-Za-z0-9_-]+", col.name) else json.dumps(col.name)
            todo = (f'a [sources.columns] override types them: [sources.columns.{json.dumps(spec.name)}] {key} = '
                    '"timestamptz" if they are seconds since 1970, "bigint" to keep the integers')
            plan.items.append(Item(
                "type", spec.name, what, column=col.name, verdict=verdict, todo=todo,
                left_out=f"kept as text: it holds {dates.YYYYMMDD} (e.g. {verdict.example}), and integers "
                         "of more than 8 digits (seconds since 1970 only) are not ten times as many; "
                         f"{todo}"))
            continue
        if not verdict.typed:
            keys = ", ".join(_key(k) for k in verdict.keys)
            example = f" (e.g. {shorten(text_repr(verdict.example), 60)})" if verdict.example is not None else ""
            plan.items.append(Item(
                "type", spec.name, what, column=col.name, verdict=verdict,
                left_out=f"kept as text: {verdict.misfits} of {verdict.audit.values} value(s) do not convert "
                         f"exactly and back: {verdict.why}{example}; keys {keys}. The application will meet "
                         "these values as text after the switch"))
            continue
        assert verdict.format is not None and verdict.pgtype is not None
        lost = _default_lost(col, verdict.pgtype)
        if lost:
            plan.items.append(Item("type", spec.name, what, column=col.name, verdict=verdict, left_out=lost))
            continue
        stage = DUAL_WRITE if options.typed_columns == "dual-write" else CUTOVER
        why = (f"every one of its {verdict.audit.values} value(s) is spelled {verdict.format.spec} and converts "
               f"exactly and back; {verdict.pgtype.value} because {_flavour_why(verdict.format, options)}")
        if verdict.note:
            why = f"{verdict.note}; {verdict.pgtype.value} because {_flavour_why(verdict.format, options)}"
        item = Item("type", spec.name, what, column=col.name, verdict=verdict, why=why,
                    stage_note=f"retyped at {stage}")
        if stage == DUAL_WRITE:
            item.dual_write = ("retype",)
        else:
            item.cutover = ("retype",)
        plan.items.append(item)
        plan.retyped.setdefault(spec.name, {})[col.name] = verdict.pgtype


def _kept_text(plan: SourcePlan, spec: TableSpec, col, what: str, collations: dict[str, str],
               options: Options, unique_under: dict[str, str] | None = None) -> bool:
    """A text column the options or its collation keep text, listed as such: True."""
    if options.typed_columns == "never":
        why = 'kept as text: [cutover] typed_columns = "never"'
    elif col.name in collations:
        why = f"kept as text: it has the {collations[col.name]} collation"
    elif col.name in (unique_under or {}):
        why = (f"kept as text: a unique index compares it under the {(unique_under or {})[col.name]} "
               "collation, which Postgres applies to text only")
    else:
        return False
    plan.items.append(Item("type", spec.name, what, column=col.name, left_out=why))
    return True


def _plan_number(plan: SourcePlan, spec: TableSpec, col, collations: dict[str, str], options: Options,
                 verdicts: dict[tuple[str, str], dates.Verdict] | None,
                 unique_under: dict[str, str] | None = None) -> None:
    """A column without a usable declared type carried as text (syncd first saw it with no
    values, say): typed at cutover when every value is an integer, or every one a real."""
    untyped = "no declared type" if not col.declared.strip() else f"declared {col.declared}, which names no type"
    what = f'column "{col.name}" ({untyped})'
    if _kept_text(plan, spec, col, what, collations, options, unique_under):
        return
    verdict = (verdicts or {}).get((spec.name, col.name))
    if verdict is None:
        plan.items.append(Item("type", spec.name, what, column=col.name,
                               why="text for now; becomes bigint at cutover if every value is then an integer, "
                                   "double precision if every one is a real (checked then, value by value)"))
        return
    if not verdict.typed:
        if not verdict.audit.values:
            left_out = ("kept as text: no values yet to type it by; the application will meet the values it "
                        "writes after the switch as text")
        else:
            keys = ", ".join(_key(k) for k in verdict.keys)
            example = f" (e.g. {shorten(text_repr(verdict.example), 60)})" if verdict.example is not None else ""
            left_out = (f"kept as text: {verdict.misfits} of {verdict.audit.values} value(s) are not of one "
                        f"numeric storage class: {verdict.why}{example}; keys {keys}. The application will meet "
                        "these values as text after the switch")
        plan.items.append(Item("type", spec.name, what, column=col.name, verdict=verdict, left_out=left_out))
        return
    assert verdict.pgtype is not None
    lost = _default_lost(col, verdict.pgtype)
    if lost:
        plan.items.append(Item("type", spec.name, what, column=col.name, verdict=verdict, left_out=lost))
        return
    kind = "an integer" if verdict.pgtype is PgType.BIGINT else "a real"
    item = Item("type", spec.name, what, column=col.name, verdict=verdict, cutover=("retype",),
                why=f"every one of its {verdict.audit.values} value(s) is {kind} in SQLite: {verdict.pgtype.value} "
                    f"at cutover, so the application reads the numbers SQLite gave it (each value's text proven "
                    "in Postgres to convert back exactly)",
                stage_note=f"retyped at {CUTOVER}")
    plan.items.append(item)
    plan.retyped.setdefault(spec.name, {})[col.name] = verdict.pgtype


def _default_lost(col, pgtype: PgType) -> str | None:
    """Why `col` stays text rather than become `pgtype`: the DEFAULT Postgres carries for
    it now has no exact form in that type (CURRENT_TIMESTAMP in a date column, a text in
    a column of numbers), so an INSERT leaving the column out would store NULL where
    SQLite stores its default. None when the default survives the retype (apply.retype
    sets it as translate_default gives it) or there is none to lose."""
    if pg_default(col.default_sql, col.pgtype, col.declared).sql is None:
        return None
    why = pg_default(col.default_sql, pgtype).not_carried
    if why is None:
        return None
    return (f"kept as text: its DEFAULT {shorten(col.default_sql or '', 60)} has no exact form as {pgtype.value} "
            f"({why}); typed, an INSERT leaving the column out would store NULL where SQLite stores the default")


def _flavour_why(fmt: dates.Format, options: Options) -> str:
    if fmt.kind == "date":
        return "the values are dates"
    if options.timestamp_override is not None:
        return f'[cutover] timestamps = "{options.timestamps}"'
    if fmt.kind == "epoch":
        return "an epoch number is an instant (the application reads an aware datetime in UTC)"
    if fmt.zone is not None:
        return "the values carry a UTC offset: they name instants"
    return "the values are naive wall-clock times, kept exactly as written (reading them as UTC would be a guess)"


def _key(k: tuple) -> str:
    return text_repr(k[0]) if len(k) == 1 else text_repr(k)


def _plan_nocase(plan: SourcePlan, spec: TableSpec, collations: dict[str, str], options: Options) -> None:
    for col, coll in collations.items():
        c = next((x for x in spec.columns if x.name == col), None)
        if c is None:
            continue
        what = f'column "{col}" COLLATE {coll}'
        if coll != "NOCASE":
            plan.items.append(Item("nocase", spec.name, what, column=col,
                                   left_out=f"SQLite's {coll} collation has no Postgres equivalent"
                                            + (": trailing spaces count in Postgres" if coll == "RTRIM" else "")))
            continue
        if c.pgtype is not PgType.TEXT:
            plan.items.append(Item("nocase", spec.name, what, column=col,
                                   left_out=f"the column is {c.pgtype.value} in Postgres, not text"))
            continue
        if options.nocase == "none":
            plan.items.append(Item("nocase", spec.name, what, column=col,
                                   left_out='[cutover] nocase = "none": equality is case-sensitive in Postgres'))
            continue
        if options.nocase == "citext":
            why = ("citext at cutover (nocase = \"citext\"): = and LIKE ignore case as in SQLite; it folds all of "
                   "Unicode (SQLite only A-Z)")
        else:
            why = (f'text COLLATE "{NOCASE_COLLATION}" at cutover (ICU {ICU_LOCALE}, nondeterministic): = and '
                   "uniqueness ignore case as in SQLite, for all of Unicode (SQLite only folds A-Z); LIKE on it, "
                   "lower() of it too, fails in Postgres before 18 (write lower(col) COLLATE \"C\" LIKE ..., or "
                   "set nocase = \"citext\")")
        plan.items.append(Item("nocase", spec.name, what, column=col, cutover=("nocase",), why=why))


def _untranslatable(why: str) -> Exception:
    from syncd.parity.translate import Untranslatable

    return Untranslatable(why)


def _translation_errors() -> tuple[type[Exception], ...]:
    """What translating an index's expression or WHERE raises, where it has no exact
    Postgres form (imported only then: a plain index needs no translator)."""
    from syncd.parity.expressions import NotParsed
    from syncd.parity.translate import Untranslatable

    return Untranslatable, NotParsed


def _index_column_sql(spec: TableSpec, index: Index, i: int, collations: dict[str, str],
                      types: dict[str, PgType], schema: str, options: Options) -> tuple[str, str | None]:
    """(SQL of the i-th indexed item, a note) or raises Untranslatable."""
    col = index.columns[i]
    desc = " DESC" if col.descending else ""
    if col.name is not None:
        if col.name not in spec.column_names:
            raise _untranslatable(f"no column {col.name}")
        column_coll = collations.get(col.name, "BINARY")
        if col.collation == column_coll:
            return quote_pg_ident(col.name) + desc, None
        if not index.unique:
            return quote_pg_ident(col.name) + desc, (f"{col.name} is indexed under {col.collation}, the column is "
                                                     f"{column_coll}: the Postgres index serves lookups under the "
                                                     "column's own comparison")
        if col.collation == "BINARY":
            return f'{quote_pg_ident(col.name)} COLLATE "C"{desc}', None
        if col.collation == "NOCASE" and options.nocase == "icu":
            return f"{quote_pg_ident(col.name)} COLLATE {qualified(schema, NOCASE_COLLATION)}{desc}", None
        raise _untranslatable(f"uniqueness of {col.name} under SQLite's {col.collation} collation has no exact "
                              "Postgres form" + (' (nocase = "icu" gives NOCASE one)' if col.collation == "NOCASE"
                                                 else ""))
    from syncd.parity import translate
    from syncd.parity.expressions import NotParsed, parse_expression
    from syncd.parity.translate import Untranslatable

    if col.expr is None:
        raise Untranslatable("an indexed item syncd could not read")
    if col.collation != "BINARY":
        raise Untranslatable(f"an expression indexed under {col.collation}")
    try:
        node = parse_expression(col.expr)
    except NotParsed as e:
        raise Untranslatable(f"expression {shorten(col.expr, 60)}: {e}") from None
    sql = translate.index_expression(node, columns_info(spec, collations, types), index.unique)
    return sql + desc, None


def _plan_index(schema: str, spec: TableSpec, index: Index, collations: dict[str, str], options: Options,
                names: Names, plan: SourcePlan) -> Item | None:
    if (index.origin == "pk" and {c.name for c in index.columns} == set(spec.key)
            and all(c.collation == collations.get(c.name or "", "BINARY") for c in index.columns)):
        return None  # the table's primary key: syncd creates it with the table
    # A primary key the table is not keyed on ([sources.keys]: other columns, or the rowid
    # where it holds NULLs) is carried as a unique index: SQLite still enforces it.
    # A PRIMARY KEY (name COLLATE NOCASE) over a column that is not: its uniqueness
    # ignores case, which the Postgres primary key does not; carried as a unique index.
    cols = ", ".join(c.name or f"({shorten(c.expr or '?', 40)})" for c in index.columns)
    where = f" WHERE {shorten(index.where, 60)}" if index.where else ""
    label = {"u": "UNIQUE constraint", "pk": "PRIMARY KEY"}.get(index.origin,
                                                               "unique index" if index.unique else "index")
    sqlite_name = f' "{index.name}"' if index.origin == "c" else ""
    what = f"{label}{sqlite_name} on ({cols}){where}"
    kind = "unique" if index.unique else "index"
    item = Item(kind, spec.name, what, object_kind="index")
    if index.problem:
        item.left_out = index.problem
        return item
    plain_cols = tuple(c.name for c in index.columns if c.name is not None)
    if (index.unique and index.plain and set(plain_cols) == set(spec.key)
            and all(c.collation == collations.get(c.name or "", "BINARY") for c in index.columns)):
        return None  # the key itself: Postgres's primary key enforces it already
    try:
        parts, notes = [], []
        for i in range(len(index.columns)):
            sql, note = _index_column_sql(spec, index, i, collations, {}, schema, options)
            parts.append(sql)
            if note:
                notes.append(note)
            if i == 0 and index.columns[0].name is None:  # timed as the application's queries will write it
                from syncd.parity import translate
                from syncd.parity.expressions import parse_expression

                item.lookup_expr = sql.removesuffix(" DESC") if not index.unique else translate.index_expression(
                    parse_expression(index.columns[0].expr or ""), columns_info(spec, collations, {}))
                if item.lookup_expr != sql.removesuffix(" DESC"):
                    item.lookup_note = (f"a query written {shorten(index.columns[0].expr or '', 60)} uses no index "
                                        "in Postgres: this one keeps SQLite's own meaning of it (A-Z alone folded, "
                                        "text compared byte by byte), to refuse exactly the rows SQLite refuses")
                    notes.append(item.lookup_note)
        pred = None
        if index.where:
            from syncd.parity import translate

            pred = translate.condition(index.where, columns_info(spec, collations))
    except _translation_errors() as e:  # evaluated only when something was raised
        item.left_out = f"not translated exactly: {e}"
        return item
    table = qualified(schema, spec.name)
    body = f"ON {table} ({', '.join(parts)})" + (f" WHERE {pred}" if pred else "")
    item.predicate = pred
    lead = []
    for c in index.columns:
        if c.name is None:
            break
        lead.append(c.name)
    item.lookup_columns = tuple(lead)
    base = index.name if index.origin == "c" else f"{spec.name}_{'_'.join(plain_cols) or 'expr'}_key"
    item.name = names.claim(base)
    qname = quote_pg_ident(item.name)
    note = ("; " + "; ".join(notes)) if notes else ""
    constraint_able = (index.unique and index.plain
                       and all(c.collation == collations.get(c.name or "", "BINARY") for c in index.columns))
    if not index.unique:
        item.dual_write = (f"CREATE INDEX {qname} {body}",)
        item.after_load = True
        item.why = ("created during dual-write, once the table is loaded (query speed can be measured before the "
                    "switch)") + note
    elif constraint_able:
        cols_sql = ", ".join(quote_pg_ident(c) for c in plain_cols)
        item.object_kind = "constraint"
        item.needs_streaming = True
        item.dual_write = (f"ALTER TABLE {table} ADD CONSTRAINT {qname} UNIQUE ({cols_sql}) "
                           "DEFERRABLE INITIALLY DEFERRED",)
        item.cutover = (f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {qname}",
                        f"ALTER TABLE {table} ADD CONSTRAINT {qname} UNIQUE ({cols_sql})")
        item.why = ("UNIQUE DEFERRABLE INITIALLY DEFERRED once the table streams (a batch applying rows that "
                    "swapped values must not trip it), made immediate at cutover (ON CONFLICT and foreign keys "
                    "need that)")
        if any(collations.get(c) == "NOCASE" for c in plain_cols):
            item.why += ("; its column ignores case in SQLite: so does the constraint once the column is made "
                         "case-insensitive at cutover" if options.nocase != "none" else
                         '; SQLite ignores case here, Postgres will not (nocase = "none")')
        item.parent_key = plain_cols
    else:
        # The ICU collation is made at cutover: until then the plain index orders by the
        # column's own comparison, which is all dual-write's lookups use.
        plain_body = body.replace(f" COLLATE {qualified(schema, NOCASE_COLLATION)}", "")
        item.dual_write = (f"CREATE INDEX {qname} {plain_body}",)
        item.after_load = True
        item.cutover = (f"DROP INDEX IF EXISTS {qualified(schema, item.name)}", f"CREATE UNIQUE INDEX {qname} {body}")
        item.why = ("a plain index during dual-write, once the table is loaded (Postgres cannot defer a unique "
                    "index, and a batch may hold rows that swapped values), made unique at cutover") + note
        if index.plain:
            item.parent_key = plain_cols if all(
                c.collation == collations.get(c.name or "", "BINARY") for c in index.columns) else ()
    return item


def _plan_check(schema: str, spec: TableSpec, check, collations: dict[str, str], plan: SourcePlan,
                names: Names) -> Item:
    label = f' "{check.name}"' if check.name else ""
    on = f" on {check.column}" if check.column else ""
    item = Item("check", spec.name, f"CHECK{label}{on} ({shorten(check.body, 80)})", object_kind="constraint")
    from syncd.parity import translate
    from syncd.parity.expressions import NotParsed
    from syncd.parity.translate import Untranslatable

    try:
        cond = translate.condition(check.body, columns_info(spec, collations, _final_types(plan, spec.name)))
    except (Untranslatable, NotParsed) as e:
        item.left_out = f"not translated exactly: {e}"
        return item
    base = check.name or (f"{spec.name}_{check.column}_check" if check.column else f"{spec.name}_check")
    item.name = names.claim(base)
    item.check_sql = cond
    item.cutover = (f"ALTER TABLE {qualified(schema, spec.name)} ADD CONSTRAINT {quote_pg_ident(item.name)} "
                    f"CHECK ({cond})",)
    item.why = ("at cutover, validated against every row (SQLite does not re-check rows a CHECK was added after, "
                "so rows failing it are listed with their keys and the CHECK left out)")
    return item


def _plan_fk(schema: str, spec: TableSpec, fk: ForeignKey, specs: dict[str, TableSpec], objects: SourceObjects,
             plan: SourcePlan, names: Names, options: Options) -> Item:
    cols = ", ".join(fk.columns)
    pcols = ", ".join(fk.parent_columns) if fk.parent_columns else "its primary key"
    item = Item("foreign key", spec.name, f"FOREIGN KEY ({cols}) REFERENCES {fk.parent} ({pcols})",
                object_kind="constraint", fk=fk)
    parent = specs.get(fk.parent) or next((s for n, s in specs.items()
                                           if sqlite_folded(n) == sqlite_folded(fk.parent)), None)
    if parent is None:
        item.left_out = f'the parent table "{fk.parent}" is not replicated to this schema'
        return item
    if fk.parent_columns is None:
        if parent.key_origin != "primary key":
            item.left_out = f'"{parent.name}" has no declared primary key for it to reference'
            return item
        pkey = parent.key
    else:
        pkey = tuple(_column_named(parent, c) or "" for c in fk.parent_columns)
        if "" in pkey:
            item.left_out = f'"{parent.name}" has no column {fk.parent_columns}'
            return item
    if len(pkey) != len(fk.columns):
        item.left_out = "the two column lists differ in length"
        return item
    unique_sets = [tuple(parent.key)] + [tuple(i.parent_key) for i in plan.for_table(parent.name)
                                         if i.parent_key and not i.left_out]
    if not any(set(u) == set(pkey) for u in unique_sets):
        item.left_out = (f'"{parent.name}" ({", ".join(pkey)}) is not unique in Postgres (no primary key or '
                         "carried UNIQUE constraint over exactly these columns)")
        return item
    ptypes = {c.name: plan.retyped.get(parent.name, {}).get(c.name, c.pgtype) for c in parent.columns}
    ctypes = {c.name: plan.retyped.get(spec.name, {}).get(c.name, c.pgtype) for c in spec.columns}
    for c, p in zip(fk.columns, pkey):
        if c not in ctypes:
            item.left_out = f"no column {c}"
            return item
        if ctypes[c] is not ptypes[p]:
            item.left_out = (f"{c} is {ctypes[c].value} in Postgres, {parent.name}.{p} {ptypes[p].value}: "
                             "SQLite compares them by affinity, Postgres cannot")
            return item
    for action in (fk.on_update, fk.on_delete):
        if action not in FK_ACTIONS:
            item.left_out = f"the action {action!r}"
            return item
    nocase, why, todo = _fk_collations(spec, fk, parent, pkey, objects, plan, options)
    if why:
        item.left_out = f"{why}: {todo}"
        item.todo = todo
        return item
    item.name = names.claim(fk.name or f"{spec.name}_{'_'.join(fk.columns)}_fkey")
    defer = " DEFERRABLE INITIALLY DEFERRED" if fk.deferrable else ""
    item.parent_key = pkey
    item.fk_parent = parent.name
    item.cutover = (
        f"ALTER TABLE {qualified(schema, spec.name)} ADD CONSTRAINT {quote_pg_ident(item.name)} FOREIGN KEY "
        f"({', '.join(quote_pg_ident(c) for c in fk.columns)}) REFERENCES {qualified(schema, parent.name)} "
        f"({', '.join(quote_pg_ident(p) for p in pkey)}) ON UPDATE {fk.on_update} ON DELETE {fk.on_delete}{defer}",)
    item.fk_nocase = nocase
    item.why = ("at cutover, after the final drain, validated (SQLite enforces foreign keys only when the application "
                "turns them on, so orphan rows are counted all along; a foreign key Postgres enforced during "
                "dual-write would hold the table at the first orphan the application touched)"
                + ("; DEFERRABLE INITIALLY DEFERRED as in SQLite" if fk.deferrable else "")
                + ("; it matches ignoring case, as in SQLite: its columns and the parent's are made case-insensitive "
                   "at cutover" if any(nocase) else "")
                + (" (a change of case alone in the parent's key is cascaded to the children's spelling, where SQLite "
                   "leaves them as they are)" if any(nocase) and fk.on_update == "CASCADE" else ""))
    return item


FK_CASE_TODO = ("enforce it in the application, or make both columns citext (or text under one ICU nondeterministic "
                "collation) and add the key by hand")
FK_CHILD_CASE_TODO = ("enforce it in the application, or make {0} plain text or citext (a foreign key from either to "
                      "a text key compares byte for byte) and add the key by hand")


def _fk_collations(spec: TableSpec, fk: ForeignKey, parent: TableSpec, pkey: tuple[str, ...],
                   objects: SourceObjects, plan: SourcePlan,
                   options: Options) -> tuple[tuple[bool, ...], str | None, str]:
    """Which of the foreign key's pairs SQLite matches ignoring case, or why Postgres
    cannot match them as SQLite does and what to do instead. SQLite compares a child
    value with its parent under the parent key's collation (the column's; for REFERENCES
    without columns, the primary key's, which may name one of its own); a Postgres
    foreign key, under the parent's collation for a child's write, the child's for its
    actions (NO ACTION's check included). So a key matched ignoring case is carried only
    where both columns become case-insensitive at cutover, and one matched byte for byte
    only where neither does, or the child becomes citext (whose foreign key to a text
    key compares with text's =, byte for byte)."""
    pcoll = objects.table(parent.name).collations
    ccoll = objects.table(spec.name).collations
    if fk.parent_columns is None:
        pk = next((i for i in objects.table(parent.name).indexes if i.origin == "pk"), None)
        by_pk = {c.name: c.collation for c in pk.columns if c.name} if pk is not None else {}
    else:
        by_pk = {}
    carried = {(i.table, i.column) for i in plan.items if i.kind == "nocase" and not i.left_out and i.cutover}
    flags = []
    for c, p in zip(fk.columns, pkey):
        coll = by_pk.get(p, pcoll.get(p, "BINARY"))
        where = (f"the primary key of {parent.name} is COLLATE {coll}" if pcoll.get(p, "BINARY") != coll
                 else f"{parent.name}.{p} is {coll}" if coll == "BINARY" else f"{parent.name}.{p} is COLLATE {coll}")
        if coll == "BINARY":
            head = (f"SQLite matches {spec.name}.{c} to {parent.name}.{p} case-sensitively ({where}), a Postgres "
                    "foreign key would ignore case ")
            if (parent.name, p) in carried:
                return (), head + f"({parent.name}.{p} becomes case-insensitive at cutover)", \
                    "enforce it in the application"
            if (spec.name, c) in carried and options.nocase == "icu":
                return (), (head + f"in its ON UPDATE and ON DELETE actions ({spec.name}.{c} becomes text "
                            f'COLLATE "{NOCASE_COLLATION}" at cutover)'), FK_CHILD_CASE_TODO.format(f"{spec.name}.{c}")
            flags.append(False)
            continue
        if coll != "NOCASE":
            return (), (f"SQLite matches {spec.name}.{c} to {parent.name}.{p} under {coll} ({where}), which no "
                        "Postgres foreign key can"), "enforce it in the application"
        head = f"SQLite matches {spec.name}.{c} to {parent.name}.{p} ignoring case ({where}), a Postgres foreign key "
        if pcoll.get(p) != "NOCASE" or (parent.name, p) not in carried:
            return (), head + f"would not ({parent.name}.{p} stays case-sensitive there)", FK_CASE_TODO
        if ccoll.get(c) != "NOCASE" or (spec.name, c) not in carried:
            return (), (head + f"would not in its ON UPDATE and ON DELETE actions ({spec.name}.{c} stays "
                        "case-sensitive there; declared COLLATE NOCASE in SQLite too, the key is carried)"), \
                FK_CASE_TODO
        flags.append(True)
    if any(flags) and fk.on_update in ("RESTRICT", "SET NULL", "SET DEFAULT"):
        # Postgres compares the old and new parent key byte for byte: 'Red' -> 'RED' sets
        # off the action there, where SQLite sees no change of key.
        changed = ", ".join(f"{parent.name}.{p}" for p, f in zip(pkey, flags) if f)
        return (), (f"its ON UPDATE {fk.on_update}: Postgres sets it off when only the case of {changed} changes "
                    f"(SQLite matches the key ignoring case, and sees no change)"), FK_CASE_TODO
    return tuple(flags), None, ""


def _column_named(spec: TableSpec, name: str) -> str | None:
    for c in spec.columns:
        if c.name == name:
            return c.name
    folded = [c.name for c in spec.columns if sqlite_folded(c.name) == sqlite_folded(name)]
    return folded[0] if len(folded) == 1 else None


def _plan_views(plan: SourcePlan, specs: dict[str, TableSpec], objects: SourceObjects, names: Names) -> None:
    if not objects.views:
        return
    from syncd.parity import translate
    from syncd.parity.expressions import NotParsed
    from syncd.parity.translate import ColumnInfo, Untranslatable

    relations: dict[str, tuple[str, str, list[ColumnInfo]]] = {}
    for tname, spec in specs.items():
        relations[sqlite_folded(tname)] = (plan.schema, tname, columns_info(spec, objects.table(tname).collations,
                                                                            _final_types(plan, tname)))
    pending = list(objects.views)
    # A view reading another view is created after it: translate in rounds until none moves.
    done: set[str] = set()
    failures: dict[str, str] = {}
    while pending:
        progressed = False
        for view in list(pending):
            if view.problem or view.select is None:
                failures[view.name] = view.problem or "its text could not be read"
                pending.remove(view)
                progressed = True
                continue
            try:
                sql, kinds = translate.view_select_typed(view.select, list(view.columns), relations)
            except translate.UnknownRelation as e:
                if any(sqlite_folded(v.name) == sqlite_folded(e.name) for v in pending if v is not view):
                    continue  # reads a view not translated yet: next round
                failures[view.name] = f"not translated exactly: {e}"
                pending.remove(view)
                progressed = True
                continue
            except Untranslatable as e:
                failures[view.name] = f"not translated exactly: {e}"
                pending.remove(view)
                progressed = True
                continue
            except NotParsed as e:
                failures[view.name] = f"not translated exactly: {e}"
                pending.remove(view)
                progressed = True
                continue
            pending.remove(view)
            progressed = True
            done.add(view.name)
            name = view.name if len(view.name.encode()) <= PG_MAX_IDENTIFIER_BYTES else None
            if name is None:
                failures[view.name] = f"its name is longer than Postgres's {PG_MAX_IDENTIFIER_BYTES} bytes"
                continue
            relations[sqlite_folded(view.name)] = (plan.schema, view.name, [
                ColumnInfo(n, translate.kind_type(k.kind), translate.kind_declared(k.kind), k.collation or "BINARY")
                for n, k in zip(view.columns, kinds)])
            plan.items.append(Item("view", None, f'view "{view.name}"', name=view.name, object_kind="view",
                                   cutover=(f"CREATE VIEW {qualified(plan.schema, view.name)} AS {sql}",),
                                   why="at cutover, after the column types are final; its SELECT translated "
                                       "exactly and written by syncd (never SQLite's text)"))
        if not progressed:
            for view in pending:
                failures[view.name] = "reads a view that is not carried (or views reading each other)"
            break
    for vname, why in failures.items():
        plan.items.append(Item("view", None, f'view "{vname}"', left_out=why))
