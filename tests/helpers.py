"""Small helpers shared by tests: databases from SQL files, table checksums."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from ferry.embedded import LocalCluster


def fresh_db(
    cluster: LocalCluster, name: str, script: Path | None = None, owner: str | None = None
) -> str:
    """Create a database (dropping any old one) and run a SQL script in it."""
    conninfo = cluster.create_database(name, drop=True)
    if script is not None or owner is not None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            if owner is not None:
                conn.execute(
                    sql.SQL(
                        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {r}) "
                        "THEN CREATE ROLE {i} LOGIN NOSUPERUSER; END IF; END $$"
                    ).format(r=sql.Literal(owner), i=sql.Identifier(owner))
                )
                conn.execute(
                    sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                        sql.Identifier(name), sql.Identifier(owner)
                    )
                )
                conn.execute(
                    sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner))
                )
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
            if script is not None:
                conn.execute(script.read_text())
    return conninfo


def table_checksum(conninfo: str, table: str, order: str = "id") -> tuple[int, str]:
    """Row count and md5 of all rows in a stable order: equal checksums, equal tables."""
    schema, name = table.split(".")
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t.{o})), '') "
                "FROM {t} t"
            ).format(t=sql.Identifier(schema, name), o=sql.Identifier(order))
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def outside_pytest(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A directory for a cluster of a test's own, outside pytest's temporary tree: as root
    the server runs as another user, which must traverse every parent, and each pytest
    session that starts takes the others' bits off ``/tmp/pytest-of-root`` (a cluster of
    another session running under it then lost its data directory: PANIC)."""
    return tempfile.TemporaryDirectory(prefix=prefix)


def one_table_spec(model_sql: str, legacy_column: str, chunk_size: int) -> str:
    """A spec's text: the source table ``public.src`` (key ``id``) into ``public.dst`` by
    one model, ``model_sql``."""
    return (
        'name = "one_table"\nnamespace = "0c7f1a2e-5b4d-4e8f-9a1b-2c3d4e5f6a7b"\n'
        f"chunk_size = {chunk_size}\n\n"
        '[[sources]]\nname = "src"\ntable = "public.src"\nkey = "id"\n\n'
        '[[models]]\nname = "rows"\ntarget = "public.dst"\nsource = "src"\n'
        f"legacy_column = \"{legacy_column}\"\nsql = '''{model_sql}'''\n"
    )
