"""Change capture from the source's WAL (``ferry.wal``), on the embedded cluster started with
``wal_level = logical``: one legacy database, two targets, one syncing from a replication
slot and one by the checksum diff, must end identical (target rows and ledger) after the
same changes, and equal to a fresh migrate of the source; through inserts, updates, deletes,
key changes of composite keys, a TRUNCATE, an unlogged table, a sync that dies, and a slot
dropped behind ferry's back."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import sql

import ferry.engine.settle
from ferry.embedded import LocalCluster
from ferry.engine.pipeline import migrate
from ferry.errors import ChangeCaptureError, RollbackError
from ferry.ops import rollback, status
from ferry.ops.verify import verify
from ferry.spec import Spec, load_spec
from ferry.sync import wal
from ferry.sync.loop import sync
from tests.helpers import fresh_db

SPEC_DIR = Path(__file__).parent / "specs" / "shop"
OWNER = "shop_owner"


def ledger_rows(target: str) -> set[tuple]:
    with psycopg.connect(target) as conn:
        return set(
            conn.execute(
                "SELECT model, source_key, status, reason, repairs::text, target_uuid, row_hash, "
                "conflict FROM ferry.ledger"
            )
        )


def target_rows(target: str) -> set[tuple]:
    with psycopg.connect(target) as conn:
        return {
            *conn.execute("SELECT 'order', id::text, '', customer, 0 FROM orders"),
            *conn.execute("SELECT 'line', id::text, order_id::text, sku, qty FROM lines"),
            *conn.execute("SELECT 'note', id::text, line_id::text, body, 0 FROM notes"),
            *conn.execute("SELECT 'return', id::text, line_id::text, reason, 0 FROM returns"),
        }


def staged_records(target: str, spec: Spec) -> dict[str, int]:
    """Each source's staged rows as its record says, checked against the stage's count
    (a sync from the WAL adds to the record what it changed, not counting 2M rows)."""
    with psycopg.connect(target) as conn:
        records = dict(conn.execute("SELECT source, rows FROM ferry.staged").fetchall())
        for src in spec.sources:
            stage = sql.Identifier(spec.stage_schema, src.stage_table)
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(stage)).fetchone()
            assert row is not None and records[src.name] == row[0], src.name
    return records


def slot_of(source: str) -> tuple[str, str] | None:
    with psycopg.connect(source) as conn:
        row = conn.execute(
            "SELECT slot_name, confirmed_flush_lsn::text FROM pg_replication_slots "
            "WHERE database = current_database()"
        ).fetchone()
    return (row[0], row[1]) if row else None


class Shop:
    """The composite-key shop: a source, a target fed by the WAL, one by checksums."""

    def __init__(self, cluster: LocalCluster, tmp: Path) -> None:
        self.cluster = cluster
        (tmp / "spec.toml").write_text((SPEC_DIR / "spec.toml").read_text())
        (tmp / "returns.csv").write_text("order_id,line_no,reason\n1,1,broken\n7,7,lost\n")
        self.spec: Spec = load_spec(tmp / "spec.toml")
        self.source = fresh_db(cluster, "wal_src", SPEC_DIR / "source.sql")
        fresh_db(cluster, "wal_tgt", SPEC_DIR / "target.sql", owner=OWNER)
        fresh_db(cluster, "wal_sum", SPEC_DIR / "target.sql", owner=OWNER)
        self.wal = cluster.conninfo("wal_tgt", user=OWNER)
        self.sum = cluster.conninfo("wal_sum", user=OWNER)
        migrate(self.source, self.wal, self.spec, changes="wal")
        migrate(self.source, self.sum, self.spec)

    def change(self, *statements: str) -> None:
        with psycopg.connect(self.source, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    def sync_both(self) -> tuple[dict, dict]:
        by_wal = sync(self.source, self.wal, self.spec)
        by_sum = sync(self.source, self.sum, self.spec)
        assert by_wal.counts["changes"] == "wal" and "changes" not in by_sum.counts
        return by_wal.counts, by_sum.counts

    def assert_same(self, fresh: bool = False) -> None:
        """Both targets alike, the WAL's verified; with ``fresh``, also equal to a fresh
        migrate of the source."""
        assert target_rows(self.wal) == target_rows(self.sum)
        assert ledger_rows(self.wal) == ledger_rows(self.sum)
        assert staged_records(self.wal, self.spec) == staged_records(self.sum, self.spec)
        report = verify(self.wal, self.spec)
        assert report.ok, report.summary()
        if not fresh:
            return
        fresh_db(self.cluster, "wal_fresh", SPEC_DIR / "target.sql", owner=OWNER)
        fresh = self.cluster.conninfo("wal_fresh", user=OWNER)
        migrate(self.source, fresh, self.spec)
        assert target_rows(self.wal) == target_rows(fresh)


@pytest.fixture(scope="module")
def decoding(cluster: LocalCluster) -> None:
    """The server can decode with test_decoding (contrib: Debian's PostgreSQL has it, the
    PyPI wheel's build does not): else these tests say why they do not run."""
    dsn = cluster.create_database("wal_probe", drop=True)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_create_logical_replication_slot('ferry_probe', %s, true)", [wal.PLUGIN]
            )
    except psycopg.Error as exc:
        pytest.skip(f"no logical decoding with {wal.PLUGIN} on the test cluster: {exc}")


