"""SQLite expression trees -> Postgres SQL that means exactly the same, or the reason not.

Only syncd writes what reaches Postgres: every name through quote_pg_ident, every
literal rebuilt from its value (pg_string_literal, numbers from Python numbers), every
operator and function from the tables below. A construct outside them is refused, so
no function the schema names (pg_sleep, set_config, lo_import, dblink_exec, ...) can
ever be called: Postgres sees only the whitelisted names written here.

"Exactly the same" is judged with the Postgres column types syncd gives each column
(syncd.types) and SQLite's own rules, among them:
- text compares byte by byte in SQLite (BINARY): equality is the same in Postgres for
  any deterministic collation; an ordering comparison gets COLLATE "C";
- a comparison decided by a NOCASE or RTRIM collation, text against a number (SQLite
  applies affinity), or a column holding several storage classes is refused;
- division by anything but a non-zero constant is refused (SQLite gives NULL, Postgres
  an error); lower()/upper() fold only ASCII letters in SQLite, so they become
  translate(x, 'A..Z', 'a..z'); LIKE ignores ASCII case in SQLite, so both sides are
  folded that way and compared with ESCAPE '' (SQLite has no default escape);
- ORDER BY puts NULLs first ascending in SQLite, so NULLS FIRST/LAST is written out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from syncd.identifiers import IdentifierError, pg_string_literal, quote_pg_ident, sqlite_folded
from syncd.parity import expressions as ex
from syncd.sqlite_sql import Affinity, affinity
from syncd.types import PgType

INT, REAL, NUMERIC, TEXT, BLOB, BOOL, NULL, OTHER = "integer", "real", "numeric", "text", "blob", "boolean", \
    "null", "other"
NUMBERS = (INT, REAL, NUMERIC)
_UPPER, _LOWER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"


class Untranslatable(ValueError):
    """The expression has no exact Postgres form; the message says why."""


class UnknownRelation(Untranslatable):
    """A SELECT reads a table or view Postgres does not have (yet)."""

    def __init__(self, name: str):
        super().__init__(f"reads {name}, which Postgres will not have (not replicated, or a view not carried)")
        self.name = name


@dataclass(frozen=True)
class ColumnInfo:
    name: str  # as the table declares it
    pgtype: PgType
    declared: str = ""  # SQLite declared type: its affinity decides what SQLite stores
    collation: str = "BINARY"  # the column's SQLite collation

    @property
    def kind(self) -> str:
        """How values of this column behave in an expression, on both sides alike."""
        aff = affinity(self.declared)
        t = self.pgtype
        if t is PgType.BIGINT:
            return INT  # syncd holds a table whose value is not an integer, so all are
        if t is PgType.DOUBLE:
            return REAL if aff is Affinity.REAL else NUMERIC  # elsewhere SQLite may store integers
        if t is PgType.NUMERIC:
            return NUMERIC
        if t is PgType.TEXT:
            return TEXT if aff is Affinity.TEXT else OTHER  # other affinities keep numbers as numbers
        if t is PgType.BYTEA:
            return BLOB if aff is Affinity.BLOB else OTHER
        if t is PgType.BOOLEAN:
            return BOOL
        return OTHER


@dataclass(frozen=True)
class Typed:
    sql: str
    kind: str
    collation: str | None = None  # SQLite collation a comparison of this operand uses
    explicit: bool = False  # the collation was written with COLLATE
    literal: ex.Literal | None = None
    column: ColumnInfo | None = None


@dataclass
class Source:
    """A table (or derived table) in a query's FROM clause."""

    alias: str  # the name columns are qualified with in Postgres
    columns: list[ColumnInfo]
    names: set[str] = field(default_factory=set)  # lower-cased names that reach it (alias, table)


class Scope:
    """Resolves column names. A single-table scope (CHECK, index) writes bare names."""

    def __init__(self, sources: list[Source], parent: "Scope | None" = None, qualify: bool = True):
        self.sources = sources
        self.parent = parent
        self.qualify = qualify
        self.aliases: dict[str, Typed] = {}  # result-column aliases ORDER BY may name

    def resolve(self, ref: ex.ColumnRef) -> Typed:
        scope: Scope | None = self
        while scope is not None:
            found = scope._here(ref)
            if found is not None:
                return found
            scope = scope.parent
        if ref.double_quoted and ref.table is None:
            raise Untranslatable(f'"{ref.name}" names no column: SQLite reads a double-quoted unknown name as '
                                 "text, Postgres never does")
        where = f"{ref.table}." if ref.table else ""
        raise Untranslatable(f"no column {where}{ref.name} here")

    def _here(self, ref: ex.ColumnRef) -> Typed | None:
        hits = []
        for src in self.sources:
            if ref.table is not None and sqlite_folded(ref.table) not in src.names:
                continue
            col = _find(src.columns, ref.name)
            if col is not None:
                hits.append((src, col))
        if len(hits) > 1:
            raise Untranslatable(f"column {ref.name} is ambiguous")
        if not hits:
            return None
        src, col = hits[0]
        name = _ident(col.name)
        sql = f"{_ident(src.alias)}.{name}" if self.qualify else name
        return Typed(sql, col.kind, col.collation.upper(), False, None, col)


def _find(columns: list[ColumnInfo], name: str) -> ColumnInfo | None:
    exact = [c for c in columns if c.name == name]
    if exact:
        return exact[0]
    folded = [c for c in columns if sqlite_folded(c.name) == sqlite_folded(name)]  # SQLite names ignore A-Z's case only
    return folded[0] if len(folded) == 1 else None


def _ident(name: str) -> str:
    try:
        return quote_pg_ident(name)
    except IdentifierError as e:
        raise Untranslatable(str(e)) from None


