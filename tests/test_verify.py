"""verify on the library world: it passes after a migrate, and catches every change made to the
target or the ledger behind ferry's back, naming the table and the key -- never row contents."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ferry.embedded import LocalCluster
from ferry.engine.keys import key_uuid
from ferry.engine.pipeline import migrate
from ferry.errors import VerifyError
from ferry.ops import quarantine
from ferry.ops.verify import Problem, VerifyReport, verify
from ferry.spec import Model, Spec, load_spec
from tests.helpers import fresh_db

SPEC_DIR = Path(__file__).parent / "specs" / "library"
OWNER = "lib_owner"
MARKER = "PHI-MARKER-7731"

# The library world's planted fates: every row not listed migrates without a repair.
TRUTH = """source_table,source_key,status,reason
lib_author,2,migrated,country_normalized
lib_author,3,merged,duplicate_author
lib_author,4,quarantined,unknown_country
lib_author,5,migrated,country_normalized
lib_book,12,excluded,draft
lib_book,13,quarantined,parent_quarantined
lib_book,14,quarantined,orphan_author
lib_book,15,quarantined,unique_violation
lib_book,16,quarantined,check_violation
loans.csv,L-3,excluded,parent_excluded
loans.csv,L-4,quarantined,orphan_books
"""


class World:
    """A migrated library: the owner's and the superuser's connection strings, and the spec."""

    def __init__(self, cluster: LocalCluster) -> None:
        source = fresh_db(cluster, "ver_src", SPEC_DIR / "source.sql")
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute("UPDATE lib_book SET title = %s || title WHERE id = 10", [MARKER])
        fresh_db(cluster, "ver_tgt", SPEC_DIR / "target.sql", owner=OWNER)
        self.target = cluster.conninfo("ver_tgt", user=OWNER)
        self.superuser = cluster.conninfo("ver_tgt")
        self.spec: Spec = load_spec(SPEC_DIR / "spec.toml")
        migrate(source, self.target, self.spec)

    def run(self, sql: str, params: list[object] | None = None, *, superuser: bool = False) -> None:
        with psycopg.connect(self.superuser if superuser else self.target, autocommit=True) as c:
            if superuser:
                # Triggers off: FK checks do not fire, as in a careless bulk load.
                c.execute("SET session_replication_role = replica")
            c.execute(sql, params)  # type: ignore[arg-type]

    def uuid(self, source: str, key: object) -> str:
        return str(key_uuid(self.spec.namespace, source, key))


@pytest.fixture()
def world(cluster: LocalCluster) -> World:
    return World(cluster)


def only(report: VerifyReport, kind: str) -> Problem:
    """The single problem of ``kind``; and no row contents anywhere in the report."""
    assert MARKER not in report.summary()
    found = [p for p in report.problems if p.kind == kind]
    assert len(found) == 1, report.summary()
    return found[0]


def test_verify_passes_after_migrate(world: World) -> None:
    report = verify(world.target, world.spec)
    assert report.ok, report.summary()
    assert report.checked == {"models": 3, "rows": 17, "foreign_keys": 2}
    report.raise_for_problems()


def test_changed_value_is_found(world: World) -> None:
    world.run(f"UPDATE books SET title = '{MARKER} edited' WHERE legacy_book_id = 11")
    report = verify(world.target, world.spec)
    assert not report.ok
    p = only(report, "content")
    assert (p.table, p.keys, p.uuids, p.count) == (
        "public.books",
        ["11"],
        [world.uuid("lib_book", 11)],
        1,
    )
    assert [x.kind for x in report.problems] == ["content"]
    with pytest.raises(VerifyError, match=r"public\.books.*keys 11"):
        report.raise_for_problems()


def test_deleted_row_is_found(world: World) -> None:
    world.run("DELETE FROM loans WHERE legacy_loan_id = 'L-1'")
    report = verify(world.target, world.spec)
    p = only(report, "missing")
    assert (p.table, p.keys, p.uuids) == ("public.loans", ["L-1"], [world.uuid("loans.csv", "L-1")])
    assert [x.kind for x in report.problems] == ["missing"]


def test_row_of_an_excluded_source_row_is_found(world: World) -> None:
    # Book 12 is a draft: excluded. A row under its UUID is not the application's own.
    world.run(
        "INSERT INTO books (id, legacy_book_id, author_id, title, price) "
        "SELECT %s, 12, author_id, 'x', 1 FROM books WHERE legacy_book_id = 10",
        [world.uuid("lib_book", 12)],
    )
    report = verify(world.target, world.spec)
    p = only(report, "extra")
    assert (p.table, p.keys) == ("public.books", ["12"])
    assert "excluded (draft)" in p.detail


def test_dangling_foreign_key_is_found(world: World) -> None:
    stray = "00000000-0000-4000-8000-00000000beef"
    nowhere = "00000000-0000-4000-8000-00000000dead"
    # An application row and a ferry row, both pointing at a book that does not exist.
    world.run(
        "INSERT INTO loans (id, legacy_loan_id, book_id, member) VALUES (%s, NULL, %s, 'm')",
        [stray, nowhere],
        superuser=True,
    )
    world.run(
        "UPDATE loans SET book_id = %s WHERE legacy_loan_id = 'L-2'", [nowhere], superuser=True
    )
    report = verify(world.target, world.spec)
    p = only(report, "fk")
    assert p.table == "public.loans" and p.count == 2
    assert sorted(p.uuids) == sorted([stray, world.uuid("loans.csv", "L-2")])
    assert p.keys == ["L-2"]
    assert "public.books" in p.detail and "loans_book_id_fkey" in p.detail
    # The changed ferry row also differs from what the spec yields.
    assert only(report, "content").keys == ["L-2"]


def test_ledger_changed_behind_ferrys_back(world: World) -> None:
    world.run("DELETE FROM ferry.ledger WHERE model = 'loans' AND source_key = 'L-4'")
    world.run(
        "UPDATE ferry.ledger SET reason = 'draft' WHERE model = 'books' AND source_key = '14'"
    )
    report = verify(world.target, world.spec)
    invariant = only(report, "invariant")
    assert "loans.csv" in invariant.detail and "L-4" in invariant.detail
    fates = {tuple(p.keys): p for p in report.problems if p.kind == "fate"}
    assert set(fates) == {("L-4",), ("14",)}
    assert fates[("14",)].table == "lib_book"
    assert "orphan_author" in fates[("14",)].detail and "draft" in fates[("14",)].detail


def test_truth_file(world: World, tmp_path: Path) -> None:
    truth = tmp_path / "ground_truth.csv"
    truth.write_text(TRUTH)
    report = verify(world.target, world.spec, truth)
    assert report.ok, report.summary()
    assert report.checked["truth_rows"] == 11

    # A wrong expectation, a planted repair left out, and an unknown table.
    wrong = TRUTH.replace("lib_book,14,quarantined,orphan_author", "lib_book,14,excluded,draft")
    wrong = wrong.replace("lib_author,5,migrated,country_normalized\n", "")
    # And a planted row the ledger does not have at all; and one it has plainly migrated,
    # which the join of planted and ledger rows takes in only because the truth names it.
    truth.write_text(
        wrong + "lib_shelf,1,migrated,\nlib_book,99,migrated,\nlib_book,10,excluded,draft\n"
    )
    report = verify(world.target, world.spec, truth)
    problems = {(p.table, tuple(p.keys)): p for p in report.problems}
    assert set(problems) == {
        ("lib_book", ("14",)),
        ("lib_author", ("5",)),
        ("lib_shelf", ()),
        ("lib_book", ("99",)),
        ("lib_book", ("10",)),
    }
    assert "the ledger says nothing" in problems[("lib_book", ("99",))].detail
    assert "expected excluded (draft) but the ledger says migrated" in (
        problems[("lib_book", ("10",))].detail
    )
    assert {p.kind for p in report.problems} == {"truth"}
    assert "expected excluded (draft)" in problems[("lib_book", ("14",))].detail
    assert "quarantined (orphan_author)" in problems[("lib_book", ("14",))].detail
    assert "country_normalized" in problems[("lib_author", ("5",))].detail

    truth.write_text("table,key\n")
    with pytest.raises(VerifyError, match="header"):
        verify(world.target, world.spec, truth)


def test_a_model_that_cannot_be_recomputed_is_a_problem_and_the_rest_is_checked(
    world: World,
) -> None:
    world.run("ALTER TABLE books DROP COLUMN isbn")
    report = verify(world.target, world.spec)
    p = only(report, "model")
    assert p.table == "public.books" and "isbn" in p.detail
    assert report.checked["models"] == 2


def test_a_merged_row_pointing_nowhere_is_found(world: World) -> None:
    """The invariant counts a merged row as accounted for wherever it points: verify checks
    that its survivor is a migrated row in the target."""
    lost = "00000000-0000-4000-8000-0000000000aa"
    world.run("UPDATE ferry.ledger SET target_uuid = %s WHERE model = 'authors' AND "
              "source_key = '3'", [lost])  # fmt: skip
    problem = only(verify(world.target, world.spec), "merge")
    assert problem.keys == ["3"] and problem.count == 1


def test_each_of_a_tables_foreign_keys_is_checked_on_its_own(world: World) -> None:
    """One scan checks all of a table's FKs, over their columns' distinct values: each
    one's orphans are its own, MATCH FULL too, two FKs of the same column to two tables
    apart, and an intact FK beside a broken one reports nothing."""
    world.run(
        "CREATE TABLE members AS SELECT DISTINCT member AS name FROM loans; "
        "ALTER TABLE members ADD PRIMARY KEY (name); "
        "CREATE TABLE shelves AS SELECT DISTINCT book_id, member FROM loans; "
        "ALTER TABLE shelves ADD PRIMARY KEY (book_id, member); "
        "CREATE TABLE catalogue AS SELECT id FROM books; "
        "ALTER TABLE catalogue ADD PRIMARY KEY (id); "
        "CREATE TABLE branches (code text PRIMARY KEY); "
        "ALTER TABLE loans ADD COLUMN branch text REFERENCES branches (code), "
        "ADD CONSTRAINT loans_member_fkey FOREIGN KEY (member) REFERENCES members (name), "
        "ADD CONSTRAINT loans_catalogue_fkey FOREIGN KEY (book_id) REFERENCES catalogue (id), "
        "ADD CONSTRAINT loans_shelf_fkey FOREIGN KEY (book_id, member) "
        "REFERENCES shelves (book_id, member) MATCH FULL"
    )
    world.run("DELETE FROM shelves WHERE book_id = (SELECT book_id FROM loans "
              "WHERE legacy_loan_id = 'L-2') AND member = (SELECT member FROM loans "
              "WHERE legacy_loan_id = 'L-2')", superuser=True)  # fmt: skip
    world.run("DELETE FROM catalogue WHERE id = (SELECT book_id FROM loans "
              "WHERE legacy_loan_id = 'L-1')", superuser=True)  # fmt: skip
    report = verify(world.target, world.spec)
    assert report.checked["foreign_keys"] == 6, report.summary()
    found = {p.detail.split("[constraint ")[1]: (p.keys, p.count) for p in report.problems}
    assert found == {"loans_shelf_fkey]": (["L-2"], 1), "loans_catalogue_fkey]": (["L-1"], 1)}


def test_an_operators_decision_keeps_the_fast_comparison(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decided row is left out of the recomputation as a refused one is; a model with no
    refused row is recomputed without that anti-join first, and again with it once the
    ledger shows a decided row: the fingerprints then agree, no row-by-row comparison."""
    quarantine.exclude(world.target, world.spec, "authors", "4", "left behind", by="test")
    slow: list[str] = []

    def row_by_row(conn: psycopg.Connection, spec: Spec, model: Model, *args: object) -> bool:
        slow.append(model.name)
        return False

    monkeypatch.setattr("ferry.ops.verify._check_model", row_by_row)
    report = verify(world.target, world.spec)
    assert report.ok and slow == [], (slow, report.summary())


