"""Quarantine review on the library world: list, show, retry, exclude and undo, through the
command line as an operator would, with the ledger, later syncs and the report checked."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from ferry import ledger
from ferry.cli import app
from ferry.embedded import LocalCluster
from ferry.engine.pipeline import migrate
from ferry.ops import quarantine, report
from ferry.ops.verify import verify
from ferry.spec import Spec, load_spec
from ferry.sync.loop import sync
from tests.helpers import fresh_db

LIB = Path(__file__).parent / "specs" / "library"


@pytest.fixture()
def lib(cluster: LocalCluster, tmp_path: Path) -> tuple[str, str, Spec, list[str]]:
    """Migrated once; returns source, target, spec and the CLI's common arguments."""
    source = fresh_db(cluster, "q_lib_src", LIB / "source.sql")
    fresh_db(cluster, "q_lib_tgt", LIB / "target.sql", owner="lib_owner")
    for name in ("spec.toml", "books.sql", "loans.csv"):
        (tmp_path / name).write_text((LIB / name).read_text())
    target = cluster.conninfo("q_lib_tgt", user="lib_owner")
    spec = load_spec(tmp_path / "spec.toml")
    migrate(source, target, spec)
    return source, target, spec, ["--spec", str(tmp_path / "spec.toml"), "--target", target]


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def fate(target: str, model: str, key: str) -> tuple:
    with psycopg.connect(target) as conn:
        row = conn.execute(
            "SELECT status, reason, decided_by, decision, sqlstate FROM ferry.ledger "
            "WHERE model = %s AND source_key = %s",
            [model, key],
        ).fetchone()
    assert row is not None
    return tuple(row)


def test_list_and_show(lib: tuple[str, str, Spec, list[str]]) -> None:
    common = lib[3]
    code, out, _ = cli("quarantine", "list", *common, "--json")
    assert code == 0
    listed = json.loads(out)
    assert listed["total"] == 6
    assert {(r["model"], r["source_key"]) for r in listed["rows"]} == {
        ("authors", "4"), ("books", "13"), ("books", "14"), ("books", "15"), ("books", "16"),
        ("loans", "L-4"),
    }  # fmt: skip
    code, out, _ = cli("quarantine", "list", *common, "--table", "lib_book", "--json")
    assert {r["source_key"] for r in json.loads(out)["rows"]} == {"13", "14", "15", "16"}
    code, out, _ = cli("quarantine", "list", *common, "--table", "books", "--reason",
                       "unique_violation", "--json")  # fmt: skip
    (row,) = json.loads(out)["rows"]
    assert (row["source_key"], row["sqlstate"], row["tries"]) == ("15", "23505", 1)
    code, out, _ = cli("quarantine", "list", *common)
    assert code == 0 and "orphan_author" in out and "23514" in out
    assert "Cheap" not in out and "Orphan" not in out  # keys and reasons, never contents

    # show: the staged row, on request, to stdout; by source or by model name.
    code, out, _ = cli("quarantine", "show", "lib_book", "14", *common)
    assert code == 0 and "Orphan" in out and "isbn-5" in out
    assert "books: quarantined (orphan_author)" in out
    code, out, _ = cli("quarantine", "show", "books", "14", *common)
    assert code == 0 and "Orphan" in out
    code, _, err = cli("quarantine", "show", "lib_book", "999", *common)
    assert code == 0 and "no staged row" in err
    code, _, err = cli("quarantine", "show", "lib_book", "x1", *common)
    assert code == 2 and "not a valid key" in err
    code, _, err = cli("quarantine", "list", *common, "--table", "nope")
    assert code == 2 and "neither a model nor" in err