def table_scope(columns: list[ColumnInfo]) -> Scope:
    return Scope([Source("", columns)], qualify=False)


# --- expressions -------------------------------------------------------------------------


class Translator:
    """Writes Postgres SQL for one expression or SELECT. `views` maps the lower-cased
    names of tables and views a SELECT may read to (Postgres schema, name, columns)."""

    def __init__(self, scope: Scope, aggregates: bool = False,
                 relations: dict[str, tuple[str, str, list[ColumnInfo]]] | None = None, as_queried: bool = False):
        self.scope = scope
        self.aggregates = aggregates
        self.relations = relations or {}
        # Written as the application's queries will run in Postgres, not exactly as in
        # SQLite: lower() and upper() are Postgres's own (see index_expression).
        self.as_queried = as_queried

    # --- entry points ---

    def boolean(self, node: ex.Node) -> str:
        """A condition (CHECK body, partial-index predicate): true, false or NULL alike."""
        return self._truth(self.expr(node))

    def value(self, node: ex.Node) -> Typed:
        return self.expr(node)

    # --- dispatch ---

    def expr(self, node: ex.Node) -> Typed:
        try:
            method = getattr(self, "_" + type(node).__name__.lower())
        except AttributeError:
            raise Untranslatable(f"{type(node).__name__} is not translated") from None
        return method(node)

    def _literal(self, n: ex.Literal) -> Typed:
        if n.kind == "null":
            return Typed("NULL", NULL, literal=n)
        if n.kind == "integer":
            v = int(n.value)  # type: ignore[arg-type]
            return Typed(str(v) if v >= 0 else f"({v})", INT, literal=n)
        if n.kind == "real":
            return Typed(_real(float(n.value), "numeric"), REAL, literal=n)  # type: ignore[arg-type]
        if n.kind == "text":
            return Typed(_text(str(n.value)), TEXT, "BINARY", literal=n)
        if n.kind == "blob":
            return Typed(f"{_text(chr(92) + 'x' + bytes(n.value).hex())}::bytea", BLOB, literal=n)  # type: ignore
        raise Untranslatable(f"literal of kind {n.kind}")

    def _columnref(self, n: ex.ColumnRef) -> Typed:
        if n.table is None and sqlite_folded(n.name) in self.scope.aliases and self._in_order_by:
            return self.scope.aliases[sqlite_folded(n.name)]
        return self.scope.resolve(n)

    _in_order_by = False

    def _collate(self, n: ex.Collate) -> Typed:
        inner = self.expr(n.operand)
        coll = n.collation.upper()
        if coll != "BINARY":
            raise Untranslatable(f"COLLATE {n.collation}: SQLite's {coll} collation has no exact Postgres form")
        return Typed(inner.sql, inner.kind, "BINARY", True, inner.literal, inner.column)

    def _unary(self, n: ex.Unary) -> Typed:
        if n.op == "NOT":
            return Typed(f"(NOT {self._truth(self.expr(n.operand))})", BOOL)
        inner = self.expr(n.operand)
        if inner.kind == NULL:
            return inner
        if inner.kind not in (INT, REAL, NULL) and not (n.op == "-" and inner.kind == NUMERIC):
            raise Untranslatable(f"unary {n.op} on {inner.kind}: SQLite converts it to a number first")
        if n.op == "+":
            return inner
        if n.op == "~":
            if inner.kind not in (INT, NULL):
                raise Untranslatable("~ on a non-integer")
            return Typed(f"(~ {inner.sql})", INT)
        return Typed(f"(- {inner.sql})", inner.kind)

    def _binary(self, n: ex.Binary) -> Typed:
        op = n.op
        if op in ("AND", "OR"):
            return Typed(f"({self._truth(self.expr(n.left))} {op} {self._truth(self.expr(n.right))})", BOOL)
        left, right = self.expr(n.left), self.expr(n.right)
        if op in ("=", "<>", "<", "<=", ">", ">=", "IS", "ISNOT"):
            return self._compare(op, left, right)
        if op in ("+", "-", "*", "/", "%", "||", "&", "|") and NULL in (left.kind, right.kind) and \
                {left.kind, right.kind} <= {NULL, INT, REAL, TEXT}:
            return Typed("NULL", NULL)  # NULL in, NULL out, in both (a NULL divisor included)
        if op in ("+", "-", "*", "/", "%"):
            return self._arithmetic(op, left, right, n.right)
        if op == "||":
            for side in (left, right):
                if side.kind not in (TEXT, NULL):
                    raise Untranslatable(f"|| with {side.kind}: SQLite turns it into text its own way")
            return Typed(f"({left.sql} || {right.sql})", TEXT, "BINARY")
        if op in ("&", "|"):
            for side in (left, right):
                if side.kind not in (INT, NULL):
                    raise Untranslatable(f"{op} on {side.kind}")
            return Typed(f"({left.sql} {op} {right.sql})", INT)
        if op in ("->", "->>"):
            raise Untranslatable(f"the JSON operator {op} is not translated")
        raise Untranslatable(f"the operator {op} is not translated (shifts differ past 63 bits)")

    # --- comparisons ---

    def _compare(self, op: str, left: Typed, right: Typed) -> Typed:
        left, right = self._comparable(op, left, right)
        lsql, rsql = left.sql, right.sql
        if op in ("<", "<=", ">", ">=") and TEXT in (left.kind, right.kind):
            lsql = f'{lsql} COLLATE "C"'
        elif self._needs_c(left, right):
            lsql = f'{lsql} COLLATE "C"'
        if op in ("IS", "ISNOT"):
            pg = "IS NOT DISTINCT FROM" if op == "IS" else "IS DISTINCT FROM"
            return Typed(f"({lsql} {pg} {rsql})", BOOL)
        return Typed(f"({lsql} {op} {rsql})", BOOL)

    @staticmethod
    def _needs_c(left: Typed, right: Typed) -> bool:
        """Text equality is byte equality in both systems, unless Postgres would compare
        under a column's case-insensitive collation (a NOCASE column after cutover)."""
        return TEXT in (left.kind, right.kind) and any(
            s.column is not None and s.column.collation.upper() != "BINARY" for s in (left, right))

    def _comparable(self, what: str, left: Typed, right: Typed) -> tuple[Typed, Typed]:
        """Both operands as Postgres compares them exactly as SQLite does, or refusal."""
        coll = _collation(left, right)
        if coll not in (None, "BINARY"):
            raise Untranslatable(f"{what} compares under SQLite's {coll} collation, which has no exact Postgres "
                                 "form")
        lk, rk = left.kind, right.kind
        if NULL in (lk, rk):
            return left, right
        if OTHER in (lk, rk):
            col = left.column or right.column
            name = f" {col.name}" if col else ""
            raise Untranslatable(f"compares column{name}, whose values SQLite may store as text or as numbers")
        if lk == rk and lk != BOOL:
            if lk == REAL:
                return self._as_real(left), self._as_real(right)
            return left, right
        if lk in NUMBERS and rk in NUMBERS:
            if REAL in (lk, rk) and (INT in (lk, rk) or NUMERIC in (lk, rk)):
                # an integer against a double: exact only when one side is a constant
                if left.literal is None and right.literal is None:
                    raise Untranslatable("compares an integer column with a floating-point column (Postgres "
                                         "rounds the integer)")
                if left.literal is not None and lk == INT:
                    return self._as_real(left), right
                if right.literal is not None and rk == INT:
                    return left, self._as_real(right)
            return left, right
        if BOOL in (lk, rk):
            b, other = (left, right) if lk == BOOL else (right, left)
            if other.kind == BOOL:
                return left, right
            lit = other.literal
            if lit is not None and lit.kind == "integer" and lit.value in (0, 1):
                as_bool = Typed("true" if lit.value == 1 else "false", BOOL, literal=lit)
                return (b, as_bool) if lk == BOOL else (as_bool, b)
            raise Untranslatable("compares a boolean column with something other than 0 or 1")
        raise Untranslatable(f"compares {lk} with {rk}: SQLite applies type affinity here, Postgres does not")

    @staticmethod
    def _as_real(t: Typed) -> Typed:
        lit = t.literal
        if lit is not None and lit.kind in ("integer", "real"):
            return Typed(_real(float(lit.value), "double precision"), REAL, literal=lit)  # type: ignore[arg-type]
        return t

    def _nulltest(self, n: ex.NullTest) -> Typed:
        inner = self.expr(n.operand)
        return Typed(f"({inner.sql} IS {'NOT ' if n.negated else ''}NULL)", BOOL)

    def _truthtest(self, n: ex.TruthTest) -> Typed:
        """x IS [NOT] TRUE / FALSE: SQLite's truth of x (5 IS TRUE), NULL neither."""
        test = f"{'NOT ' if n.negated else ''}{'TRUE' if n.value else 'FALSE'}"
        return Typed(f"({self._truth(self.expr(n.operand))} IS {test})", BOOL)

    def _between(self, n: ex.Between) -> Typed:
        x, lo, hi = self.expr(n.operand), self.expr(n.low), self.expr(n.high)
        x1, lo = self._comparable("BETWEEN", x, lo)
        x2, hi = self._comparable("BETWEEN", x, hi)
        xs = x1.sql
        if TEXT in (x.kind, lo.kind, hi.kind):
            xs = f'{xs} COLLATE "C"'
        return Typed(f"({xs} {'NOT ' if n.negated else ''}BETWEEN {lo.sql} AND {hi.sql})", BOOL)

    def _inlist(self, n: ex.InList) -> Typed:
        if not n.items:
            raise Untranslatable("an empty IN list")
        x = self.expr(n.operand)
        items = []
        needs_c = False
        compared = []
        for item in n.items:
            xi, it = self._comparable("IN", x, self.expr(item))
            if xi.sql != x.sql:  # the left side would have to be spelled two ways at once
                raise Untranslatable("IN compares its value with items of different types")
            needs_c = needs_c or self._needs_c(xi, it)
            items.append(it.sql)
            compared.append(it)
        _common_kind(compared, "IN")  # Postgres types the list as one
        xs = f'{x.sql} COLLATE "C"' if needs_c else x.sql
        return Typed(f"({xs} {'NOT ' if n.negated else ''}IN ({', '.join(items)}))", BOOL)

    def _inselect(self, n: ex.InSelect) -> Typed:
        x = self.expr(n.operand)
        sub, kinds = self.subquery(n.select)
        if len(kinds) != 1:
            raise Untranslatable("IN (SELECT ...) with more than one column")
        self._comparable("IN", x, Typed("", kinds[0]))
        if x.kind == TEXT or kinds[0] == TEXT:
            raise Untranslatable("IN (SELECT ...) on text: which collation SQLite uses depends on the subquery")
        return Typed(f"({x.sql} {'NOT ' if n.negated else ''}IN ({sub}))", BOOL)

    def _exists(self, n: ex.Exists) -> Typed:
        sub, _ = self.subquery(n.select)
        return Typed(f"(EXISTS ({sub}))", BOOL)

    def _scalarselect(self, n: ex.ScalarSelect) -> Typed:
        sub, kinds = self.subquery(n.select)
        if len(kinds) != 1:
            raise Untranslatable("a scalar subquery with more than one column")
        if not n.select.limit:
            # SQLite takes the first row; Postgres fails on a second one.
            raise Untranslatable("a scalar subquery without LIMIT 1 (SQLite takes the first row, Postgres fails "
                                 "on a second)")
        return Typed(f"({sub})", kinds[0])

    def _like(self, n: ex.Like) -> Typed:
        x = self.expr(n.operand)
        if x.kind not in (TEXT, NULL):
            raise Untranslatable(f"{n.op} on {x.kind}")
        pat = n.pattern
        if not (isinstance(pat, ex.Literal) and pat.kind == "text"):
            raise Untranslatable(f"{n.op} with a pattern that is not a constant")
        text = str(pat.value)
        neg = "NOT " if n.negated else ""
        if n.op == "LIKE":
            esc = ""
            if n.escape is not None:
                if not (isinstance(n.escape, ex.Literal) and n.escape.kind == "text" and len(str(n.escape.value)) == 1):
                    raise Untranslatable("LIKE ... ESCAPE takes one character")
                esc = str(n.escape.value)
                if esc in _UPPER:
                    raise Untranslatable("an ESCAPE letter")
            folded = text.translate(str.maketrans(_UPPER, _LOWER))
            return Typed(f'({_fold_ascii(x.sql)} COLLATE "C" {neg}LIKE {_text(folded)} ESCAPE {_text(esc)})', BOOL)
        if n.op == "GLOB":
            if n.escape is not None:
                raise Untranslatable("GLOB takes no ESCAPE")
            regex = _glob_regex(text)
            return Typed(f'({x.sql} COLLATE "C" {"!" if n.negated else ""}~ {_text(regex)})', BOOL)
        raise Untranslatable(f"{n.op} needs a function SQLite's application defines")

    def _case(self, n: ex.Case) -> Typed:
        parts = ["CASE"]
        base = None
        if n.base is not None:
            base = self.expr(n.base)
            parts.append(base.sql)
        kinds: list[Typed] = []
        for cond, result in n.whens:
            if base is not None:
                b, c = self._comparable("CASE", base, self.expr(cond))
                if self._needs_c(b, c):
                    raise Untranslatable("CASE on a column with another collation")
                parts.append(f"WHEN {c.sql}")
            else:
                parts.append(f"WHEN {self._truth(self.expr(cond))}")
            r = self.expr(result)
            kinds.append(r)
            parts.append(f"THEN {r.sql}")
        if n.else_ is not None:
            r = self.expr(n.else_)
            kinds.append(r)
            parts.append(f"ELSE {r.sql}")
        parts.append("END")
        kind = _common_kind(kinds, "CASE")
        if kind == NULL:  # NULL whatever the branch; Postgres would type the CASE text, not unknown
            return Typed("NULL", NULL)
        return Typed("(" + " ".join(parts) + ")", kind)

    def _cast(self, n: ex.Cast) -> Typed:
        inner = self.expr(n.operand)
        target = affinity(n.type_name)
        if target is Affinity.TEXT and inner.kind in (TEXT, NULL):
            return Typed(f"({inner.sql})::text", TEXT, "BINARY")
        if target is Affinity.TEXT and inner.kind == INT:
            return Typed(f"({inner.sql})::text", TEXT, "BINARY")
        if target is Affinity.REAL and inner.kind in (INT, REAL, NULL):
            return Typed(f"({inner.sql})::double precision", REAL)
        if target is Affinity.INTEGER and inner.kind in (INT, NULL):
            return inner
        raise Untranslatable(f"CAST({inner.kind} AS {n.type_name}): SQLite converts leniently ('12abc' -> 12) "
                             "where Postgres refuses")

    # --- functions ---

    def _function(self, n: ex.Function) -> Typed:
        handler = _FUNCTIONS.get(n.name)
        if handler is None:
            if n.name in _AGGREGATES:
                return self._aggregate(n)
            raise Untranslatable(f"the function {n.name}() is not one syncd translates")
        if n.star or n.distinct:
            raise Untranslatable(f"{n.name}() takes no * or DISTINCT")
        args = [self.expr(a) for a in n.args]
        out = handler(self, args, n)
        if n.name not in _NOT_STRICT and any(a.kind == NULL for a in args):
            return Typed("NULL", NULL)  # NULL in, NULL out, in both (and Postgres cannot type a bare NULL here)
        return out

    def _aggregate(self, n: ex.Function) -> Typed:
        if not self.aggregates:
            raise Untranslatable(f"the aggregate {n.name}() cannot appear here")
        d = "DISTINCT " if n.distinct else ""
        if n.name == "count":
            if n.star:
                return Typed("count(*)", INT)
            if len(n.args) != 1:
                raise Untranslatable("count() takes one argument")
            a = self.expr(n.args[0])
            if n.distinct and a.kind == TEXT and a.collation not in (None, "BINARY"):
                raise Untranslatable("count(DISTINCT) under a non-BINARY collation")
            return Typed(f"count({d}{a.sql})", INT)
        if n.star or len(n.args) != 1:
            raise Untranslatable(f"{n.name}() takes one argument")
        a = self.expr(n.args[0])
        if n.name == "sum":
            if a.kind != INT:
                raise Untranslatable("sum() of anything but integers (the order of a floating-point sum changes "
                                     "its rounding)")
            return Typed(f"(sum({d}{a.sql}))::bigint", INT)
        # min / max
        if a.kind == TEXT:
            if a.collation not in (None, "BINARY"):
                raise Untranslatable(f"{n.name}() under the {a.collation} collation")
            return Typed(f'{n.name}({d}{a.sql} COLLATE "C")', TEXT, "BINARY")
        if a.kind in (INT, REAL, NUMERIC, BLOB):
            return Typed(f"{n.name}({d}{a.sql})", a.kind)
        raise Untranslatable(f"{n.name}() of {a.kind}")

    # --- helpers ---

    def _truth(self, t: Typed) -> str:
        """`t` as a Postgres boolean, true exactly where SQLite's value is true."""
        if t.kind == BOOL:
            return t.sql
        if t.kind == NULL:
            return "NULL::boolean"
        if t.kind in NUMBERS:
            return f"({t.sql} <> 0)"
        raise Untranslatable(f"{t.kind} used as a condition: SQLite converts it to a number first")

    def _arithmetic(self, op: str, left: Typed, right: Typed, right_node: ex.Node) -> Typed:
        for side in (left, right):
            if side.kind not in (INT, REAL, NULL):
                raise Untranslatable(f"arithmetic on {side.kind}: SQLite and Postgres compute it differently")
        kind = REAL if REAL in (left.kind, right.kind) else INT
        if op in ("/", "%"):
            lit = right.literal
            if lit is None or lit.kind not in ("integer", "real") or lit.value == 0:
                raise Untranslatable(f"{op} by something other than a non-zero constant (SQLite gives NULL for "
                                     "a zero divisor, Postgres an error)")
            if op == "%" and kind != INT:
                raise Untranslatable("% on a floating-point value (SQLite truncates it to an integer first)")
        if kind == REAL:
            left, right = self._as_real(left), self._as_real(right)
        return Typed(f"({left.sql} {op} {right.sql})", kind)

    # --- SELECT ---

    def subquery(self, sel: ex.Select) -> tuple[str, list[str]]:
        if not self.relations:
            raise Untranslatable("a subquery cannot appear here (only in a view)")
        inner = Translator(Scope([], self.scope), self.aggregates, self.relations)
        inner.aggregates = True
        sql, kinds, _names = inner.select(sel, None, named=False)
        return sql, [k.kind for k in kinds]

    def select(self, sel: ex.Select, names: list[str] | None, named: bool = True
               ) -> tuple[str, list[Typed], list[str]]:
        """(SQL, each output column's kind and collation, output names). `names`: the names SQLite
        gives the output columns (PRAGMA table_info of the view), written as aliases. `named`:
        whether the output columns are read by name (a view's, a subquery's in FROM), not
        those of a subquery in a condition (EXISTS (SELECT 1 ...))."""
        parts = []
        kinds: list[Typed] = []
        out_names: list[str] = []
        first_scope: Scope | None = None
        for i, core in enumerate(sel.cores):
            # Only the first SELECT of a compound names the columns.
            sql, ks, ns, scope = self._core(core, names if i == 0 else None, named and i == 0)
            if i == 0:
                kinds, out_names, first_scope = ks, ns, scope
            elif len(ks) != len(kinds):
                raise Untranslatable("compound SELECT parts with different column counts")
            else:
                op = sel.compounds[i - 1]
                if op != "UNION ALL" and any(k.kind == OTHER or (k.kind == TEXT and k.collation not in (None, "BINARY"))
                                             for k in kinds + ks):  # it compares rows as DISTINCT does
                    raise Untranslatable(f"{op} over text under another collation or mixed values")
                kinds = [_compound_column(a, b) for a, b in zip(kinds, ks)]
            if i > 0:
                parts.append(sel.compounds[i - 1])
            parts.append(sql if len(sel.cores) == 1 else f"({sql})")
        assert first_scope is not None
        if sel.order_by:
            terms = []
            for term in sel.order_by:
                terms.append(self._order_term(term, first_scope, len(sel.cores) > 1, kinds))
            parts.append("ORDER BY " + ", ".join(terms))
        for word, node in (("LIMIT", sel.limit), ("OFFSET", sel.offset)):
            if node is None:
                continue
            if not (isinstance(node, ex.Literal) and node.kind == "integer"):
                raise Untranslatable(f"{word} that is not a constant integer")
            v = int(node.value)  # type: ignore[arg-type]
            if v < 0:
                if word == "LIMIT":
                    continue  # a negative LIMIT means none in SQLite
                raise Untranslatable("a negative OFFSET")
            parts.append(f"{word} {v}")
        return " ".join(parts), kinds, out_names

    def _order_term(self, term: ex.OrderTerm, scope: Scope, compound: bool, kinds: list[Typed]) -> str:
        if term.collation is not None and term.collation.upper() != "BINARY":
            raise Untranslatable(f"ORDER BY ... COLLATE {term.collation}")
        e = term.expr
        if isinstance(e, ex.Literal) and e.kind == "integer":
            pos = int(e.value)  # type: ignore[arg-type]
            if not 1 <= pos <= len(kinds):
                raise Untranslatable(f"ORDER BY {pos} is out of range")
            if kinds[pos - 1].kind in (TEXT, OTHER):
                raise Untranslatable("ORDER BY position of a text column (Postgres would sort it by its locale)")
            sql = str(pos)
        else:
            if compound:
                raise Untranslatable("ORDER BY an expression of a compound SELECT")
            t = Translator(scope, True, self.relations)
            t._in_order_by = True
            v = t.expr(e)
            if v.kind == TEXT:
                if v.collation not in (None, "BINARY"):
                    raise Untranslatable(f"ORDER BY under the {v.collation} collation")
                sql = f'{v.sql} COLLATE "C"'
            elif v.kind in (OTHER, BOOL):
                raise Untranslatable(f"ORDER BY a {v.kind} value")
            else:
                sql = v.sql
        nulls = term.nulls or ("LAST" if term.descending else "FIRST")  # SQLite: NULL is the smallest value
        return f"{sql} {'DESC' if term.descending else 'ASC'} NULLS {nulls}"

    def _core(self, core: ex.SelectCore, names: list[str] | None, named: bool = True):
        scope = Scope([], self.scope)
        from_sql = self._from(core.from_, scope) if core.from_ is not None else None
        t = Translator(scope, True, self.relations)
        cols: list[tuple[Typed, str]] = []  # value, output name
        for rc in core.columns:
            if isinstance(rc.expr, ex.Star):
                if _has_using(core.from_):
                    raise Untranslatable("* over a join USING columns")
                if rc.expr.table is not None and not any(sqlite_folded(rc.expr.table) in s.names
                                                         for s in scope.sources):
                    raise Untranslatable(f"no table {rc.expr.table} for {rc.expr.table}.*")
                for src in scope.sources:
                    if rc.expr.table is not None and sqlite_folded(rc.expr.table) not in src.names:
                        continue
                    for c in src.columns:
                        cols.append((Typed(f"{_ident(src.alias)}.{_ident(c.name)}", c.kind, c.collation.upper(),
                                           column=c), c.name))
                continue
            v = t.expr(rc.expr)
            name = rc.alias or (rc.expr.name if isinstance(rc.expr, ex.ColumnRef) else "")
            cols.append((v, name))
            if rc.alias:
                scope.aliases[sqlite_folded(rc.alias)] = v
        if names is not None:
            if len(names) != len(cols):
                raise Untranslatable(f"the view has {len(names)} columns, its SELECT {len(cols)}")
            cols = [(v, name) for (v, _), name in zip(cols, names)]
        for v, name in cols:
            if not name and named:
                raise Untranslatable("an output column without a name")
            if core.distinct and (v.kind == OTHER or (v.kind == TEXT and v.collation not in (None, "BINARY"))):
                raise Untranslatable("DISTINCT over text under another collation or mixed values")
        select = ["SELECT"]
        if core.distinct:
            select.append("DISTINCT")
        select.append(", ".join(f"{v.sql} AS {_ident(name)}" if name else v.sql for v, name in cols))
        if from_sql:
            select.append(f"FROM {from_sql}")
        if core.where is not None:
            select.append(f"WHERE {Translator(scope, False, self.relations).boolean(core.where)}")
        if core.group_by:
            groups = []
            for g in core.group_by:
                gv = t.expr(g)
                if gv.kind == OTHER or (gv.kind == TEXT and gv.collation not in (None, "BINARY")):
                    raise Untranslatable("GROUP BY text under another collation or mixed values")
                groups.append(gv.sql)
            select.append("GROUP BY " + ", ".join(groups))
        if core.having is not None:
            select.append(f"HAVING {t.boolean(core.having)}")
        kinds = [Typed("", v.kind, v.collation, column=v.column) for v, _ in cols]
        return " ".join(select), kinds, [n for _, n in cols], scope

    def _from(self, item: ex.FromItem, scope: Scope) -> str:
        if isinstance(item, ex.TableRef):
            rel = self.relations.get(sqlite_folded(item.name))
            if rel is None:
                raise UnknownRelation(item.name)
            schema, name, columns = rel
            alias = item.alias or name
            src = Source(alias, columns,
                         {sqlite_folded(alias)} | ({sqlite_folded(item.name)} if not item.alias else set()))
            if any(src.names & s.names for s in scope.sources):
                raise Untranslatable(f"{alias} appears twice in FROM")
            scope.sources.append(src)
            return f"{_ident(schema)}.{_ident(name)} AS {_ident(alias)}"
        if isinstance(item, ex.SubqueryRef):
            if not item.alias:
                raise Untranslatable("a subquery in FROM without a name")
            inner = Translator(Scope([], scope.parent), True, self.relations)
            sql, kinds, names = inner.select(item.select, None)
            columns = [ColumnInfo(n, kind_type(k.kind), kind_declared(k.kind), k.collation or "BINARY")
                       for n, k in zip(names, kinds)]
            scope.sources.append(Source(item.alias, columns, {sqlite_folded(item.alias)}))
            return f"({sql}) AS {_ident(item.alias)}"
        assert isinstance(item, ex.Join)
        left = self._from(item.left, scope)
        right = self._from(item.right, scope)
        if item.kind == "CROSS":
            return f"({left} CROSS JOIN {right})"
        if item.using:
            for u in item.using:
                hits = [c for s in scope.sources for c in s.columns if sqlite_folded(c.name) == sqlite_folded(u)]
                if any(c.kind in (TEXT, OTHER) and (c.kind == OTHER or c.collation.upper() != "BINARY")
                       for c in hits):
                    raise Untranslatable(f"USING ({u}) compares under a non-BINARY collation or mixed types")
                kinds = {c.kind for c in hits}
                if len(kinds) > 1:
                    raise Untranslatable(f"USING ({u}) compares {' and '.join(sorted(kinds))}")
            cols = ", ".join(_ident(u) for u in item.using)
            return f"({left} {item.kind} JOIN {right} USING ({cols}))"
        on = Translator(scope, False, self.relations).boolean(item.on) if item.on is not None else "true"
        return f"({left} {item.kind} JOIN {right} ON {on})"


