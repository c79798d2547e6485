"""ferry's schemas stay closed to every role but their owner, at every run that writes, on a
target whose default privileges grant everything new to Supabase's API roles."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ferry.embedded import LocalCluster
from ferry.engine.pipeline import migrate
from ferry.errors import PrivilegeError
from ferry.ledger import privileges
from ferry.ops import quarantine, rollback
from ferry.spec import Spec, load_spec
from ferry.sync.loop import sync
from tests.helpers import fresh_db

LIB = Path(__file__).parent / "specs" / "library"
OWNER = "priv_owner"
API = ("anon", "authenticated")
SCHEMAS = ("ferry_stage", "ferry")

# What many Supabase projects carry: everything the owner creates is granted to the API.
_SUPABASE_DEFAULTS = """
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT USAGE ON SCHEMAS TO anon, authenticated;
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT ALL ON TABLES TO anon, authenticated;
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT ALL ON SEQUENCES TO anon, authenticated;
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT EXECUTE ON FUNCTIONS TO anon, authenticated
"""


@pytest.fixture()
def exposed(cluster: LocalCluster) -> tuple[str, str, str, Spec]:
    """Source, ferry's target conninfo, the superuser's, and the spec, on a target whose
    API roles can log in (trust auth) and get every new object by default."""
    source = fresh_db(cluster, "priv_src", LIB / "source.sql")
    admin = fresh_db(cluster, "priv_tgt", LIB / "target.sql", owner=OWNER)
    with psycopg.connect(admin, autocommit=True) as conn:
        for role in (*API, "api_member"):
            conn.execute(
                sql.SQL(
                    "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {r}) "
                    "THEN CREATE ROLE {i}; END IF; END $$"
                ).format(r=sql.Literal(role), i=sql.Identifier(role))
            )
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
        # A role that holds authenticated's privileges through membership.
        conn.execute("GRANT authenticated TO api_member")
        for statement in _SUPABASE_DEFAULTS.split(";"):
            conn.execute(sql.SQL(statement).format(owner=sql.Identifier(OWNER)))
    return source, cluster.conninfo("priv_tgt", user=OWNER), admin, load_spec(LIB / "spec.toml")


def _objects(admin: str) -> list[tuple[str, str]]:
    """Every table and sequence of ferry's schemas, as (kind, qualified name)."""
    with psycopg.connect(admin) as conn:
        rows = conn.execute(
            "SELECT c.relkind::text, quote_ident(n.nspname) || '.' || quote_ident(c.relname) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'S') ORDER BY 2",
            [list(SCHEMAS)],
        ).fetchall()
    return [(kind, name) for kind, name in rows]


def _assert_closed(cluster: LocalCluster, admin: str) -> None:
    """Connected as each API role (and a member of one): nothing of ferry's is readable."""
    objects = _objects(admin)
    assert any(name.startswith("ferry_stage.") for _, name in objects)
    assert any(name == "ferry.ledger" for _, name in objects)
    for role in (*API, "api_member"):
        with psycopg.connect(cluster.conninfo("priv_tgt", user=role), autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
            for schema in SCHEMAS:
                row = conn.execute(
                    "SELECT has_schema_privilege(%s, 'USAGE'), has_schema_privilege(%s, 'CREATE')",
                    [schema, schema],
                ).fetchone()
                assert row == (False, False), (role, schema)
            for kind, name in objects:
                query = (
                    sql.SQL("SELECT last_value FROM {}") if kind == "S" else
                    sql.SQL("SELECT count(*) FROM {}")
                ).format(sql.SQL(name))  # fmt: skip
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(query)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(
                    "SELECT ferry.key_uuid(gen_random_uuid(), 'lib_book', '10')"
                )  # fmt: skip
    with psycopg.connect(admin) as conn:
        assert privileges.leaks(conn, SCHEMAS) == []
        no_rls = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') "
            "AND (NOT c.relrowsecurity OR c.relforcerowsecurity)",
            [list(SCHEMAS)],
        ).fetchall()
        assert no_rls == []


