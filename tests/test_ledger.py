"""The run record: every run closes as ok or failed, and a failure never quotes a row."""

from __future__ import annotations

import datetime as dt
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
        # A database error's message can quote the row it refused: errors.describe keeps
        # its condition, SQLSTATE and primary message with quoted values cut.
        with pytest.raises(psycopg.errors.UniqueViolation), ledger.recorded(conn, spec, "retry"):
            conn.execute("CREATE TEMP TABLE t (email text UNIQUE)")
            conn.execute("INSERT INTO t VALUES ('patient@example.org'), ('patient@example.org')")
        assert conn.execute(RUNS).fetchall() == [
            ("sync", "ok", {"rows": 3}, None),
            ("retry", "failed", {}, "source lib_book: 2 keys without a fate"),
            (
                "retry", "failed", {},
                'unique_violation (23505): duplicate key value violates unique constraint '
                '"t_email_key"',
            ),
        ]  # fmt: skip
        assert "patient" not in str(conn.execute(RUNS).fetchall())
        assert run_id == conn.execute("SELECT min(run_id) FROM ferry.runs").fetchone()[0]


# What schema 4 created: the ledger in one table (frozen here, as old ledgers hold it).
LEDGER_V4 = """
CREATE TABLE ferry.ledger (
    model text NOT NULL, source_key text NOT NULL, source_table text NOT NULL,
    accounts boolean NOT NULL,
    status text NOT NULL
        CHECK (status IN ('migrated', 'merged', 'quarantined', 'excluded', 'deleted')),
    reason text, repairs text[] NOT NULL DEFAULT '{}', sqlstate text, message text,
    target_table text NOT NULL, target_uuid uuid, row_hash text,
    conflict boolean NOT NULL DEFAULT false, decided_by text, decision text,
    decided_at timestamptz, run_id bigint NOT NULL, first_run_id bigint NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    tries integer NOT NULL DEFAULT 1,
    PRIMARY KEY (model, source_key)
);
CREATE INDEX ledger_quarantined_idx ON ferry.ledger (model) WHERE status = 'quarantined';
INSERT INTO ferry.ledger (model, source_key, source_table, accounts, status, reason,
                          target_table, run_id, first_run_id)
VALUES ('authors', '1', 'lib_author', true, 'migrated', NULL, 'public.authors', 1, 1),
       ('authors', '4', 'lib_author', true, 'quarantined', 'unknown_country',
        'public.authors', 1, 1),
       ('books', '10', 'lib_book', true, 'migrated', NULL, 'public.books', 1, 1);
UPDATE ferry.meta SET version = 4;
"""
ROWS = "SELECT model, source_key, status, reason FROM ferry.ledger ORDER BY 1, 2"


def test_a_ledger_in_one_table_is_split_into_one_partition_per_model(
    cluster: LocalCluster,
) -> None:
    spec = load_spec(SPEC)
    target = fresh_db(cluster, "ledger_v4")
    with psycopg.connect(target) as conn:
        ledger.ensure_schema(conn, spec)
        conn.execute("DROP TABLE ferry.ledger")
        conn.execute(LEDGER_V4)
        before = conn.execute(ROWS).fetchall()
        conn.commit()
        ledger.ensure_schema(conn, spec)
        assert conn.execute(ROWS).fetchall() == before
        parts = conn.execute(
            "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits "
            "JOIN pg_class c ON c.oid = inhrelid WHERE inhparent = 'ferry.ledger'::regclass "
            "ORDER BY 1"
        ).fetchall()
        assert parts == [
            ("ledger_authors", "FOR VALUES IN ('authors')"),
            ("ledger_books", "FOR VALUES IN ('books')"),
        ]
        assert conn.execute("SELECT to_regclass('ferry.ledger_unpartitioned')").fetchone() == (
            None,
        )
        # The primary key still holds, now per partition.
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO ferry.ledger (model, source_key, source_table, accounts, status, "
                "target_table, run_id, first_run_id) "
                "VALUES ('books', '10', 'lib_book', true, 'migrated', 'public.books', 2, 2)"
            )


