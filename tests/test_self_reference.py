"""A model that is its own parent (staff -> manager): the fate cascade within the model, the
target's foreign key at every commit, and a sync that re-parents rows, each ending where one
fresh migrate of the current source does."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ferry.embedded import LocalCluster
from ferry.engine.pipeline import migrate
from ferry.ops.verify import verify
from ferry.spec import Spec, load_spec
from ferry.sync.loop import sync
from tests.helpers import fresh_db

SPEC_DIR = Path(__file__).parent / "specs" / "staff"
OWNER = "staff_owner"

FATES = {
    "1": ("migrated", None),
    "2": ("migrated", None),
    "3": ("migrated", None),
    "4": ("quarantined", "orphan_manager"),
    "5": ("quarantined", "parent_quarantined"),
    "6": ("quarantined", "parent_quarantined"),
    "7": ("migrated", None),
    "8": ("excluded", "left"),
    "9": ("excluded", "parent_excluded"),
    "10": ("quarantined", "no_name"),
    "11": ("quarantined", "parent_quarantined"),
    "12": ("migrated", None),
}


def fates(target: str) -> dict[str, tuple[str, str | None]]:
    with psycopg.connect(target) as conn:
        rows = conn.execute(
            "SELECT source_key, status, reason FROM ferry.ledger WHERE status <> 'deleted'"
        ).fetchall()
    return {k: (s, r) for k, s, r in rows}


def managers(target: str) -> dict[int, int | None]:
    """legacy id -> the manager's legacy id, as the target's rows say."""
    with psycopg.connect(target) as conn:
        rows = conn.execute(
            "SELECT s.legacy_staff_id, m.legacy_staff_id FROM staff s "
            "LEFT JOIN staff m ON m.id = s.manager_id"
        ).fetchall()
    return dict(rows)


class World:
    def __init__(self, cluster: LocalCluster, jobs: int) -> None:
        self.cluster, self.jobs = cluster, jobs
        self.source = fresh_db(cluster, "staff_src", SPEC_DIR / "source.sql")
        fresh_db(cluster, "staff_tgt", SPEC_DIR / "target.sql", owner=OWNER)
        self.target = cluster.conninfo("staff_tgt", user=OWNER)
        self.spec: Spec = load_spec(SPEC_DIR / "spec.toml")

    def fresh(self) -> str:
        fresh_db(self.cluster, "staff_fresh", SPEC_DIR / "target.sql", owner=OWNER)
        target = self.cluster.conninfo("staff_fresh", user=OWNER)
        migrate(self.source, target, self.spec, jobs=self.jobs)
        return target

    def assert_converged(self) -> None:
        report = verify(self.target, self.spec)
        assert report.ok, report.summary()
        fresh = self.fresh()
        assert fates(self.target) == fates(fresh)
        assert managers(self.target) == managers(fresh)


@pytest.fixture(params=[1, 2], ids=["one session", "two sessions"])
def world(cluster: LocalCluster, request: pytest.FixtureRequest) -> World:
    return World(cluster, request.param)


def test_a_model_that_is_its_own_parent(world: World) -> None:
    migrate(world.source, world.target, world.spec, jobs=world.jobs)
    assert fates(world.target) == FATES
    assert managers(world.target) == {1: None, 2: 1, 3: 2, 7: 7, 12: 3}
    world.assert_converged()


def test_a_sync_that_re_parents_rows(world: World) -> None:
    migrate(world.source, world.target, world.spec, jobs=world.jobs)
    with psycopg.connect(world.source, autocommit=True) as conn:
        conn.execute("DELETE FROM staff WHERE id = 2")  # 3 and 12 lose their chain
        conn.execute("UPDATE staff SET manager_id = 1 WHERE id = 4")  # found a manager
        conn.execute("UPDATE staff SET manager_id = 1 WHERE id = 5")  # breaks the cycle
        conn.execute("UPDATE staff SET status = 'active' WHERE id = 8")  # came back
        conn.execute("INSERT INTO staff VALUES (14, 'Ned', 13, 'active'), (13, 'Mo', 7, 'active')")
    sync(world.source, world.target, world.spec, jobs=world.jobs)
    got = fates(world.target)
    assert got["3"] == ("quarantined", "orphan_manager")
    assert got["12"] == ("quarantined", "parent_quarantined")
    assert got["4"] == got["5"] == got["6"] == got["8"] == got["9"] == ("migrated", None)
    assert got["13"] == got["14"] == ("migrated", None)
    assert managers(world.target)[14] == 13
    world.assert_converged()