@pytest.fixture()
def shop(cluster: LocalCluster, tmp_path: Path, decoding: None) -> Shop:
    return Shop(cluster, tmp_path)


def test_wal_and_checksums_give_the_same_target_and_ledger(shop: Shop) -> None:
    assert slot_of(shop.source) is not None
    shop.change(
        "INSERT INTO shop_order VALUES (3, 'Cy')",
        "INSERT INTO order_line VALUES (3, 2, 'f', 4)",  # its order arrives in the same delta
        "UPDATE order_line SET qty = 5 WHERE order_id = 2 AND line_no = 2",  # now allowed
        "UPDATE line_note SET body = 'new body' WHERE tag = 'q\"t'",
        "UPDATE line_note SET tag = 'a, (b)' WHERE tag = 'a b'",  # a key change
        "UPDATE order_line SET line_no = 7 WHERE order_id = 1 AND line_no = 2",  # key change
        "DELETE FROM shop_order WHERE id = 2",
        "BEGIN; INSERT INTO shop_order VALUES (9, 'Gone'); DELETE FROM shop_order WHERE id = 9;"
        " COMMIT",
    )
    by_wal, by_sum = shop.sync_both()
    for k in ("source_inserted", "source_updated", "source_deleted", "inserted", "updated",
              "deleted", "fixed_on_retry", "newly_quarantined"):  # fmt: skip
        assert by_wal[k] == by_sum[k], k
    assert by_wal["source_inserted"] >= 4 and by_wal["source_deleted"] >= 3
    assert by_wal["wal"]["full"] == {}  # every key came from the WAL
    shop.assert_same(fresh=True)
    # Nothing more happened: nothing read but the slot, nothing written.
    again = sync(shop.source, shop.wal, shop.spec)
    assert not again.changed and again.counts["wal"]["changes"] == 0
    assert again.counts["bytes_from_source"] == 0
    # The slot moved on only after the sync committed: to where the sync read.
    with psycopg.connect(shop.wal) as conn:
        recorded = conn.execute("SELECT lsn::text FROM ferry.changes").fetchone()
    assert recorded is not None and recorded[0] == again.counts["wal"]["upto"]


def line_notes_whole(shop: Shop, why: str, *changes: str) -> dict:
    """``changes`` to line_note and a change of order 1, synced: the WAL's sync takes order 1
    from the slot and compares line_note whole, saying ``why``."""
    shop.change(*changes, "UPDATE shop_order SET customer = 'Anne' WHERE id = 1")
    by_wal, _ = shop.sync_both()
    full = by_wal["wal"]["full"]
    assert set(full) == {"line_note"} and why in full["line_note"]
    assert by_wal["wal"]["keys"]["shop_order"] == 1
    return by_wal


def test_truncate_falls_back_to_a_full_diff_of_that_table(shop: Shop) -> None:
    by_wal = line_notes_whole(
        shop, "TRUNCATE", "TRUNCATE line_note",
        "INSERT INTO line_note VALUES (1, 1, 'fresh', 'after the truncate')",
    )  # fmt: skip
    assert any("line_note" in n and "TRUNCATE" in n for n in by_wal["notes"])
    shop.assert_same()


def test_an_unlogged_table_is_compared_by_checksums(shop: Shop) -> None:
    """An unlogged table writes no WAL, so no change of it is ever decoded: a sync from the
    slot found nothing there, every time, and the target kept the table as it was staged."""
    shop.change("ALTER TABLE line_note SET UNLOGGED")
    shop.sync_both()
    line_notes_whole(
        shop, "unlogged", "UPDATE line_note SET body = 'edited' WHERE order_id = 1 AND line_no = 2",
        "INSERT INTO line_note VALUES (1, 1, 'new', 'written unlogged')",
    )  # fmt: skip
    shop.assert_same(fresh=True)
    # Logged again: the changes made before are in no WAL either; the table was rewritten.
    shop.change(
        "DELETE FROM line_note WHERE tag = 'new'", "ALTER TABLE line_note SET LOGGED"
    )  # fmt: skip
    by_wal, _ = shop.sync_both()
    assert set(by_wal["wal"]["full"]) == {"line_note"}
    shop.assert_same(fresh=True)


