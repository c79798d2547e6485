"""The run envelope: every command that writes opens the target the same way.

Connect; the ledger ready (created by migrate and sync, required by the operator's
commands); the run lock, so that no two ferry runs interleave on one ledger; ferry's
schemas closed to every other role (``privileges``); the settings that values read and
parse with, the ledger's, for every session (``ledger.session_settings``); what a crashed
run set aside put back (``execute.put_back``); and, for a run the ledger records, a run row
closed as ``ok`` or as ``failed`` with what ``errors.describe`` lets be shown.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from ferry import catalog, ledger
from ferry.conninfo import apply, connect, pinned
from ferry.engine.execute import put_back
from ferry.errors import FerryError
from ferry.ledger import privileges
from ferry.spec import Spec


@contextmanager
def lock(conn: psycopg.Connection, spec: Spec) -> Iterator[None]:
    """One ferry run per ledger at a time: a second one fails at once instead of interleaving."""
    key = f"ferry:{spec.ledger_schema}"
    got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key]).fetchone()
    conn.commit()
    if not got or not got[0]:
        raise FerryError(
            f"another ferry run holds the lock on ledger schema {spec.ledger_schema}; "
            "wait for it to finish (session pooler or direct connection required)"
        )
    try:
        yield
    finally:
        conn.rollback()
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", [key])
        conn.commit()


def require_ledger(
    conn: psycopg.Connection, spec: Spec, error: type[FerryError] = FerryError
) -> None:
    """A command that reads or changes what runs wrote needs a ledger to be there."""
    found = catalog.exists(conn, ledger.table(spec, "ledger"))
    conn.commit()
    if not found:
        raise error(f"no ledger in schema {spec.ledger_schema}: ferry has not run here")


@contextmanager
def opened(
    target: str, spec: Spec, app: str, *, create: bool = False,
    error: type[FerryError] = FerryError,
) -> Iterator[psycopg.Connection]:  # fmt: skip
    """The target, ready for a run that writes (see the module's docstring); ``create``
    makes the ledger if it is not there, else its absence is an ``error``. Every session
    of the run takes the ledger's ``session_settings``."""
    with connect(target, app=app) as conn:
        if create:
            ledger.ensure_schema(conn, spec)
        else:
            require_ledger(conn, spec, error)
        with lock(conn, spec), privileges.closed(conn, spec):
            settings = ledger.session_settings(conn, spec)
            apply(conn, settings)
            conn.commit()
            with pinned(target, settings):
                put_back(conn, target, spec)
                yield conn


@contextmanager
def recorded_run(
    target: str, spec: Spec, kind: str
) -> Iterator[tuple[psycopg.Connection, int, dict[str, Any]]]:
    """A migrate or a sync: the envelope with the ledger created if need be, and a run row
    for the block, closed with the counts the block fills in."""
    with (
        opened(target, spec, "ferry", create=True) as conn,
        ledger.recorded(conn, spec, kind) as (run_id, counts),
    ):
        yield conn, run_id, counts
