"""What each source column becomes in the stage, and the source-side expression that yields it.

Why: the stage lives in another database, which has none of the source's enums, domains or
composite types, and whose server may read bytes in another encoding. So every column is
staged as a built-in type that both servers read the same way, and the stage copy and the
range diff select the source through the same expressions, or their values (and hashes)
would never meet:

* built-in base, range and multirange types, and arrays of them: as they are (binary COPY);
* a domain: its base type, when that is built in (the model sees an integer, not text);
* enums, composites, user ranges and base types of extensions: ``text``; arrays of them
  ``text[]`` (the text output of ``kind[]`` is the one of ``text[]``);
* ``reg*`` types (OIDs that mean something only on their own server): ``text``.

From a source whose bytes the server never checked (``SQL_ASCII``), every column that can
hold characters travels raw (``bytea`` of its text, no conversion on the way) and is read
through a view that converts it (see ``encodings.py``); the key travels as text.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from ferry import catalog
from ferry.conninfo import apply
from ferry.errors import FerryError

# The forms a value staged as its text (an enum, a composite, a user range, an array of
# them) prints in from any session, whatever the role's or the database's defaults
# (``ALTER ROLE ... SET DateStyle``): the stage copy, the diff and the WAL's decoding read
# the source under them. Under 'SQL, DMY' and an Indian TimeZone, a composite's date and
# time printed as ``02/01/2020 08:34:05 IST``, which the target read as the 1st of
# February, in Israel.
TEXT_SETTINGS: tuple[tuple[str, str], ...] = (
    ("DateStyle", "ISO, YMD"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
)


def print_alike(conn: psycopg.Connection) -> None:
    """``TEXT_SETTINGS`` for the rest of ``conn``'s transaction (which this may begin)."""
    apply(conn, TEXT_SETTINGS, local=True)


# What a role subject to a source's row-level security would see: the rows its policies
# show, taken for the whole table, and every row they hide later taken for deleted. (Every
# ferry session also runs with ``row_security = off``, so a query they would filter fails.)
SOURCE_RLS = (
    "row-level security hides rows of {tables} from this role: ferry would stage only what "
    "it sees; read them as their owner or a role with BYPASSRLS"
)

# Type categories (pg_type.typcategory) whose text output is ASCII whatever the encoding:
# boolean, date/time, geometric, network, numeric, timespan, bit string.
_ASCII_CATEGORIES = "BDGINTV"
_ASCII_TYPES = ("uuid", "bytea", "pg_lsn", "macaddr", "macaddr8", "txid_snapshot", "pg_snapshot")

_COLUMNS = """
WITH RECURSIVE cols AS (
    SELECT a.attnum, a.attname, a.atttypid AS typ, a.atttypmod AS mod
    FROM pg_attribute a
    WHERE a.attrelid = to_regclass(%(rel)s) AND a.attnum > 0 AND NOT a.attisdropped
), base AS (
    SELECT attnum, typ, mod FROM cols
    UNION ALL
    SELECT b.attnum, t.typbasetype, t.typtypmod
    FROM base b JOIN pg_type t ON t.oid = b.typ WHERE t.typtype = 'd'
), typed AS (
    SELECT c.attnum, c.attname, format_type(c.typ, c.mod) AS own,
           format_type(b.typ, b.mod) AS base, bt.typname,
           bt.typnamespace = 'pg_catalog'::regnamespace AS builtin, bt.typtype,
           bt.typcategory::text, e.oid IS NOT NULL AS is_array,
           coalesce(e.typnamespace = 'pg_catalog'::regnamespace
                    AND e.typtype IN ('b', 'r', 'm') AND e.typname NOT LIKE 'reg%%', false)
               AS elem_builtin,
           coalesce(e.typcategory, r.typcategory)::text AS inner_category,
           coalesce(e.typname, r.typname) AS inner_name
    FROM cols c
    JOIN base b ON b.attnum = c.attnum
    JOIN pg_type bt ON bt.oid = b.typ AND bt.typtype <> 'd'
    LEFT JOIN pg_type e ON e.oid = bt.typelem AND bt.typlen = -1 AND bt.typcategory = 'A'
    LEFT JOIN pg_range rg ON rg.rngtypid = bt.oid
    LEFT JOIN pg_type r ON r.oid = rg.rngsubtype
)
SELECT attname, own, base, typname, builtin, typtype, typcategory, is_array, elem_builtin,
       inner_category, inner_name
FROM typed ORDER BY attnum
"""


