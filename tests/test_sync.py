"""Differential sync against real PostgreSQL: the demo world's delta, and edge cases on the
made-up library schema."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import ModuleType

import psycopg
import pytest
from psycopg import sql

import ferry.engine.pipeline
import ferry.engine.settle
from ferry import ledger
from ferry.demo import world
from ferry.demo.run import MIGRATOR, dispatch_spec
from ferry.embedded import LocalCluster
from ferry.engine.dependencies import dependents, reads
from ferry.engine.pipeline import Progress, migrate, run_model, session
from ferry.errors import FerryError
from ferry.ops.verify import verify
from ferry.spec import Spec, load_spec
from ferry.sync.loop import sync
from tests.helpers import fresh_db, table_checksum

SCALE = 0.01
LIB = Path(__file__).parent / "specs" / "library"


def public_tables(conninfo: str) -> list[str]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT 'public.' || tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
    return [r[0] for r in rows]


def checksums(conninfo: str) -> dict[str, tuple[int, str]]:
    return {t: table_checksum(conninfo, t) for t in public_tables(conninfo)}


def target_only(conninfo: str) -> dict[str, tuple[int, str]]:
    out = {}
    with psycopg.connect(conninfo) as conn:
        for t in public_tables(conninfo):
            legacy = conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                "AND attname LIKE 'legacy%%'",
                [t],
            ).fetchone()
            if legacy is None:
                continue
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY x.id)), '') "
                    "FROM {} x WHERE {} IS NULL"
                ).format(sql.SQL(t), sql.Identifier(legacy[0]))
            ).fetchone()
            out[t] = row
    return out


class Chunks(Progress):
    """How many keys each model was asked about, and in how many chunks it wrote them."""

    def __init__(self) -> None:
        self.keys: dict[str, int] = {}
        self.chunks: Counter[str] = Counter()

    def model_started(self, model: str, total_rows: int) -> None:
        self.keys[model] = total_rows

    def model_advanced(self, model: str, rows: int) -> None:
        self.chunks[model] += 1


@pytest.fixture(scope="module")
def synced(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Generate, migrate, apply the delta, sync once: the state every test below reads.

    The syncs write their key lists in chunks of two keys, on two sessions where a model
    allows: every test below then also checks that path, which a bigger delta takes.
    """
    workdir = tmp_path_factory.mktemp("sync_world")
    source = cluster.create_database("sync_legacy", drop=True)
    admin = cluster.create_database("sync_target", drop=True)
    world.generate(source, admin, workdir, scale=SCALE, seed=7)
    target = cluster.conninfo("sync_target", user=MIGRATOR)
    spec = dispatch_spec()
    migrate(source, target, spec, data_dir=workdir)
    before_only = target_only(target)
    world.apply_delta(source, workdir, scale=SCALE, seed=7)
    # A change that reaches another model's rows only through its SQL: an attachment is as
    # old as its message (models/message_attachments.sql reads dispatch_record).
    with psycopg.connect(source, autocommit=True) as conn:
        moved = conn.execute(
            "UPDATE dispatch_record SET created_at = created_at - interval '1 day' "
            "WHERE id = ANY(%s)",
            [[int(line.split(",")[1]) for line in (workdir / "record_attachments.csv")
              .read_text().splitlines()[1:40]]],
        ).rowcount  # fmt: skip
    assert moved > 0
    chunked, progress = spec.model_copy(update={"chunk_size": 2}), Chunks()
    first = sync(source, target, chunked, data_dir=workdir, jobs=2, progress=progress)
    after_first = checksums(target)
    second = sync(source, target, chunked, data_dir=workdir, jobs=2)
    return {
        "workdir": workdir, "source": source, "target": target, "spec": spec,
        "first": first, "second": second, "after_first": after_first,
        "before_only": before_only, "progress": progress,
    }  # fmt: skip


