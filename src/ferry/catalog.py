"""Questions to ``pg_catalog`` that more than one stage of the pipeline asks."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ferry.conninfo import apply

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def print_qualified(conn: psycopg.Connection) -> None:
    """Until the transaction ends (the caller commits), only pg_catalog is on the search_path:
    a constraint's, an index's, a type's text then names every schema, and reads alike
    whatever path the session has (a digest of it, ``predict.RULES_DIGEST``, is kept)."""
    apply(conn, [("search_path", "pg_catalog")], local=True)


def regclass(name: str) -> str:
    """A spec's ``schema.table`` as ``to_regclass`` and ``::regclass`` read it: quoted, so
    that ``public.Visits`` (Prisma's and EF Core's tables are named so) is that table and not
    ``public.visits``. A name already quoted (``Identifier.as_string``) is left as it is."""
    if not _PLAIN.match(name):
        return name
    return ".".join(f'"{part}"' for part in name.split("."))


def exists(conn: psycopg.Connection, relation: sql.Identifier) -> bool:
    """Whether a table or view of that name exists (a qualified ``Identifier``)."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [relation.as_string(conn)]).fetchone()
    return bool(row and row[0])


def rls_applies(conn: psycopg.Connection, relation: str) -> bool:
    """Whether row-level security filters what this role sees of ``relation``: enabled, and
    forced or not the role's own table, for a role with neither BYPASSRLS nor superuser."""
    row = conn.execute(
        "SELECT c.relrowsecurity AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, "
        "'USAGE')) AND NOT (SELECT rolbypassrls OR rolsuper FROM pg_roles "
        "WHERE rolname = current_user) FROM pg_class c WHERE c.oid = to_regclass(%s)",
        [regclass(relation)],
    ).fetchone()
    return bool(row and row[0])


def write_rules(conn: psycopg.Connection, relation: str) -> list[str]:
    """The enabled rules (``CREATE RULE``) on INSERT, UPDATE or DELETE of ``relation``: each
    rewrites what a statement writes, where ferry cannot see it (a row ``DO INSTEAD`` sent
    elsewhere was recorded as migrated; one kept ``DO INSTEAD NOTHING`` as deleted)."""
    rows = conn.execute(
        "SELECT rulename::text FROM pg_rewrite WHERE ev_class = to_regclass(%s) "
        "AND ev_type IN ('2', '3', '4') AND ev_enabled IN ('O', 'A') ORDER BY 1",
        [regclass(relation)],
    ).fetchall()
    return [r[0] for r in rows]


# Functions that resolve names as they run, on the session's search_path: not C, and with
# no search_path of their own.
_PATHLESS = (
    "JOIN pg_proc p ON p.oid = f.fn JOIN pg_language l ON l.oid = p.prolang "
    "WHERE l.lanname NOT IN ('c', 'internal') "
    "AND NOT EXISTS (SELECT FROM unnest(p.proconfig) c WHERE c LIKE 'search\\_path=%%') "
)
#: The table ``r.oid`` and its partitions, where a row written to it may go.
RELATIONS = "(SELECT r.oid UNION SELECT p.relid FROM pg_partition_tree(r.oid) p)"
_TRIGGERS = (
    f"SELECT t.tgfoid AS fn FROM pg_trigger t WHERE t.tgrelid IN {RELATIONS} "
    "AND NOT t.tgisinternal AND t.tgenabled IN ('O', 'A')"
)
#: The functions (``fn``) a write to the table ``r.oid`` runs: beside its triggers, those of
#: its CHECKs, of its columns' domains' CHECKs and defaults, and of its indexes' expressions
#: and predicates, on it or on its partitions. From the objects to ``pg_depend`` by its
#: index: the other way, every function's dependents were looked at, one by one.
WRITE_FUNCTIONS = (
    _TRIGGERS + " UNION SELECT d.refobjid FROM ("
    "SELECT 'pg_constraint'::regclass, c.oid FROM pg_constraint c "
    f"WHERE c.conrelid IN {RELATIONS} "
    "UNION ALL SELECT 'pg_constraint'::regclass, c.oid FROM pg_constraint c "
    "JOIN pg_attribute a ON a.atttypid = c.contypid WHERE a.attrelid = r.oid "
    "UNION ALL SELECT 'pg_attrdef'::regclass, ad.oid FROM pg_attrdef ad "
    f"WHERE ad.adrelid IN {RELATIONS} "
    "UNION ALL SELECT 'pg_class'::regclass, i.indexrelid FROM pg_index i "
    f"WHERE i.indrelid IN {RELATIONS}) o (cls, obj) "
    "JOIN pg_depend d ON d.classid = o.cls AND d.objid = o.obj "
    "WHERE d.refclassid = 'pg_proc'::regclass"
)


