"""SQLite expressions and SELECT statements as a syntax tree. Pure, no I/O.

A SQLite file's schema is written by whoever can write the file: CHECK bodies, index
expressions, partial-index predicates and view bodies are hostile input. They are
tokenized by SQLite's own rules (syncd.sqlite_sql) and parsed here into a tree of a
small, closed set of nodes; anything outside that set (a bound parameter, a window,
RAISE, a construct this parser does not know) is refused with the reason. Nothing of
the text survives parsing: names and literal values are kept as Python values, and
translate.py writes the Postgres SQL from the tree alone.

    parse_expression("qty > 0 AND name <> ''")   -> Binary('AND', Binary('>', ...), ...)
    parse_select("SELECT a FROM t WHERE b")      -> Select(...)
    parse_expression("1; DROP TABLE x")          -> raises NotParsed("unexpected ';' ...")
"""

from __future__ import annotations

from dataclasses import dataclass

from syncd import sqlite_sql
from syncd.sqlite_sql import Kind, Token, identifier_value

# Nesting deeper than this is refused: a hostile schema must not exhaust the stack
# (each level costs about fifteen Python frames).
MAX_DEPTH = 40


class NotParsed(ValueError):
    """Text this parser does not take apart exactly (the message says what and where)."""


# --- the tree -------------------------------------------------------------------------


class Node:
    """Base of every expression node."""


@dataclass(frozen=True)
class Literal(Node):
    kind: str  # "integer", "real", "text", "blob", "null"
    value: object = None


@dataclass(frozen=True)
class ColumnRef(Node):
    name: str
    table: str | None = None
    double_quoted: bool = False  # "x": SQLite reads it as text when no column is named x


@dataclass(frozen=True)
class Unary(Node):
    op: str  # "-", "+", "~", "NOT"
    operand: Node


@dataclass(frozen=True)
class Binary(Node):
    op: str  # OR AND = <> < <= > >= IS ISNOT + - * / % || & | << >> -> ->>
    left: Node
    right: Node


@dataclass(frozen=True)
class NullTest(Node):
    operand: Node
    negated: bool  # IS NOT NULL / NOTNULL / NOT NULL


@dataclass(frozen=True)
class TruthTest(Node):
    operand: Node
    value: bool  # IS TRUE / IS FALSE: SQLite tests the operand's truth, not its equality with 1 or 0
    negated: bool  # IS NOT TRUE / IS NOT FALSE


@dataclass(frozen=True)
class Between(Node):
    operand: Node
    low: Node
    high: Node
    negated: bool


@dataclass(frozen=True)
class InList(Node):
    operand: Node
    items: tuple[Node, ...]
    negated: bool


@dataclass(frozen=True)
class InSelect(Node):
    operand: Node
    select: "Select"
    negated: bool


@dataclass(frozen=True)
class Like(Node):
    op: str  # LIKE, GLOB, MATCH, REGEXP
    operand: Node
    pattern: Node
    escape: Node | None
    negated: bool


@dataclass(frozen=True)
class Function(Node):
    name: str  # lower-cased
    args: tuple[Node, ...]
    star: bool = False  # count(*)
    distinct: bool = False


@dataclass(frozen=True)
class Case(Node):
    base: Node | None
    whens: tuple[tuple[Node, Node], ...]
    else_: Node | None


@dataclass(frozen=True)
class Cast(Node):
    operand: Node
    type_name: str


@dataclass(frozen=True)
class Collate(Node):
    operand: Node
    collation: str


@dataclass(frozen=True)
class Exists(Node):
    select: "Select"


@dataclass(frozen=True)
class ScalarSelect(Node):
    select: "Select"


@dataclass(frozen=True)
class Star:
    table: str | None = None  # t.*


@dataclass(frozen=True)
class ResultColumn:
    expr: Node | Star
    alias: str | None = None


@dataclass(frozen=True)
class TableRef:
    name: str
    alias: str | None = None
    schema: str | None = None


@dataclass(frozen=True)
class SubqueryRef:
    select: "Select"
    alias: str | None = None


@dataclass(frozen=True)
class Join:
    left: "FromItem"
    right: "FromItem"
    kind: str  # "INNER", "LEFT", "RIGHT", "FULL", "CROSS"
    on: Node | None = None
    using: tuple[str, ...] = ()