def test_delta_sync_matches_ground_truth(synced: dict) -> None:
    report = verify(synced["target"], synced["spec"], truth=synced["workdir"] / "ground_truth.csv")
    assert report.ok, report.summary()
    c = synced["first"].counts
    assert c["source_inserted"] > 0 and c["source_updated"] > 0 and c["source_deleted"] > 0
    # Orphans whose parent arrived in the delta are migrated by the sync.
    assert c["fixed_on_retry"] >= 3
    assert c["deleted"] > 0
    assert c["conflicts"] == 0


def test_sync_writes_its_key_lists_in_chunks(synced: dict) -> None:
    progress: Chunks = synced["progress"]
    asked = {m: n for m, n in progress.keys.items() if synced["spec"].model(m).accounts}
    several = [m for m, n in asked.items() if n >= 4]
    assert several, asked
    for m in several:  # a call a chunk written: n/2 for n keys, about that for a whole model
        assert progress.chunks[m] >= asked[m] // 2, (m, asked[m], progress.chunks[m])


def test_a_model_that_declares_what_it_reads_is_not_computed_whole(synced: dict) -> None:
    """message_attachments reads dispatch_record (reads = ... in the spec): the sync looks
    at the attachments of the records that changed, a key list, not at every attachment
    (and the ground truth, times included, still verifies: test_delta_sync_matches_...)."""
    progress: Chunks = synced["progress"]
    lines = (synced["workdir"] / "record_attachments.csv").read_text().splitlines()
    assert 0 < progress.keys["message_attachments"] < len(lines) - 1


def test_a_derived_model_takes_a_key_list(synced: dict) -> None:
    """A sync looks again at some rows of a model that does not account for its source (its
    quarantined ones, say): the keys must compare with its own ``_key``, an integer here."""
    spec, target = synced["spec"], synced["target"]
    with psycopg.connect(target) as conn:
        keys = [
            r[0]
            for r in conn.execute(
                "SELECT source_key FROM ferry.ledger WHERE model = 'doctors' ORDER BY 1 LIMIT 3"
            )
        ]
    assert len(keys) == 3 and not spec.model("doctors").accounts
    done = run_model(target, spec, "doctors", synced["first"].run_id, Progress(), keys=keys)
    assert (done.written, done.quarantined_by_error, done.transitions) == (0, 0, {})


def test_synced_target_equals_fresh_migration(synced: dict, cluster: LocalCluster) -> None:
    fresh_admin = cluster.create_database("sync_fresh", drop=True)
    world.build_target(fresh_admin)
    fresh = cluster.conninfo("sync_fresh", user=MIGRATOR)
    migrate(synced["source"], fresh, synced["spec"], data_dir=synced["workdir"])
    assert checksums(fresh) == synced["after_first"]


def test_second_sync_changes_nothing(synced: dict) -> None:
    second = synced["second"]
    assert not second.changed
    assert {k: v for k, v in second.counts.items() if k not in ("seconds", "bytes_from_source")} \
        == dict.fromkeys(
            ("source_inserted", "source_updated", "source_deleted", "inserted", "updated",
             "deleted", "fixed_on_retry", "newly_quarantined", "newly_excluded", "conflicts",
             "new_conflicts"), 0)  # fmt: skip
    assert checksums(synced["target"]) == synced["after_first"]
    with psycopg.connect(synced["target"]) as conn:
        touched = conn.execute(
            "SELECT count(*) FROM ferry.ledger WHERE run_id = %s", [second.run_id]
        ).fetchone()
    assert touched == (0,)


def test_target_only_rows_untouched(synced: dict) -> None:
    assert target_only(synced["target"]) == synced["before_only"]
    assert sum(n for n, _ in synced["before_only"].values()) > 0


# --- the library schema: delete policies and conflicts -----------------------------------


@pytest.fixture()
def library(cluster: LocalCluster, tmp_path: Path) -> tuple[str, str, Path]:
    source = fresh_db(cluster, "sync_lib_src", LIB / "source.sql")
    fresh_db(cluster, "sync_lib_tgt", LIB / "target.sql", owner="lib_owner")
    for name in ("books.sql", "loans.csv"):
        (tmp_path / name).write_text((LIB / name).read_text())
    return source, cluster.conninfo("sync_lib_tgt", user="lib_owner"), tmp_path