def test_a_row_with_a_legacy_key_but_no_ledger_row_is_found(world: World) -> None:
    """A row ferry wrote (it carries a legacy key) whose ledger row is gone, for a source row
    the spec no longer yields: no other check reads it."""
    stray = "00000000-0000-4000-8000-0000000000bb"
    world.run("INSERT INTO authors (id, legacy_author_id, name, country_code) "
              "VALUES (%s, 999, 'Stray', 'GB')", [stray])  # fmt: skip
    authors = world.spec.model("authors").model_copy(update={"legacy_column": "legacy_author_id"})
    spec = world.spec.model_copy(
        update={"models": [authors if m.name == "authors" else m for m in world.spec.models]}
    )
    problem = only(verify(world.target, spec), "extra")
    assert problem.uuids == [stray] and "no ledger row" in problem.detail


def test_truth_keys_match_exactly(world: World, tmp_path: Path) -> None:
    """A text key with spaces around it is a different key: the truth file's field is not
    stripped (it was, so such a key could never match)."""
    truth = tmp_path / "truth.csv"
    truth.write_text(TRUTH.replace("lib_book,12,excluded", "lib_book, 12,excluded"))
    problems = verify(world.target, world.spec, truth=truth).problems
    assert [p.keys for p in problems if p.kind == "truth"] == [[" 12"], ["12"]], problems