def test_a_sync_that_dies_after_reading_loses_nothing(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = slot_of(shop.source)
    shop.change(
        "UPDATE order_line SET sku = 'z' WHERE order_id = 1 AND line_no = 1",
        "DELETE FROM line_note WHERE tag = 'x,y'",
        "INSERT INTO shop_order VALUES (4, 'Dee')",
    )

    def dies(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed after re-staging, before the target commit")

    with monkeypatch.context() as m:
        m.setattr(ferry.engine.settle, "run", dies)
        with pytest.raises(RuntimeError):
            sync(shop.source, shop.wal, shop.spec)
    assert slot_of(shop.source) == before  # not advanced: the changes are still there
    # The re-run reads the same changes (the stage already has them: the resync queue
    # brings them to the ledger).
    shop.sync_both()
    shop.assert_same(fresh=True)
    after = slot_of(shop.source)
    assert after is not None and before is not None
    assert wal.lsn_int(after[1]) > wal.lsn_int(before[1])


def test_a_slot_dropped_behind_ferrys_back_falls_back_and_is_made_again(shop: Shop) -> None:
    found = slot_of(shop.source)
    assert found is not None
    shop.change(
        f"SELECT pg_drop_replication_slot('{found[0]}')",
        "UPDATE shop_order SET customer = 'Bobby' WHERE id = 2",
        "DELETE FROM order_line WHERE order_id = 3",
    )
    by_wal, _ = shop.sync_both()
    assert any("gone" in n for n in by_wal["notes"])
    assert set(by_wal["wal"]["full"]) == {"shop_order", "order_line", "line_note"}
    shop.assert_same()
    again = slot_of(shop.source)
    assert again is not None and again[0] == found[0]
    # The new slot carries on: the next change comes from the WAL again.
    shop.change("UPDATE line_note SET body = 'later' WHERE tag = 'z'")
    by_wal, _ = shop.sync_both()
    assert by_wal["wal"]["full"] == {} and by_wal["wal"]["keys"] == {"line_note": 1}
    shop.assert_same()


def test_status_cleanup_and_rollback_all_drop_the_slot(shop: Shop) -> None:
    shop.change("UPDATE shop_order SET customer = 'A' WHERE id = 1")
    found = status.collect(shop.wal, shop.spec, shop.source, max_slot_lag=0)
    assert found.slot is not None and found.slot.exists and found.slot.lag_bytes
    assert found.slot.problem and "holds" in found.slot.problem  # over a lag of 0 bytes
    assert status.check(found, 3600)
    quiet = status.collect(shop.wal, shop.spec)  # no source: the ledger's side only
    assert quiet.slot is not None and not quiet.slot.read and quiet.slot.problem is None
    with pytest.raises(RollbackError, match="--source"):
        rollback.rollback(shop.wal, shop.spec, all_=True)
    assert slot_of(shop.source) is not None
    done = rollback.rollback(shop.wal, shop.spec, all_=True, source=shop.source)
    assert done.slot_dropped and slot_of(shop.source) is None
    assert status.collect(shop.wal, shop.spec).slot is None
    # cleanup: a slot made again, dropped; later syncs compare by checksums
    migrate(shop.source, shop.wal, shop.spec, changes="wal")
    assert slot_of(shop.source) is not None
    with psycopg.connect(shop.wal) as conn:
        assert wal.drop_slot(shop.source, conn, shop.spec)
    assert slot_of(shop.source) is None
    assert "changes" not in sync(shop.source, shop.wal, shop.spec).counts


def test_a_source_without_logical_decoding_is_refused_clearly(
    cluster: LocalCluster, tmp_path: Path, decoding: None
) -> None:
    (tmp_path / "spec.toml").write_text((SPEC_DIR / "spec.toml").read_text())
    (tmp_path / "returns.csv").write_text("order_id,line_no,reason\n")
    spec = load_spec(tmp_path / "spec.toml")
    source = fresh_db(cluster, "wal_norepl", SPEC_DIR / "source.sql")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'wal_reader') "
            "THEN CREATE ROLE wal_reader LOGIN NOREPLICATION; END IF; END $$"
        )
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO wal_reader")
    fresh_db(cluster, "wal_norepl_tgt", SPEC_DIR / "target.sql", owner=OWNER)
    target = cluster.conninfo("wal_norepl_tgt", user=OWNER)
    reader = cluster.conninfo("wal_norepl", user="wal_reader")
    with pytest.raises(ChangeCaptureError, match="no REPLICATION attribute") as err:
        migrate(reader, target, spec, changes="wal")
    assert "wal_reader" in str(err.value) and "checksums" in str(err.value)
    assert slot_of(source) is None
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM ferry.changes").fetchone() == (0,)