FromItem = TableRef | SubqueryRef | Join


@dataclass(frozen=True)
class OrderTerm:
    expr: Node
    descending: bool = False
    nulls: str | None = None  # "FIRST", "LAST" or None (SQLite's default: NULLs first ascending)
    collation: str | None = None


@dataclass(frozen=True)
class SelectCore:
    columns: tuple[ResultColumn, ...]
    distinct: bool = False
    from_: FromItem | None = None
    where: Node | None = None
    group_by: tuple[Node, ...] = ()
    having: Node | None = None


@dataclass(frozen=True)
class Select:
    cores: tuple[SelectCore, ...]  # the first core, then one per compound operator
    compounds: tuple[str, ...] = ()  # "UNION", "UNION ALL", "INTERSECT", "EXCEPT"
    order_by: tuple[OrderTerm, ...] = ()
    limit: Node | None = None
    offset: Node | None = None


# --- the parser -----------------------------------------------------------------------

# Words that start or shape an expression; any other bare word is a name.
_RESERVED = frozenset("""
ADD ALL ALTER AND AS ASC BETWEEN BY CASE CAST CHECK COLLATE COMMIT CONSTRAINT CREATE CROSS DEFAULT
DEFERRABLE DELETE DESC DISTINCT DROP ELSE END ESCAPE EXCEPT EXISTS FOREIGN FROM FULL GLOB GROUP HAVING IN
INDEX INNER INSERT INTERSECT INTO IS ISNULL JOIN LEFT LIMIT LIKE MATCH NATURAL NOT NOTNULL NULL OFFSET ON OR
ORDER OUTER PRIMARY RAISE REFERENCES REGEXP RIGHT SELECT SET TABLE THEN TO TRANSACTION UNION UNIQUE UPDATE
USING VALUES WHEN WHERE WINDOW WITH OVER FILTER RETURNING
""".split())

_COMPARISON = {"=": "=", "==": "=", "!=": "<>", "<>": "<>"}
_ORDERING = {"<", "<=", ">", ">="}
_BITWISE = {"&", "|", "<<", ">>"}
_ADDITIVE = {"+", "-"}
_MULTIPLICATIVE = {"*", "/", "%"}
_CONCAT = {"||", "->", "->>"}