def _with_legacy_columns(spec: Spec) -> Spec:
    """The spec with the target's unique legacy keys declared: only then may a model be
    recomputed in parts (no unique index on other columns could make it refuse rows)."""
    legacy = {"authors": "legacy_author_id", "loans": "legacy_loan_id"}
    models = [
        m.model_copy(update={"legacy_column": legacy[m.name]}) if m.name in legacy else m
        for m in spec.models
    ]
    return spec.model_copy(update={"models": models})


def test_a_clean_target_is_proved_by_fingerprints_alone(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No model is compared row by row when its fingerprints agree (row by row, verify of
    the SF=1 demo took 35 s), also when each model is recomputed in parts."""
    import ferry.ops.verify as v

    row_by_row: list[str] = []
    parts: list[int] = []
    monkeypatch.setattr(v, "SPLIT_ROWS", 0)
    monkeypatch.setattr(v, "_check_model", lambda *a, **k: row_by_row.append(a[2].name))
    split = v._parts
    monkeypatch.setattr(v, "_parts", lambda *a: parts.append(len(split(*a))) or split(*a))
    report = verify(world.target, _with_legacy_columns(world.spec))
    assert report.ok and row_by_row == [], report.summary()
    assert report.checked == {"models": 3, "rows": 17, "foreign_keys": 2}
    assert sorted(parts) == [2, 2]  # authors and loans; books has a unique index on isbn


def test_in_parts_or_whole_the_same_problems_are_found(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parent whose fates differ (its children then read verify's own fates, in the main
    session), a changed row, and a row under an excluded key: the same report, whether a
    model is recomputed in parts or whole."""
    import ferry.ops.verify as v

    world.run("UPDATE ferry.ledger SET reason = 'x' WHERE model = 'authors' AND source_key = '4'")
    world.run(f"UPDATE books SET title = '{MARKER}' WHERE legacy_book_id = 11")
    world.run(
        "INSERT INTO books (id, legacy_book_id, author_id, title, price) "
        "SELECT %s, 12, author_id, 'x', 1 FROM books WHERE legacy_book_id = 10",
        [world.uuid("lib_book", 12)],
    )
    spec = _with_legacy_columns(world.spec)
    whole = verify(world.target, spec)
    monkeypatch.setattr(v, "SPLIT_ROWS", 0)
    parts = verify(world.target, spec)
    assert [str(p) for p in parts.problems] == [str(p) for p in whole.problems]
    assert parts.checked == whole.checked
    assert {p.kind for p in whole.problems} == {"fate", "content", "extra"}, whole.summary()
    assert MARKER not in whole.summary()
