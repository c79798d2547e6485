"""Rollback against real PostgreSQL: the demo world migrated and synced, undone run by run
and as a whole (checksums of every public table), and the library world for the rows a
rollback must not touch."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from ferry import ledger
from ferry.cli import app
from ferry.demo import world
from ferry.demo.run import MIGRATOR, dispatch_spec
from ferry.embedded import LocalCluster
from ferry.engine.pipeline import migrate
from ferry.ops import quarantine, report, rollback, status
from ferry.ops.verify import verify
from ferry.spec import load_spec
from ferry.sync.loop import sync
from tests.helpers import fresh_db, table_checksum

SCALE = 0.01
LIB = Path(__file__).parent / "specs" / "library"


def checksums(conninfo: str) -> dict[str, tuple[int, str]]:
    with psycopg.connect(conninfo) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT 'public.' || tablename FROM pg_tables WHERE schemaname = 'public' "
                "ORDER BY 1"
            )
        ]
    return {t: table_checksum(conninfo, t) for t in tables}


def ledger_image(conninfo: str) -> list[tuple]:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(
            "SELECT l::text FROM ferry.ledger l ORDER BY model, source_key"
        ).fetchall()


def scalar(conninfo: str, query: str, params: list | None = None) -> object:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture(scope="module")
def demo(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Generate, checksum, migrate, apply the delta, sync: each state's checksums kept."""
    workdir = tmp_path_factory.mktemp("rollback_world")
    source = cluster.create_database("rb_legacy", drop=True)
    admin = cluster.create_database("rb_target", drop=True)
    world.generate(source, admin, workdir, scale=SCALE, seed=11)
    target = cluster.conninfo("rb_target", user=MIGRATOR)
    spec = dispatch_spec()
    before = checksums(target)
    first = migrate(source, target, spec, data_dir=workdir)
    after_migrate, ledger_after_migrate = checksums(target), ledger_image(target)
    world.apply_delta(source, workdir, scale=SCALE, seed=11)
    synced = sync(source, target, spec, data_dir=workdir)
    return {
        "workdir": workdir, "source": source, "target": target, "spec": spec,
        "before": before, "first": first, "after_migrate": after_migrate,
        "ledger_after_migrate": ledger_after_migrate, "synced": synced,
        "after_sync": checksums(target), "ledger_after_sync": ledger_image(target),
    }  # fmt: skip


def test_rollback_of_the_sync_then_sync_again(demo: dict) -> None:
    target, spec, sync_id = demo["target"], demo["spec"], demo["synced"].run_id
    assert demo["after_sync"] != demo["after_migrate"]
    todo = rollback.plan(target, spec, run=sync_id)
    assert [r.run_id for r in todo.runs] == [sync_id] and todo.keys > 0 and not todo.everything

    done = rollback.rollback(target, spec, run=sync_id)
    assert done.undone == [sync_id]
    assert checksums(target) == demo["after_migrate"]
    assert ledger_image(target) == demo["ledger_after_migrate"]
    assert scalar(target, "SELECT count(*) FROM ferry.history WHERE run_id = %s", [sync_id]) == 0
    run = scalar(target, "SELECT kind || ' ' || status FROM ferry.runs WHERE run_id = %s",
                 [done.run_id])  # fmt: skip
    assert run == "rollback ok"
    # The stage is still ahead of the ledger: the keys wait for the next sync, and say so.
    st = status.collect(target, spec)
    assert st.resync_pending == done.counts["keys"] > 0
    assert st.last_sync is not None and st.last_sync.rolled_back_by == done.run_id
    assert any("await" in p for p in status.check(st, 3600))

    again = sync(demo["source"], target, spec, data_dir=demo["workdir"])
    assert again.changed and again.counts["resynced"] > 0
    assert again.counts["source_inserted"] == 0  # the diff saw nothing: the resync did it
    for key in ("inserted", "updated", "deleted", "fixed_on_retry", "newly_quarantined"):
        assert again.counts[key] == demo["synced"].counts[key], key
    assert checksums(target) == demo["after_sync"]
    assert verify(target, spec, truth=demo["workdir"] / "ground_truth.csv").ok
    assert status.collect(target, spec).resync_pending == 0