@dataclass(frozen=True)
class Column:
    """A source column: its name, its stage type, and whether it travels raw."""

    name: str
    type: str  # the stage's type (what models read)
    binary: bool = True  # kept for callers: every stage type is a built-in one
    source_type: str = ""  # format_type on the source
    raw: bool = False  # bytea of the text output, converted by the stage's view
    named: bool = False  # a key of a raw source: bytes that do not read are named (``named``)

    @property
    def cast(self) -> bool:
        """The source column is selected through a cast to the stage type."""
        return bool(self.source_type) and self.source_type != self.type

    def select(self, alias: str | None = None) -> sql.Composable:
        """The expression the source is read by (for COPY and for the diff)."""
        ident = sql.Identifier(alias, self.name) if alias else sql.Identifier(self.name)
        if self.named:
            return named(ident)
        return source_expr(ident, self.source_type or self.type, self.raw_type)

    @property
    def raw_type(self) -> str:
        """The type of the column in the stage table itself."""
        return "bytea" if self.raw else self.type


# Text whose bytes are valid UTF-8 (as PostgreSQL checks it: no overlong form, no surrogate,
# nothing beyond U+10FFFF), matched byte by byte on a SQL_ASCII server.
_UTF8 = (
    r"^(?:[\x01-\x7f]|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]"
    r"|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
    r"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2})*$"
)
# What a key that does not read is named by: ``\x`` and its bytes in hex.
NAMED = r"^\\x(?:[0-9a-f]{2})+$"


def named(ident: sql.Composable) -> sql.Composable:
    """A key of a source whose server never checked its bytes, declared UTF-8: as it is
    where its bytes read, else named by them, ``\x636ce9``, so that its row is staged and
    quarantined (``query.Shape``) instead of stopping the copy of its table."""
    return sql.SQL(
        "CASE WHEN {k}::text ~ {re} THEN {k}::text "
        "ELSE '\\x' || encode(convert_to({k}::text, 'SQL_ASCII'), 'hex') END"
    ).format(k=ident, re=sql.Literal(_UTF8))


def source_expr(ident: sql.Composable, source_type: str, stage_type: str) -> sql.Composable:
    """How a source column of ``source_type`` is read into a stage column of ``stage_type``.

    The same rule serves the stage copy and the diff. A raw column is the bytes of the text
    output as the server holds them: ``convert_to(..., 'SQL_ASCII')`` passes them through
    unchecked (``textsend`` would check them against the client encoding, and fail the
    whole statement on one bad byte).
    """
    if source_type == stage_type:
        return ident
    if stage_type == "bytea":
        return sql.SQL("convert_to({}::text, 'SQL_ASCII')").format(ident)
    return sql.SQL("{}::{}").format(ident, sql.SQL(stage_type))


def source_columns(
    conn: psycopg.Connection, table: str, raw: bool = False, keep: tuple[str, ...] = (),
    utf8: bool = False,
) -> list[Column]:  # fmt: skip
    """The columns of a source table with their stage types; ``raw``: a source whose bytes
    the server never checked, whose character columns other than ``keep`` (the key, which
    the ledger must name) travel raw; ``utf8``: its bytes are declared UTF-8, and a key
    whose bytes do not read is named by them (``named``)."""
    rows = conn.execute(_COLUMNS, {"rel": catalog.regclass(table)}).fetchall()
    if not rows:
        raise FerryError(f"source table {table} does not exist or has no columns")
    if catalog.rls_applies(conn, table):
        raise FerryError(SOURCE_RLS.format(tables=table))
    out = []
    for row in rows:
        name, own, base, typname, builtin, typtype, category, is_array, elem_ok = row[:9]
        inner_cat, inner = row[9:]
        if is_array:
            stage_type = base if builtin and elem_ok else "text[]"
        elif builtin and typtype in ("b", "r", "m") and not typname.startswith("reg"):
            stage_type = base
        else:
            stage_type = "text"
        ascii_only = _ascii_only(stage_type, typname, category, inner_cat, inner)
        if raw and utf8 and name in keep and not ascii_only and not is_array:
            out.append(Column(name, "text", True, own, named=True))
            continue
        out.append(Column(name, stage_type, True, own, raw and name not in keep and not ascii_only))
    return out


def _ascii_only(
    stage_type: str, typname: str, category: str, inner_cat: str | None, inner: str | None
) -> bool:
    """Whether a stage type's text output can only be ASCII (then no encoding matters)."""
    if stage_type in ("text", "text[]"):
        return False
    if inner_cat is not None:  # an array or a range: its elements decide (a multirange,
        # whose subtype the catalogs of servers before 14 cannot name, counts as text)
        return inner_cat in _ASCII_CATEGORIES or inner in _ASCII_TYPES
    return category in _ASCII_CATEGORIES or typname in _ASCII_TYPES
