"""``ferry status``: the run history and the ledger at a glance, and ``--check`` as an exit
code for cron: the library world, with run records aged or failed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from ferry import ledger
from ferry.cli import app
from ferry.embedded import LocalCluster
from ferry.engine.pipeline import migrate
from ferry.ops import status
from ferry.spec import load_spec
from ferry.sync import watch
from ferry.sync.loop import sync
from tests.helpers import fresh_db

LIB = Path(__file__).parent / "specs" / "library"


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("45", 45),
     ("1.5m", 90), (" 10 m ", 600)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert status.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "15x", "abc", "-5m", "1h 30"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(status.StatusError, match="not a duration"):
        status.parse_duration(text)


def test_status_and_check(cluster: LocalCluster, tmp_path: Path) -> None:
    source = fresh_db(cluster, "st_lib_src", LIB / "source.sql")
    fresh_db(cluster, "st_lib_tgt", LIB / "target.sql", owner="lib_owner")
    for name in ("spec.toml", "books.sql", "loans.csv"):
        (tmp_path / name).write_text((LIB / name).read_text())
    target = cluster.conninfo("st_lib_tgt", user="lib_owner")
    common = ["--spec", str(tmp_path / "spec.toml"), "--target", target]
    code, _, err = cli("status", *common)
    assert code == 2 and "no ledger" in err

    spec = load_spec(tmp_path / "spec.toml")
    migrate(source, target, spec)
    # Only a migrate so far: it brought the target in step, so the check passes.
    code, _, err = cli("status", "--check", *common)
    assert code == 0, err
    synced = sync(source, target, spec)

    code, out, err = cli("status", "--check", "--max-age", "15m", *common)
    assert code == 0 and "check ok" in err
    assert "last sync" in out and "orphan_author" in out and "open conflicts" in out
    code, out, _ = cli("status", "--json", *common)
    data = json.loads(out)
    assert data["last_sync"]["run_id"] == synced.run_id and data["last_sync"]["status"] == "ok"
    assert data["last_migrate"]["kind"] == "migrate"
    assert data["seconds_since_last_successful_sync"] < 60
    assert data["ledger_rows"] == {"excluded": 2, "merged": 1, "migrated": 8, "quarantined": 6}
    assert data["conflicts"] == 0
    assert {"model": "books", "reason": "orphan_author", "rows": 1} in data["quarantined"]

    def runs(query: str) -> None:
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute(query, [synced.run_id])

    # The last sync finished an hour ago (and the migrate before it, earlier still).
    runs(
        "UPDATE ferry.runs SET started_at = started_at - interval '61 minutes', "
        "finished_at = finished_at - interval '61 minutes' WHERE run_id <= %s"
    )
    code, out, err = cli("status", "--check", "--max-age", "15m", "--json", *common)
    assert code == 1 and "ago, more than 15 min" in err
    assert json.loads(out)["check"]["ok"] is False
    code, _, err = cli("status", "--check", "--max-age", "2h", *common)
    assert code == 0, err
    # The last sync failed: the check fails whatever its age.
    runs(
        "UPDATE ferry.runs SET status = 'failed', error = 'source lib_book: boom' WHERE run_id = %s"
    )
    code, _, err = cli("status", "--check", "--max-age", "2h", *common)
    assert code == 1 and f"the last sync (run {synced.run_id}) failed" in err
    # A new successful sync clears it.
    sync(source, target, spec)
    code, _, err = cli("status", "--check", *common)
    assert code == 0, err
    code, _, err = cli("status", "--check", "--max-age", "soon", *common)
    assert code == 2 and "not a duration" in err


def test_a_first_load_written_aside_counts_as_it_goes_and_never_twice(
    cluster: LocalCluster,
) -> None:
    """``books`` put back into the state of a first load still running: its partition aside,
    without its key, recorded in ``loads_aside``."""
    source = fresh_db(cluster, "st_aside_src", LIB / "source.sql")
    fresh_db(cluster, "st_aside_tgt", LIB / "target.sql", owner="lib_owner")
    target = cluster.conninfo("st_aside_tgt", user="lib_owner")
    spec = load_spec(LIB / "spec.toml")
    migrate(source, target, spec)
    attached = status.collect(target, spec)
    assert sum(attached.ledger_rows.values()) == 17
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("ALTER TABLE ferry.ledger DETACH PARTITION ferry.ledger_books")
        conn.execute("ALTER TABLE ferry.ledger_books DROP CONSTRAINT ledger_books_pkey")
        conn.execute("INSERT INTO ferry.loads_aside (model, run_id) VALUES ('books', 1)")
    aside = status.collect(target, spec)
    assert (aside.ledger_rows, aside.quarantined) == (attached.ledger_rows, attached.quarantined)
    metrics = watch.Metrics()
    watch.refresh(metrics, target, spec)
    assert metrics.ledger_rows == attached.ledger_rows

    # A role granted the ledger by hand reads no row of it: RLS on ferry's tables, which a
    # ferry session (row_security off) meets as an error rather than as an empty ledger
    # (the next run that writes revokes the grant too; see privileges.py).
    with psycopg.connect(cluster.conninfo("st_aside_tgt"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'st_monitor'").fetchone():
            conn.execute("CREATE ROLE st_monitor LOGIN")
        conn.execute("GRANT USAGE ON SCHEMA ferry TO st_monitor")
        tables = "ferry.runs, ferry.ledger, ferry.loads_aside, ferry.resync"
        conn.execute(f"GRANT SELECT ON {tables} TO st_monitor")
    with pytest.raises(psycopg.Error, match="row-level security"):
        status.collect(cluster.conninfo("st_aside_tgt", user="st_monitor"), spec)

    # Being attached (its key built under an exclusive lock): left out, not waited for.
    with psycopg.connect(target) as attaching:
        attaching.execute("LOCK TABLE ferry.ledger_books IN ACCESS EXCLUSIVE MODE")
        busy = status.collect(target, spec)
        assert sum(busy.ledger_rows.values()) == 17 - 8  # the 8 rows of books, not yet shown
        attaching.rollback()
    with psycopg.connect(target) as conn:
        ledger.attach_leftovers(conn, spec)
    assert status.collect(target, spec).ledger_rows == attached.ledger_rows