class Parser:
    """Recursive descent over significant tokens, by SQLite's operator precedence
    (https://sqlite.org/lang_expr.html#operators)."""

    def __init__(self, text: str):
        try:
            self.tokens = sqlite_sql.significant(sqlite_sql.tokenize(text))
        except sqlite_sql.SqlSyntaxError as e:
            raise NotParsed(f"not valid SQLite ({e})") from None
        for t in self.tokens:
            if t.kind is Kind.VARIABLE:
                raise NotParsed(f"a bound parameter ({t.text}) has no value here")
        self.i = 0
        self.depth = 0

    # --- token helpers ---

    def peek(self, k: int = 0) -> Token | None:
        j = self.i + k
        return self.tokens[j] if j < len(self.tokens) else None

    def word(self, k: int = 0) -> str | None:
        t = self.peek(k)
        return t.text.upper() if t is not None and t.kind is Kind.WORD else None

    def punct(self, k: int = 0) -> str | None:
        t = self.peek(k)
        return t.text if t is not None and t.kind is Kind.PUNCT else None

    def at_word(self, *words: str) -> bool:
        return self.word() in words

    def take_word(self, *words: str) -> bool:
        if self.word() in words:
            self.i += 1
            return True
        return False

    def take_punct(self, *ops: str) -> str | None:
        p = self.punct()
        if p in ops:
            self.i += 1
            return p
        return None

    def expect_word(self, w: str) -> None:
        if not self.take_word(w):
            raise self.error(f"expected {w}")

    def expect_punct(self, p: str) -> None:
        if self.take_punct(p) is None:
            raise self.error(f"expected {p!r}")

    def error(self, what: str) -> NotParsed:
        t = self.peek()
        where = "at the end" if t is None else f"at {t.text[:20]!r} (offset {t.start})"
        return NotParsed(f"{what} {where}")

    def done(self) -> None:
        if self.peek() is not None:
            raise self.error("unexpected text")

    def name(self) -> str:
        t = self.peek()
        if t is None or t.kind not in (Kind.WORD, Kind.QUOTED_ID) or (
                t.kind is Kind.WORD and t.text.upper() in _RESERVED):
            raise self.error("expected a name")
        self.i += 1
        return identifier_value(t)

    def _nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise NotParsed(f"nested more than {MAX_DEPTH} levels deep")

    # --- expressions, lowest precedence first ---

    def expr(self) -> Node:
        self._nest()
        try:
            return self._or()
        finally:
            self.depth -= 1

    def _or(self) -> Node:
        left = self._and()
        while self.take_word("OR"):
            left = Binary("OR", left, self._and())
        return left

    def _and(self) -> Node:
        left = self._not()
        while self.take_word("AND"):
            left = Binary("AND", left, self._not())
        return left

    def _not(self) -> Node:
        if self.take_word("NOT"):
            self._nest()
            try:
                return Unary("NOT", self._not())
            finally:
                self.depth -= 1
        return self._equality()

    def _equality(self) -> Node:
        left = self._relational()
        while True:
            p = self.punct()
            if p in _COMPARISON:
                self.i += 1
                left = Binary(_COMPARISON[p], left, self._relational())
                continue
            w = self.word()
            if w == "IS":
                self.i += 1
                negated = self.take_word("NOT")
                if self.take_word("DISTINCT"):
                    self.expect_word("FROM")
                    negated = not negated  # IS DISTINCT FROM is IS NOT
                start = self.i
                right = self._relational()
                if isinstance(right, Literal) and right.kind == "null":
                    left = NullTest(left, negated)
                elif self._true_or_false(start):
                    left = TruthTest(left, right == Literal("integer", 1), negated)
                else:
                    left = Binary("ISNOT" if negated else "IS", left, right)
                continue
            if w in ("ISNULL", "NOTNULL"):
                self.i += 1
                left = NullTest(left, w == "NOTNULL")
                continue
            negated = False
            if w == "NOT" and self.word(1) in ("NULL", "IN", "LIKE", "GLOB", "MATCH", "REGEXP", "BETWEEN"):
                self.i += 1
                negated = True
                w = self.word()
                if w == "NULL":
                    self.i += 1
                    left = NullTest(left, True)
                    continue
            if w == "IN":
                self.i += 1
                left = self._in(left, negated)
                continue
            if w in ("LIKE", "GLOB", "MATCH", "REGEXP"):
                self.i += 1
                pattern = self._relational()
                escape = self._relational() if self.take_word("ESCAPE") else None
                left = Like(w, left, pattern, escape, negated)
                continue
            if w == "BETWEEN":
                self.i += 1
                low = self._relational()
                self.expect_word("AND")
                high = self._relational()
                left = Between(left, low, high, negated)
                continue
            if negated:
                raise self.error("expected IN, LIKE, GLOB, MATCH, REGEXP, BETWEEN or NULL after NOT")
            return left

    def _in(self, left: Node, negated: bool) -> Node:
        if self.take_punct("(") is None:
            raise self.error("IN takes a parenthesized list here")  # IN table-name: not translated
        if self.at_word("SELECT", "WITH", "VALUES"):
            sel = self.select()
            self.expect_punct(")")
            return InSelect(left, sel, negated)
        items: list[Node] = []
        if self.take_punct(")") is None:
            items.append(self.expr())
            while self.take_punct(","):
                items.append(self.expr())
            self.expect_punct(")")
        return InList(left, tuple(items), negated)

    def _true_or_false(self, start: int) -> bool:
        """The tokens from `start` to here are the word TRUE or FALSE alone, in any
        parentheses: after IS, SQLite reads them as a truth test (5 IS TRUE)."""
        words = [t for t in self.tokens[start:self.i] if not (t.kind is Kind.PUNCT and t.text in ("(", ")"))]
        return len(words) == 1 and words[0].kind is Kind.WORD and words[0].text.upper() in ("TRUE", "FALSE")

    def _relational(self) -> Node:
        left = self._bitwise()
        while (p := self.punct()) in _ORDERING:
            self.i += 1
            left = Binary(p, left, self._bitwise())
        return left

    def _bitwise(self) -> Node:
        left = self._additive()
        while (p := self.punct()) in _BITWISE:
            self.i += 1
            left = Binary(p, left, self._additive())
        return left

    def _additive(self) -> Node:
        left = self._multiplicative()
        while (p := self.punct()) in _ADDITIVE:
            self.i += 1
            left = Binary(p, left, self._multiplicative())
        return left

    def _multiplicative(self) -> Node:
        left = self._concat()
        while (p := self.punct()) in _MULTIPLICATIVE:
            self.i += 1
            left = Binary(p, left, self._concat())
        return left

    def _concat(self) -> Node:
        left = self._collate()
        while (p := self.punct()) in _CONCAT:
            self.i += 1
            left = Binary(p, left, self._collate())
        return left

    def _collate(self) -> Node:
        node = self._unary()
        while self.take_word("COLLATE"):
            node = Collate(node, self.name())
        return node

    def _unary(self) -> Node:
        p = self.punct()
        if p in ("-", "+", "~"):
            self.i += 1
            self._nest()
            try:
                operand = self._unary()
            finally:
                self.depth -= 1
            if p == "-" and isinstance(operand, Literal) and operand.kind in ("integer", "real"):
                return _negate(operand)
            return Unary(p, operand)
        return self._primary()

    def _primary(self) -> Node:
        t = self.peek()
        if t is None:
            raise self.error("expected an expression")
        if t.kind in (Kind.NUMBER, Kind.STRING, Kind.BLOB):
            self.i += 1
            return _literal(t.text)
        if t.kind is Kind.PUNCT:
            if t.text == "(":
                self.i += 1
                if self.at_word("SELECT", "WITH", "VALUES"):
                    sel = self.select()
                    self.expect_punct(")")
                    return ScalarSelect(sel)
                first = self.expr()
                if self.take_punct(","):
                    raise self.error("row values are not translated")
                self.expect_punct(")")
                return first
            raise self.error("unexpected")
        if t.kind is Kind.QUOTED_ID:
            return self._name_or_call()
        w = t.text.upper()
        if w == "NULL":
            self.i += 1
            return Literal("null")
        if w in ("TRUE", "FALSE"):
            self.i += 1
            return Literal("integer", 1 if w == "TRUE" else 0)
        if w in ("CURRENT_TIMESTAMP", "CURRENT_DATE", "CURRENT_TIME"):
            self.i += 1
            return Function(w.lower(), ())
        if w == "CASE":
            self.i += 1
            return self._case()
        if w == "CAST":
            self.i += 1
            self.expect_punct("(")
            operand = self.expr()
            self.expect_word("AS")
            type_name = self._type_name()
            self.expect_punct(")")
            return Cast(operand, type_name)
        if w == "EXISTS":
            self.i += 1
            self.expect_punct("(")
            sel = self.select()
            self.expect_punct(")")
            return Exists(sel)
        if w == "RAISE":
            raise self.error("RAISE() is not translated")
        if w in _RESERVED:
            raise self.error("unexpected keyword")
        return self._name_or_call()

    def _name_or_call(self) -> Node:
        t = self.peek()
        assert t is not None
        first = identifier_value(t)
        self.i += 1
        if self.punct() == "(" and t.kind is Kind.WORD:
            self.i += 1
            return self._call(first.lower())
        dq = t.kind is Kind.QUOTED_ID and t.text[0] == '"'
        if self.take_punct("."):
            t2 = self.peek()
            second = self.name()
            if self.take_punct("."):
                # schema.table.column: only main. is the file's own schema
                third = self.name()
                if first.lower() != "main":
                    raise NotParsed(f"a column of another database ({first!r})")
                return ColumnRef(third, second)
            return ColumnRef(second, first, t2 is not None and t2.kind is Kind.QUOTED_ID and t2.text[0] == '"')
        return ColumnRef(first, None, dq)

    def _call(self, name: str) -> Node:
        if self.take_punct("*"):
            self.expect_punct(")")
            node = Function(name, (), star=True)
        else:
            distinct = self.take_word("DISTINCT")
            args: list[Node] = []
            if self.take_punct(")") is None:
                args.append(self.expr())
                while self.take_punct(","):
                    args.append(self.expr())
                if self.at_word("ORDER"):
                    raise self.error("ordered aggregate arguments are not translated")
                self.expect_punct(")")
            node = Function(name, tuple(args), distinct=distinct)
        if self.at_word("FILTER", "OVER"):
            raise self.error(f"{self.word()} (window or filtered aggregate) is not translated")
        return node

    def _case(self) -> Node:
        base = None if self.at_word("WHEN") else self.expr()
        whens = []
        while self.take_word("WHEN"):
            cond = self.expr()
            self.expect_word("THEN")
            whens.append((cond, self.expr()))
        if not whens:
            raise self.error("CASE without WHEN")
        else_ = self.expr() if self.take_word("ELSE") else None
        self.expect_word("END")
        return Case(base, tuple(whens), else_)

    def _type_name(self) -> str:
        parts = []
        while (t := self.peek()) is not None and t.kind in (Kind.WORD, Kind.QUOTED_ID) and \
                (t.kind is Kind.QUOTED_ID or t.text.upper() not in _RESERVED):
            parts.append(identifier_value(t))
            self.i += 1
        if not parts:
            raise self.error("expected a type name")
        if self.take_punct("("):
            while self.take_punct(")") is None:
                if self.peek() is None:
                    raise self.error("unterminated type size")
                self.i += 1
        return " ".join(parts)

    # --- SELECT ---

    def select(self) -> Select:
        self._nest()
        try:
            return self._select()
        finally:
            self.depth -= 1

    def _select(self) -> Select:
        if self.at_word("WITH"):
            raise self.error("WITH (common table expressions) is not translated")
        if self.at_word("VALUES"):
            raise self.error("VALUES is not translated")
        cores = [self._core()]
        compounds = []
        while True:
            if self.take_word("UNION"):
                compounds.append("UNION ALL" if self.take_word("ALL") else "UNION")
            elif self.take_word("INTERSECT"):
                compounds.append("INTERSECT")
            elif self.take_word("EXCEPT"):
                compounds.append("EXCEPT")
            else:
                break
            cores.append(self._core())
        order: list[OrderTerm] = []
        if self.take_word("ORDER"):
            self.expect_word("BY")
            order.append(self._order_term())
            while self.take_punct(","):
                order.append(self._order_term())
        limit = offset = None
        if self.take_word("LIMIT"):
            limit = self.expr()
            if self.take_word("OFFSET"):
                offset = self.expr()
            elif self.take_punct(","):
                offset, limit = limit, self.expr()  # LIMIT skip, count
        return Select(tuple(cores), tuple(compounds), tuple(order), limit, offset)

    def _order_term(self) -> OrderTerm:
        e = self.expr()
        collation = None
        if isinstance(e, Collate):
            e, collation = e.operand, e.collation
        desc = False
        if self.take_word("DESC"):
            desc = True
        else:
            self.take_word("ASC")
        nulls = None
        if self.take_word("NULLS"):
            if self.take_word("FIRST"):
                nulls = "FIRST"
            elif self.take_word("LAST"):
                nulls = "LAST"
            else:
                raise self.error("expected FIRST or LAST")
        return OrderTerm(e, desc, nulls, collation)

    def _core(self) -> SelectCore:
        self.expect_word("SELECT")
        distinct = False
        if self.take_word("DISTINCT"):
            distinct = True
        else:
            self.take_word("ALL")
        columns = [self._result_column()]
        while self.take_punct(","):
            columns.append(self._result_column())
        from_ = None
        if self.take_word("FROM"):
            from_ = self._from()
        where = self.expr() if self.take_word("WHERE") else None
        group: list[Node] = []
        having = None
        if self.take_word("GROUP"):
            self.expect_word("BY")
            group.append(self.expr())
            while self.take_punct(","):
                group.append(self.expr())
            if self.take_word("HAVING"):
                having = self.expr()
        if self.at_word("WINDOW"):
            raise self.error("WINDOW is not translated")
        return SelectCore(tuple(columns), distinct, from_, where, tuple(group), having)

    def _result_column(self) -> ResultColumn:
        if self.take_punct("*"):
            return ResultColumn(Star())
        t, t1, t2 = self.peek(), self.punct(1), self.punct(2)
        if t is not None and t.kind in (Kind.WORD, Kind.QUOTED_ID) and t1 == "." and t2 == "*":
            table = self.name()
            self.i += 2
            return ResultColumn(Star(table))
        e = self.expr()
        alias = None
        if self.take_word("AS"):
            alias = self._alias_name()
        elif (a := self.peek()) is not None and (a.kind is Kind.QUOTED_ID or (
                a.kind is Kind.WORD and a.text.upper() not in _RESERVED)):
            alias = self._alias_name()
        return ResultColumn(e, alias)

    def _alias_name(self) -> str:
        t = self.peek()
        if t is not None and t.kind is Kind.STRING:  # SQLite takes 'text' as an alias too
            self.i += 1
            return sqlite_sql.unquote_string(t.text)
        return self.name()

    def _from(self) -> FromItem:
        left = self._from_item()
        while True:
            if self.take_punct(","):
                left = Join(left, self._from_item(), "CROSS")
                continue
            if self.at_word("NATURAL"):
                raise self.error("NATURAL joins are not translated")
            kind = None
            if self.take_word("CROSS"):
                kind = "CROSS"
            elif self.take_word("INNER"):
                kind = "INNER"
            elif self.at_word("LEFT", "RIGHT", "FULL"):
                kind = self.word()
                self.i += 1
                self.take_word("OUTER")
            if kind is None and not self.at_word("JOIN"):
                return left
            self.expect_word("JOIN")
            kind = kind or "INNER"
            right = self._from_item()
            on = None
            using: tuple[str, ...] = ()
            if self.take_word("ON"):
                on = self.expr()
            elif self.take_word("USING"):
                self.expect_punct("(")
                names = [self.name()]
                while self.take_punct(","):
                    names.append(self.name())
                self.expect_punct(")")
                using = tuple(names)
            if kind == "CROSS" and (on is not None or using):
                kind = "INNER"
            if kind in ("LEFT", "RIGHT", "FULL") and on is None and not using:
                raise self.error(f"{kind} JOIN without ON")
            left = Join(left, right, kind, on, using)

    def _from_item(self) -> FromItem:
        if self.take_punct("("):
            if self.at_word("SELECT", "WITH", "VALUES"):
                sel = self.select()
                self.expect_punct(")")
                return SubqueryRef(sel, self._table_alias())
            raise self.error("parenthesized joins are not translated")
        first = self.name()
        schema = None
        if self.take_punct("."):
            schema, first = first, self.name()
            if schema.lower() != "main":
                raise NotParsed(f"a table of another database ({schema!r})")
        if self.punct() == "(":
            raise self.error("table-valued functions are not translated")
        if self.at_word("INDEXED") or (self.at_word("NOT") and self.word(1) == "INDEXED"):
            raise self.error("INDEXED BY is not translated")
        return TableRef(first, self._table_alias(), schema)

    def _table_alias(self) -> str | None:
        if self.take_word("AS"):
            return self.name()
        t = self.peek()
        if t is not None and (t.kind is Kind.QUOTED_ID or (t.kind is Kind.WORD and t.text.upper() not in _RESERVED
                                                            and t.text.upper() != "INDEXED")):
            return self.name()
        return None


