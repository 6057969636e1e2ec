"""SQLite expressions reach Postgres only as syncd writes them, and only where they mean
exactly the same: CHECK bodies, partial-index predicates, index expressions and view
bodies are parsed into a tree and written again through a whitelist; anything else is
refused with the reason. The equivalence claims are checked against both real
databases: each translated condition is evaluated in SQLite and in Postgres over the
same rows and must agree row by row."""

from __future__ import annotations

import asyncio
import re
import sqlite3

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.parity import expressions as ex
from syncd.parity.translate import ColumnInfo, Untranslatable, condition, index_expression, view_select
from syncd.types import PgType

COLUMNS = [
    ColumnInfo("qty", PgType.BIGINT, "INTEGER"),
    ColumnInfo("price", PgType.DOUBLE, "REAL"),
    ColumnInfo("amount", PgType.NUMERIC, "DECIMAL(10,2)"),
    ColumnInfo("name", PgType.TEXT, "TEXT"),
    ColumnInfo("email", PgType.TEXT, "TEXT", "NOCASE"),
    ColumnInfo("active", PgType.BOOLEAN, "BOOLEAN"),
    ColumnInfo("created", PgType.TEXT, "DATETIME"),
    ColumnInfo("blob", PgType.BYTEA, "BLOB"),
    ColumnInfo('odd "name"; DROP', PgType.TEXT, "TEXT"),
]


def translated(text: str) -> str:
    return condition(text, COLUMNS)


def refused(text: str) -> str:
    with pytest.raises((Untranslatable, ex.NotParsed)) as e:
        condition(text, COLUMNS)
    return str(e.value)


def test_conditions_translate_with_sqlite_semantics_written_out():
    assert translated("qty > 0") == '("qty" > 0)'
    assert translated("qty >= 0 AND qty < 1000") == '(("qty" >= 0) AND ("qty" < 1000))'
    assert translated("status_ok IS NULL" if False else "name IS NOT NULL") == '("name" IS NOT NULL)'
    assert translated("name IN ('a', 'b')") == "(\"name\" IN ('a', 'b'))"
    # text orders byte by byte in SQLite
    assert translated("name > 'm'") == '("name" COLLATE "C" > \'m\')'
    # a number in a condition is true when non-zero, as in SQLite
    assert translated("qty") == '("qty" <> 0)'
    # SQLite's lower() folds A-Z only
    assert "translate(" in translated("lower(name) = name") and "lower(" not in translated("lower(name) = name")
    # LIKE ignores ASCII case and has no default escape
    like = translated("name LIKE 'A\\%'")
    assert "LIKE 'a\\%' ESCAPE ''" in like.replace("E'", "'") or "ESCAPE ''" in like
    # booleans compare with 0 and 1 as SQLite stores them
    assert translated("active IN (0, 1)") == '("active" IN (false, true))'
    # IS means IS NOT DISTINCT FROM
    assert translated("qty IS 5") == '("qty" IS NOT DISTINCT FROM 5)'
    # a name that needs quoting is quoted, whatever it holds
    assert translated('"odd ""name""; DROP" <> \'\'') == '("odd ""name""; DROP" <> \'\')'


@pytest.mark.parametrize("text, why", [
    ("email = 'x'", "NOCASE"),
    ("name = 1", "affinity"),
    ("qty / price > 1", "zero divisor"),
    ("created > '2024-01-01'", "may store"),
    ("pg_sleep(1) IS NULL", "pg_sleep"),
    ("set_config('a', 'b', false) = 'b'", "set_config"),
    ("lo_import('/etc/passwd') > 0", "lo_import"),
    ("dblink_exec('x', 'y') = 'z'", "dblink_exec"),
    ("name = \"nosuchcolumn\"", "double-quoted"),
    ("qty = ?", "parameter"),
    ("qty = 1; DROP TABLE x", "unexpected"),
    ("CAST(name AS INTEGER) > 0", "leniently"),
    ("round(price) = 1", "round"),
    ("name REGEXP 'x'", "REGEXP"),
    ("max(qty, 1) > 0", "max"),
    ("qty = (SELECT 1)", "cannot appear here"),
    ("EXISTS (SELECT 1)", "cannot appear here"),
    ("0 IN (qty, active)", "different types"),  # found by the property test below
])
def test_what_does_not_mean_the_same_is_refused_with_the_reason(text, why):
    assert why.lower() in refused(text).lower()


def test_index_expressions_and_views():
    assert index_expression(ex.parse_expression("abs(qty)"), COLUMNS) == '(abs("qty"))'
    rel = {"t": ("app", "t", COLUMNS)}
    sql = view_select("SELECT qty, name AS n FROM t WHERE qty > 1 ORDER BY name", ["qty", "n"], rel)
    assert sql == ('SELECT "t"."qty" AS "qty", "t"."name" AS "n" FROM "app"."t" AS "t" WHERE ("t"."qty" > 1) '
                   'ORDER BY "t"."name" COLLATE "C" ASC NULLS FIRST')
    with pytest.raises(Untranslatable, match="not replicated"):
        view_select("SELECT 1 AS x FROM elsewhere", ["x"], rel)
    # A compound SELECT keeps each column's class: integers beside reals would all be reals.
    assert "UNION ALL" in view_select("SELECT qty FROM t UNION ALL SELECT qty FROM t", ["qty"], rel)
    with pytest.raises(Untranslatable, match="mixes integer and real"):
        view_select("SELECT qty FROM t UNION ALL SELECT price FROM t", ["qty"], rel)


