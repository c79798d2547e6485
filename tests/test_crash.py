"""SIGKILL in the middle of a model, run again: the result equals an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from ferry.embedded import LocalCluster
from ferry.engine.pipeline import migrate
from ferry.spec import load_spec
from tests.helpers import fresh_db, table_checksum

SPEC_DIR = Path(__file__).parent / "specs" / "library"
OWNER = "lib_owner"
BOOKS = 120_000
TABLES = ("public.authors", "public.books", "public.loans")

MORE_BOOKS = f"""
INSERT INTO lib_book (id, author_id, title, status, isbn, price, published)
SELECT 1000 + i, 1 + i % 5, 'Book ' || i, CASE WHEN i % 97 = 0 THEN 'draft' ELSE 'published' END,
       'gen-' || i, (i % 500) / 10.0, timestamp '2020-01-01' + i * interval '1 minute'
FROM generate_series(1, {BOOKS}) i;
"""


def _world(cluster: LocalCluster, suffix: str) -> tuple[str, str]:
    source = fresh_db(cluster, f"crash_src_{suffix}", SPEC_DIR / "source.sql")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(MORE_BOOKS)
    fresh_db(cluster, f"crash_tgt_{suffix}", SPEC_DIR / "target.sql", owner=OWNER)
    return source, cluster.conninfo(f"crash_tgt_{suffix}", user=OWNER)


def _spec(tmp: Path) -> Path:
    spec = tmp / "spec.toml"
    text = (SPEC_DIR / "spec.toml").read_text().replace("chunk_size = 3", "chunk_size = 4000")
    spec.write_text(text)
    for name in ("books.sql", "loans.csv"):
        (tmp / name).write_text((SPEC_DIR / name).read_text())
    return spec


def test_sigkill_mid_model_then_rerun_equals_clean_run(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    spec_path = _spec(tmp_path)
    spec = load_spec(spec_path)
    clean_src, clean_tgt = _world(cluster, "clean")
    migrate(clean_src, clean_tgt, spec)
    expected = {t: table_checksum(clean_tgt, t) for t in TABLES}

    source, target = _world(cluster, "killed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferry.cli", "migrate", "--spec", str(spec_path),
         "--source", source, "--target", target],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    killed_at = 0
    deadline = time.monotonic() + 120
    with psycopg.connect(target, autocommit=True) as conn:
        while time.monotonic() < deadline and proc.poll() is None:
            # The first load writes its ledger rows aside, into the partition-to-be.
            ready = conn.execute("SELECT to_regclass('ferry.ledger_books') IS NOT NULL").fetchone()
            row = (
                conn.execute("SELECT count(*) FROM ferry.ledger_books").fetchone()
                if ready == (True,)
                else (0,)
            )
            if row and row[0] >= 20_000:
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = row[0]
                break
            time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_at, "the run finished before it could be killed: make the world bigger"
    with psycopg.connect(target) as conn:
        partial = conn.execute("SELECT count(*) FROM books").fetchone()
        ledger_rows = conn.execute(
            "SELECT count(*) FROM ferry.ledger_books WHERE status = 'migrated'"
        ).fetchone()
        # Killed mid-model: target rows and ledger rows committed together, nothing more.
        assert partial == ledger_rows
        assert partial is not None and 0 < partial[0] < BOOKS
        # ... and still aside, for the next run to attach before anything else.
        assert conn.execute("SELECT model FROM ferry.loads_aside").fetchall() == [("books",)]

    migrate(source, target, spec)
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM ferry.loads_aside").fetchone() == (0,)
    assert {t: table_checksum(target, t) for t in TABLES} == expected
    with psycopg.connect(target) as conn:
        dup = conn.execute("SELECT count(*) - count(DISTINCT legacy_book_id) FROM books").fetchone()
        assert dup == (0,)
        runs = conn.execute("SELECT status, error FROM ferry.runs ORDER BY run_id").fetchall()
        # The killed run never recorded its end; the next run, holding the lock, marks it.
        assert [r[0] for r in runs] == ["failed", "ok"]
        assert runs[0][1].startswith("interrupted")
