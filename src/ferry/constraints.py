"""Deferred foreign keys for a first load (``--defer-constraints``): opt-in, and why.

A row inserted into a table with foreign keys runs one lookup-and-lock per key on the parent
table; on a 2M-row table with three keys that is most of the load's time. For a model's
first load ferry can instead drop the table's foreign keys, load, and add them back: the
check then runs once, as one set-based query. ferry's own rows cannot break a key (their
parents come from the ledger, which only names rows ferry wrote), but while the keys are
off the *application* could write a dangling row, so it is the operator's call.

Safety: the definitions are saved in the ledger schema before the drop, in their own
transaction, so a crash leaves them recorded; every run restores what is recorded before it
does anything else. Keys come back ``NOT VALID`` first (enforced for new rows at once), then
``VALIDATE CONSTRAINT`` checks the old ones; if that fails, the key stays enforced for new
rows and the run fails, naming the constraint. This needs nothing but table ownership: no
superuser, no ``session_replication_role``, no disabled triggers.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from ferry.errors import FerryError
from ferry.spec import Spec


def _table(spec: Spec) -> sql.Identifier:
    return sql.Identifier(spec.ledger_schema, "suspended_constraints")


def suspend(conn: psycopg.Connection, spec: Spec, target: str, run_id: int) -> int:
    """Record and drop the foreign keys of ``target``; returns how many.

    The record lives in ``<ledger>.suspended_constraints`` (created by ``ledger.ensure_schema``).
    """
    fks = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = to_regclass(%s) AND contype = 'f' ORDER BY conname",
        [target],
    ).fetchall()
    if not fks:
        conn.commit()
        return 0
    with conn.transaction():
        for name, definition in fks:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (target_table, name, definition, run_id) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
                ).format(_table(spec)),
                [target, name, definition, run_id],
            )
    conn.commit()  # recorded before anything is dropped
    with conn.transaction():
        for name, _ in fks:
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(*target.split(".")), sql.Identifier(name)
                )
            )
    conn.commit()
    return len(fks)


def restore(conn: psycopg.Connection, spec: Spec, target: str | None = None) -> int:
    """Add back what was suspended (for one table, or all); returns how many."""
    rows = conn.execute(
        sql.SQL(
            "SELECT target_table, name, definition FROM {} "
            "WHERE %s::text IS NULL OR target_table = %s ORDER BY target_table, name"
        ).format(_table(spec)),
        [target, target],
    ).fetchall()
    for table, name, definition in rows:
        ident = sql.Identifier(*table.split("."))
        with conn.transaction():
            exists = conn.execute(
                "SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s",
                [table, name],
            ).fetchone()
            if not exists:
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
                        ident,
                        sql.Identifier(name),
                        sql.SQL(definition),  # type: ignore[arg-type]
                    )
                )
        conn.commit()  # enforced for new rows from here on, whatever validation finds
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                        ident, sql.Identifier(name)
                    )
                )
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE target_table = %s AND name = %s").format(
                        _table(spec)
                    ),
                    [table, name],
                )
        except psycopg.errors.ForeignKeyViolation:
            raise FerryError(
                f"{table}: foreign key {name} is back but some existing rows break it "
                "(rows written while it was deferred); it is enforced for new rows, and "
                "ferry verify names the rows"
            ) from None
        conn.commit()
    return len(rows)
