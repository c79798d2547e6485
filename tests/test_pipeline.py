"""The engine end to end on a made-up library schema that exists only in these tests."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from ferry import ledger
from ferry.embedded import LocalCluster
from ferry.engine import execute, pipeline, stage
from ferry.engine.keys import key_uuid
from ferry.engine.pipeline import migrate
from ferry.engine.query import Plan
from ferry.errors import FerryError, InvariantError, SpecError
from ferry.ops import rollback
from ferry.spec import Source, Spec, load_spec
from tests.helpers import fresh_db, table_checksum

SPEC_DIR = Path(__file__).parent / "specs" / "library"
OWNER = "lib_owner"
FATES = {
    ("authors", "1"): ("migrated", None),
    ("authors", "2"): ("migrated", None),
    ("authors", "3"): ("merged", "duplicate_author"),
    ("authors", "4"): ("quarantined", "unknown_country"),
    ("authors", "5"): ("migrated", None),
    ("books", "10"): ("migrated", None),
    ("books", "11"): ("migrated", None),
    ("books", "12"): ("excluded", "draft"),
    ("books", "13"): ("quarantined", "parent_quarantined"),
    ("books", "14"): ("quarantined", "orphan_author"),
    ("books", "15"): ("quarantined", "unique_violation"),
    ("books", "16"): ("quarantined", "check_violation"),
    ("books", "17"): ("migrated", None),
    ("loans", "L-1"): ("migrated", None),
    ("loans", "L-2"): ("migrated", None),
    ("loans", "L-3"): ("excluded", "parent_excluded"),
    ("loans", "L-4"): ("quarantined", "orphan_books"),
}


@pytest.fixture()
def library(cluster: LocalCluster) -> tuple[str, str]:
    source = fresh_db(cluster, "lib_src", SPEC_DIR / "source.sql")
    fresh_db(cluster, "lib_tgt", SPEC_DIR / "target.sql", owner=OWNER)
    # ferry runs as the role that owns the target tables, and nothing more.
    return source, cluster.conninfo("lib_tgt", user=OWNER)


def fates(target: str) -> dict[tuple[str, str], tuple[str, str | None]]:
    with psycopg.connect(target) as conn:
        rows = conn.execute("SELECT model, source_key, status, reason FROM ferry.ledger").fetchall()
    return {(m, k): (s, r) for m, k, s, r in rows}


def test_every_row_gets_its_fate(library: tuple[str, str]) -> None:
    source, target = library
    spec = load_spec(SPEC_DIR / "spec.toml")
    app_row = table_checksum(target, "public.authors")
    result = migrate(source, target, spec)
    assert fates(target) == FATES
    assert result.counts["lib_book"].staged == 8
    # What the stage reports (COPY's own count, table and CSV alike) is what the stage holds.
    assert {s.source: s.rows for s in result.staged} == {
        "lib_author": 5, "lib_book": 8, "loans.csv": 4,
    }  # fmt: skip
    assert result.counts["lib_author"].repaired == {"country_normalized": 2}
    with psycopg.connect(target) as conn:
        # A repair is what was done to a written row: the quarantined author, whose country
        # the rule would also have normalized, carries none.
        assert conn.execute(
            "SELECT repairs FROM ferry.ledger WHERE model = 'authors' AND source_key = '4'"
        ).fetchone() == ([],)
    ns = spec.namespace
    with psycopg.connect(target) as conn:
        # The merged duplicate's book points at the surviving author.
        author = conn.execute("SELECT author_id FROM books WHERE legacy_book_id = 11").fetchone()
        assert author == (key_uuid(ns, "lib_author", 1),)
        book = conn.execute(
            "SELECT id, price::text, published_at AT TIME ZONE 'UTC' FROM books "
            "WHERE legacy_book_id = 10"
        ).fetchone()
        assert book is not None
        assert book[0] == key_uuid(ns, "lib_book", 10)
        assert book[1] == "10.50"
        assert str(book[2]) == "2020-01-02 03:04:05"
        sqlstate = conn.execute(
            "SELECT sqlstate, message FROM ferry.ledger WHERE model = 'books' AND source_key = '15'"
        ).fetchone()
        assert sqlstate is not None and sqlstate[0] == "23505"
        assert "ISBN-1" not in sqlstate[1] and "isbn-1" not in sqlstate[1]
    # The application's own row is untouched.
    after = table_checksum(target, "public.authors")
    assert after[0] == app_row[0] + 3
    with psycopg.connect(target) as conn:
        assert conn.execute(
            "SELECT name FROM authors WHERE legacy_author_id IS NULL"
        ).fetchall() == [("App author",)]


PARTITIONS = (
    "SELECT c.relname::text, array(SELECT i.indisunique FROM pg_index i JOIN pg_inherits x "
    "ON x.inhrelid = i.indexrelid WHERE i.indrelid = c.oid ORDER BY 1) FROM pg_inherits "
    "JOIN pg_class c ON c.oid = inhrelid WHERE inhparent = 'ferry.ledger'::regclass ORDER BY 1"
)


def test_first_loads_write_their_ledger_rows_aside_then_attach_them(
    library: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = library
    monkeypatch.setattr(execute, "DEFER_MIN_ROWS", 1)  # every first load sets its keys aside
    seen: dict[str, tuple[int, int]] = {}
    real_attach = ledger.attach

    def attach(conn: psycopg.Connection, spec: object, model: str) -> None:
        part = psycopg.sql.Identifier("ferry", ledger.partition_name(model))
        aside = conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(part)).fetchone()
        shown = conn.execute("SELECT count(*) FROM ferry.ledger WHERE model = %s", [model])
        seen[model] = (aside[0] if aside else -1, shown.fetchone()[0])  # type: ignore[index]
        real_attach(conn, spec, model)  # type: ignore[arg-type]

    monkeypatch.setattr(ledger, "attach", attach)
    spec = load_spec(SPEC_DIR / "spec.toml")
    migrate(source, target, spec)
    # The same fates, bisected errors included, as with the ledger's primary key in place.
    assert fates(target) == FATES
    # Written aside, out of the ledger's sight until attached; books twice: its unique key
    # (isbn) did not build, so that load was taken out and ran again, in the ledger. The
    # duplicate author waits for its survivor's fate: it is written after the attach.
    assert seen == {"authors": (4, 0), "books": (8, 0), "loans": (4, 0)}
    with psycopg.connect(target) as conn:
        # Each model's partition, with the ledger's three indexes (its primary key built
        # when it was attached; quarantined rows; conflicts), each a part of the ledger's own.
        assert conn.execute(PARTITIONS).fetchall() == [
            ("ledger_authors", [False, False, True]), ("ledger_books", [False, False, True]),
            ("ledger_loans", [False, False, True]),
        ]  # fmt: skip
        assert conn.execute("SELECT count(*) FROM ferry.loads_aside").fetchone() == (0,)
    # Rolled back, the partitions are empty: the next run drops them and loads aside again.
    rollback.rollback(target, spec, all_=True)
    seen.clear()
    migrate(source, target, spec)
    assert fates(target) == FATES
    assert seen == {"authors": (4, 0), "books": (8, 0), "loans": (4, 0)}


@pytest.mark.parametrize(
    "dropped",
    [
        "",  # one row more than staged
        # Its chunk (books 12 to 14: chunk_size 3) yields as many rows as it stages: only
        # the fingerprint of their keys differs.
        "WHERE _key <> 13",
    ],
)
def test_a_key_yielded_twice_stops_a_load_written_aside_and_nothing_is_left_aside(
    library: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dropped: str
) -> None:
    source, target = library
    monkeypatch.setattr(execute, "DEFER_MIN_ROWS", 1)
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text((SPEC_DIR / "spec.toml").read_text())
    (tmp_path / "loans.csv").write_text((SPEC_DIR / "loans.csv").read_text())
    body = (SPEC_DIR / "books.sql").read_text()
    # Book 12 is excluded (a draft): no target row, so no key of the target refuses it
    # twice, and no primary key of the ledger either when it is written aside. Without the
    # rows that break the target's unique and check constraints, the first write of the
    # chunk would succeed.
    clean = (
        "SELECT _key, legacy_book_id, _author_id, _status, title, NULL AS isbn, "
        f"abs(price) AS price, published_at FROM ({body}) b"
    )
    (tmp_path / "books.sql").write_text(
        f"SELECT * FROM ({clean}) a {dropped} UNION ALL SELECT * FROM ({clean}) b WHERE _key = 12"
    )
    with pytest.raises(FerryError, match="yields the same _key twice: 12"):
        migrate(source, target, load_spec(spec_path))
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM ferry.loads_aside").fetchone() == (0,)
        twice = conn.execute(
            "SELECT count(*) - count(DISTINCT source_key) FROM ferry.ledger WHERE model = 'books'"
        )
        assert twice.fetchone() == (0,)


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("FROM loans l WHERE l.loan_id <> 'L-2'", "accounted 3; 1 keys without a fate: L-2"),
        (
            "FROM loans l UNION ALL SELECT 'L-9', 'L-9', 'm', 10",
            "accounted 5; 1 fates of keys not staged: L-9",
        ),
        (  # the counts agree: only the key-by-key check finds it
            "FROM loans l WHERE l.loan_id <> 'L-2' UNION ALL SELECT 'L-9', 'L-9', 'm', 10",
            "accounted 4; 1 keys without a fate: L-2; 1 fates of keys not staged: L-9",
        ),
    ],
)
def test_a_model_that_loses_or_invents_a_row_fails_the_run_naming_the_key(
    library: tuple[str, str], tmp_path: Path, sql: str, problem: str
) -> None:
    source, target = library
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text((SPEC_DIR / "spec.toml").read_text().replace("FROM loans l", sql))
    for name in ("loans.csv", "books.sql"):
        (tmp_path / name).write_text((SPEC_DIR / name).read_text())
    with pytest.raises(InvariantError, match=f"loans.csv: staged 4 but {problem}"):
        migrate(source, target, load_spec(spec_path))
    with psycopg.connect(target) as conn:
        run = conn.execute("SELECT status, error FROM ferry.runs ORDER BY run_id DESC LIMIT 1")
        status, error = run.fetchone()
    assert status == "failed" and problem in error


def test_each_source_is_counted_beside_the_load(
    library: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each source once its models have loaded, on the check's own session: not at the end."""
    source, target = library
    counted: list[tuple[str, str]] = []
    real = ledger.source_counts

    def recorded(conn: psycopg.Connection, spec: Spec, only: object = None) -> object:
        counts = real(conn, spec, only)  # type: ignore[arg-type]
        counted.extend((name, threading.current_thread().name) for name in counts)
        return counts

    monkeypatch.setattr(ledger, "source_counts", recorded)
    result = migrate(source, target, load_spec(SPEC_DIR / "spec.toml"))
    assert sorted(name for name, _ in counted) == sorted(result.counts)  # once per source
    assert all(thread != threading.main_thread().name for _, thread in counted)
    # The fingerprints of the staged keys and of the keys with a fate were taken, and agree.
    assert all(c.staged_keys is not None for c in result.counts.values())
    assert all(c.fate_keys == c.staged_keys for c in result.counts.values())


