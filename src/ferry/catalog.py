"""Questions to ``pg_catalog`` that more than one stage of the pipeline asks."""

from __future__ import annotations

import psycopg
from psycopg import sql


def exists(conn: psycopg.Connection, relation: sql.Identifier) -> bool:
    """Whether a table or view of that name exists (a qualified ``Identifier``)."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [relation.as_string(conn)]).fetchone()
    return bool(row and row[0])
