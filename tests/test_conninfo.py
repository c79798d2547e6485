"""Every session ferry opens (``conninfo.connect``) sets its own settings, whatever a role's
defaults (``ALTER ROLE ... SET``) say: a history run by roles a DBA configured ends as one
fresh migrate run by the superuser."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ferry import load_spec, migrate
from ferry.embedded import LocalCluster
from ferry.ops.verify import verify
from ferry.sync import wal
from ferry.sync.loop import sync
from tests.helpers import fresh_db, one_table_spec

READER, OWNER = "conn_reader", "conn_owner"
TYPES = "CREATE TYPE mood AS ENUM ('ok', 'sad'); "
LEDGER = (
    "SELECT source_key, status, reason, sqlstate, message, target_uuid, row_hash "
    "FROM ferry.ledger WHERE status <> 'deleted'"
)


@pytest.mark.parametrize(
    ("setting", "capture"),
    [
        # Keys and values in other scripts than Latin did not encode (the target's role), or
        # the stage copy did not convert them (the source's).
        ("client_encoding = 'LATIN1'", None),
        ("client_encoding = 'LATIN1'", "wal"),
        # ferry's sessions failed on each other's writes to the ledger.
        ("default_transaction_isolation = 'serializable'", None),
        ("default_transaction_isolation = 'serializable'", "wal"),
        # '{NULL}'::text[] held the string NULL: the reason of every migrated row.
        ("array_nulls = off", "wal"),
        # An enum's type name did not match itself: the diff refused every sync.
        ("quote_all_identifiers = on", None),
        # An XML fragment did not stage.
        ("xmloption = document", "wal"),
    ],
    ids=["latin1", "latin1_wal", "serializable", "serializable_wal", "array_nulls_wal",
         "quote_all", "xml_document_wal"],
)  # fmt: skip
def test_a_roles_defaults_are_not_ferrys(
    cluster: LocalCluster, tmp_path: Path, setting: str, capture: str | None
) -> None:
    source = fresh_db(cluster, "conn_src")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(
            TYPES + "CREATE TABLE src (id text PRIMARY KEY, v text, n int, m mood, "
            "a text[], x xml); INSERT INTO src SELECT 'k' || i || '日本' || chr(1000 + i), "
            "'v' || i || 'ü', i, 'sad', ARRAY['NULL', NULL], 'a<b/>' "
            "FROM generate_series(1, 300) i; "
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN "
            f"CREATE ROLE {READER} LOGIN REPLICATION; END IF; END $$; "
            f"GRANT SELECT ON src TO {READER}; "
        )
    (tmp_path / "target.sql").write_text(
        TYPES + "CREATE TABLE dst (id uuid PRIMARY KEY, legacy_id text UNIQUE, v text, "
        "n int CHECK (n <> 77), m mood, a text[], x xml);"
    )
    (tmp_path / "spec.toml").write_text(
        one_table_spec(
            "SELECT s.id AS _key, s.id AS legacy_id, s.v, s.n, s.m::public.mood AS m, s.a, "
            "s.x::xml AS x FROM src s",
            "legacy_id",
            20,
        )
    )
    spec = load_spec(tmp_path / "spec.toml")
    fresh_db(cluster, "conn_tgt", tmp_path / "target.sql", owner=OWNER)
    fresh_db(cluster, "conn_fresh", tmp_path / "target.sql", owner=OWNER)
    target = cluster.conninfo("conn_tgt", user=OWNER)
    reader = cluster.conninfo("conn_src", user=READER)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {READER} SET {setting}; ALTER ROLE {OWNER} SET {setting}")
    try:
        migrate(reader, target, spec, changes=capture)
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(
                "UPDATE src SET v = v || 'ß' WHERE n % 7 = 0; DELETE FROM src WHERE n % 11 = 0; "
                "UPDATE src SET n = 77 WHERE n = 5; "
                "INSERT INTO src SELECT 'new' || i || 'Ω', 'x', i FROM generate_series(1, 30) i"
            )
        sync(reader, target, spec)
        report = verify(target, spec)
    finally:
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(f"ALTER ROLE {READER} RESET ALL; ALTER ROLE {OWNER} RESET ALL")
        if capture == "wal":
            with psycopg.connect(cluster.conninfo("conn_tgt")) as conn:
                wal.drop_slot(source, conn, spec)
    assert report.ok, report.summary()
    fresh = cluster.conninfo("conn_fresh", user=OWNER)
    migrate(source, fresh, spec)
    with psycopg.connect(target) as a, psycopg.connect(fresh) as b:
        assert set(a.execute(LEDGER)) == set(b.execute(LEDGER))
        rows = "SELECT legacy_id, v, n, m::text, a, x::text FROM dst"
        assert set(map(str, a.execute(rows))) == set(map(str, b.execute(rows)))
        assert len(set(map(str, a.execute(rows)))) == 300 - 27 - 1 + 30
        assert b.execute(
            "SELECT count(*) FILTER (WHERE reason IS NULL), count(*) FILTER (WHERE "
            "reason = 'check_violation') FROM ferry.ledger WHERE status = 'migrated' OR "
            "status = 'quarantined'"
        ).fetchone() == (302, 1)
