"""``ferry doctor`` on purpose-built bad targets: one finding each, and a clean pair passes."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from ferry.cli import app
from ferry.embedded import LocalCluster
from ferry.engine.pipeline import migrate
from ferry.ops.doctor import Diagnosis, diagnose
from ferry.spec import Spec, load_spec
from tests.helpers import fresh_db

LIB = Path(__file__).parent / "specs" / "library"
OWNER = "doc_owner"
READER = "doc_reader"


class Pair:
    """A library source read by a plain reader role, and a target owned by ferry's role with
    row-level security on every public table: nothing for the doctor to say."""

    def __init__(self, cluster: LocalCluster, prefix: str = "doc") -> None:
        self.cluster = cluster
        self.src_db, self.tgt_db = f"{prefix}_src", f"{prefix}_tgt"
        self.admin_source = fresh_db(cluster, self.src_db, LIB / "source.sql")
        self.admin_target = fresh_db(cluster, self.tgt_db, LIB / "target.sql", owner=OWNER)
        self.admin(
            self.admin_source,
            sql.SQL(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {r}) "
                "THEN CREATE ROLE {i} LOGIN; END IF; END $$"
            ).format(r=sql.Literal(READER), i=sql.Identifier(READER)),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(
                sql.Identifier(READER)
            ),
        )
        self.admin(
            self.admin_target,
            "DO $$ DECLARE t text; BEGIN FOR t IN SELECT tablename FROM pg_tables "
            "WHERE schemaname = 'public' LOOP "
            "EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t); "
            "END LOOP; END $$",
        )
        self.source = cluster.conninfo(self.src_db, user=READER)
        self.target = cluster.conninfo(self.tgt_db, user=OWNER)
        self.spec: Spec = load_spec(LIB / "spec.toml")

    @staticmethod
    def admin(conninfo: str, *statements: str | sql.Composable) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]

    def check(self, source: str | None = None, target: str | None = None) -> Diagnosis:
        return diagnose(source or self.source, target or self.target, self.spec)


def _found(diagnosis: Diagnosis, level: str, check: str, text: str = "") -> bool:
    return any(
        f.level == level and f.check == check and text in f.message for f in diagnosis.findings
    )


def _not_info(diagnosis: Diagnosis) -> list[tuple[str, str, str]]:
    return [(f.level, f.check, f.message) for f in diagnosis.findings if f.level != "info"]


@pytest.fixture()
def pair(cluster: LocalCluster) -> Pair:
    return Pair(cluster)


def test_a_clean_pair_passes_before_and_after_a_run(pair: Pair) -> None:
    found = pair.check()
    assert _not_info(found) == []
    assert found.ok
    assert _found(found, "info", "version", "PostgreSQL")
    assert _found(found, "info", "source_tables", "reads all 2 source tables")
    assert _found(found, "info", "target_tables", "owns every target table")
    assert _found(found, "info", "ferry_schemas", "created, closed, by the first run")
    migrate(pair.source, pair.target, pair.spec)
    found = pair.check()
    assert _not_info(found) == []
    assert _found(found, "info", "ferry_schemas", "closed to every other role")
    result = CliRunner().invoke(
        app,
        ["doctor", "--source", pair.source, "--target", pair.target,
         "--spec", str(LIB / "spec.toml"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert {f["side"] for f in data["findings"]} == {"source", "target"}


def test_superuser_and_bypassrls_are_named_as_unneeded(pair: Pair, cluster: LocalCluster) -> None:
    found = pair.check(target=pair.admin_target)
    assert _found(found, "warn", "role", "is a superuser: ferry needs neither")
    pair.admin(pair.admin_source, "ALTER ROLE doc_reader BYPASSRLS")
    try:
        assert _found(pair.check(), "warn", "role", "doc_reader is a role with BYPASSRLS")
    finally:
        pair.admin(pair.admin_source, "ALTER ROLE doc_reader NOBYPASSRLS")


def test_rls_off_in_an_exposed_schema(pair: Pair) -> None:
    pair.admin(
        pair.admin_target,
        "CREATE SCHEMA api",
        "CREATE TABLE api.patients (id int)",
        "ALTER DATABASE doc_tgt SET pgrst.db_schemas = 'api, public'",
        "ALTER TABLE public.loans DISABLE ROW LEVEL SECURITY",
    )
    found = pair.check()
    assert _found(found, "warn", "rls", "off on 2 table(s) in exposed schemas (public, api)")
    assert _found(found, "warn", "rls", "api.patients")
    assert _found(found, "warn", "rls", "public.loans")
    assert found.ok  # exposed, but a run works


def test_ferry_schemas_readable_by_others(pair: Pair) -> None:
    migrate(pair.source, pair.target, pair.spec)
    pair.admin(
        pair.admin_target,
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') "
        "THEN CREATE ROLE anon; END IF; END $$",
        "GRANT USAGE ON SCHEMA ferry_stage TO anon",
        "GRANT SELECT ON ferry_stage.lib_book TO anon",
    )
    found = pair.check()
    assert _found(found, "warn", "ferry_schemas", "anon holds USAGE on schema ferry_stage")
    assert _found(found, "warn", "ferry_schemas", "the next run revokes it")
    assert found.ok
    # An object ferry's role does not own: a run could not close it.
    pair.admin(
        pair.admin_target,
        "CREATE TABLE ferry_stage.copy_of_notes (id int)",
        "GRANT SELECT ON ferry_stage.copy_of_notes TO anon",
    )
    found = pair.check()
    assert _found(found, "error", "ferry_schemas", "anon holds SELECT on table ferry_stage.copy")
    assert not found.ok


def test_an_api_role_with_the_owners_privileges(pair: Pair) -> None:
    pair.admin(
        pair.admin_target,
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') "
        "THEN CREATE ROLE authenticated; END IF; END $$",
    )
    migrate(pair.source, pair.target, pair.spec)
    pair.admin(pair.admin_target, f"GRANT {OWNER} TO authenticated")
    try:
        found = pair.check()
        assert _found(found, "error", "ferry_schemas", "role authenticated has the privileges of")
    finally:
        pair.admin(pair.admin_target, f"REVOKE {OWNER} FROM authenticated")


@pytest.mark.parametrize(
    ("dsn", "text"),
    [
        ("host=127.0.0.1 port=6543 dbname=doc_tgt user=doc_owner", "Supabase's transaction pooler"),
        ("postgresql://doc_owner@127.0.0.1:5432/doc_tgt?pgbouncer=true", "pgbouncer=true"),
    ],
)
def test_a_transaction_pooler_in_the_dsn(pair: Pair, dsn: str, text: str) -> None:
    found = pair.check(target=dsn)
    assert _found(found, "error", "pooler", text)
    assert not found.ok
    result = CliRunner().invoke(app, ["doctor", "--source", pair.source, "--target", dsn])
    assert result.exit_code == 1
    assert text in result.stdout


def test_timeouts_shorter_than_a_chunk(pair: Pair) -> None:
    pair.admin(
        pair.admin_target,
        f"ALTER ROLE {OWNER} IN DATABASE doc_tgt SET statement_timeout = '30s'",
        f"ALTER ROLE {OWNER} IN DATABASE doc_tgt SET idle_in_transaction_session_timeout = '10s'",
    )
    try:
        found = pair.check()
        assert _found(found, "warn", "timeout", "statement_timeout is 30 s")
        assert _found(found, "error", "timeout", "idle_in_transaction_session_timeout is 10 s")
        assert not found.ok
    finally:
        pair.admin(pair.admin_target, f"ALTER ROLE {OWNER} IN DATABASE doc_tgt RESET ALL")


def test_encodings(pair: Pair, cluster: LocalCluster) -> None:
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as conn:
        for name, encoding in (("doc_ascii", "SQL_ASCII"), ("doc_latin1", "LATIN1")):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))  # fmt: skip
            conn.execute(
                sql.SQL(
                    "CREATE DATABASE {} ENCODING {} TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"
                ).format(sql.Identifier(name), sql.Literal(encoding))
            )
    found = diagnose(cluster.conninfo("doc_ascii"), cluster.conninfo("doc_latin1"))
    assert _found(found, "warn", "encoding", "the source's encoding is SQL_ASCII")
    assert _found(found, "error", "encoding", "the target's encoding is LATIN1: ferry needs UTF8")
    assert _found(pair.check(), "info", "encoding", "source encoding UTF8")


def test_source_tables_the_role_cannot_read(pair: Pair) -> None:
    pair.admin(
        pair.admin_source,
        "REVOKE SELECT ON lib_author FROM doc_reader",
        "ALTER TABLE lib_book ENABLE ROW LEVEL SECURITY",
    )
    found = pair.check()
    assert _found(found, "error", "source_tables", "cannot SELECT from public.lib_author")
    assert _found(found, "error", "source_tables", "row-level security hides rows of public.lib_b")
    pair.admin(pair.admin_source, "DROP TABLE lib_author")
    assert _found(pair.check(), "error", "source_tables", "not found (or not visible to this role)")


def test_target_tables_ferry_does_not_own(pair: Pair) -> None:
    pair.admin(pair.admin_target, "ALTER TABLE public.loans OWNER TO postgres")
    found = pair.check()
    assert _found(found, "error", "target_tables", "does not own public.loans")
    pair.admin(pair.admin_target, "DROP TABLE public.loans")
    assert _found(pair.check(), "error", "target_tables", "not found: public.loans")


def test_row_level_security_forced_on_a_target_table_is_an_error(pair: Pair) -> None:
    pair.admin(pair.admin_target, "ALTER TABLE public.loans ENABLE ROW LEVEL SECURITY")
    assert not _found(pair.check(), "error", "target_tables")  # the owner is not subject
    pair.admin(pair.admin_target, "ALTER TABLE public.loans FORCE ROW LEVEL SECURITY")
    assert _found(pair.check(), "error", "target_tables", "forced on public.loans")


def test_a_trigger_that_may_change_rows_as_written_is_named(pair: Pair) -> None:
    assert not _found(pair.check(), "warn", "target_triggers", "")
    pair.admin(
        pair.admin_target,
        "CREATE FUNCTION public.same() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RETURN NEW; END $$",
        "CREATE TRIGGER after_row AFTER INSERT ON public.loans "
        "FOR EACH ROW EXECUTE FUNCTION public.same()",
    )
    # after: it may write the row again (an UPDATE of it), which changes what is stored too
    assert _found(pair.check(), "warn", "target_triggers", "public.loans have triggers")
    pair.admin(pair.admin_target, "ALTER TABLE public.loans DISABLE TRIGGER after_row")
    assert not _found(pair.check(), "warn", "target_triggers", "")
    pair.admin(
        pair.admin_target,
        "CREATE TRIGGER before_row BEFORE UPDATE ON public.loans "
        "FOR EACH ROW EXECUTE FUNCTION public.same()",
    )
    assert _found(pair.check(), "warn", "target_triggers", "public.loans have triggers")
    pair.admin(pair.admin_target, "ALTER TABLE public.loans DISABLE TRIGGER before_row")
    assert not _found(pair.check(), "warn", "target_triggers", "")


def test_no_password_in_the_output(pair: Pair) -> None:
    target = pair.target + " password=hunter2-secret port=1"
    result = CliRunner().invoke(app, ["doctor", "--source", pair.source, "--target", target])
    assert result.exit_code == 1
    assert "hunter2" not in result.stdout + result.stderr
    assert "connect" in result.stdout