def test_closed_after_migrate_and_sync(
    exposed: tuple[str, str, str, Spec], cluster: LocalCluster
) -> None:
    source, target, admin, spec = exposed
    migrate(source, target, spec)
    _assert_closed(cluster, admin)
    # A change makes the sync write; and an operator opened ferry's schemas by hand.
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("UPDATE lib_book SET title = 'Changed' WHERE id = 10")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("GRANT USAGE ON SCHEMA ferry_stage, ferry TO anon")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA ferry_stage TO PUBLIC")
        conn.execute("GRANT SELECT (kind) ON ferry.runs TO api_member")
        conn.execute("GRANT SELECT ON ferry.ledger TO authenticated")
        conn.execute("ALTER DEFAULT PRIVILEGES FOR ROLE priv_owner IN SCHEMA ferry_stage "
                     "GRANT SELECT ON TABLES TO authenticated")  # fmt: skip
        conn.execute("ALTER TABLE ferry.runs DISABLE ROW LEVEL SECURITY")
    with psycopg.connect(admin) as conn:
        found = {(leak.role, leak.name) for leak in privileges.leaks(conn, SCHEMAS)}
    assert {("anon", "ferry"), ("PUBLIC", "ferry_stage.lib_book")} <= found
    # A column's grant, and a grant held through membership (api_member in authenticated).
    assert {("api_member", "ferry.runs"), ("api_member", "ferry.ledger")} <= found
    assert ("authenticated", "ferry.ledger") in found
    sync(source, target, spec)
    _assert_closed(cluster, admin)
    with psycopg.connect(admin) as conn:
        defaults = conn.execute(
            "SELECT count(*) FROM pg_default_acl d, aclexplode(d.defaclacl) a "
            "WHERE d.defaclnamespace = 'ferry_stage'::regnamespace "
            "AND a.grantee = 'authenticated'::regrole"
        ).fetchone()
    assert defaults == (0,)


def test_retry_and_rollback_close_too(
    exposed: tuple[str, str, str, Spec], cluster: LocalCluster
) -> None:
    source, target, admin, spec = exposed
    first = migrate(source, target, spec)
    for run in ("retry", "rollback"):
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("GRANT USAGE ON SCHEMA ferry TO authenticated")
            conn.execute("GRANT SELECT ON ferry.ledger TO authenticated")
        if run == "retry":
            quarantine.retry(target, spec)
        else:
            rollback.rollback(target, spec, run=first.run_id)
        _assert_closed(cluster, admin)


def test_an_object_ferry_cannot_close_fails_the_run_naming_it(
    exposed: tuple[str, str, str, Spec],
) -> None:
    source, target, admin, spec = exposed
    migrate(source, target, spec)
    with psycopg.connect(admin, autocommit=True) as conn:
        # Owned by the superuser: ferry's role cannot revoke what is granted on it.
        conn.execute("CREATE TABLE ferry_stage.notes_copy (id int)")
        conn.execute("GRANT SELECT ON ferry_stage.notes_copy TO anon")
        conn.execute("GRANT USAGE ON SCHEMA ferry_stage TO anon")
    with pytest.raises(PrivilegeError, match=r"anon holds SELECT on table ferry_stage\.notes_copy"):
        sync(source, target, spec)
    with psycopg.connect(admin, autocommit=True) as conn:
        # What ferry could revoke it did: the schema is closed, so the table is unreachable.
        row = conn.execute("SELECT has_schema_privilege('anon', 'ferry_stage', 'USAGE')")
        assert row.fetchone() == (False,)
        conn.execute("DROP TABLE ferry_stage.notes_copy")
    sync(source, target, spec)


def test_an_api_role_with_the_owners_privileges_fails_the_run(
    exposed: tuple[str, str, str, Spec],
) -> None:
    source, target, admin, spec = exposed
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT {} TO authenticated").format(sql.Identifier(OWNER)))
    try:
        with pytest.raises(PrivilegeError, match=r"role authenticated has the privileges of"):
            migrate(source, target, spec)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("REVOKE {} FROM authenticated").format(sql.Identifier(OWNER)))
