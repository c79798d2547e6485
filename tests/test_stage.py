"""Stage: COPY streams read from libpq and passed on a megabyte at a time, nothing lost."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ferry import ledger
from ferry.embedded import LocalCluster
from ferry.engine import pipeline, stage
from ferry.spec import load_spec
from tests.helpers import fresh_db, table_checksum
from tests.test_crash import _spec, _world

# About 3.4 MB in binary COPY: three full blocks and a partial one.
ROWS = 30_000
TABLE = (
    "CREATE TABLE notes (id bigint PRIMARY KEY, body text, at timestamptz);"
    "INSERT INTO notes SELECT i, repeat(md5(i::text), 1 + i % 4), "
    "timestamptz '2020-01-01' + i * interval '1 minute' FROM generate_series(1, {n}) i"
)


@pytest.fixture(scope="module")
def notes(cluster: LocalCluster) -> tuple[str, str]:
    source = fresh_db(cluster, "relay_src")
    target = fresh_db(cluster, "relay_tgt")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(TABLE.format(n=ROWS))  # type: ignore[call-overload]
    return source, target


@pytest.mark.parametrize("fmt", ["BINARY", "TEXT"])
def test_copy_out_and_relay_pass_every_byte(notes: tuple[str, str], fmt: str) -> None:
    source, target = notes
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS notes")
        conn.execute("CREATE TABLE notes (id bigint, body text, at timestamptz)")
    query = sql.SQL("COPY notes TO STDOUT (FORMAT {})").format(sql.SQL(fmt))
    sent: list[int] = []
    with psycopg.connect(source) as s, psycopg.connect(target) as t:
        expected = bytearray()
        with s.cursor().copy(query) as out:  # psycopg's own reading, row by row
            for row in out:
                expected += row
        got = b"".join(bytes(b) for b in stage.copy_out(s, query))
        assert got == expected
        cur = t.cursor()
        with cur.copy(sql.SQL("COPY notes FROM STDIN (FORMAT {})").format(sql.SQL(fmt))) as into:
            total = stage.relay(stage.copy_out(s, query), into, sent.append)
        t.commit()
        # The source session is as it was: still in its transaction, usable.
        assert s.execute("SELECT count(*) FROM notes").fetchone() == (ROWS,)
    assert cur.rowcount == ROWS
    assert total == len(expected) == sum(sent)
    assert len(sent) >= 4 and all(n >= 1 << 20 for n in sent[:-1])
    assert table_checksum(target, "public.notes") == table_checksum(source, "public.notes")


def test_copy_out_raises_the_database_error(notes: tuple[str, str]) -> None:
    source, _ = notes
    with psycopg.connect(source) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            list(stage.copy_out(conn, sql.SQL("COPY no_such_table TO STDOUT")))
        assert conn.closed


def test_a_stream_left_unfinished_closes_its_connection(notes: tuple[str, str]) -> None:
    source, _ = notes
    with psycopg.connect(source) as conn:
        blocks = stage.copy_out(conn, sql.SQL("COPY notes TO STDOUT"))
        assert len(next(blocks)) >= 1 << 20
        blocks.close()
        assert conn.closed


def test_stage_tables_are_loaded_frozen(cluster: LocalCluster, tmp_path: Path) -> None:
    """All-visible from the start, tables and CSVs alike: no page is dirtied again by the
    transform's first read, and autovacuum has nothing to do."""
    spec = load_spec(_spec(tmp_path))
    source, target = _world(cluster, "frozen")
    with psycopg.connect(target) as conn:
        ledger.ensure_schema(conn, spec)
        conn.commit()
    staged = pipeline.stage_all(source, target, spec, 1, tmp_path, 2, pipeline.Progress())
    assert {s.source for s in staged} >= {"loans.csv"} and all(s.rows > 0 for s in staged)
    with psycopg.connect(target) as conn:
        pages = conn.execute(
            "SELECT c.relname, c.relpages, c.relallvisible FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r' AND c.relpages > 0 ORDER BY 1",
            [spec.stage_schema],
        ).fetchall()
    assert len(pages) == len(staged)
    assert [(name, n) for name, n, _ in pages] == [(name, n) for name, _, n in pages]