def test_a_partition_whose_name_holds_a_colon_is_followed(
    cluster: LocalCluster, tmp_path: Path, decoding: None
) -> None:
    """Changes are picked by the text before their first ": " (one hashed lookup). A spec
    names plain tables, but their partitions, whose changes the WAL names, may be called
    anything: a quoted name holding ": ", and a TRUNCATE listing it after another table,
    still count."""
    (tmp_path / "spec.toml").write_text(
        'name = "odd"\nnamespace = "3c1f5a2e-7b9d-4e6f-8a1b-2c3d4e5f6a7b"\n'
        '[[sources]]\nname = "log"\ntable = "public.log"\n'
        '[[models]]\nname = "entries"\ntarget = "public.entries"\nsource = "log"\n'
        'legacy_column = "legacy_id"\n'
        'sql = "SELECT l.id AS _key, l.id AS legacy_id, l.body FROM log l"\n'
    )
    spec = load_spec(tmp_path / "spec.toml")
    source = fresh_db(cluster, "wal_odd")
    fresh_db(cluster, "wal_odd_tgt", owner=OWNER)
    target = cluster.conninfo("wal_odd_tgt", user=OWNER)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("CREATE TABLE entries (id uuid PRIMARY KEY, legacy_id int UNIQUE, body text)")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("CREATE TABLE log (id int PRIMARY KEY, body text) PARTITION BY RANGE (id)")
        conn.execute("""CREATE TABLE "log: low" PARTITION OF log FOR VALUES FROM (0) TO (10)""")
        conn.execute("CREATE TABLE log_high PARTITION OF log FOR VALUES FROM (10) TO (100)")
        conn.execute("CREATE TABLE scratch (id int PRIMARY KEY)")  # not the spec's
        conn.execute("INSERT INTO log VALUES (1, 'one'), (2, 'two'), (11, 'eleven')")
    migrate(source, target, spec, changes="wal")

    def bodies() -> set[tuple]:
        with psycopg.connect(target) as conn:
            return set(conn.execute("SELECT legacy_id, body FROM entries"))

    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("INSERT INTO log VALUES (3, 'three')")
        conn.execute("UPDATE log SET body = 'uno' WHERE id = 1")
        conn.execute("INSERT INTO scratch VALUES (1)")
    done = sync(source, target, spec)
    assert done.counts["wal"]["keys"] == {"log": 2} and done.counts["wal"]["full"] == {}
    assert bodies() == {(1, "uno"), (2, "two"), (3, "three"), (11, "eleven")}
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("TRUNCATE scratch, log")
        conn.execute("INSERT INTO log VALUES (4, 'four')")
    done = sync(source, target, spec)
    assert "TRUNCATE" in done.counts["wal"]["full"]["log"]
    assert bodies() == {(4, "four")}


def test_the_decoded_row_is_read_for_its_key_only() -> None:
    src = load_spec(SPEC_DIR / "spec.toml").source("line_note")
    tables = {("public", "line_note"): wal._Table(src, True, "public.line_note")}

    def keys_of(text: str) -> tuple[dict, dict]:
        keys: dict = {}
        full: dict = {}
        wal._Row(text, tables, keys, full).read()
        return keys, full

    row = (
        "table public.line_note: UPDATE: old-key: order_id[integer]:1 line_no[integer]:1 "
        "tag[text]:'it''s new-tuple: x' new-tuple: order_id[integer]:1 line_no[integer]:2 "
        "tag[text]:'a b' body[text]:'secret'"
    )
    keys, full = keys_of(row)
    assert keys == {"line_note": {("1", "1", "it's new-tuple: x"), ("1", "2", "a b")}}
    assert full == {}
    keys, full = keys_of("table public.line_note: DELETE: (no-tuple-data)")
    assert keys == {} and "line_note" in full
    keys, full = keys_of(
        "table public.line_note: UPDATE: order_id[integer]:1 line_no[integer]:1 "
        "tag[text]:unchanged-toast-datum body[text]:'x'"
    )
    assert keys == {} and "line_note" in full
    keys, full = keys_of("table public.other: INSERT: id[integer]:1")
    assert keys == {} and full == {}