def test_models_start_while_sources_they_do_not_read_are_still_staging(
    library: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = library
    events: list[str] = []
    authors_started = threading.Event()

    class Recorder(pipeline.Progress):
        def stage_done(self, result: stage.StageResult) -> None:
            events.append(f"staged {result.source}")

        def model_started(self, model: str, total_rows: int) -> None:
            events.append(f"started {model}")
            if model == "authors":
                authors_started.set()

    real = stage.stage_table

    def held_back(
        s: psycopg.Connection, t: psycopg.Connection, spec: Spec, src: Source, *args: object
    ) -> stage.StageResult:
        if src.name == "lib_book":  # read by books only: authors need not wait for it
            assert authors_started.wait(20), "authors waited for a source it does not read"
        return real(s, t, spec, src, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(stage, "stage_table", held_back)
    result = migrate(source, target, load_spec(SPEC_DIR / "spec.toml"), progress=Recorder())
    assert events.index("started authors") < events.index("staged lib_book")
    assert events.index("staged lib_book") < events.index("started books")
    assert {s.source for s in result.staged} == {"lib_author", "lib_book", "loans.csv"}
    assert fates(target) == FATES


def test_a_source_that_cannot_be_staged_fails_the_run_with_its_own_message(
    library: tuple[str, str],
) -> None:
    source, target = library
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("ALTER TABLE lib_book DROP CONSTRAINT lib_book_pkey")
        conn.execute("ALTER TABLE lib_book ALTER COLUMN id DROP NOT NULL")
        # A key that repeats only quarantines its rows (test_keyless.py); one that is NULL
        # cannot name its row, and stops the run.
        conn.execute("INSERT INTO lib_book (id, title) VALUES (NULL, 'Nameless')")
    with pytest.raises(FerryError, match="source lib_book: key column id holds NULL"):
        migrate(source, target, load_spec(SPEC_DIR / "spec.toml"))
    with psycopg.connect(target) as conn:
        models = conn.execute("SELECT DISTINCT model FROM ferry.ledger").fetchall()
    assert ("books",) not in models and ("loans",) not in models


def test_second_run_changes_nothing(library: tuple[str, str]) -> None:
    source, target = library
    spec = load_spec(SPEC_DIR / "spec.toml")
    migrate(source, target, spec)
    before = {
        t: table_checksum(target, t) for t in ("public.authors", "public.books", "public.loans")
    }
    ledger_before = table_checksum(target, "ferry.ledger", order="source_key")
    second = migrate(source, target, spec)
    assert sum(m.written for m in second.models) == 0
    assert {t: table_checksum(target, t) for t in before} == before
    with psycopg.connect(target) as conn:
        runs = conn.execute("SELECT count(*) FROM ferry.ledger WHERE run_id = %s", [second.run_id])
        # Rows the database refused are tried again, and failing the same way they write nothing.
        assert runs.fetchone() == (0,)
    assert ledger_before == table_checksum(target, "ferry.ledger", order="source_key")


def test_a_first_load_leaves_statistics_however_small(library: tuple[str, str]) -> None:
    """Each model's ledger partition is analyzed by its first load: never analyzed,
    ``model = X`` on a partition is estimated at half a percent of its rows, and the first
    syncs compared each changed row with the whole partition."""
    source, target = library
    migrate(source, target, load_spec(SPEC_DIR / "spec.toml"))
    with psycopg.connect(target) as conn:
        analyzed = dict(
            conn.execute(
                "SELECT s.relname, s.last_analyze IS NOT NULL FROM pg_stat_user_tables s "
                "WHERE s.schemaname = 'ferry' AND s.relname LIKE 'ledger\\_%'"
            ).fetchall()
        )
    assert {"ledger_authors", "ledger_books", "ledger_loans"} <= set(analyzed)
    assert all(analyzed.values()), analyzed


def test_spec_errors_name_the_place(tmp_path: Path) -> None:
    bad = tmp_path / "spec.toml"
    bad.write_text(
        (SPEC_DIR / "spec.toml").read_text().replace('model = "authors"', 'model = "writers"')
    )
    with pytest.raises(SpecError, match=r"models\[1\]\.parents\[0\]: unknown model 'writers'"):
        load_spec(bad)
    bad.write_text("name = 'x'\nnamespace = 'not-a-uuid'\nsources = []\nmodels = []\n")
    with pytest.raises(SpecError, match="namespace"):
        load_spec(bad)


def test_a_model_reads_its_source_and_the_stage_tables_its_sql_names() -> None:
    spec = load_spec(SPEC_DIR / "spec.toml")
    assert spec.reads(spec.model("loans")) == {"loans.csv"}
    sql = "SELECT * FROM LIB_AUTHOR a JOIN lib_book_x b ON true -- not loans"
    books = spec.model("books").model_copy(update={"sql": sql})
    # Any case; whole words only; a comment counts (the model only waits longer).
    assert spec.reads(books) == {"lib_book", "lib_author", "loans.csv"}


def test_a_column_type_without_a_hash_function_enters_the_row_hash_by_its_text(
    library: tuple[str, str], tmp_path: Path
) -> None:
    """json has no hash function: its text enters the row hash (``query.hash_kinds``). A
    ledger from before held md5 of such a row's text; its rows are still ferry's, and are
    rehashed once, nothing written again."""
    source, target = library
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("ALTER TABLE loans ALTER COLUMN member TYPE json USING to_json(member)")
    text = (SPEC_DIR / "spec.toml").read_text().replace("l.member,", "to_json(l.member) AS member,")
    (tmp_path / "spec.toml").write_text(text)
    for name in ("books.sql", "loans.csv"):
        (tmp_path / name).write_text((SPEC_DIR / name).read_text())
    spec = load_spec(tmp_path / "spec.toml")
    migrate(source, target, spec)
    with psycopg.connect(target) as conn:
        conn.execute("SET search_path = ferry_stage, pg_catalog")
        assert Plan(conn, spec, spec.model("loans")).shape.hashed_as["member"] == "text"
        conn.execute(
            "UPDATE ferry.ledger l SET row_hash = md5(ROW(t.legacy_loan_id, t.member, "
            "t.book_id)::text) FROM public.loans t "
            "WHERE l.model = 'loans' AND t.id = l.target_uuid"
        )
        assert conn.execute("DELETE FROM ferry.hash_forms").rowcount == 3
    assert sum(m.written for m in migrate(source, target, spec).models) == 0
    with psycopg.connect(target) as conn:
        hashes = conn.execute(
            "SELECT model, count(*) FILTER (WHERE length(row_hash) = 32), count(*) "
            "FROM ferry.ledger WHERE status = 'migrated' GROUP BY 1 ORDER BY 1"
        ).fetchall()
    # A signed 64-bit integer, as text, for every model: md5's 32 hex digits are gone.
    assert [(m, md5) for m, md5, _ in hashes] == [("authors", 0), ("books", 0), ("loans", 0)]
    assert all(n > 0 for _, _, n in hashes)