def _spec(tmp: Path, on_delete: str) -> Path:
    text = (
        (LIB / "spec.toml")
        .read_text()
        .replace('name = "books"', f'name = "books"\non_delete = "{on_delete}"')
    )
    path = tmp / "spec.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("policy", ["delete", "keep"])
def test_deleted_source_row_follows_policy(library: tuple[str, str, Path], policy: str) -> None:
    source, target, tmp = library
    spec = load_spec(_spec(tmp, policy))
    migrate(source, target, spec)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("DELETE FROM lib_book WHERE id = 17")
    result = sync(source, target, spec)
    assert result.counts["source_deleted"] == 1
    with psycopg.connect(target) as conn:
        row = conn.execute("SELECT count(*) FROM books WHERE legacy_book_id = 17").fetchone()
        fate = conn.execute(
            "SELECT status, reason FROM ferry.ledger WHERE model = 'books' AND source_key = '17'"
        ).fetchone()
    assert row == ((0,) if policy == "delete" else (1,))
    assert fate == ("deleted", "source_deleted" if policy == "delete" else "kept")


def test_application_edit_is_a_conflict(library: tuple[str, str, Path]) -> None:
    source, target, tmp = library
    spec = load_spec(_spec(tmp, "delete"))
    migrate(source, target, spec)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("UPDATE books SET title = 'Edited in the app' WHERE legacy_book_id = 10")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("UPDATE lib_book SET title = 'Changed in legacy' WHERE id = 10")
        conn.execute("UPDATE lib_book SET title = 'Also changed' WHERE id = 17")
    result = sync(source, target, spec)
    assert result.counts["conflicts"] == 1
    assert result.counts["updated"] == 1
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT title FROM books WHERE legacy_book_id = 10").fetchone() == (
            "Edited in the app",
        )
        assert conn.execute("SELECT title FROM books WHERE legacy_book_id = 17").fetchone() == (
            "Also changed",
        )
        assert conn.execute(
            "SELECT conflict FROM ferry.ledger WHERE model = 'books' AND source_key = '10'"
        ).fetchone() == (True,)
    assert result.counts["new_conflicts"] == 1
    # Conflicts are counted again only in the models a sync wrote: one that wrote none still
    # counts the conflict, and it is no news.
    again = sync(source, target, spec)
    assert (again.counts["conflicts"], again.counts["new_conflicts"]) == (1, 0)


def test_reads_names_the_stage_tables_of_a_models_sql_and_rules(
    library: tuple[str, str, Path],
) -> None:
    """What tells a sync that a change reaches a model only through its SQL."""
    source, target, tmp = library
    path = _spec(tmp, "delete")
    plain = load_spec(path)
    migrate(source, target, plain)
    rule = '{ exclude = "draft", when = "_status = \'draft\'" }'
    path.write_text(
        path.read_text().replace(
            rule,
            rule + ', { reject = "lost_author", when = "NOT EXISTS (SELECT FROM lib_author a '
            'WHERE a.id = _author_id)" }',
        )
    )
    ruled = load_spec(path)
    with session(target, plain) as conn:
        assert reads(conn, plain, plain.model("books")).sources == {"lib_book"}
        assert reads(conn, ruled, ruled.model("books")).sources == {"lib_book", "lib_author"}
        assert reads(conn, plain, plain.model("loans")).sources == {"loans.csv"}


def test_dependents_compares_integer_keys_as_integers_with_the_same_rows(
    library: tuple[str, str, Path],
) -> None:
    """Keys of an integer column are compared as integers, where the column's statistics
    hold (``dependents``); the rows found are those the text comparison finds, and keys that
    do not read as integers fall back to it rather than fail a cast."""
    source, target, tmp = library
    spec = load_spec(_spec(tmp, "delete"))
    migrate(source, target, spec)
    books = spec.model("books")
    with session(target, spec) as conn:
        types = reads(conn, spec, books).types
        assert types is not None and types["_author_id"] == 23  # integer
        with psycopg.connect(source) as src:
            authors = [str(r[0]) for r in src.execute("SELECT DISTINCT author_id FROM lib_book")]
        for keys in (authors[:2], authors, [*authors[:1], "x", " 1", "99999999999999999999"]):
            as_text = dependents(conn, spec, books, ["_author_id"], keys)
            assert as_text
            assert dependents(conn, spec, books, ["_author_id"], keys, types) == as_text


