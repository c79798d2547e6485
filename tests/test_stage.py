"""Stage: COPY streams passed on a megabyte at a time, and nothing lost at the seams."""

from __future__ import annotations

import psycopg
import pytest

from ferry import stage
from ferry.embedded import LocalCluster
from tests.helpers import fresh_db, table_checksum

# About 3.4 MB in binary COPY: three full blocks and a partial one.
ROWS = 30_000
TABLE = (
    "CREATE TABLE notes (id bigint PRIMARY KEY, body text, at timestamptz);"
    "INSERT INTO notes SELECT i, repeat(md5(i::text), 1 + i % 4), "
    "timestamptz '2020-01-01' + i * interval '1 minute' FROM generate_series(1, {n}) i"
)


@pytest.mark.parametrize("fmt", ["BINARY", "TEXT"])
def test_relay_passes_every_byte_in_blocks(cluster: LocalCluster, fmt: str) -> None:
    source = fresh_db(cluster, "relay_src")
    target = fresh_db(cluster, "relay_tgt")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(TABLE.format(n=ROWS))  # type: ignore[call-overload]
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id bigint, body text, at timestamptz)")
    blocks: list[int] = []
    with psycopg.connect(source) as s, psycopg.connect(target) as t:
        sent = bytearray()
        with s.cursor().copy(f"COPY notes TO STDOUT (FORMAT {fmt})") as out:  # type: ignore[call-overload]
            for row in out:
                sent += row
        cur = t.cursor()
        with (
            s.cursor().copy(f"COPY notes TO STDOUT (FORMAT {fmt})") as out,  # type: ignore[call-overload]
            cur.copy(f"COPY notes FROM STDIN (FORMAT {fmt})") as into,  # type: ignore[call-overload]
        ):
            total = stage.relay(out, into, blocks.append)
        t.commit()
    assert cur.rowcount == ROWS
    assert total == len(sent) == sum(blocks)
    assert len(blocks) >= 4 and all(b >= 1 << 20 for b in blocks[:-1])
    assert table_checksum(target, "public.notes") == table_checksum(source, "public.notes")
