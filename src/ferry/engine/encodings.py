"""Which encoding a source's bytes are in, and how the stage records it.

Why: the target is always UTF8, a legacy source often is not. A server in ``LATIN1`` (or
any real encoding) holds only valid characters, which the target converts on the way in.
A server in ``SQL_ASCII`` checks nothing: its bytes are whatever the application wrote, and
only the spec can say what they mean (``encoding = "latin1"``; UTF8 if it says nothing).
Such a source's character columns are staged raw and read through a view that converts
them, so that a value that does not convert fails in the model, where bisection quarantines
its row with the database's reason, instead of failing the copy of the whole table
(``docs/encodings.md``).

The stage records what it was read as in a comment on its table (and view): a sync's diff,
which knows no spec, reads the source in the same encoding from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ferry.errors import FerryError
from ferry.spec import Source

UTF8 = "UTF8"
UNCHECKED = "SQL_ASCII"
_MARK = re.compile(r"^ferry: source encoding (\w+)(?:; raw table (\S+))?$")


@dataclass(frozen=True)
class Reading:
    """How a source is read: the encoding of its bytes, and whether they travel raw."""

    encoding: str
    raw: bool


def canonical(conn: psycopg.Connection, name: str) -> str:
    """PostgreSQL's own name of an encoding (``latin1`` -> ``LATIN1``); empty if unknown."""
    row = conn.execute("SELECT pg_encoding_to_char(pg_char_to_encoding(%s))", [name]).fetchone()
    return str(row[0]) if row and row[0] else ""


def reading(conn: psycopg.Connection, src: Source) -> Reading:
    """The encoding a source table is read in: the server's, or for a server that checks
    nothing, the spec's (default UTF8)."""
    row = conn.execute("SELECT current_setting('server_encoding')").fetchone()
    server = str(row[0]) if row else UTF8
    declared = canonical(conn, src.encoding) if src.encoding else ""
    if src.encoding and declared in ("", UNCHECKED):
        raise FerryError(
            f"source {src.name}: encoding {src.encoding!r} is not one PostgreSQL converts "
            "from (give the encoding the bytes are in, e.g. latin1, win1252, utf8)"
        )
    if server != UNCHECKED:
        if declared and declared != server:
            raise FerryError(
                f"source {src.name}: the spec says its bytes are {declared}, its server "
                f"holds {server} (declare an encoding only for a SQL_ASCII server)"
            )
        return Reading(server, False)
    return Reading(declared or UTF8, True)


def set_client(conn: psycopg.Connection, encoding: str, *, local: bool) -> None:
    """The session reads and writes text in ``encoding`` (for the transaction if ``local``)."""
    conn.execute("SELECT set_config('client_encoding', %s, %s)", [encoding, local])


def mark(conn: psycopg.Connection, kind: str, rel: sql.Composable, encoding: str,
         raw_table: str | None = None) -> None:  # fmt: skip
    """Record the encoding (and the raw table behind a view) on a stage relation."""
    text = f"ferry: source encoding {encoding}" + (f"; raw table {raw_table}" if raw_table else "")
    conn.execute(sql.SQL("COMMENT ON {} {} IS {}").format(sql.SQL(kind), rel, sql.Literal(text)))


def marked(comment: str | None) -> tuple[str | None, str | None]:
    """The encoding and raw table a stage relation's comment records (None: not recorded)."""
    found = _MARK.match(comment or "")
    return (found.group(1), found.group(2)) if found else (None, None)


def raw_name(stage_table: str) -> str:
    """The table behind the view of a raw-staged source (within PostgreSQL's 63 bytes)."""
    return f"{stage_table[:55]}__raw"
