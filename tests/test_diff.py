"""Range-checksum diff and differential re-stage against a real PostgreSQL cluster.

Two databases stand for the source server and the target: each test builds its own source
table, copies it to a stage table of the same shape, changes one side, and checks that the
diff names exactly the changed keys and that applying it makes both sides equal.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ferry.embedded import LocalCluster
from ferry.errors import FerryError
from ferry.sync.diff import TableDiff, apply_diff, diff_table, sync_stage_table

ITEM_COLUMNS = ["id", "name", "created", "amount", "doc", "flag", "note"]
DENSE = 45_000  # ids 1..DENSE, then 5,000 sparse ids from SPARSE_BASE
SPARSE_BASE = 10_000_000
SPARSE_STEP = 997
_names = itertools.count()


@dataclass
class Pair:
    src: psycopg.Connection[Any]
    stg: psycopg.Connection[Any]
    table: str

    @property
    def rel(self) -> sql.Identifier:
        return sql.Identifier("public", self.table)

    def diff(self, key: Sequence[str] = ("id",), columns: Sequence[str] = ITEM_COLUMNS):
        return diff_table(self.src, self.rel, self.stg, self.rel, key, columns)

    def sync(self, key: Sequence[str] = ("id",), columns: Sequence[str] = ITEM_COLUMNS):
        return sync_stage_table(self.src, self.rel, self.stg, self.rel, key, columns)


@pytest.fixture(scope="module")
def dbs(cluster: LocalCluster) -> Iterator[tuple[psycopg.Connection[Any], psycopg.Connection[Any]]]:
    src_info = cluster.create_database("diff_src", drop=True)
    stg_info = cluster.create_database("diff_stage", drop=True)
    with (
        psycopg.connect(src_info, autocommit=True) as src,
        psycopg.connect(stg_info, autocommit=True) as stg,
    ):
        yield src, stg


def _copy(src: psycopg.Connection[Any], stg: psycopg.Connection[Any], table: str) -> None:
    """Stage a table: same DDL on the stage side, rows by binary COPY."""
    rel = sql.Identifier("public", table)
    with (
        src.cursor().copy(sql.SQL("COPY {} TO STDOUT (FORMAT BINARY)").format(rel)) as out,
        stg.cursor().copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(rel)) as inp,
    ):
        for data in out:
            inp.write(data)
    stg.execute(sql.SQL("ANALYZE {}").format(rel))
    src.execute(sql.SQL("ANALYZE {}").format(rel))


ITEM_DDL = """CREATE TABLE public.{} (
    id integer PRIMARY KEY, name text, created timestamp, amount numeric(12, 2),
    doc jsonb, flag boolean, note text)"""

ITEM_ROWS = """INSERT INTO public.{} SELECT g,
    CASE WHEN g % 7 = 0 THEN NULL WHEN g % 7 = 1 THEN '' ELSE 'name ' || g END,
    timestamp '2020-01-01' + g * interval '37 minutes',
    round((g * 1.37)::numeric, 2),
    jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g % 5)),
    g % 2 = 0,
    CASE WHEN g % 11 = 0 THEN NULL ELSE repeat('x', g % 40) END
  FROM (SELECT generate_series(1, {}) AS g
        UNION ALL SELECT {} + generate_series(1, 5000) * {}) s"""


@pytest.fixture
def item(dbs: tuple[psycopg.Connection[Any], psycopg.Connection[Any]]) -> Pair:
    """A fresh 50,000-row source table and its identical stage copy."""
    src, stg = dbs
    name = f"item_{next(_names)}"
    for conn in (src, stg):
        conn.execute(sql.SQL(ITEM_DDL).format(sql.Identifier(name)))
    src.execute(sql.SQL(ITEM_ROWS).format(sql.Identifier(name), DENSE, SPARSE_BASE, SPARSE_STEP))
    _copy(src, stg, name)
    return Pair(src, stg, name)


def _fingerprint(conn: psycopg.Connection[Any], rel: sql.Composable, order: str = "id") -> str:
    order_by = sql.SQL(", ").join(sql.Identifier(c) for c in order.split(","))
    row = conn.execute(
        sql.SQL("SELECT md5(string_agg(t::text, '|' ORDER BY {})) FROM {} t").format(order_by, rel)
    ).fetchone()
    assert row is not None
    return str(row[0])


def _assert_equal(pair: Pair, order: str = "id") -> None:
    assert _fingerprint(pair.src, pair.rel, order) == _fingerprint(pair.stg, pair.rel, order)


def _keys(*values: Any) -> list[tuple[Any, ...]]:
    return sorted((v,) for v in values)


def _table_bytes(conn: psycopg.Connection[Any], rel: sql.Composable) -> int:
    row = conn.execute(
        sql.SQL("SELECT pg_total_relation_size(%s::regclass)"), [rel.as_string(conn)]
    ).fetchone()
    assert row is not None
    return int(row[0])


# --------------------------------------------------------------------------------------------


def test_no_change_gives_empty_diff_from_one_level(item: Pair) -> None:
    diff = item.diff()
    assert (diff.inserted, diff.updated, diff.deleted) == ([], [], [])
    assert diff.source_rows == diff.stage_rows == DENSE + 5000
    assert diff.levels == 1
    assert diff.rows_compared == 0
    # ~one bucket per 128 rows in the dense run and in the sparse tail alike (the key
    # histogram sets the widths), so neither collapses into a few huge buckets
    assert 250 <= diff.buckets_compared <= 800
    assert diff.bytes_from_source < 30_000


def test_changes_at_start_middle_end_and_sparse_region_are_exact(item: Pair) -> None:
    src, t = item.src, sql.Identifier(item.table)
    sparse = SPARSE_BASE + 2500 * SPARSE_STEP
    last_sparse = SPARSE_BASE + 5000 * SPARSE_STEP
    # inserts: before the first key, inside the gap, after the dense run, in and past the tail
    new_ids = [-5, 0, DENSE + 1, SPARSE_BASE + 13, sparse + 1, last_sparse + 10**6]
    src.execute(
        sql.SQL(
            "INSERT INTO {} (id, name, created, amount, doc, flag, note)"
            " SELECT g, 'new', now(), 1, '{{}}', true, NULL FROM unnest(%s::int[]) g"
        ).format(t),
        [new_ids],
    )
    updated_ids = [1, 2, DENSE // 2, DENSE, sparse, last_sparse]
    src.execute(
        sql.SQL("UPDATE {} SET note = coalesce(note, '') || '!' WHERE id = ANY(%s)").format(t),
        [updated_ids],
    )
    deleted_ids = [3, DENSE // 2 + 1, DENSE - 1, SPARSE_BASE + SPARSE_STEP, sparse - SPARSE_STEP]
    src.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(t), [deleted_ids])

    diff = item.diff()
    assert diff.inserted == _keys(*new_ids)
    assert diff.updated == _keys(*updated_ids)
    assert diff.deleted == _keys(*deleted_ids)
    assert diff.rows_compared < 2_000

    synced = item.sync()
    assert synced.changed == diff.changed
    assert synced.applied is not None
    assert synced.applied.rows_copied == len(new_ids) + len(updated_ids)
    _assert_equal(item)
    assert not item.diff().changed


def test_null_and_empty_string_are_different(item: Pair) -> None:
    t = sql.Identifier(item.table)
    # g % 7 = 0 has name NULL, g % 7 = 1 has name ''
    item.src.execute(sql.SQL("UPDATE {} SET name = '' WHERE id = 700").format(t))
    item.src.execute(sql.SQL("UPDATE {} SET name = NULL WHERE id = 701").format(t))
    item.src.execute(sql.SQL("UPDATE {} SET note = '' WHERE id = 770").format(t))  # was NULL
    diff = item.diff()
    assert diff.updated == _keys(700, 701, 770)
    assert diff.inserted == diff.deleted == []


def test_changes_that_keep_bucket_counts_are_found(item: Pair) -> None:
    t = sql.Identifier(item.table)
    # two rows of one bucket swap their names: same count, same multiset of names
    item.src.execute(
        sql.SQL(
            "UPDATE {t} a SET name = b.name FROM {t} b"
            " WHERE (a.id, b.id) IN ((1002, 1003), (1003, 1002))"
        ).format(t=t)
    )
    # a key deleted on one side and another on the other side of the same bucket
    item.src.execute(sql.SQL("DELETE FROM {} WHERE id = 2000").format(t))
    item.stg.execute(sql.SQL("DELETE FROM {} WHERE id = 2001").format(t))
    diff = item.diff()
    assert diff.updated == _keys(1002, 1003)
    assert diff.inserted == _keys(2001)
    assert diff.deleted == _keys(2000)


def test_value_changes_of_every_type_are_found(item: Pair) -> None:
    t = sql.Identifier(item.table)
    for stmt in (
        "UPDATE {} SET amount = amount + 0.01 WHERE id = 10",
        "UPDATE {} SET created = created + interval '1 microsecond' WHERE id = 11",
        "UPDATE {} SET doc = jsonb_set(doc, '{{n}}', '-1') WHERE id = 12",
        "UPDATE {} SET flag = NOT flag WHERE id = 13",
        "UPDATE {} SET name = name || ' ' WHERE id = 16",  # a trailing space
    ):
        item.src.execute(sql.SQL(stmt).format(t))
    diff = item.diff()
    assert diff.updated == _keys(10, 11, 12, 13, 16)


def test_numeric_scale_change_is_found(dbs: tuple[psycopg.Connection[Any], ...]) -> None:
    """1.0 = 1.00 for numeric equality, but the stage must hold what the source holds."""
    src, stg = dbs
    name = f"num_{next(_names)}"
    for conn in (src, stg):
        conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v numeric, i interval)").format(
                sql.Identifier(name)
            )
        )
    src.execute(
        sql.SQL("INSERT INTO {} SELECT g, 1.0, '1 day' FROM generate_series(1, 100) g").format(
            sql.Identifier(name)
        )
    )
    pair = Pair(src, stg, name)
    _copy(src, stg, name)
    src.execute(sql.SQL("UPDATE {} SET v = 1.00 WHERE id = 5").format(sql.Identifier(name)))
    src.execute(sql.SQL("UPDATE {} SET i = '24 hours' WHERE id = 6").format(sql.Identifier(name)))
    diff = pair.diff(columns=["id", "v", "i"])
    assert diff.updated == _keys(5, 6)
    pair.sync(columns=["id", "v", "i"])
    _assert_equal(pair)


def test_many_changes_in_one_region_and_apply_separately(item: Pair) -> None:
    t = sql.Identifier(item.table)
    item.src.execute(
        sql.SQL("UPDATE {} SET flag = NOT flag WHERE id BETWEEN 5000 AND 9000").format(t)
    )
    item.src.execute(sql.SQL("DELETE FROM {} WHERE id BETWEEN 20000 AND 20999").format(t))
    diff = item.diff()
    assert len(diff.updated) == 4001 and len(diff.deleted) == 1000 and not diff.inserted
    stats = apply_diff(item.src, item.rel, item.stg, item.rel, ["id"], ITEM_COLUMNS, diff)
    assert stats.rows_copied == 4001
    assert stats.rows_deleted == 5001
    assert stats.bytes_from_source > 0
    _assert_equal(item)
    assert not item.diff().changed


def test_text_key(dbs: tuple[psycopg.Connection[Any], ...]) -> None:
    src, stg = dbs
    name = f"code_{next(_names)}"
    t = sql.Identifier(name)
    for conn in (src, stg):
        conn.execute(
            sql.SQL("CREATE TABLE {} (code text PRIMARY KEY, label text, n int)").format(t)
        )
    src.execute(
        sql.SQL(
            "INSERT INTO {} SELECT 'C-' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'L' || g END, g"
            " FROM generate_series(1, 20000) g"
        ).format(t)
    )
    _copy(src, stg, name)
    pair = Pair(src, stg, name)
    cols = ["code", "label", "n"]
    assert not pair.diff(("code",), cols).changed
    src.execute(sql.SQL("INSERT INTO {} VALUES ('A', 'x', 1), ('C-1 ', 'y', 2)").format(t))
    src.execute(sql.SQL("UPDATE {} SET label = '' WHERE code IN ('C-3', 'C-19999')").format(t))
    src.execute(sql.SQL("DELETE FROM {} WHERE code IN ('C-10', 'C-20000')").format(t))
    diff = pair.diff(("code",), cols)
    assert diff.inserted == _keys("A", "C-1 ")
    assert diff.updated == _keys("C-19999", "C-3")
    assert diff.deleted == _keys("C-10", "C-20000")
    pair.sync(("code",), cols)
    _assert_equal(pair, order="code")
    assert not pair.diff(("code",), cols).changed


def test_composite_key(dbs: tuple[psycopg.Connection[Any], ...]) -> None:
    src, stg = dbs
    name = f"pair_{next(_names)}"
    t = sql.Identifier(name)
    for conn in (src, stg):
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (office int, day date, visits int, PRIMARY KEY (office, day))"
            ).format(t)
        )
    src.execute(
        sql.SQL(
            "INSERT INTO {} SELECT o, date '2024-01-01' + d, o * d"
            " FROM generate_series(1, 100) o, generate_series(0, 199) d"
        ).format(t)
    )
    _copy(src, stg, name)
    pair = Pair(src, stg, name)
    key, cols = ("office", "day"), ["office", "day", "visits"]
    src.execute(
        sql.SQL("UPDATE {} SET visits = -1 WHERE office = 7 AND day = '2024-01-05'").format(t)
    )
    src.execute(sql.SQL("DELETE FROM {} WHERE office = 100 AND day = '2024-07-18'").format(t))
    src.execute(sql.SQL("INSERT INTO {} VALUES (101, '2024-01-01', 0)").format(t))
    diff = pair.diff(key, cols)
    # A date key part comes as its text (Python has no 'infinity' date nor BC one).
    assert diff.updated == [(7, "2024-01-05")]
    assert diff.deleted == [(100, "2024-07-18")]
    assert diff.inserted == [(101, "2024-01-01")]
    pair.sync(key, cols)
    _assert_equal(pair, order="office,day")
    assert not pair.diff(key, cols).changed


def test_csv_source_as_temp_table_on_the_same_connection(
    dbs: tuple[psycopg.Connection[Any], ...],
) -> None:
    """A CSV is loaded into a TEMP table (no index) next to its stage table."""
    _, stg = dbs
    name = f"csv_{next(_names)}"
    stage = sql.Identifier("public", name)
    stg.execute(sql.SQL("CREATE TABLE {} (id text PRIMARY KEY, a text, b text)").format(stage))
    stg.execute(
        sql.SQL(
            "INSERT INTO {} SELECT g::text, 'a' || g, NULL FROM generate_series(1, 3000) g"
        ).format(stage)
    )
    with stg.transaction():
        temp = sql.Identifier("pg_temp", f"{name}_file")
        stg.execute(sql.SQL("CREATE TEMP TABLE {} (id text, a text, b text)").format(temp))
        with stg.cursor().copy(sql.SQL("COPY {} FROM STDIN (FORMAT CSV)").format(temp)) as cp:
            for g in range(1, 3001):
                if g == 17:
                    continue  # deleted from the file
                b = '""' if g == 5 else ""  # empty string (quoted) versus NULL (bare)
                cp.write(f"{g},a{g},{b}\n")
            cp.write("new-row,z,\n")
        diff = diff_table(stg, temp, stg, stage, ["id"], ["id", "a", "b"])
        assert diff.inserted == [("new-row",)]
        assert diff.updated == [("5",)]
        assert diff.deleted == [("17",)]
        assert diff.bytes_from_source == 0
        synced = sync_stage_table(stg, temp, stg, stage, ["id"], ["id", "a", "b"])
        assert synced.changed == 3
        assert _fingerprint(stg, temp) == _fingerprint(stg, stage)
        stg.execute(sql.SQL("DROP TABLE {}").format(temp))


def test_small_change_transfers_far_less_than_the_table(item: Pair) -> None:
    t = sql.Identifier(item.table)
    item.src.execute(sql.SQL("UPDATE {} SET note = 'changed' WHERE id IN (4, 25000)").format(t))
    item.src.execute(sql.SQL("DELETE FROM {} WHERE id = 33333").format(t))
    synced = item.sync()
    assert synced.changed == 3
    table_bytes = _table_bytes(item.src, item.rel)
    assert synced.bytes_from_source < table_bytes / 100, (synced.bytes_from_source, table_bytes)
    _assert_equal(item)


def test_integer_keys_spanning_more_than_int8_range(
    dbs: tuple[psycopg.Connection[Any], ...],
) -> None:
    src, stg = dbs
    name = f"wide_{next(_names)}"
    t = sql.Identifier(name)
    for conn in (src, stg):
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, v text)").format(t))
    src.execute(
        sql.SQL(
            "INSERT INTO {} SELECT g * 9000000000000000, 'v' || g"
            " FROM generate_series(-1000, 1000) g"
        ).format(t)
    )
    _copy(src, stg, name)
    pair = Pair(src, stg, name)
    src.execute(sql.SQL("UPDATE {} SET v = 'w' WHERE id = 0").format(t))
    src.execute(sql.SQL("DELETE FROM {} WHERE id = -9000000000000000000").format(t))
    diff = pair.diff(columns=["id", "v"])
    assert diff.updated == [(0,)]
    assert diff.deleted == [(-9_000_000_000_000_000_000,)]
    pair.sync(columns=["id", "v"])
    _assert_equal(pair)


def test_empty_tables_and_empty_stage(dbs: tuple[psycopg.Connection[Any], ...]) -> None:
    src, stg = dbs
    name = f"empty_{next(_names)}"
    t = sql.Identifier(name)
    for conn in (src, stg):
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text)").format(t))
    pair = Pair(src, stg, name)
    assert not pair.diff(columns=["id", "v"]).changed
    src.execute(sql.SQL("INSERT INTO {} SELECT g, 'v' FROM generate_series(1, 1000) g").format(t))
    synced: TableDiff = pair.sync(columns=["id", "v"])
    assert len(synced.inserted) == 1000
    _assert_equal(pair)


def test_errors_name_tables_and_columns_only(item: Pair) -> None:
    t = sql.Identifier(item.table)
    with pytest.raises(FerryError, match="key column"):
        item.diff(key=("nope",))
    item.stg.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN note TYPE varchar(200)").format(t))
    with pytest.raises(FerryError, match=r"column types differ.*note") as err:
        item.diff()
    assert "xxx" not in str(err.value)
    with pytest.raises(FerryError, match="no column"):
        item.diff(columns=[*ITEM_COLUMNS, "ghost"])
    # the connections stay usable and idle
    assert item.src.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert item.stg.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_unindexed_integer_key_on_the_same_connection(
    dbs: tuple[psycopg.Connection[Any], ...],
) -> None:
    """An integer-keyed CSV in a TEMP table without index: ranges found by binary search."""
    _, stg = dbs
    name = f"csvint_{next(_names)}"
    stage = sql.Identifier("public", name)
    stg.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text)").format(stage))
    stg.execute(
        sql.SQL(
            "INSERT INTO {} SELECT g, 'v' || g FROM generate_series(1, 20000) g"
            " UNION ALL SELECT 1000000 + g * 1000, 'w' FROM generate_series(1, 500) g"
        ).format(stage)
    )
    stg.execute(sql.SQL("ANALYZE {}").format(stage))
    with stg.transaction():
        temp = sql.Identifier("pg_temp", f"{name}_file")
        stg.execute(sql.SQL("CREATE TEMP TABLE {} AS SELECT * FROM {}").format(temp, stage))
        stg.execute(
            sql.SQL("UPDATE {} SET v = 'changed' WHERE id IN (1, 12345, 1250000)").format(temp)
        )
        stg.execute(sql.SQL("DELETE FROM {} WHERE id IN (20000, 1500000)").format(temp))
        stg.execute(
            sql.SQL("INSERT INTO {} VALUES (0, 'a'), (1000001, 'b'), (9999999, 'c')").format(temp)
        )
        diff = diff_table(stg, temp, stg, stage, ["id"], ["id", "v"])
        assert diff.updated == _keys(1, 12345, 1250000)
        assert diff.deleted == _keys(20000, 1500000)
        assert diff.inserted == _keys(0, 1000001, 9999999)
        assert diff.rows_compared < 1500
        sync_stage_table(stg, temp, stg, stage, ["id"], ["id", "v"])
        assert _fingerprint(stg, temp) == _fingerprint(stg, stage)
        stg.execute(sql.SQL("DROP TABLE {}").format(temp))


def test_user_defined_types_use_text_formats(dbs: tuple[psycopg.Connection[Any], ...]) -> None:
    """A domain key and an enum array: keys fetched as text, rows copied by text COPY."""
    src, stg = dbs
    name = f"udt_{next(_names)}"
    t = sql.Identifier(name)
    for conn in (src, stg):
        conn.execute("DROP TYPE IF EXISTS mood CASCADE")
        conn.execute("DROP DOMAIN IF EXISTS code CASCADE")
        # created in a different order on each side, so the OIDs differ
        if conn is src:
            conn.execute("CREATE TYPE mood AS ENUM ('low', 'high')")
            conn.execute("CREATE DOMAIN code AS text CHECK (VALUE <> '')")
        else:
            conn.execute("CREATE DOMAIN code AS text CHECK (VALUE <> '')")
            conn.execute("CREATE TYPE mood AS ENUM ('low', 'high')")
        conn.execute(sql.SQL("CREATE TABLE {} (c code PRIMARY KEY, m mood[])").format(t))
    src.execute(
        sql.SQL(
            "INSERT INTO {} SELECT 'k' || g, ARRAY['low', 'high']::mood[]"
            " FROM generate_series(1, 3000) g"
        ).format(t)
    )
    _copy_text(src, stg, name)
    pair = Pair(src, stg, name)
    src.execute(sql.SQL("UPDATE {} SET m = '{{high}}' WHERE c = 'k7'").format(t))
    src.execute(sql.SQL("INSERT INTO {} VALUES ('new', NULL)").format(t))
    diff = pair.diff(("c",), ["c", "m"])
    assert diff.updated == [("k7",)]
    assert diff.inserted == [("new",)]
    pair.sync(("c",), ["c", "m"])
    _assert_equal(pair, order="c")


def _copy_text(src: psycopg.Connection[Any], stg: psycopg.Connection[Any], table: str) -> None:
    rel = sql.Identifier("public", table)
    with (
        src.cursor().copy(sql.SQL("COPY {} TO STDOUT").format(rel)) as out,
        stg.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(rel)) as inp,
    ):
        for data in out:
            inp.write(data)


def test_non_autocommit_connections_are_left_idle_and_committed(
    item: Pair, cluster: LocalCluster
) -> None:
    t = sql.Identifier(item.table)
    item.src.execute(sql.SQL("UPDATE {} SET note = 'x' WHERE id = 42").format(t))
    with (
        psycopg.connect(cluster.conninfo("diff_src")) as src,
        psycopg.connect(cluster.conninfo("diff_stage")) as stg,
    ):
        for conn in (src, stg):
            conn.execute("SET TimeZone = 'Europe/Paris'")
            conn.commit()
        synced = sync_stage_table(src, item.rel, stg, item.rel, ["id"], ITEM_COLUMNS)
        assert synced.updated == [(42,)]
        for conn in (src, stg):
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            # the hashing settings were SET LOCAL: the caller's session is as it was
            assert conn.execute("SHOW TimeZone").fetchone() == ("Europe/Paris",)
            conn.rollback()
    _assert_equal(item)  # seen from other connections: committed


def test_dense_changes_are_listed_in_bounded_batches(
    item: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nearly every bucket differs: rows are listed batch by batch, and still exactly."""
    import ferry.sync.diff

    monkeypatch.setattr(ferry.sync.diff, "LIST_ROWS_PER_BATCH", 500)
    calls: list[int] = []
    listed = ferry.sync.diff._leaf_hashes

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return listed(*args, **kwargs)

    monkeypatch.setattr(ferry.sync.diff, "_leaf_hashes", counting)
    t = sql.Identifier(item.table)
    item.src.execute(sql.SQL("UPDATE {} SET flag = NOT flag WHERE id % 7 = 0").format(t))
    diff = item.diff()
    expected = item.src.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE id % 7 = 0").format(t)
    ).fetchone()
    assert expected is not None and len(diff.updated) == expected[0]
    assert not diff.inserted and not diff.deleted
    assert len(calls) > 2 * 10  # two sides, many batches


