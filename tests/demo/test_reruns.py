"""Runs again on the demo world after the legacy database changed under them: what an
operator meets when a migrate is re-run an hour after it crashed, or a sync follows a
server crash. Each ends equal to what the current source yields, with the ground truth."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ferry.demo import world
from ferry.demo.run import MIGRATOR, dispatch_spec
from ferry.embedded import LocalCluster
from ferry.engine.pipeline import migrate
from ferry.ops.verify import verify
from ferry.sync.loop import sync

SCALE = 0.02


@pytest.fixture
def demo(cluster: LocalCluster, tmp_path: Path) -> tuple[str, str, Path]:
    source = cluster.create_database("rerun_legacy", drop=True)
    admin = cluster.create_database("rerun_target", drop=True)
    world.generate(source, admin, tmp_path, scale=SCALE, seed=11)
    return source, cluster.conninfo("rerun_target", user=MIGRATOR), tmp_path


def _fate(target: str, table: str, key: str) -> tuple[str, str | None] | None:
    with psycopg.connect(target) as conn:
        row = conn.execute(
            "SELECT status, reason FROM ferry.ledger WHERE source_table = %s AND source_key = %s",
            [table, key],
        ).fetchone()
    return None if row is None else (row[0], row[1])


def test_a_source_row_deleted_between_two_migrates(demo: tuple[str, str, Path]) -> None:
    """Issue case 1: the second migrate used to fail the invariant (staged 73 but accounted
    74) on every run from then on, and sync refused to follow it."""
    source, target, data = demo
    spec = dispatch_spec()
    migrate(source, target, spec, data_dir=data)
    with psycopg.connect(source, autocommit=True) as conn:
        row = conn.execute(
            "DELETE FROM dispatch_operation WHERE id = (SELECT min(id) FROM dispatch_operation) "
            "RETURNING id"
        ).fetchone()
    assert row is not None
    gone = str(row[0])
    again = migrate(source, target, spec, data_dir=data)
    assert again.counts["dispatch_operation"].staged == again.counts["dispatch_operation"].accounted
    assert _fate(target, "dispatch_operation", gone) == ("deleted", "source_deleted")
    report = verify(target, spec, truth=data / "ground_truth.csv")
    assert report.ok, report.summary()
    # The next migrate and sync find nothing left to do.
    assert sum(m.written for m in migrate(source, target, spec, data_dir=data).models) == 0
    assert sync(source, target, spec, data_dir=data).counts["deleted"] == 0


def test_a_sync_after_a_crash_emptied_the_stage(demo: tuple[str, str, Path]) -> None:
    """Issue case 4: crash recovery empties ferry's unlogged stage; rows deleted from the
    source meanwhile used to stay migrated, and every sync failed the invariant."""
    source, target, data = demo
    spec = dispatch_spec()
    migrate(source, target, spec, data_dir=data)
    with psycopg.connect(target, autocommit=True) as conn:
        for (table,) in conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
            "WHERE schemaname = 'ferry_stage'"
        ).fetchall():
            conn.execute(f"TRUNCATE {table}")  # what crash recovery does to unlogged tables
    emptied = verify(target, spec)  # says so once per source, not per key
    assert {p.kind for p in emptied.problems} == {"stage"}, emptied.summary()
    # every source, lookups too: the staging record says they held rows
    assert len(emptied.problems) == len(spec.sources)
    with psycopg.connect(source, autocommit=True) as conn:
        files = conn.execute(
            "DELETE FROM dispatch_file WHERE id IN (SELECT id FROM dispatch_file ORDER BY id "
            "LIMIT 2) RETURNING id::text"
        ).fetchall()
    result = sync(source, target, spec, data_dir=data)
    assert "dispatch_file" in result.counts["stage_emptied"]
    for (key,) in files:
        assert _fate(target, "dispatch_file", key) == ("deleted", "source_deleted")
    report = verify(target, spec, truth=data / "ground_truth.csv")
    assert report.ok, report.summary()
    assert not sync(source, target, spec, data_dir=data).changed
