"""``ferry plan``: what a migrate would do, computed without touching the target's tables.

Why a real migrate on copies, not a prediction of one: a fate depends on everything the
engine does (rules, parents, merges, the target's unique, check and foreign-key refusals,
bisection), and only the engine itself gets it right. So the plan runs the normal
``pipeline.migrate`` on a copy of the spec whose stage and ledger are scratch schemas and
whose models write into scratch clones of their target tables
(``ferry_plan__<schema>.<table>``): ``LIKE ... INCLUDING ALL`` (columns, defaults, NOT NULL,
CHECK, unique indexes, under the real tables' index names), the target's existing rows
copied in (so that a unique value the application's rows hold is met), and the foreign keys
made again between the clones; a table outside the spec that a foreign key references is
cloned as its referenced columns only. The report is collected from the scratch ledger with
``report.collect`` (the same shape as ``ferry report``), with the real table names, and every
scratch schema is dropped at the end, on failure too. The real tables are only read.

What the plan does not meet: the target's triggers (not cloned: one that writes elsewhere
would write into the real tables), and rows the application writes between the plan and the
migrate. A target where ferry has run already is planned as one fresh migrate of the current
source (what the next run converges to): ferry's own rows are left out of the clones.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ferry import catalog, ledger
from ferry.conninfo import connect
from ferry.engine import pipeline
from ferry.engine.execute import Progress
from ferry.errors import FerryError
from ferry.ledger import privileges
from ferry.ops import report
from ferry.ops.check import move_helpers
from ferry.spec import Spec

STAGE = "ferry_plan_stage"
LEDGER = "ferry_plan"
CLONES = "ferry_plan__"  # + the real table's schema
MARK = "ferry plan: scratch, dropped when the plan ends"
_LOCK = "ferry:plan"
_NAME_MAX = 63  # PostgreSQL cuts longer identifiers


@dataclass
class PlanResult:
    data: dict[str, Any]  # ``report.collect``'s shape, plus "plan"
    run: pipeline.RunResult
    seconds: float


def clone_of(table: str) -> str:
    """``schema.table`` -> the scratch clone's ``schema.table``."""
    schema, name = table.split(".")
    return f"{CLONES}{schema}.{name}"


def plan(
    source: str, target: str, spec: Spec, *, data_dir: Path | None = None,
    sample: int | None = None, jobs: int = 2, progress: Progress | None = None,
) -> PlanResult:  # fmt: skip
    """Stage (all rows, or ``sample`` per source), run every model into scratch clones, and
    return the report a migrate would give; the scratch schemas are gone afterwards."""
    t0 = time.perf_counter()
    with connect(target, app="ferry-plan") as conn:
        got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [_LOCK]).fetchone()
        conn.commit()
        if not got or not got[0]:
            raise FerryError("another ferry plan is running on this target database")
        try:
            tables = list(dict.fromkeys(m.target for m in spec.models))
            refs = _foreign_keys(conn, tables)
            outside = _readable(conn, sorted({r.ref for r in refs if r.ref not in tables}))
            schemas = _scratch_schemas(conn, spec, [*tables, *outside])
            _drop(conn, schemas)  # what a plan that crashed left
            try:
                _create(conn, spec, tables, refs, outside, schemas)
                scratch = scratch_spec(spec)
                run = pipeline.migrate(
                    source, target, scratch, data_dir=data_dir or spec.base_dir, jobs=jobs,
                    progress=progress, defer_constraints=False, sample=sample,
                )  # fmt: skip
                data = _as_planned(report.collect(target, scratch), spec, conn, sample)
            finally:
                _drop(conn, schemas)
        finally:
            conn.rollback()
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", [_LOCK])
            conn.commit()
    return PlanResult(data, run, time.perf_counter() - t0)


def scratch_spec(spec: Spec) -> Spec:
    """The spec with scratch stage and ledger, each model writing into its target's clone,
    and its SQL and rules calling the engine's helpers (``is_json``, ``key_uuid``) in the
    scratch ledger schema, where they are made."""

    def moved(text: str) -> str:
        return move_helpers(text, spec.ledger_schema, LEDGER)[0]

    models = tuple(
        m.model_copy(
            update={
                "target": clone_of(m.target),
                "sql": moved(spec.model_sql(m)),
                "rules": tuple(r.model_copy(update={"when": moved(r.when)}) for r in m.rules),
            }
        )
        for m in spec.models
    )
    return spec.model_copy(
        update={"stage_schema": STAGE, "ledger_schema": LEDGER, "models": models}
    )


# -- the scratch schemas ----------------------------------------------------------------------


