"""--defer-constraints: foreign keys dropped for a first load come back, validated."""

from __future__ import annotations

from pathlib import Path

import psycopg

from ferry import constraints, ledger
from ferry.embedded import LocalCluster
from ferry.pipeline import migrate
from ferry.spec import load_spec
from tests.helpers import table_checksum
from tests.test_crash import TABLES, _spec, _world

FKS = (
    "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated "
    "FROM pg_constraint WHERE contype = 'f' ORDER BY 1, 2"
)


def test_deferred_load_equals_checked_load(cluster: LocalCluster, tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path))
    src_a, tgt_a = _world(cluster, "fk_checked")
    src_b, tgt_b = _world(cluster, "fk_deferred")
    with psycopg.connect(tgt_b) as conn:
        before = conn.execute(FKS).fetchall()
    migrate(src_a, tgt_a, spec)
    migrate(src_b, tgt_b, spec, defer_constraints=True)
    assert {t: table_checksum(tgt_b, t) for t in TABLES} == {
        t: table_checksum(tgt_a, t) for t in TABLES
    }
    with psycopg.connect(tgt_b) as conn:
        # Every key is back, with its definition, and validated.
        assert conn.execute(FKS).fetchall() == before
        assert conn.execute("SELECT count(*) FROM ferry.suspended_constraints").fetchone() == (0,)


def test_a_crash_while_deferred_is_repaired_by_the_next_run(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    spec = load_spec(_spec(tmp_path))
    source, target = _world(cluster, "fk_crash")
    with psycopg.connect(target) as conn:
        before = conn.execute(FKS).fetchall()
        ledger.ensure_schema(conn, spec)
        # As if a run had dropped them and died.
        assert constraints.suspend(conn, spec, "public.books", run_id=0) == 1
        assert len(conn.execute(FKS).fetchall()) == len(before) - 1
    migrate(source, target, spec)
    with psycopg.connect(target) as conn:
        assert conn.execute(FKS).fetchall() == before
