"""The run record: every run closes as ok or failed, and a failure never quotes a row."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ferry import ledger
from ferry.embedded import LocalCluster
from ferry.errors import FerryError
from ferry.spec import load_spec
from tests.helpers import fresh_db

SPEC = Path(__file__).parent / "specs" / "library" / "spec.toml"
RUNS = "SELECT kind, status, counts, error FROM ferry.runs ORDER BY run_id"


def test_a_run_closes_ok_with_its_counts_or_failed_without_row_contents(
    cluster: LocalCluster,
) -> None:
    spec = load_spec(SPEC)
    target = fresh_db(cluster, "ledger_runs")
    with psycopg.connect(target) as conn:
        ledger.ensure_schema(conn, spec)
        conn.commit()
        with ledger.recorded(conn, spec, "sync") as (run_id, counts):
            counts["rows"] = 3
        with pytest.raises(FerryError), ledger.recorded(conn, spec, "retry"):
            raise FerryError("source lib_book: 2 keys without a fate")
        # A database error's message can quote the row it refused: only its class is kept.
        with pytest.raises(psycopg.errors.UniqueViolation), ledger.recorded(conn, spec, "retry"):
            conn.execute("CREATE TEMP TABLE t (email text UNIQUE)")
            conn.execute("INSERT INTO t VALUES ('patient@example.org'), ('patient@example.org')")
        assert conn.execute(RUNS).fetchall() == [
            ("sync", "ok", {"rows": 3}, None),
            ("retry", "failed", {}, "source lib_book: 2 keys without a fate"),
            ("retry", "failed", {}, "UniqueViolation"),
        ]
        assert run_id == conn.execute("SELECT min(run_id) FROM ferry.runs").fetchone()[0]