def _has_using(item: ex.FromItem | None) -> bool:
    if isinstance(item, ex.Join):
        return bool(item.using) or _has_using(item.left) or _has_using(item.right)
    return False


def kind_type(kind: str) -> PgType:
    return {INT: PgType.BIGINT, REAL: PgType.DOUBLE, NUMERIC: PgType.NUMERIC, TEXT: PgType.TEXT,
            BLOB: PgType.BYTEA, BOOL: PgType.BOOLEAN}.get(kind, PgType.JSON)


def kind_declared(kind: str) -> str:
    return {INT: "INTEGER", REAL: "REAL", NUMERIC: "NUMERIC", TEXT: "TEXT", BLOB: "BLOB", BOOL: "BOOLEAN"}.get(
        kind, "")


def _collation(left: Typed, right: Typed) -> str | None:
    """SQLite's rule: an explicit COLLATE (left first), else the left column's, else the right's."""
    for side in (left, right):
        if side.explicit:
            return side.collation
    for side in (left, right):
        if side.column is not None and side.kind in (TEXT, OTHER):
            return side.column.collation.upper()
    return None


def _common_kind(values: list[Typed], what: str) -> str:
    kinds = {v.kind for v in values} - {NULL}
    if not kinds:
        return NULL
    if len(kinds) == 1:
        return kinds.pop()
    if kinds <= {INT, REAL}:
        return REAL
    raise Untranslatable(f"{what} mixes {' and '.join(sorted(kinds))} values")


