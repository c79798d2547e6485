"""The identity of a row of a table without a key (``key = "*"`` in the spec).

Why: the ledger names every source row by its key, and some legacy tables have none (a log,
a join table without a primary key). Such a row is known by its content: the md5 of its text
as PostgreSQL prints the row, then ``:`` and its ordinal among the rows with the same text
(``9e107d9d372bb6826bd81d3542a419d6:1``, ``...:2``), so that two identical rows are two rows
and a third copy is ``:3`` whatever the order the table returns them in. A row whose content
changes gets another identity: an UPDATE in the source reads as a delete and an insert.

The stage keeps the identity in the column ``_ferry_key`` (``spec.COMPOSITE_KEY``), which
models return as their ``_key``, as they do a composite key's text. The row's text is printed
under fixed settings (ISO dates, UTC, ...), so that every session computes the same identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from ferry.engine.columns import print_alike
from ferry.spec import COMPOSITE_KEY


def add(conn: psycopg.Connection, table: sql.Composable, columns: Sequence[str]) -> None:
    """Give every row of ``table`` (its ``columns``) its identity, in a new column
    ``_ferry_key``; in the caller's transaction."""
    print_alike(conn)  # the text form of every value, as the range diff reads it
    key = sql.Identifier(COMPOSITE_KEY)
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} text").format(table, key))
    text = sql.SQL("ROW({})::text").format(
        sql.SQL(", ").join(sql.Identifier("t", c) for c in columns)
    )
    conn.execute(
        sql.SQL(
            "UPDATE {t} t SET {k} = i._k FROM (SELECT _c, _h || ':' || "
            "row_number() OVER (PARTITION BY _h) AS _k FROM "
            "(SELECT t.ctid AS _c, md5({text}) AS _h FROM {t} t) x) i WHERE t.ctid = i._c"
        ).format(t=table, k=key, text=text)
    )