def _dies_at(monkeypatch: pytest.MonkeyPatch, module: ModuleType, dies_at: str) -> None:
    """The run dies as it comes to model ``dies_at`` (``monkeypatch.undo()`` revives it)."""
    run_model = module.run_model

    def dying(target: str, spec: Spec, model: str, *args: object, **kwargs: object) -> object:
        if model == dies_at:
            raise RuntimeError("killed")
        return run_model(target, spec, model, *args, **kwargs)

    monkeypatch.setattr(module, "run_model", dying)


@pytest.mark.parametrize("dies_at", ["books", "loans"])
def test_a_sync_that_died_loses_nothing(
    library: tuple[str, str, Path], monkeypatch: pytest.MonkeyPatch, dies_at: str
) -> None:
    """A sync dies after re-staging: before any model, or after books changed fates and
    before their loans followed. The next sync must still bring every change in, though the
    stage already holds it and the books' new fates are no change to it."""
    source, target, tmp = library
    spec = load_spec(_spec(tmp, "delete"))
    migrate(source, target, spec)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("UPDATE lib_book SET title = 'Changed in legacy' WHERE id = 17")
        conn.execute("UPDATE lib_book SET status = 'draft' WHERE id = 10")  # loan L-1's book
    csv = tmp / "loans.csv"
    csv.write_text(csv.read_text().replace("L-2,11,m2", "L-2,11,m22"))
    _dies_at(monkeypatch, ferry.engine.settle, dies_at)
    with pytest.raises(RuntimeError):
        sync(source, target, spec)
    monkeypatch.undo()
    with psycopg.connect(target) as conn:
        # The staging record committed with the rows it describes: the dead sync's.
        staged = conn.execute(
            "SELECT s.run_id = (SELECT max(run_id) FROM ferry.runs WHERE kind = 'sync') "
            "FROM ferry.staged s WHERE s.source = 'lib_book'"
        ).fetchone()
    assert staged == (True,)
    again = sync(source, target, spec)
    assert again.counts["resynced"] > 0
    with psycopg.connect(target) as conn:
        title = conn.execute("SELECT title FROM books WHERE legacy_book_id = 17").fetchone()
        member = conn.execute("SELECT member FROM loans WHERE legacy_loan_id = 'L-2'").fetchone()
        fates = conn.execute(
            "SELECT model, source_key, status, reason FROM ferry.ledger "
            "WHERE (model, source_key) IN (('books', '10'), ('loans', 'L-1')) ORDER BY 1"
        ).fetchall()
        left = conn.execute("SELECT count(*) FROM ferry.resync").fetchone()
    assert (title, member) == (("Changed in legacy",), ("m22",))
    assert fates == [
        ("books", "10", "excluded", "draft"),
        ("loans", "L-1", "excluded", "parent_excluded"),
    ]
    assert left == (0,)
    report = verify(target, spec)
    assert report.ok, report.summary()