def _scratch_schemas(conn: psycopg.Connection, spec: Spec, tables: list[str]) -> list[str]:
    """Every schema the plan makes, refused if one is the spec's own or a schema that was
    not made by a plan (it would be dropped at the end)."""
    schemas = [STAGE, LEDGER, *dict.fromkeys(clone_of(t).split(".")[0] for t in tables)]
    for name in schemas:
        if len(name.encode()) > _NAME_MAX:
            raise FerryError(f"schema name {name} is too long for a plan's scratch schema")
        if name in (spec.stage_schema, spec.ledger_schema):
            raise FerryError(f"the spec's own schema {name} is a name the plan uses for scratch")
    found = conn.execute(
        "SELECT nspname::text FROM pg_namespace WHERE nspname = ANY(%s) "
        "AND obj_description(oid, 'pg_namespace') IS DISTINCT FROM %s",
        [schemas, MARK],
    ).fetchall()
    conn.commit()
    if found:
        raise FerryError(
            f"schema {found[0][0]} exists and is not a plan's scratch schema: ferry plan "
            "will not drop it"
        )
    return schemas


def _drop(conn: psycopg.Connection, schemas: list[str]) -> None:
    """Drop the plan's scratch schemas (only those marked as such)."""
    conn.rollback()
    for (name,) in conn.execute(
        "SELECT nspname::text FROM pg_namespace WHERE nspname = ANY(%s) "
        "AND obj_description(oid, 'pg_namespace') = %s",
        [schemas, MARK],
    ).fetchall():
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
    conn.commit()


@dataclass(frozen=True)
class _ForeignKey:
    table: str  # the referencing target table, schema.table
    name: str
    definition: str  # pg_get_constraintdef, names qualified
    ref: str  # the referenced table, schema.table
    ref_text: str  # as the definition prints it
    ref_columns: tuple[str, ...]


def _foreign_keys(conn: psycopg.Connection, tables: list[str]) -> list[_ForeignKey]:
    conn.execute("SET LOCAL search_path = pg_catalog")  # every name printed qualified
    rows = conn.execute(
        "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid), "
        "n.nspname || '.' || r.relname, c.confrelid::regclass::text, "
        "ARRAY(SELECT a.attname::text FROM unnest(c.confkey) k(n) JOIN pg_attribute a "
        "ON a.attrelid = c.confrelid AND a.attnum = k.n) "
        "FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid "
        "JOIN pg_namespace n ON n.oid = r.relnamespace "
        "WHERE c.contype = 'f' AND c.conrelid = ANY(%s::regclass[]) ORDER BY c.conname",
        [[catalog.regclass(t) for t in tables]],
    ).fetchall()
    names = {_regclass(conn, t): t for t in tables}
    conn.rollback()
    return [
        _ForeignKey(names[r[0]], r[1], r[2], r[3], r[4], tuple(r[5])) for r in rows if r[0] in names
    ]


def _readable(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    """The tables this role may read (a clone of their keys can be made)."""
    found = [
        t
        for t in tables
        if _one(conn, "SELECT has_table_privilege(%s, 'SELECT')", catalog.regclass(t))
    ]
    conn.rollback()
    return found


def _one(conn: psycopg.Connection, query: str, value: object) -> object:
    row = conn.execute(query, [value]).fetchone()  # type: ignore[call-overload]
    return None if row is None else row[0]


def _regclass(conn: psycopg.Connection, table: str) -> str:
    return str(_one(conn, "SELECT %s::regclass::text", catalog.regclass(table)))


def _ident(table: str) -> sql.Identifier:
    return sql.Identifier(*table.split("."))


def _create(
    conn: psycopg.Connection, spec: Spec, tables: list[str], refs: list[_ForeignKey],
    outside: list[str], schemas: list[str],
) -> None:  # fmt: skip
    for name in schemas:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("COMMENT ON SCHEMA {} IS {}").format(sql.Identifier(name), sql.Literal(MARK))
        )
    for table in tables:
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                _ident(clone_of(table)), _ident(table)
            )
        )
        _index_names(conn, table)
        _sequences(conn, table)
    wanted: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for r in refs:
        if r.ref in outside and r.ref_columns not in wanted[r.ref]:
            wanted[r.ref].append(r.ref_columns)
    for table, keys in wanted.items():
        cols = list(dict.fromkeys(c for k in keys for c in k))
        conn.execute(
            sql.SQL("CREATE TABLE {} AS SELECT {} FROM {}").format(
                _ident(clone_of(table)),
                sql.SQL(", ").join(map(sql.Identifier, cols)),
                _ident(table),
            )
        )
        for k in keys:
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD UNIQUE ({})").format(
                    _ident(clone_of(table)), sql.SQL(", ").join(map(sql.Identifier, k))
                )
            )
    # Closed before any row is copied in: they are the target's rows.
    privileges.close(conn, [clone_of(t).split(".")[0] for t in [*tables, *outside]])
    ours = ledger.table(spec, "ledger")
    has_ledger = catalog.exists(conn, ours)
    for table in tables:
        _copy_rows(conn, spec, table, ours if has_ledger else None)
    for r in refs:
        # A table outside the spec that this role cannot read is referenced as it is.
        ref = r.ref if r.ref in tables or r.ref in outside else None
        clone = _ident(clone_of(ref)).as_string(conn) if ref else r.ref_text
        definition = r.definition.replace(f"REFERENCES {r.ref_text}(", f"REFERENCES {clone}(", 1)
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                _ident(clone_of(r.table)),
                sql.Identifier(r.name),
                sql.SQL(definition.removesuffix(" NOT VALID") + " NOT VALID"),  # type: ignore[arg-type]
            )
        )
        try:  # valid where the copied rows hold it: what the target has
            with conn.transaction():
                conn.execute(
                    sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                        _ident(clone_of(r.table)), sql.Identifier(r.name)
                    )
                )
        except psycopg.errors.ForeignKeyViolation:
            pass  # a row of the application's references one of ferry's, left out
    for table in tables:
        conn.execute(sql.SQL("ANALYZE {}").format(_ident(clone_of(table))))
    conn.commit()