def _literal(text: str) -> Literal:
    try:
        const = sqlite_sql.parse_constant(text)
    except sqlite_sql.NotAConstant as e:
        raise NotParsed(f"literal {text[:20]!r}: {e}") from None
    return _from_constant(const)


def _from_constant(const: sqlite_sql.Constant) -> Literal:
    kind = const.kind.value
    if kind not in ("null", "integer", "real", "text", "blob"):
        raise NotParsed(f"{kind} is not a constant")
    return Literal(kind, const.value)


def _negate(lit: Literal) -> Literal:
    v = lit.value
    assert isinstance(v, (int, float))
    if lit.kind == "integer" and -v < sqlite_sql.INT64_MIN:
        return Literal("real", float(-v))
    return Literal(lit.kind, -v)


def parse_expression(text: str) -> Node:
    """One SQLite expression; raises NotParsed when it is anything else."""
    p = Parser(text)
    try:
        node = p.expr()
    except RecursionError:
        raise NotParsed("nested too deeply") from None
    p.done()
    return node


def parse_select(text: str) -> Select:
    """One SELECT statement (a view's body); raises NotParsed when it is anything else."""
    p = Parser(text)
    try:
        sel = p.select()
    except RecursionError:
        raise NotParsed("nested too deeply") from None
    p.done()
    return sel