def test_no_sync_after_a_migrate_that_died(
    library: tuple[str, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage then holds every source row and the ledger some: a diff would find nothing
    to do, and the rows the migrate never reached would stay missing."""
    source, target, tmp = library
    spec = load_spec(_spec(tmp, "delete"))
    _dies_at(monkeypatch, ferry.engine.pipeline, "loans")
    with pytest.raises(RuntimeError):
        migrate(source, target, spec)
    monkeypatch.undo()
    with pytest.raises(FerryError, match=r"the last migrate \(run 1\) did not finish"):
        sync(source, target, spec)
    migrate(source, target, spec)
    sync(source, target, spec)
    with psycopg.connect(target) as conn:
        fates = conn.execute("SELECT count(*) FROM ferry.ledger WHERE model = 'loans'").fetchone()
    assert fates == (4,)  # every row of loans.csv
    report = verify(target, spec)
    assert report.ok, report.summary()


def test_orphan_resolved_when_parent_arrives(library: tuple[str, str, Path]) -> None:
    source, target, tmp = library
    spec = load_spec(_spec(tmp, "delete"))
    migrate(source, target, spec)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("INSERT INTO lib_author (id, name, country) VALUES (99, 'Late', 'UK')")
    result = sync(source, target, spec)
    assert result.counts["fixed_on_retry"] == 1
    with psycopg.connect(target) as conn:
        assert conn.execute(
            "SELECT status FROM ferry.ledger WHERE model = 'books' AND source_key = '14'"
        ).fetchone() == ("migrated",)


def test_row_referenced_by_the_application_is_not_deleted(
    library: tuple[str, str, Path],
) -> None:
    """Kept, flagged, while the application's row references it; deleted by the first sync
    after the application deletes its row, with nothing changed in the source."""
    source, target, tmp = library
    spec = load_spec(_spec(tmp, "delete"))
    migrate(source, target, spec)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO loans (id, legacy_loan_id, book_id, member) SELECT "
            "'00000000-0000-4000-8000-0000000000aa', NULL, id, 'app member' FROM books "
            "WHERE legacy_book_id = 17"
        )
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("DELETE FROM lib_book WHERE id = 17")
    result = sync(source, target, spec)
    assert result.counts["deleted"] == 0
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM books WHERE legacy_book_id = 17").fetchone() == (
            1,
        )
        assert conn.execute("SELECT member FROM loans WHERE legacy_loan_id IS NULL").fetchall() == [
            ("app member",)
        ]
        assert conn.execute(
            "SELECT status, conflict FROM ferry.ledger WHERE model = 'books' AND source_key = '17'"
        ).fetchone() == ("deleted", True)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("DELETE FROM loans WHERE legacy_loan_id IS NULL")
    assert sync(source, target, spec).counts["deleted"] == 1
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM books WHERE legacy_book_id = 17").fetchone() == (
            0,
        )
        assert conn.execute(
            "SELECT status, conflict FROM ferry.ledger WHERE model = 'books' AND source_key = '17'"
        ).fetchone() == ("deleted", False)


def test_ferry_schemas_are_closed_to_the_api_roles(synced: dict, cluster: LocalCluster) -> None:
    admin = cluster.conninfo("sync_target")
    for role in ("anon", "authenticated"):
        for table in (
            "ferry.ledger", "ferry.ledger_profiles", "ferry.runs", "ferry.history",
            "ferry_stage.auth_user",
        ):  # fmt: skip
            with psycopg.connect(admin) as conn:
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(table)))


def test_a_sync_proves_its_keys_one_by_one_and_a_full_sync_counts(
    library: tuple[str, str, Path],
) -> None:
    """After a run that ended well, a sync proves the keys it touched one by one (each
    staged with one live fate, or not staged with none) instead of counting whole tables,
    whose cost grows with the database; ``sync --full`` counts them."""
    source, target, tmp = library
    spec = load_spec(_spec(tmp, "delete"))
    migrate(source, target, spec)
    stale = (
        "INSERT INTO ferry.ledger (model, source_key, source_table, accounts, status, "
        "target_table, run_id, first_run_id) VALUES "
        "('books', '999', 'lib_book', true, 'excluded', 'public.books', 1, 1)"
    )
    with psycopg.connect(target) as conn:
        scope: dict = {"lib_book": ["17", "999"]}
        assert ledger.discrepancies(conn, spec, scope, counted=())[1] == {}
        # a fate lost, a fate of a key not staged: named key by key, nothing counted
        conn.execute("DELETE FROM ferry.ledger WHERE model = 'books' AND source_key = '17'")
        conn.execute(stale)
        counts, bad = ledger.discrepancies(conn, spec, scope, counted=())
        assert counts == {}
        assert (bad["lib_book"].unclaimed, bad["lib_book"].stale) == (["17"], ["999"])
        conn.rollback()
        # keys outside the scope are not read: the counts are what find them
        conn.execute(stale)
        assert ledger.discrepancies(conn, spec, {"lib_book": ["10"]}, counted=())[1] == {}
        assert ledger.discrepancies(conn, spec, {"lib_book": ["10"]})[1] != {}
        conn.rollback()
        conn.execute(stale)
        conn.commit()
    # A sync that does not touch 999 does not read it; a full one counts, finds and settles it.
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("UPDATE lib_book SET title = 'Changed' WHERE id = 17")
    assert "reconciled" not in sync(source, target, spec).counts
    assert sync(source, target, spec, full=True).counts["reconciled"] >= 1
    with psycopg.connect(target) as conn:
        fate = conn.execute(
            "SELECT status FROM ferry.ledger WHERE model = 'books' AND source_key = '999'"
        ).fetchone()
    assert fate == ("deleted",)
    assert verify(target, spec).ok


def test_a_csv_file_the_stage_holds_is_not_read_into_the_database(
    library: tuple[str, str, Path],
) -> None:
    """A sync loads a CSV source's file and compares it with the stage only when the file is
    not the one the stage holds (its SHA-256, recorded with the stage's rows): a no-op sync
    costs a read of the file, not a load, an index and two scans of its rows. A file written
    again with the same rows, a changed row, a stage a crash emptied and ``--full`` are
    compared as before."""
    source, target, tmp = library
    spec = load_spec(_spec(tmp, "delete"))
    migrate(source, target, spec)
    csv = tmp / "loans.csv"

    def compared() -> tuple[int, list]:
        d = sync(source, target, spec).diffs["loans.csv"]
        return d.buckets_compared, [*d.inserted, *d.updated, *d.deleted]

    assert compared() == (0, [])
    header, *rows = csv.read_text().splitlines()
    csv.write_text("\n".join([header, *reversed(rows)]) + "\n")  # the same rows
    seen, changed = compared()
    assert seen > 0 and changed == []
    assert compared() == (0, [])  # the new file is the one the stage holds
    csv.write_text(csv.read_text().replace("L-2,11,m2", "L-2,11,m22"))
    seen, changed = compared()
    assert seen > 0 and changed == [("L-2",)]
    with psycopg.connect(target) as conn:
        member = conn.execute("SELECT member FROM loans WHERE legacy_loan_id = 'L-2'").fetchone()
        stage = sql.Identifier("ferry_stage", spec.source("loans.csv").stage_table)
        conn.execute(sql.SQL("TRUNCATE {}").format(stage))  # as crash recovery empties it
    assert member == ("m22",)
    seen, changed = compared()
    assert seen > 0
    d = sync(source, target, spec, full=True).diffs["loans.csv"]
    assert d.buckets_compared > 0 and not d.changed
    assert compared() == (0, [])
    report = verify(target, spec)
    assert report.ok, report.summary()


def test_a_csv_source_given_other_columns_is_staged_again(
    library: tuple[str, str, Path],
) -> None:
    """A header renamed, in the file and the spec: the stage kept the old column names,
    and the edited model's SQL failed on them."""
    source, target, tmp = library
    path = _spec(tmp, "delete")
    migrate(source, target, load_spec(path))
    csv = tmp / "loans.csv"
    csv.write_text(csv.read_text().replace("book_id,member", "book_id,borrower"))
    path.write_text(
        path.read_text()
        .replace('"book_id", "member"]', '"book_id", "borrower"]')
        .replace("l.member,", "l.borrower AS member,")
    )
    spec = load_spec(path)
    result = sync(source, target, spec)
    assert result.counts["restaged"] == ["loans.csv"]
    assert result.counts["redefined"] == ["loans"]
    report = verify(target, spec)
    assert report.ok, report.summary()
    with psycopg.connect(target) as conn:
        member = conn.execute("SELECT member FROM loans WHERE legacy_loan_id = 'L-2'").fetchone()
    assert member == ("m2",)