def _compound_column(a: Typed, b: Typed) -> Typed:
    """A compound SELECT's output column from the same column of two of its SELECTs: one
    kind for both, and a collation other than BINARY where either has one (a comparison
    of the view's readers under it is refused)."""
    coll = next((t.collation for t in (a, b) if t.collation not in (None, "BINARY")), a.collation)
    if {a.kind, b.kind} == {INT, REAL}:
        # Postgres makes the whole column double precision: its integers would come back
        # as reals (past 2**53 not even the same number), and UNION would merge rows
        # SQLite keeps apart.
        raise Untranslatable("compound SELECT mixes integer and real values in one column")
    return Typed("", _common_kind([a, b], "compound SELECT"), coll)


def _text(value: str) -> str:
    try:
        return pg_string_literal(value)
    except IdentifierError as e:
        raise Untranslatable(str(e)) from None


def _real(v: float, pgtype: str) -> str:
    if not math.isfinite(v):
        raise Untranslatable("an infinite constant")
    return f"{_text(repr(v))}::{pgtype}"


def _fold_ascii(sql: str) -> str:
    """SQLite's lower(): ASCII letters only (Postgres's lower() folds all of Unicode)."""
    return f"translate({sql}, {_text(_UPPER)}, {_text(_LOWER)})"


