"""A model is one query and a rule one expression: anything else is refused at load, with
the file and the position, and the server refuses a second statement anyway."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import psycopg
import pytest

import ferry.spec
from ferry import ledger
from ferry.embedded import LocalCluster
from ferry.engine import dependencies, query
from ferry.errors import SpecError
from ferry.spec import load_spec
from ferry.sqltext import ShapeError, one_expression, one_query, tokens
from tests.helpers import fresh_db

LIB = Path(__file__).parent / "specs" / "library"

ONE_QUERY = [
    "SELECT 1 AS _key",
    "select 1 as _key;",
    "SELECT 1 AS _key;  ;\n-- trailing words\n/* and a block */",
    "WITH a AS (SELECT 1 AS _key) SELECT * FROM a",
    "WITH RECURSIVE a(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM a WHERE n < 3) TABLE a",
    "VALUES (1, 'a'), (2, 'b')",
    "TABLE lib_book",
    "(SELECT 1 AS _key) UNION (SELECT 2)",
    "SELECT ';' AS a, 'it''s; DROP' AS b, \"odd;)name\" AS c, E'\\'; DROP' AS d",
    "SELECT $$; DROP TABLE x; ($$ AS a, $q$ ) $ $q$ AS b, $1 AS c FROM t",
    "SELECT 1 /* ) m; DROP /* nested */ TABLE x */ AS _key -- ; DROP\nFROM t",
    "SELECT a$b$ AS x FROM t",  # an identifier with $ in it, not a dollar quote
    "SELECT x FROM t WHERE a <-- comment after an operator\n 1",
    "SELECT id AS _key FROM t FOR UPDATE",
    "SELECT arr[1] AS _key FROM t",
]

REFUSED = [
    # (text, line, column, what the message says)
    ("SELECT 1 AS _key) m; DROP TABLE authors; SELECT (1", 1, 17, "closes what"),
    ("SELECT 1 AS _key;\nDROP TABLE authors", 1, 17, "second statement"),
    ("SELECT 1; -- fine so far\n  SELECT 2", 1, 9, "second statement"),
    ("DROP TABLE authors", 1, 1, "starts with 'DROP'"),
    ("DELETE FROM authors RETURNING id AS _key", 1, 1, "starts with 'DELETE'"),
    ("WITH d AS (DELETE FROM authors RETURNING id) SELECT id AS _key FROM d", 1, 12, "writes"),
    ("WITH a AS (SELECT 1) UPDATE authors SET name = 'x' RETURNING id", 1, 22, "writes"),
    ("SELECT (1 AS _key", 1, 8, "never closed"),
    ("SELECT 'oops AS _key", 1, 8, "string is never closed"),
    ("SELECT $x$ oops", 1, 8, "dollar quote $x$ is never closed"),
    ("SELECT 1 /* oops", 1, 10, "comment is never closed"),
    ("  \n-- only a comment\n", 1, 1, "no query"),
    ("SELECT 1 AS _key\nFROM t;\n\nDROP TABLE x", 2, 7, "second statement"),
]


@pytest.mark.parametrize("text", ONE_QUERY)
def test_one_query_is_accepted(text: str) -> None:
    kept = one_query(text)
    assert [t.text for t in tokens(kept)] == [t.text for t in tokens(text)][: len(tokens(kept))]
    assert tokens(kept)[-1].text != ";"


@pytest.mark.parametrize(("text", "line", "column", "problem"), REFUSED)
def test_anything_but_one_query_is_refused(text: str, line: int, column: int, problem: str) -> None:
    with pytest.raises(ShapeError, match=re.escape(problem)) as caught:
        one_query(text)
    assert (caught.value.line, caught.value.column) == (line, column)


def test_trailing_comment_cannot_swallow_what_ferry_appends() -> None:
    # The ; ends the query and goes; the one in the comment is the comment's.
    assert one_query("SELECT 1 AS _key; -- done;\n\n") == "SELECT 1 AS _key -- done;\n"
    assert one_query("SELECT 1 AS _key;\n") == "SELECT 1 AS _key"
    assert one_expression("price < 0 -- a known defect") == "price < 0 -- a known defect\n"


@pytest.mark.parametrize(
    "text",
    [
        "true) AS x FROM t; DROP TABLE authors; SELECT (1",
        "price < 0; DROP TABLE authors",
        "(price < 0",
        "price IN (DELETE FROM authors RETURNING 1)",
    ],
)
def test_a_rule_is_one_expression(text: str) -> None:
    with pytest.raises(ShapeError):
        one_expression(text)
    assert one_expression("x IN (SELECT 1) AND y = ';'") == "x IN (SELECT 1) AND y = ';'"


def _spec_dir(tmp_path: Path, books_sql: str | None = None, rule: str | None = None) -> Path:
    for name in ("spec.toml", "books.sql", "loans.csv"):
        shutil.copy(LIB / name, tmp_path / name)
    if books_sql is not None:
        (tmp_path / "books.sql").write_text(books_sql)
    if rule is not None:
        text = (tmp_path / "spec.toml").read_text()
        old = 'rules = [{ exclude = "draft", when = "_status = \'draft\'" }]'
        assert old in text
        (tmp_path / "spec.toml").write_text(text.replace(old, f"rules = [{rule}]"))
    return tmp_path / "spec.toml"


def _sentinel(target: str) -> tuple[int, ...]:
    with psycopg.connect(target) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM authors), "
            "(SELECT count(*) FROM pg_namespace WHERE nspname IN ('ferry', 'ferry_stage'))"
        ).fetchone()
    assert row is not None
    return tuple(row)


# The library's books model, then what closes ferry's parenthesis and drops every table.
BOOKS = (LIB / "books.sql").read_text().rstrip().rstrip(";")
INJECTED = BOOKS + "\n) m; DROP TABLE loans, books, authors; SELECT * FROM (SELECT 1\n"


def test_a_model_with_a_second_statement_is_refused_and_changes_nothing(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    fresh_db(cluster, "spec_tgt", LIB / "target.sql", owner="lib_owner")
    target = cluster.conninfo("spec_tgt", user="lib_owner")
    before = _sentinel(target)
    path = _spec_dir(tmp_path, books_sql=INJECTED)
    at = f"line {INJECTED.count(chr(10))} column 1: ')' closes what the text never opened"
    with pytest.raises(
        SpecError, match=rf"spec\.toml: model books: .*books\.sql: not one query: {re.escape(at)}"
    ):
        load_spec(path)
    assert _sentinel(target) == before


def test_a_rule_with_a_second_statement_is_refused(tmp_path: Path) -> None:
    path = _spec_dir(
        tmp_path, rule='{ exclude = "draft", when = "true) AS x FROM t; DROP TABLE books --" }'
    )
    with pytest.raises(SpecError, match=r"models\[1\]\.rules\[0\]\.when: .*not one expression"):
        load_spec(path)


def test_the_server_refuses_a_second_statement_too(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the load's check (here: switched off), the model's first use sends it with the
    extended protocol, and the server refuses the second statement."""
    fresh_db(cluster, "spec_tgt2", LIB / "target.sql", owner="lib_owner")
    target = cluster.conninfo("spec_tgt2", user="lib_owner")
    spec = load_spec(_spec_dir(tmp_path, books_sql=BOOKS + "; -- ends in a comment"))
    with psycopg.connect(target) as conn:
        ledger.ensure_schema(conn, spec)
        conn.execute(
            "CREATE TABLE ferry_stage.lib_book (id integer PRIMARY KEY, author_id integer, "
            "title text, status text, isbn text, price numeric(8,2), published timestamp)"
        )
        conn.commit()
        model = spec.model("books")
        # What load keeps of a model ending in a comment runs inside ferry's statements.
        assert "_author_id" in query.output_columns(conn, spec, model)
        monkeypatch.setattr(ferry.spec, "one_query", lambda text: text)
        (tmp_path / "books.sql").write_text(INJECTED)
        with pytest.raises(SpecError, match="model books: its SQL does not run"):
            query.Plan(conn, spec, model)
        conn.rollback()
        with pytest.raises(psycopg.errors.SyntaxError, match="multiple commands"):
            dependencies.reads(conn, spec, model)
        conn.rollback()
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename IN ('authors', 'books', 'loans')"
        ).fetchone()
    assert tables == (3,)


def test_two_sources_whose_stage_names_postgresql_cuts_alike_are_refused(tmp_path: Path) -> None:
    """PostgreSQL keeps 63 bytes of a name: two long source names alike that far would have
    shared one stage table, the second copy replacing the first."""
    head = "legacy_" + "x" * 60
    text = (
        'name = "long"\nnamespace = "0c7f1a2e-5b4d-4e8f-9a1b-2c3d4e5f6a7b"\n'
        f'[[sources]]\nname = "{head}_a"\ntable = "public.a"\n'
        f'[[sources]]\nname = "{head}_b"\ntable = "public.b"\n'
        '[[models]]\nname = "m"\ntarget = "public.m"\nsource = "short_b"\n'
        "sql = 'SELECT 1 AS _key'\n"
    )
    (tmp_path / "spec.toml").write_text(text)
    with pytest.raises(SpecError, match="the same first 63 bytes"):
        load_spec(tmp_path / "spec.toml")
    (tmp_path / "spec.toml").write_text(text.replace(f"{head}_b", "short_b"))
    assert len(load_spec(tmp_path / "spec.toml").sources) == 2
