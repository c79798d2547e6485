"""Deterministic target keys.

A target UUID is a pure function of (namespace, name, legacy key): the same legacy row gets
the same UUID on every run and every machine, so a re-run cannot duplicate anything and a
foreign key can be computed anywhere.

The function: ``md5(utf8(namespace || ':' || name || ':' || key))``, with the version nibble
set to 8 and the variant bits to ``10``: an RFC 9562 UUIDv8 ("custom") built on MD5, 120 bits
of the digest kept. Why not uuid5 (SHA-1) or uuid3 (MD5)? PostgreSQL has SHA-1 only through
pgcrypto, an extension Supabase's non-superuser roles may not create; and uuid3 needs the
digest's variant nibble in two places, which in SQL either evaluates md5 twice per row or
blocks inlining. MD5's weakness is collision *attacks*: the inputs here are legacy keys, not
chosen by an adversary, and 120 bits leave accidental collisions out of reach.
"""

from __future__ import annotations

import hashlib
import uuid

from psycopg import sql


def key_uuid(namespace: uuid.UUID, name: str, key: object) -> uuid.UUID:
    """The UUID of legacy row ``key`` of ``name`` (a source table or a derived model)."""
    digest = bytearray(hashlib.md5(f"{namespace}:{name}:{key}".encode()).digest())
    digest[6] = 0x80 | (digest[6] & 0x0F)
    digest[8] = 0x80 | (digest[8] & 0x0F)
    return uuid.UUID(bytes=bytes(digest))


def function_ddl(schema: str) -> sql.Composed:
    """The same function in SQL: one md5 per call, and simple enough for the planner to inline.

    Every function in the body is immutable (``convert_to`` is not, and would block inlining),
    so md5 runs over the text in the database encoding: ferry checks that it is UTF8. The two
    nibbles are set in the hex digest as bytes (``::bytea`` reads it as is: hex digits hold
    no backslash): ``overlay`` on text walks it character by character. 2M keys took 4.6 to
    4.8 s with it, 3.3 to 4.1 s this way, and 3.0 to 3.5 s with no nibble set at all (three
    alternating runs).
    """
    return sql.SQL(
        """
        CREATE OR REPLACE FUNCTION {schema}.key_uuid(ns uuid, name text, key text)
        RETURNS uuid LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
          SELECT encode(overlay(overlay(md5(ns::text || ':' || name || ':' || key)::bytea
                 placing '8'::bytea from 13) placing '8'::bytea from 17), 'escape')::uuid
        $$"""
    ).format(schema=sql.Identifier(schema))


def uuid_sql(schema: str, namespace: uuid.UUID, name: str, key: sql.Composable) -> sql.Composed:
    """A call of the SQL function above: the UUID of the key that ``key`` evaluates to."""
    return sql.SQL("{}({}::uuid, {}, ({})::text)").format(
        sql.Identifier(schema, "key_uuid"), sql.Literal(str(namespace)), sql.Literal(name), key
    )


def text_sql(alias: str, columns: list[str]) -> sql.Composed:
    """The key's text from its column(s) of ``alias``: the column as text, or for a composite
    key the row literal PostgreSQL prints, ``(7,"a b")`` (``composite_text``)."""
    cols = [sql.Identifier(alias, c) for c in columns]
    if len(cols) == 1:
        return sql.SQL("{}::text").format(cols[0])
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(cols))


def set_sql(alias: str, columns: list[str]) -> sql.Composed:
    """The key is set: its column, or every column of a composite key, is not NULL."""
    cols = [sql.Identifier(alias, c) for c in columns]
    if len(cols) == 1:
        return sql.SQL("{} IS NOT NULL").format(cols[0])
    return sql.SQL("ROW({}) IS NOT NULL").format(sql.SQL(", ").join(cols))


# What PostgreSQL's record_out quotes as space: C's isspace on each byte (a byte of a
# multibyte character is none of these).
_C_SPACE = " \t\n\v\f\r"


def composite_text(values: list[object]) -> str:
    """A composite key's text, as PostgreSQL prints the row ``ROW(a, b)``: each part as its
    type prints it (ISO dates), quoted when empty or holding a quote, a backslash, a
    parenthesis, a comma or what C's ``isspace`` calls a space (``_C_SPACE``; Python's
    ``str.isspace`` also counts U+001C-U+001F, U+00A0 and others, for which the two texts
    differed and a sync lost the row), with quotes and backslashes doubled inside; NULL as
    nothing. The same text in Python and SQL, so ``key_uuid`` gives the same UUID."""
    parts = []
    for v in values:
        if v is None:
            parts.append("")
            continue
        text = ("t" if v else "f") if isinstance(v, bool) else str(v)
        if text == "" or any(ch in '"\\(),' or ch in _C_SPACE for ch in text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '""') + '"'
        parts.append(text)
    return "(" + ",".join(parts) + ")"