def _glob_regex(pattern: str) -> str:
    """SQLite's GLOB pattern as an anchored Postgres regular expression (code-point
    ranges under COLLATE "C", as SQLite compares them)."""
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i + 1
            neg = j < n and pattern[j] == "^"
            if neg:
                j += 1
            body = []
            if j < n and pattern[j] == "]":
                body.append("\\]")
                j += 1
            while j < n and pattern[j] != "]":
                ch = pattern[j]
                if ch == "-" and body and j + 1 < n and pattern[j + 1] != "]":
                    body.append("-")
                elif ch.isalnum() and ch.isascii():
                    body.append(ch)
                elif ch == "-":
                    body.append("\\-")
                else:
                    body.append("\\" + ch if ch in "\\^[]" else ch)
                j += 1
            if j >= n:
                raise Untranslatable("an unterminated [...] in a GLOB pattern")
            out.append("[" + ("^" if neg else "") + "".join(body) + "]")
            i = j
        elif c.isalnum() and c.isascii():
            out.append(c)
        else:
            out.append("\\" + c if not (c.isalnum() or c in " _") else c)
        i += 1
    out.append("$")
    return "".join(out)


# --- the function whitelist ------------------------------------------------------------------


def _args(name: str, args: list[Typed], counts: tuple[int, ...]) -> None:
    if len(args) not in counts:
        raise Untranslatable(f"{name}() with {len(args)} argument(s)")


