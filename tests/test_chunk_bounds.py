"""Chunk bounds from the stage's histogram when a table has more chunks than it has buckets.

Past 100 chunks (the default statistics target), integer keys are cut between the
histogram's bounds instead of numbering every key (issue 25: 7 s at the demo's SF=3).
"""

from __future__ import annotations

import psycopg

from ferry.embedded import LocalCluster
from ferry.engine.chunk import histogram_starts
from tests.helpers import fresh_db

ROWS = 30_000
CHUNK = 100  # 300 chunks against the histogram's 100 buckets


def _histogram(conn: psycopg.Connection) -> list[int]:
    row = conn.execute(
        "SELECT (histogram_bounds::text)::bigint[] FROM pg_stats "
        "WHERE tablename = 'keyed' AND attname = 'id'"
    ).fetchone()
    assert row is not None and row[0]
    return list(row[0])


def test_integer_keys_are_cut_between_histogram_bounds(cluster: LocalCluster) -> None:
    conninfo = fresh_db(cluster, "chunk_bounds")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # Keys ever sparser (i squared: gaps from 2 * ROWS to 4 * ROWS), so that cutting the
        # whole key range evenly would give chunks from 67 to 133 rows.
        conn.execute(
            "CREATE TABLE keyed AS SELECT i::bigint * i AS id FROM generate_series(%s, %s - 1) i",
            [ROWS, 2 * ROWS],
        )
        conn.execute("ANALYZE keyed")
        hist = _histogram(conn)
        chunks = ROWS // CHUNK
        assert len(hist) - 1 < chunks
        starts = histogram_starts(hist, chunks)
        assert starts is not None
        assert starts == sorted(set(starts))
        sizes = dict(
            conn.execute(
                "SELECT width_bucket(id, %s::bigint[]), count(*) FROM keyed GROUP BY 1",
                [starts],
            ).fetchall()
        )
    assert len(starts) == chunks - 1
    assert sum(sizes.values()) == ROWS
    assert len(sizes) == chunks  # no chunk empty
    assert all(0.8 * CHUNK <= n <= 1.2 * CHUNK for n in sizes.values()), sorted(sizes.values())


def test_other_keys_with_few_buckets_are_numbered() -> None:
    assert histogram_starts(["a", "m", "z"], 5) is None
    assert histogram_starts([1, 2], 0) is None
    # As many buckets as chunks or more: the bounds themselves, as before.
    assert histogram_starts(["a", "f", "m", "t", "z"], 2) == ["m"]