def _index_names(conn: psycopg.Connection, table: str) -> None:
    """The clone's indexes under the real ones' names, which the target's refusals name
    (LIKE names them after the columns)."""
    rows = conn.execute(
        "WITH x AS (SELECT i.indrelid, i.indexrelid, i.indisunique, i.indisprimary, "
        " regexp_replace(pg_get_indexdef(i.indexrelid), '^.*? USING ', '') AS body "
        " FROM pg_index i WHERE i.indrelid IN (to_regclass(%(real)s), to_regclass(%(clone)s))) "
        "SELECT r.relname::text, c.relname::text FROM x a "
        "JOIN x b USING (indisunique, indisprimary, body) "
        "JOIN pg_class r ON r.oid = a.indexrelid JOIN pg_class c ON c.oid = b.indexrelid "
        "WHERE a.indrelid = to_regclass(%(real)s) AND b.indrelid = to_regclass(%(clone)s) "
        "AND r.relname <> c.relname",
        {"real": catalog.regclass(table), "clone": catalog.regclass(clone_of(table))},
    ).fetchall()
    schema = clone_of(table).split(".")[0]
    done: set[str] = set()
    for real, clone in rows:
        if real in done or clone in done:
            continue
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                        sql.Identifier(schema, clone), sql.Identifier(real)
                    )
                )
            done |= {real, clone}
        except psycopg.errors.DuplicateTable:
            pass  # the name is taken in the scratch schema: the clone's own name stays


def _sequences(conn: psycopg.Connection, table: str) -> None:
    """Defaults drawn from a sequence draw from a scratch one that goes on from the real
    one's value: the real sequences are not advanced, and new values do not meet old rows."""
    clone = clone_of(table)
    schema, name = clone.split(".")
    conn.execute("SET LOCAL search_path = pg_catalog")
    rows = conn.execute(
        "SELECT a.attname::text, s.oid::regclass::text, pg_get_expr(d.adbin, d.adrelid), "
        "CASE WHEN has_sequence_privilege(s.oid, 'SELECT') "
        "THEN pg_sequence_last_value(s.oid) END "
        "FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
        "JOIN pg_depend p ON p.classid = 'pg_attrdef'::regclass AND p.objid = d.oid "
        "AND p.refclassid = 'pg_class'::regclass "
        "JOIN pg_class s ON s.oid = p.refobjid AND s.relkind = 'S' "
        "WHERE d.adrelid = to_regclass(%s)",
        [catalog.regclass(table)],
    ).fetchall()
    for col, seq, expr, last in rows:
        own = sql.Identifier(schema, f"{name}_{col}_seq"[:_NAME_MAX])
        conn.execute(sql.SQL("CREATE SEQUENCE {}").format(own))
        if last is not None:
            conn.execute("SELECT setval(%s::regclass, %s)", [own.as_string(conn), last])
        default = expr.replace(
            sql.Literal(seq).as_string(conn), sql.Literal(own.as_string(conn)).as_string(conn)
        )
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}").format(
                _ident(clone),
                sql.Identifier(col),
                sql.SQL(default),  # type: ignore[arg-type]
            )
        )
    for col, seq in conn.execute(
        "SELECT a.attname::text, pg_get_serial_sequence(%s, a.attname) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attidentity <> ''",
        [catalog.regclass(table), catalog.regclass(table)],
    ).fetchall():
        row = conn.execute(
            "SELECT CASE WHEN has_sequence_privilege(%s::regclass, 'SELECT') "
            "THEN pg_sequence_last_value(%s::regclass) END",
            [seq, seq],
        ).fetchone()
        if row and row[0] is not None:
            conn.execute(
                "SELECT setval(pg_get_serial_sequence(%s, %s), %s)",
                [catalog.regclass(clone), col, row[0]],
            )