def test_what_the_source_lacks_is_said() -> None:
    """wal_level cannot be changed on the shared test cluster: the check's answer to what a
    server reports, with a stand-in connection."""

    class Reports:
        def __init__(self, row: tuple) -> None:
            self.row = row

        def execute(self, query: str) -> Reports:
            return self

        def fetchone(self) -> tuple:
            return self.row

        def commit(self) -> None:
            pass

    with pytest.raises(ChangeCaptureError) as err:
        wal.check_source(Reports(("replica", 10, 10, True, 0, "app", "UTF8")))  # type: ignore[arg-type]
    assert "wal_level is replica, not logical" in str(err.value)
    with pytest.raises(ChangeCaptureError, match="no free replication slot"):
        wal.check_source(Reports(("logical", 2, 10, True, 2, "app", "UTF8")))  # type: ignore[arg-type]
    wal.check_source(Reports(("logical", 10, 10, True, 0, "app", "UTF8")))  # type: ignore[arg-type]


TWO_SOURCES = """name = "two"
namespace = "0c7f1a2e-5b4d-4e8f-9a1b-2c3d4e5f6a7b"
chunk_size = 5
{sources}{models}"""


def test_a_roles_idle_timeout_does_not_close_the_snapshot_the_stage_waits_for(
    cluster: LocalCluster, tmp_path: Path, decoding: None
) -> None:
    """The replication connection that made the slot holds its snapshot, idle, until the
    last source was staged in it: a role's ``idle_session_timeout`` closed it while the
    first source was copied, and the migrate failed on an "invalid snapshot identifier"."""
    source = fresh_db(cluster, "wal_idle")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE a0 (id int PRIMARY KEY, v text); "
            "INSERT INTO a0 SELECT i, 'v' FROM generate_series(1, 10) i; "
            "CREATE VIEW a AS SELECT id, v || pg_sleep(0.1)::text AS v FROM a0; "
            "CREATE TABLE b (id int PRIMARY KEY, v text); "
            "INSERT INTO b SELECT i, 'w' FROM generate_series(1, 10) i; "
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'idler') THEN "
            "CREATE ROLE idler LOGIN REPLICATION; END IF; END $$; "
            "GRANT SELECT ON a, a0, b TO idler; "
            "ALTER ROLE idler SET idle_session_timeout = '300ms'; "
            "ALTER ROLE idler SET idle_in_transaction_session_timeout = '300ms'"
        )
    (tmp_path / "target.sql").write_text(
        "CREATE TABLE da (id uuid PRIMARY KEY, legacy_id int UNIQUE, v text); "
        "CREATE TABLE db (id uuid PRIMARY KEY, legacy_id int UNIQUE, v text);"
    )
    (tmp_path / "spec.toml").write_text(
        TWO_SOURCES.format(
            sources="".join(
                f'\n[[sources]]\nname = "{s}"\ntable = "public.{s}"\nkey = "id"\n' for s in "ab"
            ),
            models="".join(
                f'\n[[models]]\nname = "m{s}"\ntarget = "public.d{s}"\nsource = "{s}"\n'
                f'legacy_column = "legacy_id"\n'
                f'sql = "SELECT s.id AS _key, s.id AS legacy_id, s.v FROM {s} s"\n'
                for s in "ab"
            ),
        )
    )
    spec = load_spec(tmp_path / "spec.toml")
    fresh_db(cluster, "wal_idle_tgt", tmp_path / "target.sql", owner=OWNER)
    target = cluster.conninfo("wal_idle_tgt", user=OWNER)
    reader = cluster.conninfo("wal_idle", user="idler")
    try:
        migrate(reader, target, spec, changes="wal", jobs=1)
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute("UPDATE b SET v = 'x' WHERE id = 3")
        assert sync(reader, target, spec).counts["updated"] == 1
        with psycopg.connect(target) as conn:
            assert conn.execute("SELECT count(*) FROM da").fetchone() == (10,)
            assert conn.execute("SELECT v FROM db WHERE legacy_id = 3").fetchone() == ("x",)
    finally:
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute("ALTER ROLE idler RESET ALL")
        with psycopg.connect(target) as conn:
            wal.drop_slot(source, conn, spec)