def functions_naming(
    conn: psycopg.Connection, relation: str, names: Sequence[str]
) -> list[tuple[str, list[str]]]:
    """The functions a write to ``relation`` runs (``WRITE_FUNCTIONS``) that resolve names on the
    session's search_path and whose text names one of ``names`` unqualified, each with the
    names it does. A heuristic: a name in a comment counts; one built in dynamic SQL, or in
    a function they call, not."""
    if not names:
        return []
    rows = conn.execute(
        "SELECT fn, named FROM (SELECT DISTINCT p.oid::regprocedure::text AS fn, "
        "ARRAY(SELECT n FROM unnest(%s::text[]) n WHERE p.prosrc ~* "
        "('(^|[^.[:alnum:]_])\"?' || n || '\"?($|[^[:alnum:]_])') ORDER BY n) AS named "
        f"FROM (SELECT to_regclass(%s) AS oid) r, LATERAL ({WRITE_FUNCTIONS}) f {_PATHLESS}) x "
        "WHERE named <> '{}' ORDER BY fn",
        [list(names), regclass(relation)],
    ).fetchall()
    return [(r[0], list(r[1])) for r in rows]


_SHAPES = """
WITH RECURSIVE s AS (
    SELECT n, to_regclass(name) AS root FROM unnest(%s::text[]) WITH ORDINALITY AS u(name, n)
), tree AS (
    SELECT n, root AS relid FROM s WHERE root IS NOT NULL
    UNION ALL
    SELECT t.n, i.inhrelid FROM tree t JOIN pg_inherits i ON i.inhparent = t.relid
)
SELECT (SELECT md5(string_agg(concat_ws(':', c.oid, c.xmin, c.relfilenode, c.relreplident,
            pg_get_expr(c.relpartbound, c.oid),
            (SELECT string_agg(concat_ws(' ', a.attnum, a.attname, a.atttypid, a.atttypmod),
                               ',' ORDER BY a.attnum)
             FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
             AND NOT a.attisdropped),
            (SELECT string_agg(i.indexrelid::text, ',' ORDER BY i.indexrelid)
             FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)),
        '|' ORDER BY c.oid))
        FROM tree t JOIN pg_class c ON c.oid = t.relid WHERE t.n = s.n)
FROM s ORDER BY s.n
"""


def table_shapes(conn: psycopg.Connection, tables: Sequence[str]) -> list[str | None]:
    """A digest of each of ``tables`` as its rows are defined, by what a change of which
    writes no row to the WAL (``sync/wal.py`` then reads no change): its partitions and
    inheritance children and their bounds, every column's name and type, a rewrite of any
    of them (``relfilenode``: an ``ALTER COLUMN ... TYPE ... USING``), its replica identity,
    and any other change of its catalog row (``xmin``: an identity set and set back). None
    for a table that does not exist."""
    rows = conn.execute(_SHAPES, [[regclass(t) for t in tables]]).fetchall()
    return [r[0] for r in rows]


@dataclass(frozen=True)
class ColumnInfo:
    """A column as a catalog reader needs it: ``base`` and the rest describe the type under
    any domain, since that is what a value must be cast to."""

    name: str
    type: str  # format_type of the column's own type
    not_null: bool
    has_default: bool  # a default, an identity or a generated value fills it
    writable: bool  # not generated, not an identity GENERATED ALWAYS
    base: str  # format_type of the type under any domain
    typtype: str  # pg_type.typtype of the base type: b, e (enum), r, m, c ...
    category: str  # pg_type.typcategory of the base type: S string, N numeric, D date ...
    builtin: bool  # the base type is in pg_catalog
    labels: tuple[str, ...] = ()  # an enum's labels, in order
    domain: bool = False


@dataclass(frozen=True)
class ForeignKey:
    """A declared foreign key: ``columns`` of its table refer to ``ref_columns`` of
    ``ref_table`` (``schema.table``)."""

    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]