# --- hostile text -------------------------------------------------------------------------------

HOSTILE = [
    # Postgres nests /* */ comments, SQLite does not
    "qty > 0 /* /* */ -- */ ); DROP TABLE public.canary; --",
    "name <> '' /* /* */ OR pg_sleep(10) IS NULL --*/",
    # semicolons, dollar quotes, E'' strings, unicode escapes: data to SQLite
    "name <> '; DROP TABLE public.canary; --'",
    "name <> '$$; DROP TABLE public.canary; $$'",
    "name <> 'E''\\''; DROP TABLE public.canary; --'",
    "name <> 'U&\"\\0041\"'",
    "name <> '\\'; DROP TABLE public.canary; --'",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_is_refused_or_comes_out_as_one_rewritten_expression(text):
    try:
        out = translated(text)
    except (Untranslatable, ex.NotParsed):
        return
    # Only syncd's spelling: quoted names, re-rendered literals, whitelisted words.
    for word in re.findall(r"(?<![\"'A-Za-z_])([A-Za-z_]+)\s*\(", _strip_literals(out)):
        assert word.lower() in {"translate", "length", "abs", "coalesce", "nullif", "strpos", "replace", "btrim",
                                "ltrim", "rtrim", "substr"}, (word, out)
    assert "--" not in _strip_literals(out) and "/*" not in _strip_literals(out) and ";" not in _strip_literals(out)


def test_code_after_a_comment_only_postgres_would_nest_is_read_as_sqlite_reads_it():
    # SQLite ends the comment at the first */: pg_sleep is code to it, and refused.
    assert "pg_sleep" in refused("name <> '' /* /* */ OR pg_sleep(10) IS NULL --*/")
    # Here everything after the first */ up to the end of the line is a -- comment.
    assert translated("qty > 0 /* /* */ -- */ ); DROP TABLE public.canary; --") == '("qty" > 0)'
    assert translated("name <> '$$; DROP TABLE public.canary; $$'") == "(\"name\" <> '$$; DROP TABLE public.canary; $$')"


def _strip_literals(sql: str) -> str:
    """`sql` without its string literals and quoted names (what Postgres parses as code)."""
    return re.sub(r"E?'(?:[^'\\]|''|\\.)*'|\"(?:[^\"]|\"\")*\"", "", sql)


async def _pg_agrees(pg_dsn: str, sql_pairs: list[tuple[str, str]], rows: list[tuple]) -> None:
    """Each (SQLite condition, Postgres condition) gives the same result on every row."""
    lite = sqlite3.connect(":memory:")
    lite.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, qty INTEGER, price REAL, name TEXT, flag BOOLEAN)")
    lite.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", rows)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("CREATE TEMP TABLE t (k bigint PRIMARY KEY, qty bigint, price double precision, name text, "
                           "flag boolean)")
        await conn.executemany("INSERT INTO t VALUES ($1, $2, $3, $4, $5)",
                               [(k, q, p, n, None if f is None else bool(f)) for k, q, p, n, f in rows])
        for sq, pg in sql_pairs:
            expect = [r[0] for r in lite.execute(f"SELECT CASE WHEN ({sq}) THEN 1 ELSE 0 END FROM t ORDER BY k")]
            got = [r[0] for r in await conn.fetch(f"SELECT coalesce(({pg}), false) FROM t ORDER BY k")]
            assert [bool(x) for x in expect] == got, (sq, pg)
    finally:
        await conn.close()


TABLE = [ColumnInfo("qty", PgType.BIGINT, "INTEGER"), ColumnInfo("price", PgType.DOUBLE, "REAL"),
         ColumnInfo("name", PgType.TEXT, "TEXT"), ColumnInfo("flag", PgType.BOOLEAN, "BOOLEAN")]
ROWS = [(1, 5, 1.5, "abc", 1), (2, -3, 0.1, "ABC", 0), (3, None, None, None, None), (4, 0, -0.0, "a%b", 1),
        (5, 100, 2.5e10, "Zürich", 0), (6, 7, 7.0, "a\\b", 1), (7, 42, 3.25, "Kelvin \u212a", 0)]