def _text_args(name: str, args: list[Typed]) -> None:
    for a in args:
        if a.kind not in (TEXT, NULL):
            raise Untranslatable(f"{name}() of {a.kind}: SQLite turns it into text its own way")


def _f_length(t: Translator, args: list[Typed], n: ex.Function) -> Typed:
    _args("length", args, (1,))
    if args[0].kind not in (TEXT, BLOB, NULL):
        raise Untranslatable(f"length() of {args[0].kind} (SQLite measures its text form)")
    return Typed(f"length({args[0].sql})", INT)


def _f_fold(upper: bool):
    def f(t: Translator, args: list[Typed], n: ex.Function) -> Typed:
        _args(n.name, args, (1,))
        _text_args(n.name, args)
        if t.as_queried:
            return Typed(f"{'upper' if upper else 'lower'}({args[0].sql})", TEXT, "BINARY")
        src, dst = (_LOWER, _UPPER) if upper else (_UPPER, _LOWER)
        return Typed(f"translate({args[0].sql}, {_text(src)}, {_text(dst)})", TEXT, "BINARY")
    return f


def _f_abs(t: Translator, args: list[Typed], n: ex.Function) -> Typed:
    _args("abs", args, (1,))
    if args[0].kind not in (INT, REAL, NULL):
        raise Untranslatable(f"abs() of {args[0].kind}")
    return Typed(f"abs({args[0].sql})", args[0].kind)