def test_a_level_of_many_buckets_is_summed_in_bounded_batches(
    item: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below the first level, parents are summed a few at a time: same exact diff."""
    import ferry.sync.diff

    t = sql.Identifier(item.table)
    item.src.execute(sql.SQL("UPDATE {} SET note = 'x' WHERE id % 211 = 0").format(t))
    item.src.execute(sql.SQL("DELETE FROM {} WHERE id % 401 = 0").format(t))
    whole = item.diff()
    assert whole.levels > 1  # the model split buckets: there are levels to batch

    monkeypatch.setattr(ferry.sync.diff, "SUMS_PER_BATCH", 8)
    groups: list[int] = []
    summed = ferry.sync.diff._IntBuckets.query

    def counting(self: Any, side: Any, parents: list[Any]) -> Any:
        groups.append(len(parents))
        return summed(self, side, parents)

    monkeypatch.setattr(ferry.sync.diff._IntBuckets, "query", counting)
    batched = item.diff()
    assert (batched.inserted, batched.updated, batched.deleted) == (
        whole.inserted, whole.updated, whole.deleted,
    )  # fmt: skip
    assert batched.levels == whole.levels
    assert batched.buckets_compared == whole.buckets_compared
    assert len(groups) > 2 * (whole.levels - 1)  # more than one round trip a level and side
    assert max(groups) <= 8


# --------------------------------------------------------------------------------------------
# Level 0 streamed: both sides' bucket sums are merged in sorted batches, never held whole.

SEED = 20261206
SMALL_DENSE = 24_000  # with the 5,000 sparse ids under 30,000 rows: ANALYZE reads every row,
# so the key histogram (the level-0 widths) and the figures below are the same on every run


def _seeded_int(dbs: tuple[psycopg.Connection[Any], ...]) -> tuple[Pair, dict[str, list[Any]]]:
    """A 29,000-row item table whose source got a seeded change set scattered over its keys."""
    src, stg = dbs
    name = f"seeded_{next(_names)}"
    t = sql.Identifier(name)
    for conn in (src, stg):
        conn.execute(sql.SQL(ITEM_DDL).format(t))
    src.execute(sql.SQL(ITEM_ROWS).format(t, SMALL_DENSE, SPARSE_BASE, SPARSE_STEP))
    _copy(src, stg, name)
    return Pair(src, stg, name), _change_int(src, t)


def _change_int(conn: psycopg.Connection[Any], t: sql.Composable) -> dict[str, list[Any]]:
    rng = random.Random(SEED)
    held = [*range(1, SMALL_DENSE + 1), *(SPARSE_BASE + g * SPARSE_STEP for g in range(1, 5001))]
    picked = rng.sample(held, 500)
    gaps = [SPARSE_BASE + g * SPARSE_STEP + rng.randrange(1, SPARSE_STEP) for g in range(5000)]
    new = sorted({*rng.sample(gaps, 120), SMALL_DENSE + 1, -3})
    changes = {"updated": sorted(picked[:300]), "deleted": sorted(picked[300:]), "inserted": new}
    conn.execute(
        sql.SQL("UPDATE {} SET note = coalesce(note, '') || '+' WHERE id = ANY(%s)").format(t),
        [changes["updated"]],
    )
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(t), [changes["deleted"]])
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, name, flag) SELECT g, 'new', true FROM unnest(%s::int[]) g"
        ).format(t),
        [new],
    )
    return changes


def _seeded_text(dbs: tuple[psycopg.Connection[Any], ...]) -> tuple[Pair, dict[str, list[Any]]]:
    """A 20,000-row text-keyed table (hashed buckets) with a seeded change set."""
    src, stg = dbs
    name = f"seeded_code_{next(_names)}"
    t = sql.Identifier(name)
    for conn in (src, stg):
        conn.execute(sql.SQL("CREATE TABLE {} (code text PRIMARY KEY, n int)").format(t))
    src.execute(
        sql.SQL("INSERT INTO {} SELECT 'C-' || g, g FROM generate_series(1, 20000) g").format(t)
    )
    _copy(src, stg, name)
    return Pair(src, stg, name), _change_text(src, t)


def _change_text(conn: psycopg.Connection[Any], t: sql.Composable) -> dict[str, list[Any]]:
    rng = random.Random(SEED)
    picked = [f"C-{g}" for g in rng.sample(range(1, 20001), 400)]
    new = sorted(f"N-{g}" for g in rng.sample(range(10**6), 80))
    changes = {"updated": sorted(picked[:250]), "deleted": sorted(picked[250:]), "inserted": new}
    conn.execute(
        sql.SQL("UPDATE {} SET n = -n WHERE code = ANY(%s)").format(t), [changes["updated"]]
    )
    conn.execute(sql.SQL("DELETE FROM {} WHERE code = ANY(%s)").format(t), [changes["deleted"]])
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, 0 FROM unnest(%s::text[]) g").format(t), [new])
    return changes


def _assert_changes(diff: TableDiff, changes: dict[str, list[Any]]) -> None:
    assert diff.inserted == _keys(*changes["inserted"])
    assert diff.updated == _keys(*changes["updated"])
    assert diff.deleted == _keys(*changes["deleted"])


def _figures(diff: TableDiff) -> tuple[int, ...]:
    return (
        diff.source_rows, diff.stage_rows, diff.buckets_compared, diff.levels, diff.rows_compared
    )  # fmt: skip


@pytest.fixture
def fetched(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Bucket sums fetched 7 at a time; each fetch recorded as (side, rows)."""
    import ferry.sync.diff

    monkeypatch.setattr(ferry.sync.diff, "SUMS_FETCH_ROWS", 7)
    batches: list[tuple[str, int]] = []
    fetch = ferry.sync.diff._fetch

    def recording(side: Any, cur: Any) -> list[tuple[Any, ...]]:
        rows = fetch(side, cur)
        batches.append((side.name, len(rows)))
        return rows

    monkeypatch.setattr(ferry.sync.diff, "_fetch", recording)
    return batches


# (source rows, stage rows, buckets compared, levels, rows compared) that the diff gave for
# these change sets when each level's sums were read whole (before ``_compare_sums``)
SEEDED_INT_FIGURES = (28922, 29000, 4024, 5, 3897)
SEEDED_TEXT_FIGURES = (19930, 20000, 2096, 2, 4504)


@pytest.mark.parametrize("batched", [False, True], ids=["default", "7-row-batches"])
def test_seeded_changes_give_the_figures_of_whole_levels(
    dbs: tuple[psycopg.Connection[Any], ...], batched: bool, request: pytest.FixtureRequest
) -> None:
    """Merging the sides' sums batch by batch finds what reading them whole found."""
    batches = request.getfixturevalue("fetched") if batched else []
    pair, changes = _seeded_int(dbs)
    diff = pair.diff()
    _assert_changes(diff, changes)
    assert _figures(diff) == SEEDED_INT_FIGURES
    pair, changes = _seeded_text(dbs)
    text = pair.diff(("code",), ["code", "n"])
    _assert_changes(text, changes)
    assert _figures(text) == SEEDED_TEXT_FIGURES
    if batched:
        # no fetch held more than a batch, and every bucket of every level came through them
        assert max(n for _, n in batches) <= 7
        fetched_rows = sum(n for _, n in batches)
        assert fetched_rows >= diff.buckets_compared + text.buckets_compared
        assert len(batches) > fetched_rows / 7


@pytest.mark.parametrize("keyed", ["int", "text"])
def test_seeded_changes_on_one_connection_in_small_batches(
    dbs: tuple[psycopg.Connection[Any], ...], keyed: str, fetched: list[tuple[str, int]]
) -> None:
    """A file's TEMP table beside its stage table: both cursors on that one connection, read
    in turn inside the diff's transaction."""
    _, stg = dbs
    pair, _ = _seeded_int(dbs) if keyed == "int" else _seeded_text(dbs)
    key, cols = (("id",), ITEM_COLUMNS) if keyed == "int" else (("code",), ["code", "n"])
    with stg.transaction():
        temp = sql.Identifier("pg_temp", f"{pair.table}_file")
        stg.execute(sql.SQL("CREATE TEMP TABLE {} AS SELECT * FROM {}").format(temp, pair.rel))
        changes = (_change_int if keyed == "int" else _change_text)(stg, temp)
        diff = diff_table(stg, temp, stg, pair.rel, key, cols)
        _assert_changes(diff, changes)
        stg.execute(sql.SQL("DROP TABLE {}").format(temp))
    assert max(n for _, n in fetched) <= 7
    sides = [side for side, _ in fetched]
    # interleaved: the stage's cursor is read between batches of the source's
    assert sides.index("stage") < len(sides) - 1 - sides[::-1].index("source")
    assert stg.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


@pytest.mark.parametrize("sparse", [0, 2000], ids=["one-interval", "several-intervals"])
def test_a_null_key_is_refused_when_its_bucket_comes_in_a_later_batch(
    dbs: tuple[psycopg.Connection[Any], ...], fetched: list[tuple[str, int]], sparse: int
) -> None:
    """A file's rows without a key are refused, whichever level-0 interval they would fall in
    (with several, a NULL key was once named the last interval's first bucket, unseen)."""
    _, stg = dbs
    name = f"nullkey_{next(_names)}"
    stage = sql.Identifier("public", name)
    stg.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text)").format(stage))
    stg.execute(
        sql.SQL(
            "INSERT INTO {} SELECT g, 'v' FROM generate_series(1, 3000) g"
            " UNION ALL SELECT 1000000 + g * 997, 'w' FROM generate_series(1, %s) g"
        ).format(stage),
        [sparse],
    )
    stg.execute(sql.SQL("ANALYZE {}").format(stage))
    with stg.transaction():
        temp = sql.Identifier("pg_temp", f"{name}_file")
        stg.execute(sql.SQL("CREATE TEMP TABLE {} AS SELECT * FROM {}").format(temp, stage))
        stg.execute(sql.SQL("INSERT INTO {} VALUES (NULL, 'x'), (NULL, 'y')").format(temp))
        with pytest.raises(FerryError, match="2 row"):
            diff_table(stg, temp, stg, stage, ["id"], ["id", "v"])
        stg.execute(sql.SQL("DROP TABLE {}").format(temp))
    assert len(fetched) > 2