def test_a_long_model_name_gets_a_partition_name_postgresql_keeps_whole() -> None:
    a, b = "m" * 70 + "_a", "m" * 70 + "_b"
    assert ledger.partition_name("books") == "ledger_books"
    assert len(ledger.partition_name(a).encode()) <= 63
    assert ledger.partition_name(a) != ledger.partition_name(b)


EVENTS_SPEC = """
name = "events"
namespace = "6b0c7e2a-1f3d-4c5b-9a8e-7d6c5b4a3f21"
[[sources]]
name = "events"
table = "public.events"
key = ["at"]
[[models]]
name = "events"
target = "public.events"
source = "events"
sql = "SELECT e.at AS _key, e.at AS happened_at, e.at::date AS day, e.what FROM events e"
"""


def test_a_ledger_keeps_the_settings_its_keys_were_read_with(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timestamptz key reads as text in the session's TimeZone and DateStyle, which PGTZ
    and PGDATESTYLE set: a sync from a shell with others must still find every key (and
    its UUID) where the migrate left it, not delete and insert every row."""
    from ferry.engine.pipeline import migrate
    from ferry.ops.verify import verify
    from ferry.sync.loop import sync

    (tmp_path / "spec.toml").write_text(EVENTS_SPEC)
    spec = load_spec(tmp_path / "spec.toml")
    source = fresh_db(cluster, "tz_src")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (at timestamptz PRIMARY KEY, what text)")
        conn.execute(
            "INSERT INTO events VALUES ('2024-03-01 20:30:00+00', 'a'), "
            "('2024-03-02 02:00:00+00', 'b'), ('2024-03-02 12:00:00+00', 'c')"
        )
    fresh_db(cluster, "tz_tgt", owner="tz_owner")
    target = cluster.conninfo("tz_tgt", user="tz_owner")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE events (id uuid PRIMARY KEY, happened_at timestamptz, day date, "
            "what text)"
        )

    def state() -> tuple[list[tuple], list[tuple]]:
        with psycopg.connect(target) as conn:
            conn.execute("SET TimeZone = 'UTC'")
            conn.execute("SET DateStyle = 'ISO'")
            return (
                conn.execute(
                    "SELECT model, source_key, status, target_uuid FROM ferry.ledger ORDER BY 2"
                ).fetchall(),
                conn.execute("SELECT id, happened_at, day, what FROM events ORDER BY 2").fetchall(),
            )

    monkeypatch.setenv("PGTZ", "Asia/Tokyo")
    monkeypatch.setenv("PGDATESTYLE", "Postgres, DMY")
    migrate(source, target, spec)
    before = state()
    assert [r[2] for r in before[1]] == [  # dates as Tokyo had them
        dt.date(2024, 3, 2),
        dt.date(2024, 3, 2),
        dt.date(2024, 3, 2),
    ]
    with psycopg.connect(target) as conn:
        kept = dict(conn.execute("SELECT name, value FROM ferry.session_settings").fetchall())
    assert kept["TimeZone"] == "Asia/Tokyo" and set(kept) == set(ledger.IDENTITY_SETTINGS)
    assert kept["DateStyle"] == "ISO, DMY"  # printed as psycopg reads; the input order kept
    with psycopg.connect(target) as conn:  # a ledger from before lc_monetary was kept
        conn.execute("DELETE FROM ferry.session_settings WHERE name = 'lc_monetary'")

    monkeypatch.setenv("PGTZ", "America/New_York")
    monkeypatch.setenv("PGDATESTYLE", "SQL, DMY")
    done = sync(source, target, spec)
    assert not done.changed, done.counts
    assert state() == before
    with psycopg.connect(target) as conn:
        again = dict(conn.execute("SELECT name, value FROM ferry.session_settings").fetchall())
    assert again == kept  # the other settings as recorded; lc_monetary recorded again
    report = verify(target, spec)
    assert report.ok, report.summary()
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("UPDATE events SET what = 'b2' WHERE what = 'b'")
    sync(source, target, spec)
    after = state()
    assert after[0] == before[0]  # the same keys, the same UUIDs
    assert [r[3] for r in after[1]] == ["a", "b2", "c"]