def _copy_rows(
    conn: psycopg.Connection, spec: Spec, table: str, ours: sql.Identifier | None
) -> None:
    """The target's rows into the clone, but those ferry's ledger names (a fresh migrate
    would write them again, under the same keys)."""
    cols = [
        r[0]
        for r in conn.execute(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass(%s) "
            "AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            [catalog.regclass(clone_of(table))],
        )
    ]
    names = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in cols)
    query = sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {} t").format(
        _ident(clone_of(table)), sql.SQL(", ").join(map(sql.Identifier, cols)), names, _ident(table)
    )
    if ours is not None:
        key = next(m.key_column for m in spec.models if m.target == table)
        query = sql.SQL(
            "{} WHERE NOT EXISTS (SELECT FROM {} l WHERE l.target_table = {} "
            "AND l.target_uuid = t.{})"
        ).format(query, ours, sql.Literal(table), sql.Identifier(key))
    conn.execute(query)


# -- the report -------------------------------------------------------------------------------


def _as_planned(
    data: dict[str, Any], spec: Spec, conn: psycopg.Connection, sample: int | None
) -> dict[str, Any]:
    """``report.collect``'s data with the real table names, and what the plan adds: the
    target's refusals by constraint (what the database said, no values), and the sample."""
    real = {clone_of(m.target): m.target for m in spec.models}
    for s in data["sources"]:
        s["targets"] = sorted(real.get(t, t) for t in s["targets"])
    for t in data["targets"]:
        t["target_table"] = real.get(t["target_table"], t["target_table"])
    rows = conn.execute(
        sql.SQL(
            "SELECT model, source_table, reason, sqlstate, coalesce(message, ''), count(*) "
            "FROM {} WHERE status = 'quarantined' AND sqlstate IS NOT NULL "
            "GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 3, 5"
        ).format(sql.Identifier(LEDGER, "ledger"))
    ).fetchall()
    conn.rollback()
    data["spec"] = spec.name
    data["plan"] = {
        "written_to_target": False,
        "sample": sample,
        "refusals": [
            {"model": m, "source_table": src, "reason": reason, "sqlstate": state,
             "message": message, "rows": n}
            for m, src, reason, state, message, n in rows
        ],
    }  # fmt: skip
    return data


def render(data: dict[str, Any], fmt: report.Format) -> str:
    """``report.render``, with what is particular to a plan said first in Markdown."""
    text = report.render(data, fmt)
    if fmt != "md" or "plan" not in data:
        return text
    p = data["plan"]
    lines = [
        "## Plan",
        "",
        "A plan: nothing was written to the target's tables. Every model ran into scratch "
        "copies of them (their existing rows included), and these are the fates a migrate "
        "would give now. Target tables count their rows as they would be after it.",
    ]
    if p["sample"]:
        lines += [
            "",
            f"Sampled: at most {p['sample']:,} rows of each source (lowest keys). A child "
            "whose parent was not sampled reads as an orphan here.",
        ]
    lines += ["", "### What the target's constraints would refuse", ""]
    if p["refusals"]:
        lines += [
            "| Model | Source | Reason | SQLSTATE | What the database says | Rows |",
            "| --- | --- | --- | --- | --- | ---: |",
        ]
        lines += [
            f"| {r['model']} | `{r['source_table']}` | `{r['reason']}` | {r['sqlstate']} | "
            f"{r['message'].replace('|', chr(92) + '|')} | {r['rows']:,} |"
            for r in p["refusals"]
        ]
    else:
        lines.append("Nothing: no row would be refused by the target.")
    head, sep, rest = text.partition("\n## Totals")
    head = head.replace("# Migration report:", "# Migration plan:", 1)
    return head + "\n" + "\n".join(lines) + "\n" + sep + rest