def _f_coalesce(t: Translator, args: list[Typed], n: ex.Function) -> Typed:
    if len(args) < 2 or (n.name == "ifnull" and len(args) != 2):
        raise Untranslatable(f"{n.name}() with {len(args)} argument(s)")
    kind = _common_kind(args, n.name)
    if kind in (REAL,) and any(a.kind == INT for a in args):
        raise Untranslatable(f"{n.name}() mixing integers and reals")
    if kind == OTHER:
        raise Untranslatable(f"{n.name}() of values SQLite may store as text or numbers")
    return Typed(f"coalesce({', '.join(a.sql for a in args)})", kind, args[0].collation)


def _f_nullif(t: Translator, args: list[Typed], n: ex.Function) -> Typed:
    _args("nullif", args, (2,))
    a, b = t._comparable("nullif", args[0], args[1])
    if t._needs_c(a, b):
        raise Untranslatable("nullif() on a column with another collation")
    return Typed(f"nullif({a.sql}, {b.sql})", args[0].kind)


def _f_instr(t: Translator, args: list[Typed], n: ex.Function) -> Typed:
    _args("instr", args, (2,))
    _text_args("instr", args)
    return Typed(f"strpos({args[0].sql}, {args[1].sql})", INT)


def _f_replace(t: Translator, args: list[Typed], n: ex.Function) -> Typed:
    _args("replace", args, (3,))
    _text_args("replace", args)
    return Typed(f"replace({args[0].sql}, {args[1].sql}, {args[2].sql})", TEXT, "BINARY")