def test_exclusion_survives_syncs_and_reaches_the_report(
    lib: tuple[str, str, Spec, list[str]],
) -> None:
    source, target, spec, common = lib
    note = "legacy price below zero; finance agreed to drop it"
    code, _, err = cli("quarantine", "exclude", "lib_book", "16", "--note", note, "--by", "alice",
                       *common)  # fmt: skip
    assert code == 0, err
    assert fate(target, "books", "16")[:4] == ("excluded", "operator", "alice", note)
    with psycopg.connect(target) as conn:
        run = conn.execute(
            "SELECT kind, status, counts->>'key' FROM ferry.runs ORDER BY run_id DESC LIMIT 1"
        ).fetchone()
    assert run == ("decision", "ok", "16")

    # The source row changes (and is still refused by the CHECK): sync, migrate, sync.
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("UPDATE lib_book SET title = 'Cheaper', price = -2 WHERE id = 16")
    first = sync(source, target, spec)
    assert first.counts["source_updated"] == 1
    migrate(source, target, spec)
    sync(source, target, spec)
    assert fate(target, "books", "16")[:4] == ("excluded", "operator", "alice", note)
    with psycopg.connect(target) as conn:
        counts = ledger.check_invariant(conn, spec)
        assert conn.execute("SELECT count(*) FROM books WHERE legacy_book_id = 16").fetchone() == (
            0,
        )
    assert counts["lib_book"].excluded == {"draft": 1, "operator": 1}

    data = report.collect(target, spec)
    (decision,) = data["decisions"]
    assert (decision["source_key"], decision["note"], decision["decided_by"]) == (
        "16", note, "alice",
    )  # fmt: skip
    book = next(s for s in data["sources"] if s["source_table"] == "lib_book")
    assert book["excluded"] == {"draft": 1, "operator": 1} and book["adds_up"]
    for fmt in ("md", "html", "json"):
        text = report.render(data, fmt)  # type: ignore[arg-type]
        assert note in text and "alice" in text, fmt
        assert "Cheaper" not in text
    assert "excluded by the operator" in report.render(data, "md")
    # verify accepts the operator's decision over the spec's.
    checked = verify(target, spec)
    assert checked.ok, checked.summary()
    code, out, _ = cli("quarantine", "list", *common, "--decided", "--json")
    assert [r["source_key"] for r in json.loads(out)["rows"]] == ["16"]
    # The decided row is out of the quarantine list.
    code, out, _ = cli("quarantine", "list", *common, "--table", "books", "--json")
    assert "16" not in {r["source_key"] for r in json.loads(out)["rows"]}

    # Undo: evaluated afresh at once, as a fresh migrate would without the decision.
    code, _, err = cli("quarantine", "undo", "books", "16", *common)
    assert code == 0, err
    assert fate(target, "books", "16") == ("quarantined", "check_violation", None, None, "23514")
    sync(source, target, spec)
    assert fate(target, "books", "16") == ("quarantined", "check_violation", None, None, "23514")
    assert report.collect(target, spec)["decisions"] == []


def test_decisions_are_refused_when_they_make_no_sense(
    lib: tuple[str, str, Spec, list[str]],
) -> None:
    _, target, spec, common = lib
    with pytest.raises(quarantine.QuarantineError, match="not quarantined"):
        quarantine.exclude(target, spec, "books", "10", "why not")
    with pytest.raises(quarantine.QuarantineError, match="needs a note"):
        quarantine.exclude(target, spec, "books", "16", "  ")
    with pytest.raises(quarantine.QuarantineError, match="no ledger row for key 99"):
        quarantine.exclude(target, spec, "books", "99", "gone")
    with pytest.raises(quarantine.QuarantineError, match="carries no operator decision"):
        quarantine.undo(target, spec, "books", "16")
    code, _, err = cli("quarantine", "exclude", "books", "10", "--note", "x", *common)
    assert code == 2 and "not quarantined" in err


def test_retry_after_the_target_is_fixed(lib: tuple[str, str, Spec, list[str]]) -> None:
    _, target, spec, common = lib
    # Nothing changed: the same errors again, nothing leaves quarantine.
    code, _, err = cli("quarantine", "retry", *common, "--table", "books")
    assert code == 0 and "4 keys retried, 0 left quarantine" in err
    assert fate(target, "books", "16")[0] == "quarantined"
    # The operator relaxes the target's CHECK: the refused row goes in on retry.
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("ALTER TABLE books DROP CONSTRAINT books_price_check")
    code, _, err = cli("quarantine", "retry", *common, "--reason", "check_violation")
    assert code == 0 and "1 keys retried, 1 left quarantine" in err
    assert fate(target, "books", "16") == ("migrated", None, None, None, None)
    with psycopg.connect(target) as conn:
        runs = conn.execute(
            "SELECT kind, status FROM ferry.runs WHERE kind = 'retry' ORDER BY run_id"
        ).fetchall()
        assert conn.execute("SELECT price FROM books WHERE legacy_book_id = 16").fetchone() == (-1,)
        ledger.check_invariant(conn, spec)
    assert runs == [("retry", "ok"), ("retry", "ok")]
    code, _, err = cli("quarantine", "retry", *common, "--reason", "check_violation")
    assert code == 0 and "nothing in quarantine matches" in err