def relations(
    conn: psycopg.Connection, schemas: Sequence[str], views: bool = False
) -> list[tuple[str, str, str]]:
    """``(schema, name, kind)`` of the tables (kind ``table``) and, with ``views``, views
    (``view``) of ``schemas``: a partitioned table once, its partitions not at all."""
    kinds = ["r", "p"] + (["v", "m"] if views else [])
    rows = conn.execute(
        "SELECT n.nspname::text, c.relname::text, "
        "CASE WHEN c.relkind IN ('r', 'p') THEN 'table' ELSE 'view' END "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        'WHERE n.nspname = ANY(%s) AND c.relkind = ANY(%s::"char"[]) AND NOT c.relispartition '
        "ORDER BY 1, 2",
        [list(schemas), kinds],
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


_TABLE_COLUMNS = """
WITH RECURSIVE cols AS (
    SELECT a.attnum, a.attname::text AS name, a.atttypid, a.atttypmod, a.attnotnull,
           a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '' AS has_default,
           a.attgenerated = '' AND a.attidentity <> 'a' AS writable
    FROM pg_attribute a
    WHERE a.attrelid = to_regclass(%(rel)s) AND a.attnum > 0 AND NOT a.attisdropped
), base AS (
    SELECT attnum, atttypid AS typ, atttypmod AS mod, 0 AS depth FROM cols
    UNION ALL
    SELECT b.attnum, t.typbasetype, t.typtypmod, b.depth + 1
    FROM base b JOIN pg_type t ON t.oid = b.typ WHERE t.typtype = 'd'
)
SELECT c.name, format_type(c.atttypid, c.atttypmod), c.attnotnull, c.has_default, c.writable,
       format_type(b.typ, b.mod), bt.typtype::text, bt.typcategory::text,
       bt.typnamespace = 'pg_catalog'::regnamespace,
       ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = bt.oid
             ORDER BY e.enumsortorder),
       b.depth > 0
FROM cols c
JOIN base b ON b.attnum = c.attnum
JOIN pg_type bt ON bt.oid = b.typ AND bt.typtype <> 'd'
ORDER BY c.attnum
"""


def table_columns(conn: psycopg.Connection, relation: str) -> list[ColumnInfo]:
    """The columns of ``relation`` (``schema.table``), in order."""
    rows = conn.execute(_TABLE_COLUMNS, {"rel": regclass(relation)}).fetchall()
    return [
        ColumnInfo(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], tuple(r[9]), r[10])
        for r in rows
    ]


def unique_keys(
    conn: psycopg.Connection, relation: str, not_null: bool = True
) -> list[tuple[str, ...]]:
    """Column lists that identify a row of ``relation``: its primary key first, then each
    unique index over plain columns that are all NOT NULL (no expression, no predicate),
    fewer columns first; with ``not_null`` False, nullable ones too."""
    rows = conn.execute(
        "SELECT i.indisprimary, ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH "
        "ORDINALITY k(attnum, n) JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = k.attnum ORDER BY k.n), "
        "bool_and(a2.attnotnull) "
        "FROM pg_index i JOIN pg_attribute a2 ON a2.attrelid = i.indrelid "
        "AND a2.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indisvalid "
        "AND i.indexprs IS NULL AND i.indpred IS NULL AND NOT (0 = ANY(i.indkey)) "
        "GROUP BY i.indexrelid, i.indisprimary, i.indkey, i.indrelid "
        "ORDER BY NOT i.indisprimary, cardinality(i.indkey::int2[]), i.indexrelid",
        [regclass(relation)],
    ).fetchall()
    return [tuple(cols) for primary, cols, filled in rows if primary or filled or not not_null]


def primary_key(conn: psycopg.Connection, relation: str) -> tuple[str, ...]:
    """The primary key's columns of ``relation``, in order (empty: it has none)."""
    row = conn.execute(
        "SELECT ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(n, o) "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o) "
        "FROM pg_index i WHERE i.indrelid = to_regclass(%s) AND i.indisprimary",
        [regclass(relation)],
    ).fetchone()
    return tuple(row[0]) if row else ()


def foreign_keys(conn: psycopg.Connection, relation: str) -> list[ForeignKey]:
    """The foreign keys declared on ``relation``, in the order of their names."""
    rows = conn.execute(
        "SELECT ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i) "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i), "
        "rn.nspname::text || '.' || r.relname::text, "
        "ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, i) "
        "JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i) "
        "FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid "
        "JOIN pg_namespace rn ON rn.oid = r.relnamespace "
        "WHERE c.conrelid = to_regclass(%s) AND c.contype = 'f' ORDER BY c.conname",
        [regclass(relation)],
    ).fetchall()
    return [ForeignKey(tuple(cols), ref, tuple(refcols)) for cols, ref, refcols in rows]


def checks(conn: psycopg.Connection, relation: str) -> list[tuple[str, str]]:
    """``(name, definition)`` of the CHECK constraints of ``relation``."""
    rows = conn.execute(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = to_regclass(%s) AND contype = 'c' ORDER BY conname",
        [regclass(relation)],
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def rows_up_to(conn: psycopg.Connection, relation: sql.Identifier, limit: int) -> int:
    """The rows of ``relation``, counted only up to ``limit`` (a size test need not scan a
    big table)."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM (SELECT FROM {} LIMIT {}) s").format(
            relation, sql.Literal(limit)
        )
    ).fetchone()
    return int(row[0]) if row else 0
