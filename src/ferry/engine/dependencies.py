"""Which rows a model's rows depend on: what settling a change must run again."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ferry.engine import keyarray
from ferry.engine.keys import text_sql
from ferry.engine.query import with_rules
from ferry.spec import Model, Spec


def own_dependencies(model: Model) -> list[list[str]]:
    """The output columns through which a row's fate depends on other rows of its own model:
    ``merge_into``, and the key of a parent that is the model itself."""
    columns = [[model.merge_into]] if model.merge_into else []
    return columns + [p.keys for p in model.parents if p.model == model.name]


def dependents(
    conn: psycopg.Connection, spec: Spec, model: Model, columns: list[str],
    keys: Collection[str], types: dict[str, int] | None = None,
) -> set[str]:  # fmt: skip
    """Keys of ``model``'s rows whose output ``columns`` (a parent's key, ``merge_into``)
    hold any of ``keys``: the rows whose fate follows theirs. Run with the stage schema on
    the search path. ``types``: the model's output columns' type OIDs (``Reads.types``)."""
    if not keys:
        return set()
    body = sql.SQL(spec.model_sql(model))  # type: ignore[arg-type]
    ordered = sorted(keys)
    # Keys as a literal: model SQL may hold a % that a parameter placeholder would trip on.
    held = sql.SQL("{} = ANY({})").format(text_sql("m0", columns), keyarray.literal(ordered))
    if len(columns) == 1 and (types or {}).get(columns[0]) in _INTEGERS and _integers(ordered):
        # Compared as integers, the column's statistics hold: as text, a few keys were taken
        # for 5% of the rows, and an anti-join beside it hashed a whole table to answer
        # (125,000 instructions for two states, at SF=5).
        held = sql.SQL("{} = ANY({}::bigint[])").format(
            sql.Identifier("m0", columns[0]), keyarray.literal(ordered)
        )
    rows = conn.execute(
        sql.SQL("SELECT m0._key::text FROM ({}) m0 WHERE {}").format(body, held)
    ).fetchall()
    conn.commit()
    return {r[0] for r in rows}


_INTEGERS = {20, 21, 23}  # int8, int2, int4
_INTEGER = re.compile(r"-?[0-9]{1,19}")


def _integers(keys: list[str]) -> bool:
    """Every key reads as a bigint (else the text comparison, which a cast cannot fail)."""
    return all(_INTEGER.fullmatch(k) and -(2**63) <= int(k) < 2**63 for k in keys)


@dataclass
class Reads:
    """What a model's rows are computed from (``reads``)."""

    # The sources whose stage tables its SQL and rules read, its own and others (a lookup, a
    # table joined for one column): a change in any of them can change its rows.
    sources: set[str]
    # Whether each row comes from its own source row alone: the own stage table read once,
    # at a level of the query with no window function, aggregate, GROUP BY or DISTINCT. If
    # not (a merge survivor chosen among duplicates, a row numbered among its siblings), a
    # change to one source row can change others.
    row_local: bool
    # Its output columns' type OIDs (``dependents``).
    types: dict[str, int] | None = None


def reads(conn: psycopg.Connection, spec: Spec, model: Model) -> Reads:
    """Asked of PostgreSQL, from a view of the model's SQL and rules (its dependencies and
    its parse tree), never guessed from their text. Run with the stage schema on the search
    path, as the models run."""
    return reads_of(conn, spec, [model])[model.name]


def reads_of(conn: psycopg.Connection, spec: Spec, models: list[Model]) -> dict[str, Reads]:
    """``reads`` of several models in one round trip (a pipeline): a sync asks it of every
    model, and 22 models asked one by one took 3 ms each, mostly in waiting."""
    found: list[tuple[Model, psycopg.Cursor, psycopg.Cursor, psycopg.Cursor]] = []
    with conn.transaction(force_rollback=True), conn.pipeline():
        for i, model in enumerate(models):
            view = sql.Identifier(f"_ferry_reads_{i}")
            conn.execute(
                sql.SQL("CREATE TEMP VIEW {} AS {}").format(
                    view, with_rules(model, spec.model_sql(model))
                ),
                binary=True,  # the extended protocol: the server refuses a second statement
            )
            name = f"pg_temp._ferry_reads_{i}"
            tables = conn.execute(
                "SELECT c.relname, c.oid::int FROM pg_rewrite r JOIN pg_depend d "
                "ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid "
                "JOIN pg_class c ON c.oid = d.refobjid "
                "WHERE r.ev_class = %s::regclass AND c.relnamespace = to_regnamespace(%s)",
                [name, spec.stage_schema],
            )
            tree = conn.execute(
                "SELECT ev_action FROM pg_rewrite WHERE ev_class = %s::regclass", [name]
            )
            types = conn.execute(
                "SELECT attname::text, atttypid::int FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0",
                [name],
            )
            found.append((model, tables, tree, types))
        out = {}
        for model, tables_cur, tree_cur, types_cur in found:
            tables = {r[0]: r[1] for r in tables_cur.fetchall()}
            row = tree_cur.fetchone()
            own = tables.get(spec.source(model.source).stage_table) if model.accounts else None
            local = own is None or (row is not None and _row_local(str(row[0]), own))
            out[model.name] = Reads(
                {src.name for src in spec.sources if src.stage_table in tables},
                local,
                dict(types_cur.fetchall()),
            )
    return out


_SET_VALUED = re.compile(
    r":(hasAggs|hasWindowFuncs) true|:(groupClause|distinctClause|groupingSets) \("
)


def _row_local(tree: str, relid: int) -> bool:
    """On the parse tree's text (``nodeToString``): every query level (its subqueries cut
    out) that ranges over the table ``relid`` has no set-valued clause, and only one does."""
    mark = f":relid {relid} "
    starts = [m.start() for m in re.finditer(r"\{QUERY ", tree)]
    ends = {i: _node_end(tree, i) for i in starts}
    reading = []
    for i in starts:
        inner = [j for j in starts if i < j < ends[i]]
        outermost = [j for j in inner if not any(k < j < ends[k] for k in inner)]
        cuts = [i, *(x for j in outermost for x in (j, ends[j])), ends[i]]
        level = "".join(tree[a:b] for a, b in zip(cuts[::2], cuts[1::2], strict=True))
        if mark in level:
            reading.append(level)
    return sum(lv.count(mark) for lv in reading) == 1 and not any(
        _SET_VALUED.search(lv) for lv in reading
    )


_BRACES = re.compile(r"\\.|[{}]", re.S)


def _node_end(tree: str, start: int) -> int:
    """The index after the ``}`` that closes the node opening at ``start`` (a backslash
    escapes the character after it). Only braces and escapes are visited: a character loop
    in Python took 0.15 s of a sync's 22 models' trees."""
    depth = 0
    for m in _BRACES.finditer(tree, start):
        ch = m.group()
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return m.end()
    return len(tree)