def _f_trim(t: Translator, args: list[Typed], n: ex.Function) -> Typed:
    _args(n.name, args, (1, 2))
    _text_args(n.name, args)
    pg = {"trim": "btrim", "ltrim": "ltrim", "rtrim": "rtrim"}[n.name]
    return Typed(f"{pg}({', '.join(a.sql for a in args)})", TEXT, "BINARY")


def _f_substr(t: Translator, args: list[Typed], n: ex.Function) -> Typed:
    _args(n.name, args, (2, 3))
    _text_args(n.name, args[:1])
    for a, least in zip(args[1:], (1, 0)):
        lit = a.literal
        if lit is None or lit.kind != "integer" or int(lit.value) < least:  # type: ignore[arg-type]
            raise Untranslatable(f"{n.name}() with a start below 1 or a length below 0, or not constant (SQLite "
                                 "counts those differently)")
    return Typed(f"substr({', '.join(a.sql for a in args)})", TEXT, "BINARY")


def _f_typeof(t: Translator, args: list[Typed], n: ex.Function) -> Typed:
    _args("typeof", args, (1,))
    a = args[0]
    name = {INT: "integer", REAL: "real", TEXT: "text", BLOB: "blob", BOOL: "integer"}.get(a.kind)
    if a.column is None or name is None:
        raise Untranslatable("typeof() of anything but a column of one storage class")
    return Typed(f"(CASE WHEN {a.sql} IS NULL THEN {_text('null')} ELSE {_text(name)} END)", TEXT, "BINARY")


_FUNCTIONS = {
    "length": _f_length,
    "lower": _f_fold(False),
    "upper": _f_fold(True),
    "abs": _f_abs,
    "coalesce": _f_coalesce,
    "ifnull": _f_coalesce,
    "nullif": _f_nullif,
    "instr": _f_instr,
    "replace": _f_replace,
    "trim": _f_trim,
    "ltrim": _f_trim,
    "rtrim": _f_trim,
    "substr": _f_substr,
    "substring": _f_substr,
    "typeof": _f_typeof,
}
_AGGREGATES = {"count", "sum", "min", "max"}
_NOT_STRICT = {"coalesce", "ifnull", "nullif", "typeof"}  # the others give NULL for a NULL argument


# --- entry points ------------------------------------------------------------------------------


def condition(text: str, columns: list[ColumnInfo]) -> str:
    """A CHECK body or partial-index predicate as a Postgres condition on a table with
    `columns`; raises Untranslatable (or expressions.NotParsed) with the reason."""
    try:
        return Translator(table_scope(columns)).boolean(ex.parse_expression(text))
    except RecursionError:
        raise Untranslatable("nested too deeply") from None


def index_expression(node: ex.Node, columns: list[ColumnInfo], unique: bool = False) -> str:
    """One indexed expression, in the parentheses Postgres needs around it. A unique
    one means exactly what it does in SQLite (it decides which rows are refused), and
    over a column with a case-insensitive collation in Postgres compares its text
    result byte by byte, as SQLite does. A plain one only speeds up queries, which
    Postgres answers the same with it or without: it is written as the application's
    queries will run there (`lower(email)` as Postgres's lower(), not SQLite's
    ASCII-only folding, which no query written for SQLite would match)."""
    try:
        v = Translator(table_scope(columns), as_queried=not unique).value(node)
    except RecursionError:
        raise Untranslatable("nested too deeply") from None
    if unique and v.kind == TEXT and any(c.collation.upper() != "BINARY" for c in columns
                                         if sqlite_folded(c.name) in _column_names(node)):
        return f'(({v.sql}) COLLATE "C")'
    return f"({v.sql})"


def _column_names(node: object) -> set[str]:
    """The names of every column an expression tree reads, A-Z folded (sqlite_folded)."""
    out: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ex.ColumnRef):
            out.add(sqlite_folded(n.name))
        elif isinstance(n, (list, tuple)):
            stack.extend(n)
        elif isinstance(n, ex.Node):
            stack.extend(getattr(n, f) for f in n.__dataclass_fields__)  # type: ignore[attr-defined]
    return out


def view_select_typed(text: str, names: list[str], relations: dict[str, tuple[str, str, list[ColumnInfo]]]
                      ) -> tuple[str, list[Typed]]:
    """A view's SELECT, reading only `relations` (lower-cased SQLite name -> Postgres
    schema, name, columns), its output columns named `names`; with each output
    column's kind (for views reading it)."""
    try:
        sel = ex.parse_select(text)
        sql, kinds, _names = Translator(Scope([]), True, relations).select(sel, names)
        return sql, kinds
    except RecursionError:
        raise Untranslatable("nested too deeply") from None


def view_select(text: str, names: list[str], relations: dict[str, tuple[str, str, list[ColumnInfo]]]) -> str:
    return view_select_typed(text, names, relations)[0]