def test_rollback_all_restores_the_target_as_it_was(demo: dict) -> None:
    target, spec = demo["target"], demo["spec"]
    spec_file = spec.base_dir / "spec.toml"
    refused = CliRunner().invoke(
        app, ["rollback", "--all", "--spec", str(spec_file), "--target", target], input="n\n"
    )
    assert refused.exit_code == 1, refused.output
    assert checksums(target) == demo["after_sync"]

    done = CliRunner().invoke(
        app, ["rollback", "--all", "--yes", "--spec", str(spec_file), "--target", target]
    )
    assert done.exit_code == 0, done.output
    assert "stage emptied" in done.output
    # Every public table as generated: ferry's rows gone, the application's own untouched.
    assert checksums(target) == demo["before"]
    for table in ("ledger", "history", "pending_deletes", "resync"):
        assert scalar(target, f"SELECT count(*) FROM ferry.{table}") == 0, table
    with psycopg.connect(target) as conn:
        ledger.check_invariant(conn, spec)
    # verify and the report agree: nothing staged, nothing migrated, every row target-only.
    checked = verify(target, spec)
    assert checked.ok, checked.summary()
    data = report.collect(target, spec)
    assert data["totals"]["staged"] == data["totals"]["migrated"] == 0
    assert data["totals"]["adds_up"] and data["totals"]["targets_add_up"]
    assert data["totals"]["target_only"] == data["totals"]["target_rows"] > 0
    assert data["runs"][-1]["kind"] == "rollback"
    # A fresh migrate starts over and lands where the sync had brought the target.
    migrate(demo["source"], target, spec, data_dir=demo["workdir"])
    assert checksums(target) == demo["after_sync"]


# --- the library world: what a rollback must not touch ----------------------------------


@pytest.fixture()
def library(cluster: LocalCluster, tmp_path: Path) -> tuple[str, str, Path]:
    source = fresh_db(cluster, "rb_lib_src", LIB / "source.sql")
    fresh_db(cluster, "rb_lib_tgt", LIB / "target.sql", owner="lib_owner")
    for name in ("spec.toml", "books.sql", "loans.csv"):
        (tmp_path / name).write_text((LIB / name).read_text())
    return source, cluster.conninfo("rb_lib_tgt", user="lib_owner"), tmp_path / "spec.toml"


def test_rows_the_application_edited_or_references_block_the_rollback(
    library: tuple[str, str, Path],
) -> None:
    source, target, spec_file = library
    spec = load_spec(spec_file)
    before = checksums(target)
    migrate(source, target, spec)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("UPDATE lib_book SET title = 'Changed in legacy' WHERE id = 17")
        conn.execute("INSERT INTO lib_book (id, author_id, title, status, price) "
                     "VALUES (18, 1, 'New', 'published', 1)")  # fmt: skip
    synced = sync(source, target, spec)
    assert synced.counts["inserted"] == 1 and synced.counts["updated"] == 1

    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("UPDATE books SET title = 'Edited in the app' WHERE legacy_book_id = 18")
    state, image = checksums(target), ledger_image(target)
    with pytest.raises(rollback.RollbackError, match=r"public\.books.*1 row\(s\) were edited"):
        rollback.rollback(target, spec, run=synced.run_id)
    assert checksums(target) == state and ledger_image(target) == image
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("UPDATE books SET title = 'New' WHERE legacy_book_id = 18")
        # The application's own loan of a book ferry wrote.
        conn.execute(
            "INSERT INTO loans (id, legacy_loan_id, book_id, member) SELECT gen_random_uuid(), "
            "NULL, id, 'app member' FROM books WHERE legacy_book_id = 10"
        )
    state = checksums(target)
    with pytest.raises(rollback.RollbackError, match=r"referenced by rows ferry did not write"):
        rollback.rollback(target, spec, all_=True)
    assert checksums(target) == state and ledger_image(target) == image
    failed = scalar(target, "SELECT status FROM ferry.runs ORDER BY run_id DESC LIMIT 1")
    assert failed == "failed"

    # Undoing the sync alone touches neither the application's loan nor its book.
    rollback.rollback(target, spec, run=synced.run_id)
    with psycopg.connect(target) as conn:
        assert conn.execute(
            "SELECT title FROM books WHERE legacy_book_id IN (17, 18) ORDER BY 1"
        ).fetchall() == [("Fine",)]
        assert conn.execute(
            "SELECT count(*) FROM loans WHERE legacy_loan_id IS NULL"
        ).fetchone() == (1,)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("DELETE FROM loans WHERE legacy_loan_id IS NULL")
    rollback.rollback(target, spec, all_=True)
    assert checksums(target) == before


def test_rollback_undoes_a_retry_and_an_operator_decision(library: tuple[str, str, Path]) -> None:
    source, target, spec_file = library
    spec = load_spec(spec_file)
    migrate(source, target, spec)
    after_migrate, image = checksums(target), ledger_image(target)
    quarantine.exclude(target, spec, "lib_author", "4", "no such country", by="alice")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("ALTER TABLE books DROP CONSTRAINT books_price_check")
    retried = quarantine.retry(target, spec, reason="check_violation")
    assert retried.fixed == 1
    decision_run = retried.run_id - 1
    rollback.rollback(target, spec, run=decision_run)
    with psycopg.connect(target) as conn:
        assert conn.execute(
            "SELECT status, reason, decided_by FROM ferry.ledger "
            "WHERE model = 'authors' AND source_key = '4'"
        ).fetchone() == ("quarantined", "unknown_country", None)
        assert conn.execute("SELECT count(*) FROM books WHERE legacy_book_id = 16").fetchone() == (
            0,
        )
    assert checksums(target) == after_migrate
    assert ledger_image(target) == image
