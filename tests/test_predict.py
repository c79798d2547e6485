"""What the target would refuse, predicted in the chunk's query (``ferry.engine.predict``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ferry.embedded import LocalCluster
from ferry.engine.query import Plan
from tests.test_convergence_cases import World

ITEMS = 120


@pytest.fixture
def world(cluster: LocalCluster, tmp_path: Path) -> World:
    return World(cluster, tmp_path)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def test_the_rows_holding_wanted_values_are_found_in_one_pass_over_the_ledger(
    world: World,
) -> None:
    """Every item wants the sku the next one holds (each value held by a row of ferry's):
    which of ferry's rows holds each is one pass over the model's ledger, not one per row.
    Asked row by row, the cost grew with the ledger times the rows wanting held values
    (50 such rows of the demo's profiles at SF=5 took 138 ms of a 0.4 s sync)."""
    world.src(
        "INSERT INTO src_group VALUES (1, 'g')",
        f"INSERT INTO src_item SELECT i, 1, 's' || i, '1', 'ok' FROM generate_series(1, {ITEMS}) i",
    )
    world.migrate()
    with psycopg.connect(world.target) as conn:
        # The stage as the next sync would make it: item i wants item i+1's sku.
        conn.execute(f"UPDATE ferry_stage.src_item SET sku = 's' || (id % {ITEMS} + 1)")
        conn.execute("SET search_path = ferry_stage, pg_catalog")
        plan = Plan(conn, world.spec, world.spec.model("items"))
        # The first half: each wants a value that a row of the half holds, but the last,
        # whose value the first row of the other half holds.
        query = plan.expected(sql.SQL("m0._key <= {}").format(ITEMS // 2), numbered=False)
        (explained,) = conn.execute(
            sql.SQL(
                "EXPLAIN (ANALYZE, FORMAT JSON) SELECT _ferry_status, _ferry_holder FROM ({}) e"
            ).format(query)
        ).fetchone()
        rows = conn.execute(
            sql.SQL(
                "SELECT _ferry_status, count(*), count(_ferry_holder) FROM ({}) e GROUP BY 1"
            ).format(query)
        ).fetchall()
        conn.execute("UPDATE ferry_stage.src_item SET sku = 's' || id")  # as it was
        conn.commit()
    scans = [
        n for n in _nodes(explained[0]["Plan"]) if n.get("Relation Name", "").startswith("ledger")
    ]
    assert scans, "the holders are looked up in the ledger"
    assert max(n["Actual Loops"] for n in scans) == 1, [n["Actual Loops"] for n in scans]
    # Each waits for a later key of ferry's to give its value up (refused, had its holder
    # not been found), and names it.
    assert rows == [("blocked", ITEMS // 2, ITEMS // 2)]
    world.src(f"UPDATE src_item SET sku = 's' || (id % {ITEMS} + 1)")
    # The values go round: each waits on the next in every pass, unless they give them up.
    world.sync()  # as a fresh migrate of the source: each item has the next one's sku
    with psycopg.connect(world.target) as conn:
        skus = conn.execute(
            "SELECT legacy_item_id, sku FROM items ORDER BY legacy_item_id"
        ).fetchall()
    assert skus == [(i, f"s{i % ITEMS + 1}") for i in range(1, ITEMS + 1)]
    world.assert_converged()
