"""Sources nobody on the team wrote, each a world of its own: keys at the edges of their
types, columns named like ferry's own aliases, tables whose definition changes between
syncs. A history is compared with a fresh migrate of the source as it is at its end, into
a fresh copy of the target, for both change sources.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from ferry import FerryError, SpecError, load_spec, migrate
from ferry.embedded import LocalCluster
from ferry.ledger import runs
from ferry.ops.verify import verify
from ferry.spec import Spec
from ferry.sync import wal
from ferry.sync.loop import sync
from tests.helpers import fresh_db, one_table_spec

OWNER = "sources_owner"


class World:
    """A source ``src``, a target ``dst`` (``legacy_key`` and ``columns``, all text), the
    spec; ``fresh()`` a new target migrated from the source as it is now."""

    def __init__(
        self, cluster: LocalCluster, tmp: Path, name: str, source_sql: str, columns: list[str]
    ) -> None:
        self.cluster, self.tmp, self.name = cluster, tmp, name
        self.source = fresh_db(cluster, f"{name}_src")
        self.sql(self.source, source_sql)
        cols = ", ".join(f'"{c}" text' for c in columns)
        (tmp / "target.sql").write_text(
            f"CREATE TABLE dst (id uuid PRIMARY KEY, legacy_key text UNIQUE, {cols});"
        )
        cols_sql = ", ".join(f's."{c}"::text AS "{c}"' for c in columns)
        model = f"SELECT s.id AS _key, s.id::text AS legacy_key, {cols_sql} FROM src s"
        (tmp / "spec.toml").write_text(one_table_spec(model, "legacy_key", chunk_size=4))
        self.spec: Spec = load_spec(tmp / "spec.toml")
        self.columns = columns

    def target(self, suffix: str) -> str:
        fresh_db(self.cluster, f"{self.name}_{suffix}", self.tmp / "target.sql", owner=OWNER)
        return self.cluster.conninfo(f"{self.name}_{suffix}", user=OWNER)

    @staticmethod
    def sql(conninfo: str, text: str) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(text)

    def state(self, target: str) -> tuple[dict, set]:
        """The ledger's fates and the target's rows."""
        with psycopg.connect(target) as conn:
            fates = conn.execute(
                "SELECT source_key, status, reason, target_uuid, row_hash FROM ferry.ledger "
                "WHERE status <> 'deleted'"
            ).fetchall()
            cols = ", ".join(f'"{c}"' for c in self.columns)
            rows = conn.execute(f"SELECT legacy_key, {cols} FROM dst").fetchall()
        return {r[0]: r[1:] for r in fates}, set(rows)

    def history(self, changes: list[str], capture: str | None) -> tuple[dict, set]:
        """migrate, then each change and a sync; the state at the end, which verify holds."""
        with self.migrated(self.source, capture) as target:
            for change in changes:
                self.sql(self.source, change)
                sync(self.source, target, self.spec)
            report = verify(target, self.spec)
            assert report.ok, report.summary()
            return self.state(target)

    @contextmanager
    def migrated(self, source: str, capture: str | None) -> Iterator[str]:
        """A target migrated from ``source`` (the source as some role reads it); its
        replication slot, if any, dropped after."""
        target = self.target(capture or "diff")
        try:
            migrate(source, target, self.spec, changes=capture)
            yield target
        finally:
            if capture == "wal":
                with runs.opened(target, self.spec, "ferry-cleanup") as conn:
                    wal.drop_slot(self.source, conn, self.spec)

    def fresh(self) -> tuple[dict, set]:
        target = self.target("fresh")
        migrate(self.source, target, self.spec)
        return self.state(target)


CAPTURES = [None, "wal"]


@pytest.mark.parametrize("capture", CAPTURES, ids=["diff", "wal"])
@pytest.mark.parametrize(
    "typ, edge",
    [
        ("date", "'infinity'"),
        ("date", "'-infinity'"),
        ("date", "'0044-03-15 BC'"),
        ("timestamptz", "'infinity'"),
        ("timestamptz", "'0044-03-15 12:00 BC'"),
    ],
)
def test_a_key_at_the_edge_of_its_type_is_a_key_like_any(
    cluster: LocalCluster, tmp_path: Path, capture: str | None, typ: str, edge: str
) -> None:
    """Chunk bounds were read into Python, which has no ``infinity`` date and no BC
    timestamp: the migrate failed with a database error that printed the keys."""
    w = World(
        cluster, tmp_path, "edgekey",
        f"CREATE TABLE src (id {typ} PRIMARY KEY, v text); "
        f"INSERT INTO src SELECT '2020-01-01'::date + i, 'v' || i FROM generate_series(1, 20) i; "
        f"INSERT INTO src VALUES ({edge}, 'edge');",
        ["v"],
    )  # fmt: skip
    changes = [f"UPDATE src SET v = 'changed' WHERE id = {edge}", "DELETE FROM src WHERE v = 'v3'"]
    assert w.history(changes, capture) == w.fresh()


@pytest.mark.parametrize("capture", CAPTURES, ids=["diff", "wal"])
@pytest.mark.parametrize("name", ["t", "l", "c"])
def test_a_column_named_like_an_alias_of_ferrys_is_a_column_like_any(
    cluster: LocalCluster, tmp_path: Path, capture: str | None, name: str
) -> None:
    """A row's before-image was taken as ``to_jsonb(t)``: with a column named ``t`` (or
    ``l``) beside the alias, every sync that changed a row failed."""
    w = World(
        cluster, tmp_path, "alias",
        f'CREATE TABLE src (id int PRIMARY KEY, "{name}" text); '
        f"INSERT INTO src SELECT i, 'v' || i FROM generate_series(1, 12) i;",
        [name],
    )  # fmt: skip
    changes = [f"UPDATE src SET \"{name}\" = 'x' WHERE id = 3; DELETE FROM src WHERE id = 4"]
    assert w.history(changes, capture) == w.fresh()


@pytest.mark.parametrize("capture", CAPTURES, ids=["diff", "wal"])
def test_a_char_n_key_keeps_its_changes(
    cluster: LocalCluster, tmp_path: Path, capture: str | None
) -> None:
    """A ``char(4)`` key reads as ``'ab  '``, and its text (the ledger's name for it) as
    ``'ab'``: the key Python printed named no ledger row, and every change was lost."""
    w = World(
        cluster, tmp_path, "charkey",
        "CREATE TABLE src (id char(4) PRIMARY KEY, v text); "
        "INSERT INTO src VALUES ('a', '1'), ('ab', '2'), ('abc', '3'), ('abcd', '4'), "
        "('b', '5'), ('bc', '6');",
        ["v"],
    )  # fmt: skip
    changes = [
        "DELETE FROM src WHERE id = 'ab'",
        "INSERT INTO src VALUES ('zz', 'new')",
        "UPDATE src SET v = 'x' WHERE id = 'abc'",
        "UPDATE src SET id = 'q' WHERE id = 'bc'",
    ]
    assert w.history(changes, capture) == w.fresh()


PARTITIONED = (
    "CREATE TABLE src (id int, v text, PRIMARY KEY (id)) PARTITION BY RANGE (id); "
    "CREATE TABLE src_a PARTITION OF src FOR VALUES FROM (0) TO (100); "
    "CREATE TABLE src_b PARTITION OF src FOR VALUES FROM (100) TO (200); "
    "CREATE TABLE src_rest PARTITION OF src DEFAULT; "
    "INSERT INTO src SELECT i, 'v' || i FROM generate_series(1, 20) i; "
    "INSERT INTO src SELECT i, 'v' || i FROM generate_series(101, 110) i; "
    "INSERT INTO src VALUES (500, 'far');"
)


@pytest.mark.parametrize("capture", CAPTURES, ids=["diff", "wal"])
@pytest.mark.parametrize(
    "steps",
    [
        ["ALTER TABLE src DETACH PARTITION src_b"],
        ["DROP TABLE src_rest"],
        [
            "CREATE TABLE src_c (id int PRIMARY KEY, v text); "
            "INSERT INTO src_c SELECT i, 'c' || i FROM generate_series(200, 205) i",
            "ALTER TABLE src ATTACH PARTITION src_c FOR VALUES FROM (200) TO (300)",
        ],
        ["ALTER TABLE src ALTER COLUMN v TYPE text USING upper(v)"],
        [
            "ALTER TABLE src_a REPLICA IDENTITY NOTHING; UPDATE src SET id = 50 WHERE id = 2; "
            "ALTER TABLE src_a REPLICA IDENTITY DEFAULT"
        ],
    ],
    ids=["detach", "drop_partition", "attach_with_rows", "rewrite", "identity_and_back"],
)
def test_a_source_redefined_between_syncs_is_compared_whole(
    cluster: LocalCluster, tmp_path: Path, capture: str | None, steps: list[str]
) -> None:
    """What DDL does to a table's rows writes no row change to the WAL: a partition
    detached, dropped, or attached with rows written before the last sync, every value
    rewritten by ``ALTER ... TYPE ... USING``, a key changed while the replica identity did
    not carry it (and set back before the sync). A sync from the WAL left the target as it
    was, verify passing; a table whose definition changed since it was staged is compared
    whole."""
    w = World(cluster, tmp_path, "redefined", PARTITIONED, ["v"])
    assert w.history([*steps, "UPDATE src SET v = 'after' WHERE id = 3"], capture) == w.fresh()


@pytest.mark.parametrize("capture", CAPTURES, ids=["diff", "wal"])
@pytest.mark.parametrize(
    "ddl",
    [
        "ALTER TABLE src ADD COLUMN extra int DEFAULT 7",
        "ALTER TABLE src DROP COLUMN v; ALTER TABLE src ADD COLUMN v text DEFAULT 'new'",
        "ALTER TABLE src RENAME COLUMN w TO w2",
    ],
    ids=["added", "dropped_and_added", "renamed_unread"],
)
def test_a_source_whose_columns_changed_is_staged_again(
    cluster: LocalCluster, tmp_path: Path, capture: str | None, ddl: str
) -> None:
    """A column added to the source blocked every sync (the stage had no such column); one
    dropped and added again with other values left the rows no change named with the old
    ones. The table is staged again whole, its models computed whole, as a migrate of the
    source as it is now would."""
    w = World(
        cluster, tmp_path, "columns",
        "CREATE TABLE src (id int PRIMARY KEY, v text, w text); "
        "INSERT INTO src SELECT i, 'v' || i, 'w' || i FROM generate_series(1, 12) i;",
        ["v"],
    )  # fmt: skip
    assert w.history([ddl, "UPDATE src SET v = 'after' WHERE id = 3"], capture) == w.fresh()


@pytest.mark.parametrize("capture", CAPTURES, ids=["diff", "wal"])
def test_a_source_column_a_model_reads_dropped_fails_the_sync_as_a_migrate(
    cluster: LocalCluster, tmp_path: Path, capture: str | None
) -> None:
    """Dropped from the source, a column the model reads went on in the stage: the rows a
    change named got NULL, the others kept their value, and the sync said all was well
    where a migrate of the source refuses the spec. Staged again, the sync refuses it too."""
    w = World(
        cluster, tmp_path, "dropped",
        "CREATE TABLE src (id int PRIMARY KEY, v text); "
        "INSERT INTO src SELECT i, 'v' || i FROM generate_series(1, 12) i;",
        ["v"],
    )  # fmt: skip
    with pytest.raises(SpecError, match=r"column s\.v does not exist"):
        w.history(["ALTER TABLE src DROP COLUMN v; UPDATE src SET id = 100 WHERE id = 1"], capture)
    with pytest.raises(SpecError, match=r"column s\.v does not exist"):
        w.fresh()


@pytest.mark.parametrize("capture", CAPTURES, ids=["diff", "wal"])
@pytest.mark.parametrize(
    "typ, before, after",
    [("numeric", "1.0", "1.00"), ("double precision", "0", "-0")],
    ids=["numeric_scale", "float_sign"],
)
def test_a_key_changed_to_an_equal_value_of_another_text_is_a_new_key(
    cluster: LocalCluster, tmp_path: Path, capture: str | None, typ: str, before: str, after: str
) -> None:
    """``1.0`` and ``1.00`` (``0`` and ``-0``) are one key to the source's index and to
    Python, two to the ledger, which names a key by its text: the diff saw an update, the
    ledger kept the old key's row beside the new one, and the sync said all was well."""
    w = World(
        cluster, tmp_path, "equalkey",
        f"CREATE TABLE src (id {typ} PRIMARY KEY, v text); "
        f"INSERT INTO src VALUES ('{before}', 'a'), ('2', 'b'), ('3', 'c');",
        ["v"],
    )  # fmt: skip
    changes = [f"UPDATE src SET id = '{after}' WHERE id = '{before}'"]
    assert w.history(changes, capture) == w.fresh()


READER = (
    "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rls_reader') THEN "
    "CREATE ROLE rls_reader LOGIN REPLICATION; END IF; END $$; "
)


@pytest.mark.parametrize("capture", CAPTURES, ids=["diff", "wal"])
def test_rows_a_sources_row_level_security_hides_are_not_taken_for_deleted(
    cluster: LocalCluster, tmp_path: Path, capture: str | None
) -> None:
    """A role a source table's policies apply to sees the rows they show as the whole
    table: a migrate staged a part of it and said all was well, and a policy tightened
    later made the next sync delete from the target every row it hid."""
    w = World(
        cluster, tmp_path, "rls",
        READER + "CREATE TABLE src (id int PRIMARY KEY, v text); "
        "INSERT INTO src SELECT i, 'v' || i FROM generate_series(1, 20) i; "
        "GRANT SELECT ON src TO rls_reader;",
        ["v"],
    )  # fmt: skip
    reader = cluster.conninfo("rls_src", user="rls_reader")
    with w.migrated(reader, capture) as target:
        before = w.state(target)
        assert len(before[1]) == 20
        w.sql(
            w.source,
            "ALTER TABLE src ENABLE ROW LEVEL SECURITY; "
            "CREATE POLICY few ON src FOR SELECT USING (id <= 12); "
            "UPDATE src SET v = 'changed' WHERE id = 1",
        )
        with pytest.raises(FerryError, match=r"row-level security hides rows of public\.src"):
            sync(reader, target, w.spec)
        assert w.state(target) == before
        with pytest.raises(FerryError, match=r"row-level security hides rows of public\.src"):
            migrate(reader, w.target("fresh"), w.spec)


def test_a_source_view_whose_owner_a_policy_applies_to_fails_instead_of_showing_a_part(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A view reads its tables as its owner: a policy that applies to the owner filters
    the view for everyone, where no check of the view itself can see it. Every ferry
    session runs with ``row_security = off``, so the read fails instead."""
    w = World(
        cluster, tmp_path, "rlsview",
        READER + "CREATE TABLE base (id int PRIMARY KEY, v text); "
        "INSERT INTO base SELECT i, 'v' || i FROM generate_series(1, 20) i; "
        "ALTER TABLE base ENABLE ROW LEVEL SECURITY; "
        "CREATE POLICY few ON base FOR SELECT USING (id <= 12); "
        "GRANT SELECT ON base TO rls_reader; "
        "CREATE VIEW src AS SELECT * FROM base; ALTER VIEW src OWNER TO rls_reader;",
        ["v"],
    )  # fmt: skip
    with pytest.raises(psycopg.Error, match='row-level security policy for table "base"'):
        w.fresh()


@pytest.mark.parametrize("capture", CAPTURES, ids=["diff", "wal"])
def test_a_value_staged_as_text_reads_alike_whatever_the_roles_settings(
    cluster: LocalCluster, tmp_path: Path, capture: str | None
) -> None:
    """A composite is staged as its text, which the source printed in its session's forms:
    read by a role whose settings were 'SQL, DMY', an Indian time zone and fewer float
    digits, the 2nd of January came out as the 1st of February, the time zone IST was
    read as Israel's, and 0.1 lost its last digits. A sync by checksums wrote the rows
    again; one from the WAL kept them, and verify (recomputing from the stage) agreed."""
    w = World(
        cluster, tmp_path, "styles",
        "CREATE TYPE pt AS (d date, t timestamptz, i interval, f float8, m money, b bytea); "
        "CREATE TABLE src (id int PRIMARY KEY, c pt, a pt[]); "
        "INSERT INTO src VALUES (1, ROW('2020-01-02', '2020-01-02 03:04:05+00', "
        "'1 day 02:03:04', 0.1, 12.5, '\\x00ff'), ARRAY[ROW('2021-03-04', "
        "'2021-03-04 00:00+05', '-1 year 2 mons', 1e-7, 3, NULL)::pt]), (2, NULL, NULL); "
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'styled') THEN "
        "CREATE ROLE styled LOGIN REPLICATION; END IF; END $$; GRANT SELECT ON src TO styled; "
        "ALTER ROLE styled SET DateStyle = 'SQL, DMY'; "
        "ALTER ROLE styled SET TimeZone = 'Asia/Kolkata'; "
        "ALTER ROLE styled SET IntervalStyle = 'sql_standard'; "
        "ALTER ROLE styled SET extra_float_digits = -3; "
        "ALTER ROLE styled SET bytea_output = 'escape';",
        ["c", "a"],
    )  # fmt: skip
    reader = cluster.conninfo("styles_src", user="styled")
    with w.migrated(reader, capture) as target:
        first = w.state(target)
        w.sql(w.source, "UPDATE src SET c = (SELECT c FROM src WHERE id = 1) WHERE id = 2")
        sync(reader, target, w.spec)
        assert verify(target, w.spec).ok
        got = w.state(target)
    assert got == w.fresh()
    one = ("1", '(2020-01-02,"2020-01-02 03:04:05+00","1 day 02:03:04",0.1,$12.50,"\\\\x00ff")',
           '{"(2021-03-04,\\"2021-03-03 19:00:00+00\\",\\"-10 mons\\",1e-07,$3.00,)"}')  # fmt: skip
    assert one in first[1] and one in got[1]
