"""``ferry check`` on the library world: one broken spec per error class, each finding at its
file and line, a valid spec passes, and neither database is changed by checking."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from ferry.cli import app
from ferry.embedded import LocalCluster
from ferry.ops.check import CheckResult, Finding, check
from tests.helpers import fresh_db

LIB = Path(__file__).parent / "specs" / "library"
OWNER = "check_owner"


@pytest.fixture(scope="module")
def dbs(cluster: LocalCluster) -> Iterator[tuple[str, str]]:
    source = fresh_db(cluster, "check_src", LIB / "source.sql")
    fresh_db(cluster, "check_tgt", LIB / "target.sql", owner=OWNER)
    yield source, cluster.conninfo("check_tgt", user=OWNER)


def _spec(tmp_path: Path, **edits: tuple[str, str]) -> Path:
    """The library spec in ``tmp_path``, with ``file=(old, new)`` replacements."""
    for f in ("spec.toml", "books.sql", "loans.csv"):
        shutil.copy(LIB / f, tmp_path / f)
    for name, (old, new) in edits.items():
        path = tmp_path / name.replace("_", ".")
        text = path.read_text()
        assert old in text, (name, old)
        path.write_text(text.replace(old, new, 1))
    return tmp_path / "spec.toml"


def _line(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def _errors(result: CheckResult, kind: str) -> list[Finding]:
    return [f for f in result.findings if f.level == "error" and f.check == kind]


def _snapshot(dsn: str) -> list[tuple[object, ...]]:
    """Every relation outside the system catalogs with its size, and each table's rows."""
    with psycopg.connect(dsn) as conn:
        rels = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind, pg_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT LIKE 'pg\\_%%' "
            "AND n.nspname <> 'information_schema' ORDER BY 1, 2"
        ).fetchall()
        rows = [
            conn.execute(
                f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                f"FROM {schema}.{name} t"
            ).fetchone()
            for schema, name, kind, _ in rels
            if kind == "r"
        ]
    return [*rels, *rows]


def test_a_valid_spec_passes_and_nothing_is_written(dbs: tuple[str, str], tmp_path: Path) -> None:
    source, target = dbs
    before = (_snapshot(source), _snapshot(target))
    result = check(_spec(tmp_path), source, target)
    assert result.ok, result.render()
    assert result.findings == []
    assert (result.sources, result.models) == (3, 3)
    # A spec full of errors does not write either.
    bad = _spec(
        tmp_path,
        books_sql=("b.title,", "b.titel,"),
        spec_toml=('table = "public.lib_book"', 'table = "public.lib_bookz"'),
    )
    assert not check(bad, source, target).ok
    assert (_snapshot(source), _snapshot(target)) == before


def test_a_missing_source_table(dbs: tuple[str, str], tmp_path: Path) -> None:
    spec = _spec(tmp_path, spec_toml=('table = "public.lib_book"', 'table = "public.lib_bookz"'))
    result = check(spec, *dbs)
    [f] = _errors(result, "source_table")
    assert (f.file, f.line) == (str(spec), _line(spec, "public.lib_bookz"))
    assert "public.lib_bookz" in f.message
    # The model reading it is not run (its source said why), the others are.
    assert [x.check for x in result.findings] == ["source_table"]


def test_a_missing_column(dbs: tuple[str, str], tmp_path: Path) -> None:
    # A key column the source table does not have: at the spec's key line.
    spec = _spec(
        tmp_path,
        spec_toml=('table = "public.lib_author"', 'table = "public.lib_author"\nkey = "no"'),
    )
    [f] = _errors(check(spec, *dbs), "source_column")
    assert (f.file, f.line) == (str(spec), _line(spec, 'key = "no"'))
    # A column the model's SQL reads that the source does not have: at its SQL's line.
    spec = _spec(tmp_path, books_sql=("b.status AS _status", "b.state AS _status"))
    [f] = _errors(check(spec, *dbs), "model_sql")
    sql_file = tmp_path / "books.sql"
    assert (f.file, f.line) == (str(sql_file), _line(sql_file, "b.state"))
    assert "undefined_column (42703)" in f.message


def test_a_model_sql_error_names_file_line_and_column(dbs: tuple[str, str], tmp_path: Path) -> None:
    spec = _spec(tmp_path, books_sql=("b.price,", "b.price +,"))
    [f] = _errors(check(spec, *dbs), "model_sql")
    sql_file = tmp_path / "books.sql"
    line = _line(sql_file, "b.price +,")
    col = sql_file.read_text().splitlines()[line - 1].index(",") + 1
    assert (f.file, f.line, f.column) == (str(sql_file), line, col)
    assert "syntax_error (42601)" in f.message
    assert str(f).startswith(f"{sql_file}:{line}:{col}: error [model_sql]: model books:")
    # A call of the engine's helpers before the error, before any run made them: the place
    # is the one in the file still.
    spec = _spec(
        tmp_path,
        books_sql=(
            "b.title,",
            'b.title, ferry.is_json(b.title) AS _j, "ferry".is_json(b.isbn) AS _k,',
        ),
    )
    (tmp_path / "books.sql").write_text(
        (tmp_path / "books.sql").read_text().replace("b.price,", "b.price +,")
    )
    [f] = _errors(check(spec, *dbs), "model_sql")
    assert (f.file, f.line, f.column) == (str(sql_file), line, col)
    # Inline SQL in the spec: the line in the spec.
    spec = _spec(tmp_path, spec_toml=("l.member,", "l.membr,"))
    [f] = _errors(check(spec, *dbs), "model_sql")
    assert (f.file, f.line) == (str(spec), _line(spec, "l.membr"))


