"""The rows the target refuses stay out of the server's log: the errors ferry can predict
(unique, not-null, check) are found by queries before the write, so PostgreSQL never
writes ``DETAIL: Failing row contains (...)`` for them, on a first migrate or a second."""

from __future__ import annotations

from pathlib import Path

import psycopg

from ferry.demo import world
from ferry.demo.run import MIGRATOR, dispatch_spec
from ferry.embedded import LocalCluster
from ferry.engine.pipeline import migrate

MARKER = "PHI-LOG-MARKER-5521"


def _fates(target: str, table: str, keys: list[str]) -> set[tuple[str, str, str]]:
    with psycopg.connect(target) as conn:
        rows = conn.execute(
            "SELECT status, reason, sqlstate FROM ferry.ledger WHERE source_table = %s "
            "AND source_key = ANY(%s)",
            [table, keys],
        ).fetchall()
    return {(r[0], r[1], r[2]) for r in rows}


def test_predicted_refusals_leave_no_row_in_the_server_log(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    source = cluster.create_database("log_legacy", drop=True)
    admin = cluster.create_database("log_target", drop=True)
    world.generate(source, admin, tmp_path, scale=0.02, seed=5)
    target = cluster.conninfo("log_target", user=MIGRATOR)
    with psycopg.connect(source, autocommit=True) as conn:
        # The planted duplicate emails (the target's unique index refuses the later one),
        # and a file whose negative size the target's CHECK refuses: each with the marker
        # in a value the server would print.
        dups = conn.execute(
            "UPDATE auth_user u SET email = %s || u.email WHERE lower(u.email) IN (SELECT "
            "lower(email) FROM auth_user GROUP BY 1 HAVING count(*) > 1) RETURNING u.id::text",
            [MARKER],
        ).fetchall()
        files = conn.execute(
            "UPDATE dispatch_file SET size = -1, name = %s WHERE id = (SELECT min(f.id) FROM "
            "dispatch_file f JOIN dispatch_instruction i ON i.id = f.instruction_id) "
            "RETURNING id::text",
            [MARKER],
        ).fetchall()
    assert len(dups) >= 2 and files
    start = cluster.logfile.stat().st_size
    migrate(source, target, dispatch_spec(), data_dir=tmp_path)
    assert ("quarantined", "unique_violation", "23505") in _fates(
        target, "auth_user", [k for (k,) in dups]
    )
    assert _fates(target, "dispatch_file", [files[0][0]]) <= {
        ("quarantined", "check_violation", "23514"),
        ("quarantined", "parent_quarantined", None),
        ("excluded", "parent_excluded", None),
    }
    migrate(source, target, dispatch_spec(), data_dir=tmp_path)
    with cluster.logfile.open("rb") as log:
        log.seek(start)
        written = log.read()
    assert MARKER.encode() not in written
