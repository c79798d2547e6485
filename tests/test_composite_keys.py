"""Composite keys: sources keyed by several columns (a table and a CSV), children naming a
parent by several columns, through migrate, a delta, sync, verify, a second migrate, and a
fresh migrate of the current source to compare with."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ferry.embedded import LocalCluster
from ferry.engine.keys import composite_text, key_uuid
from ferry.engine.pipeline import migrate
from ferry.ops.verify import verify
from ferry.spec import Spec, load_spec
from ferry.sync.loop import sync
from tests.helpers import fresh_db

SPEC_DIR = Path(__file__).parent / "specs" / "shop"
OWNER = "shop_owner"


def fates(target: str) -> dict[tuple[str, str], tuple[str, str | None]]:
    with psycopg.connect(target) as conn:
        rows = conn.execute(
            "SELECT model, source_key, status, reason FROM ferry.ledger WHERE status <> 'deleted'"
        ).fetchall()
    return {(m, k): (s, r) for m, k, s, r in rows}


def rows(target: str) -> set[tuple]:
    with psycopg.connect(target) as conn:
        return {
            *conn.execute("SELECT 'line', id::text, order_id::text, sku, qty FROM lines"),
            *conn.execute("SELECT 'note', id::text, line_id::text, body, 0 FROM notes"),
            *conn.execute("SELECT 'return', id::text, line_id::text, reason, 0 FROM returns"),
        }


class World:
    def __init__(self, cluster: LocalCluster, tmp: Path) -> None:
        self.cluster, self.data = cluster, tmp
        for name in ("spec.toml",):
            (tmp / name).write_text((SPEC_DIR / name).read_text())
        self.csv("order_id,line_no,reason\n1,1,broken\n7,7,lost\n")
        self.spec: Spec = load_spec(tmp / "spec.toml")
        self.source = fresh_db(cluster, "shop_src", SPEC_DIR / "source.sql")
        fresh_db(cluster, "shop_tgt", SPEC_DIR / "target.sql", owner=OWNER)
        self.target = cluster.conninfo("shop_tgt", user=OWNER)

    def csv(self, text: str) -> None:
        (self.data / "returns.csv").write_text(text)

    def assert_converged(self) -> None:
        report = verify(self.target, self.spec)
        assert report.ok, report.summary()
        fresh_db(self.cluster, "shop_fresh", SPEC_DIR / "target.sql", owner=OWNER)
        fresh = self.cluster.conninfo("shop_fresh", user=OWNER)
        migrate(self.source, fresh, self.spec)
        assert fates(self.target) == fates(fresh)
        assert rows(self.target) == rows(fresh)


@pytest.fixture()
def world(cluster: LocalCluster, tmp_path: Path) -> World:
    return World(cluster, tmp_path)


def test_the_key_text_is_the_same_in_python_and_sql(cluster: LocalCluster) -> None:
    values = [(1, "a b"), (1, 'q"t'), (2, ""), (3, "x,y"), (4, "back\\slash"), (5, None)]
    dsn = fresh_db(cluster, "shop_keys")
    with psycopg.connect(dsn) as conn:
        for a, b in values:
            row = conn.execute("SELECT ROW(%s::int, %s::text)::text", [a, b]).fetchone()
            assert row == (composite_text([a, b]),), (a, b)


def test_composite_keys_end_to_end(world: World) -> None:
    migrate(world.source, world.target, world.spec)
    got = fates(world.target)
    assert got[("lines", "(1,1)")] == ("migrated", None)
    assert got[("lines", "(3,1)")] == ("quarantined", "orphan_orders")
    assert got[("lines", "(2,2)")] == ("quarantined", "check_violation")
    assert got[("notes", '(1,1,"a b")')] == ("migrated", None)
    assert got[("notes", '(1,1,"q""t")')] == ("migrated", None)
    assert got[("notes", "(9,9,z)")] == ("quarantined", "orphan_line")
    assert got[("notes", '(2,2,"")')] == ("quarantined", "parent_quarantined")
    assert got[("returns", "(1,1)")] == ("migrated", None)
    assert got[("returns", "(7,7)")] == ("quarantined", "orphan_line")
    line = key_uuid(world.spec.namespace, "order_line", composite_text([1, 1]))
    with psycopg.connect(world.target) as conn:
        assert conn.execute("SELECT count(*) FROM notes WHERE line_id = %s", [line]).fetchone() == (
            2,
        )
    world.assert_converged()
    with psycopg.connect(world.source, autocommit=True) as conn:
        conn.execute("DELETE FROM order_line WHERE (order_id, line_no) = (1, 2)")
        conn.execute("UPDATE order_line SET qty = 5 WHERE (order_id, line_no) = (2, 2)")
        conn.execute("INSERT INTO shop_order VALUES (3, 'Cy')")
        conn.execute("INSERT INTO line_note VALUES (3, 1, 'new', 'under a line now whole')")
    world.csv("order_id,line_no,reason\n1,1,broken twice\n2,2,late\n")
    sync(world.source, world.target, world.spec)
    got = fates(world.target)
    assert got[("notes", '(1,2,"x,y")')] == ("quarantined", "orphan_line")
    assert got[("lines", "(2,2)")] == got[("notes", '(2,2,"")')] == ("migrated", None)
    assert got[("lines", "(3,1)")] == got[("notes", "(3,1,new)")] == ("migrated", None)
    assert got[("returns", "(2,2)")] == ("migrated", None)
    assert ("returns", "(7,7)") not in got
    world.assert_converged()
    assert sum(m.written for m in migrate(world.source, world.target, world.spec).models) == 0