def test_an_output_column_that_does_not_cast(dbs: tuple[str, str], tmp_path: Path) -> None:
    spec = _spec(
        tmp_path,
        books_sql=("b.published AT TIME ZONE 'UTC' AS published_at", "b.price AS published_at"),
    )
    [f] = _errors(check(spec, *dbs), "cast")
    sql_file = tmp_path / "books.sql"
    assert (f.file, f.line) == (str(sql_file), _line(sql_file, "AS published_at"))
    assert "published_at (timestamp with time zone)" in f.message
    assert "cannot_coerce (42846)" in f.message


def test_a_cycle_of_parents(dbs: tuple[str, str], tmp_path: Path) -> None:
    spec = _spec(
        tmp_path,
        spec_toml=(
            'merge_rule = "duplicate_author"',
            'merge_rule = "duplicate_author"\nparents = [{ model = "loans", key = "_same_as" }]',
        ),
    )
    result = check(spec, *dbs)
    [f] = _errors(result, "cycle")
    assert (f.file, f.line) == (str(spec), _line(spec, 'model = "loans"'))
    assert "authors -> loans -> books -> authors" in f.message
    assert result.findings == [f]  # a spec that does not load stops before the databases


def test_duplicate_source_keys(dbs: tuple[str, str], tmp_path: Path) -> None:
    spec = _spec(
        tmp_path,
        spec_toml=('table = "public.lib_book"', 'table = "public.lib_book"\nkey = "author_id"'),
    )
    result = check(spec, *dbs)
    # A repeated key quarantines its rows (duplicate_key) and stops nothing: a warning.
    assert result.ok and not _errors(result, "source_key")
    [f] = [f for f in result.findings if f.check == "source_key"]
    assert (f.level, f.file, f.line) == ("warning", str(spec), _line(spec, 'key = "author_id"'))
    assert "1 key value(s) held by more than one row (2)" in f.message  # author 2 has 3 books
    # A key a unique index and NOT NULL prove is not scanned; NULLs in a key are counted.
    with psycopg.connect(dbs[0], autocommit=True) as conn:
        conn.execute("CREATE TABLE lib_nokey (id integer, v text)")
        conn.execute("INSERT INTO lib_nokey VALUES (1, 'a'), (NULL, 'b'), (1, 'c')")
    try:
        spec = _spec(
            tmp_path, spec_toml=('table = "public.lib_author"', 'table = "public.lib_nokey"')
        )
        found = [f for f in check(spec, *dbs).findings if f.check == "source_key"]
        assert [(f.level, "NULL in the key" in f.message) for f in found] == [
            ("error", True), ("warning", False)
        ]  # fmt: skip
        assert "1 key value(s) held by more than one row (1)" in found[1].message
    finally:
        with psycopg.connect(dbs[0], autocommit=True) as conn:
            conn.execute("DROP TABLE lib_nokey")


def test_a_missing_target_column(dbs: tuple[str, str], tmp_path: Path) -> None:
    spec = _spec(tmp_path, books_sql=("b.isbn,", "b.isbn AS isbn_code,"))
    result = check(spec, *dbs)
    [f] = _errors(result, "target_column")
    sql_file = tmp_path / "books.sql"
    assert (f.file, f.line) == (str(sql_file), _line(sql_file, "isbn_code"))
    assert "isbn_code is not a column of public.books" in f.message
    # A parent column the target lacks: at the spec's line.
    spec = _spec(tmp_path, spec_toml=('column = "book_id"', 'column = "book_uuid"'))
    [f] = _errors(check(spec, *dbs), "target_column")
    assert (f.file, f.line) == (str(spec), _line(spec, "book_uuid"))


def test_a_missing_target_table_and_a_bad_rule(dbs: tuple[str, str], tmp_path: Path) -> None:
    spec = _spec(
        tmp_path,
        spec_toml=('target = "public.loans"', 'target = "public.lendings"'),
    )
    [f] = _errors(check(spec, *dbs), "target_table")
    assert f.line == _line(spec, "public.lendings")
    spec = _spec(tmp_path, spec_toml=("when = \"_status = 'draft'\"", 'when = "_status"'))
    [f] = _errors(check(spec, *dbs), "rule")
    assert f.line == _line(spec, 'when = "_status"')
    assert "not a boolean" in f.message


def test_the_command_exits_non_zero_on_errors_with_json(
    dbs: tuple[str, str], tmp_path: Path
) -> None:
    source, target = dbs
    good = CliRunner().invoke(
        app, ["check", "--spec", str(_spec(tmp_path)), "--source", source, "--target", target]
    )
    assert good.exit_code == 0, good.output
    assert "ok: 3 sources and 3 models" in good.output
    spec = _spec(tmp_path, books_sql=("b.isbn,", "b.isbn AS isbn_code,"))
    bad = CliRunner().invoke(
        app,
        ["check", "--spec", str(spec), "--source", source, "--target", target, "--json"],
    )
    assert bad.exit_code == 1
    data = json.loads(bad.stdout)
    assert data["ok"] is False
    assert [f["check"] for f in data["findings"]] == ["target_column"]