CONDITIONS = [
    "qty > 0", "qty BETWEEN -3 AND 5", "qty IN (5, 7)", "qty NOT IN (5, 7)", "qty IS NULL", "qty % 2 = 1",
    "qty / 2 = 2", "-qty < 0", "price > 1", "price < 0.5", "price * 2 > 3", "name > 'Z'", "name = 'abc'",
    "name LIKE 'A%'", "name LIKE '%\\%'", "name LIKE 'a!%b' ESCAPE '!'", "name NOT LIKE '_b_'", "lower(name) = 'abc'",
    "upper(name) LIKE '%K%'", "name GLOB '[A-Z]*'", "name GLOB '*b*'", "length(name) = 3", "substr(name, 2, 2) = 'bc'",
    "trim(name, 'a') = 'bc'", "replace(name, 'b', 'x') = 'axc'", "instr(name, 'b') = 2", "coalesce(qty, 0) = 0",
    "flag", "NOT flag", "flag = 1", "flag IS 0", "qty IS NOT 5", "typeof(qty) = 'integer'",
    "CASE WHEN qty > 10 THEN 'big' ELSE 'small' END = 'big'", "name || 'x' = 'abcx'", "abs(qty) = 3",
    "nullif(qty, 5) IS NULL", "qty & 1 = 1", "name COLLATE BINARY < 'b'", "ifnull(name, 'none') = 'none'",
    "CASE WHEN qty THEN NULL ELSE NULL END IN (qty, qty)",  # NULL in every branch: no type of its own
    # IS TRUE / IS FALSE test a value's truth (5 IS TRUE), not its equality with 1 or 0
    "qty IS TRUE", "qty IS NOT TRUE", "price IS FALSE", "price IS NOT FALSE", "flag IS TRUE", "qty IS (TRUE)",
    "qty IS NOT DISTINCT FROM TRUE", "qty IS DISTINCT FROM FALSE", "qty IS NOT FALSE AND qty IS +TRUE",
]


async def test_translated_conditions_agree_with_sqlite_row_by_row(pg_dsn):
    pairs = [(c, condition(c, TABLE)) for c in CONDITIONS]
    await _pg_agrees(pg_dsn, pairs, ROWS)


# --- property: whatever the text, either a refusal or syncd's own SQL that agrees ------------------

_atoms = st.sampled_from(["qty", "price", "name", "flag", "0", "1", "-2", "2.5", "'a'", "'B'", "'a%'", "NULL",
                          "'x''y'", "'%'"])
_ops = st.sampled_from(["=", "<>", "<", ">=", "+", "-", "*", "/", "%", "||", "AND", "OR", "IS", "IS NOT",
                        "LIKE", "GLOB", "&"])
_funcs = st.sampled_from(["abs", "length", "lower", "upper", "coalesce", "trim", "typeof", "nullif", "pg_sleep",
                          "hex", "quote", "random"])


@st.composite
def _expr(draw, depth=0):
    if depth > 3 or draw(st.booleans()):
        return draw(_atoms)
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return f"({draw(_expr(depth + 1))} {draw(_ops)} {draw(_expr(depth + 1))})"
    if kind == 1:
        return f"{draw(_funcs)}({draw(_expr(depth + 1))})"
    if kind == 2:
        return f"NOT {draw(_expr(depth + 1))}"
    if kind == 3:
        return f"{draw(_expr(depth + 1))} IN ({draw(_atoms)}, {draw(_atoms)})"
    return f"CASE WHEN {draw(_expr(depth + 1))} THEN {draw(_atoms)} ELSE {draw(_atoms)} END"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_expr())
def test_any_expression_is_refused_or_agrees_with_sqlite(pg_dsn, text):
    try:
        sqlite3.connect(":memory:").execute(f"SELECT {text} FROM (SELECT 1 AS qty, 1.0 AS price, 'a' AS name, "
                                            "1 AS flag)").fetchall()
    except sqlite3.Error:
        return  # SQLite itself refuses it: it can be in no schema
    try:
        pg = condition(text, TABLE)
    except (Untranslatable, ex.NotParsed):
        return
    asyncio.run(_pg_agrees(pg_dsn, [(text, pg)], ROWS))


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab'\"-/*;$()[]`\\ \n,=<>|.xX0123456789EeU&+")), max_size=40))
def test_arbitrary_text_never_yields_sql_outside_the_whitelist(text):
    try:
        out = condition(text, TABLE)
    except (Untranslatable, ex.NotParsed):
        return
    code = _strip_literals(out)
    assert ";" not in code and "--" not in code and "/*" not in code and "$" not in code, out
    for word in re.findall(r"[A-Za-z_]+", code):
        assert word.upper() in _PG_WORDS, (word, out)


_PG_WORDS = {"AND", "OR", "NOT", "IS", "NULL", "IN", "BETWEEN", "LIKE", "ESCAPE", "COLLATE", "CASE", "WHEN", "THEN",
             "ELSE", "END", "TRUE", "FALSE", "DISTINCT", "FROM", "BOOLEAN", "DOUBLE", "PRECISION", "NUMERIC", "TEXT",
             "BYTEA", "TRANSLATE", "LENGTH", "ABS", "COALESCE", "NULLIF", "STRPOS", "REPLACE", "BTRIM", "LTRIM",
             "RTRIM", "SUBSTR", "E"}
