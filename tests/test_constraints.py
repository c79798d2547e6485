"""Foreign keys set aside for a first load: parents guarded, keys back and validated."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ferry import constraints, ledger
from ferry.embedded import LocalCluster
from ferry.errors import FerryError
from ferry.pipeline import migrate
from ferry.spec import load_spec
from tests.helpers import table_checksum
from tests.test_crash import TABLES, _spec, _world

BOOKS_FK_OID = (
    "SELECT oid FROM pg_constraint WHERE conrelid = 'public.books'::regclass AND contype = 'f'"
)
INDEX_OID = "SELECT to_regclass('public.books_author')::oid"
FKS = (
    "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated "
    "FROM pg_constraint WHERE contype = 'f' ORDER BY 1, 2"
)


def test_deferred_load_equals_checked_load(cluster: LocalCluster, tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path))
    src_a, tgt_a = _world(cluster, "fk_checked")
    src_b, tgt_b = _world(cluster, "fk_deferred")
    for target in (tgt_a, tgt_b):
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("CREATE INDEX books_author ON public.books (author_id)")
    with psycopg.connect(tgt_b) as conn:
        before = conn.execute(FKS).fetchall()
        oid_before = conn.execute(BOOKS_FK_OID).fetchone()
        index_before = conn.execute(INDEX_OID).fetchone()
    migrate(src_a, tgt_a, spec, defer_constraints=False)
    migrate(src_b, tgt_b, spec)  # the default: keys set aside for first loads
    assert {t: table_checksum(tgt_b, t) for t in TABLES} == {
        t: table_checksum(tgt_a, t) for t in TABLES
    }
    with psycopg.connect(tgt_b) as conn:
        # Every key is back, with its definition, and validated; books' key was re-created.
        assert conn.execute(FKS).fetchall() == before
        assert conn.execute(BOOKS_FK_OID).fetchone() != oid_before
        # The plain index was dropped for the load and built again after it.
        assert conn.execute(INDEX_OID).fetchone() not in (None, index_before)
        assert conn.execute("SELECT count(*) FROM ferry.suspended_constraints").fetchone() == (0,)


def test_a_crash_while_deferred_is_repaired_by_the_next_run(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    spec = load_spec(_spec(tmp_path))
    source, target = _world(cluster, "fk_crash")
    with psycopg.connect(target) as conn:
        conn.execute("CREATE INDEX books_author ON public.books (author_id)")
        before = conn.execute(FKS).fetchall()
        ledger.ensure_schema(conn, spec)
        # As if a run had dropped them and died.
        assert constraints.suspend(conn, spec, "public.books", run_id=0) == 2
        assert len(conn.execute(FKS).fetchall()) == len(before) - 1
        assert conn.execute(INDEX_OID).fetchone() == (None,)
    migrate(source, target, spec)
    with psycopg.connect(target) as conn:
        assert conn.execute(FKS).fetchall() == before
        assert conn.execute(INDEX_OID).fetchone() != (None,)


def test_parents_cannot_be_written_while_keys_are_aside(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    spec = load_spec(_spec(tmp_path))
    _, target = _world(cluster, "fk_guard")
    with psycopg.connect(target) as guard, psycopg.connect(target, autocommit=True) as app:
        ledger.ensure_schema(guard, spec)
        guard.commit()
        app.execute("SET lock_timeout = '300ms'")
        with constraints.suspended(guard, spec, "public.books", run_id=0) as n:
            assert n == 1
            # The application reads the parent, but cannot delete from it behind the load's
            # back: its ON DELETE action would not reach the rows being loaded.
            assert app.execute("SELECT count(*) FROM public.authors").fetchone() == (1,)
            with pytest.raises(psycopg.errors.LockNotAvailable):
                app.execute("DELETE FROM public.authors")
        app.execute("DELETE FROM public.authors")  # back to normal once the keys are back
        assert app.execute(FKS).fetchall()[0][3] is True


def test_a_dangling_row_written_meanwhile_fails_loudly(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    spec = load_spec(_spec(tmp_path))
    _, target = _world(cluster, "fk_dangling")
    dangling = (
        "INSERT INTO public.books (id, author_id, title, price) VALUES "
        "(gen_random_uuid(), '00000000-0000-4000-8000-0000000000ff', 'x', 1)"
    )
    with psycopg.connect(target) as guard, psycopg.connect(target, autocommit=True) as app:
        ledger.ensure_schema(guard, spec)
        guard.commit()
        with (
            pytest.raises(FerryError, match="books_author_id_fkey"),
            constraints.suspended(guard, spec, "public.books", run_id=0),
        ):
            app.execute(dangling)  # the child table itself is not locked: checked after
        # The key is back, enforced for new rows, but not valid until someone fixes the row.
        assert [r[3] for r in app.execute(FKS).fetchall() if r[0] == "books"] == [False]
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            app.execute(dangling)


def test_a_parent_the_role_may_not_lock_is_left_to_validate(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Like Supabase's auth.users: ferry may reference it, not lock it."""
    spec = load_spec(_spec(tmp_path))
    _, target = _world(cluster, "fk_unlockable")
    admin = cluster.conninfo("crash_tgt_fk_unlockable")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.accounts (id uuid PRIMARY KEY)")
        conn.execute("GRANT SELECT, REFERENCES ON public.accounts TO lib_owner")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.notes (id uuid PRIMARY KEY, "
            "account_id uuid REFERENCES public.accounts (id))"
        )
    with psycopg.connect(target) as guard:
        ledger.ensure_schema(guard, spec)
        guard.commit()
        with constraints.suspended(guard, spec, "public.notes", run_id=0) as n:
            assert n == 1
        valid = guard.execute(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'notes_account_id_fkey'"
        ).fetchone()
    assert valid == (True,)
