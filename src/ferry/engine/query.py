"""Plan one model's query: the SQL that computes a chunk's rows with their fates.

Everything here is composed from the spec and a few facts about the databases read once per
model (``Shape``), so the SQL a spec yields can be read and tested without a database.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from ferry import catalog, ledger
from ferry.engine import columns, encodings, predict, stage
from ferry.engine.keys import set_sql, text_sql, uuid_sql
from ferry.errors import FerryError, SpecError, safe_message
from ferry.spec import Model, Spec


@dataclass
class Fates:
    """The ordered outcomes a row of a model can have, as decided by the fate CASE."""

    statuses: list[str]
    reasons: list[str | None]
    # The SQLSTATE and message of a refusal the fate itself predicts (a NOT NULL column).
    states: list[str | None]
    messages: list[str | None]
    merged: int  # the index of ``merged``


# A row merging into a survivor that has no fate yet: neither written nor recorded in this
# pass (``Runner.pending``); ``pipeline.run_model`` runs it again once the survivor has one.
PENDING = "pending"
# A candidate whose earlier outcome is a row of ferry's in the target: migrated, or kept
# (on_delete keep or flag) when its source row went.
HELD = sql.SQL(
    "(c._old_status = 'migrated' OR (c._old_status = 'deleted' AND c._old_uuid IS NOT NULL))"
)
# The fate of rows that share a key their source repeats: all of them, none picked.
DUPLICATE_KEY = "duplicate_key"
# The fate of a row whose key's bytes do not read in the declared encoding (a source in
# SQL_ASCII): the reason PostgreSQL gives for such bytes.
NOT_CONVERTED = "character_not_in_repertoire"
# survivor excluded, quarantined, or missing (not yielded by the model, or deleted)
SURVIVOR_REASONS = ("survivor_excluded", "survivor_quarantined", "missing_survivor")


# Forced on a table ferry owns, row-level security hides rows from ferry, its own among them:
# it would take them for deleted by the application, and verify for missing.
RLS_FORCED = (
    "row-level security is forced on {tables} and applies to this role: ferry would not "
    "see every row it writes there; run as a role with BYPASSRLS, or ALTER TABLE ... NO FORCE "
    "ROW LEVEL SECURITY for the migration"
)


@dataclass
class Shape:
    """What a model's query is planned from, read from the databases once per model: with
    it given, a plan is pure composition (``Plan(None, spec, model, shape)``)."""

    output: dict[str, int]  # the model SQL's output columns, in order, with type OIDs
    target: dict[str, str]  # the target table's columns with their types
    key_type: str  # the type key lists are cast to (``chunk.Runner._where``)
    hashable: bool  # every written column's type has a 64-bit hash function
    parallel_safe: bool  # no unique index can make two chunks collide
    refusals: predict.Refusals
    parent_led: list[sql.Composable]  # each parent's ledger rows (``ledger.table_of``)
    own_led: sql.Composable  # the model's own
    # The stage and its key column, when the stage holds a key more than once (its source
    # repeats it): those rows are quarantined, duplicate_key (``Plan.expected``).
    repeats: tuple[sql.Identifier, sql.Identifier] | None = None
    # Whether a row's key is named by its bytes, which do not read (``columns.named``):
    # a predicate over the model's row ``d``, for a source staged raw; its rows are
    # quarantined, character_not_in_repertoire.
    named: sql.Composable | None = None
    # How each target column enters the row hash (``hash_kinds``); a column not named
    # enters as its own value.
    hashed_as: dict[str, str] | None = None
    # Whether the target's triggers may change a row as it is written (``rewrites``).
    rewrites: bool = False

    @classmethod
    def read(cls, conn: psycopg.Connection, spec: Spec, model: Model) -> Shape:
        if catalog.rls_applies(conn, model.target):
            raise FerryError(RLS_FORCED.format(tables=model.target))
        out = output_columns(conn, model, spec.model_sql(model))
        target = dict(
            conn.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
                [catalog.regclass(model.target)],
            ).fetchall()
        )
        written = _written(model, out, target)
        # The stage key's type, whose index then serves key lists; for a model that does not
        # account for its source, its _key's own.
        if model.accounts:
            src = spec.source(model.source)
            row = conn.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = to_regclass(%s) AND attname = %s",
                [sql.Identifier(spec.stage_schema, src.stage_table).as_string(conn), src.stage_key],
            ).fetchone()
        else:
            row = conn.execute("SELECT format_type(%s, NULL)", [out["_key"]]).fetchone()
        conn.commit()
        shape = cls(
            out, target, row[0] if row else "text",
            _hashable(conn, [target[n] for n, _ in written]),
            _parallel_safe(conn, model),
            # What the target would refuse, checked before the write (``predict``).
            predict.refusals(
                conn, model.target, [n for n, _ in written],
                {model.key_column, model.legacy_column or model.key_column},
            ),
            # Rows of one model are read from its partition (ledger.table_of): the planner's
            # estimates then come from that partition's statistics.
            [ledger.table_of(conn, spec, p.model) for p in model.parents],
            # A merged row takes its survivor's fate and UUID from the model's own rows.
            ledger.table_of(conn, spec, model.name),
            _repeats(conn, spec, model),
            _named(conn, spec, model),
            hash_kinds(conn, model.target),
            rewrites(conn, model.target),
        )  # fmt: skip
        return shape


def _repeats(
    conn: psycopg.Connection, spec: Spec, model: Model
) -> tuple[sql.Identifier, sql.Identifier] | None:
    src = spec.source(model.source)
    if not model.accounts or stage.unique_key(conn, spec, src):
        return None
    return sql.Identifier(spec.stage_schema, src.stage_table), sql.Identifier(src.stage_key)


def _named(conn: psycopg.Connection, spec: Spec, model: Model) -> sql.Composable | None:
    src = spec.source(model.source)
    if not model.accounts or src.csv is not None or src.keyless:
        return None
    table = sql.Identifier(spec.stage_schema, src.stage_table)
    row = conn.execute(
        "SELECT obj_description(to_regclass(%s), 'pg_class')", [table.as_string(conn)]
    ).fetchone()
    conn.commit()
    encoding, raw = encodings.marked(row[0] if row else None)
    if raw is None or encoding != encodings.UTF8:
        return None
    return sql.SQL("EXISTS (SELECT FROM {t} s WHERE s.{k} = d._key AND ({named}))").format(
        t=table,
        k=sql.Identifier(src.stage_key),
        named=sql.SQL(" OR ").join(
            sql.SQL("s.{}::text ~ {}").format(sql.Identifier(c), sql.Literal(columns.NAMED))
            for c in src.keys
        ),
    )


def output_columns(conn: psycopg.Connection, model: Model, body: str) -> dict[str, int]:
    """The model's output columns, in order, with their type OIDs."""
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT * FROM ({}) m LIMIT 0").format(sql.SQL(body)),  # type: ignore[arg-type]
                binary=True,  # the extended protocol: the server refuses a second statement
            )
            return {d.name: d.type_code for d in cur.description or []}
    except psycopg.Error as exc:
        raise SpecError(f"model {model.name}: its SQL does not run: {safe_message(exc)}") from None


def _written(
    model: Model, out: dict[str, int], target: dict[str, str]
) -> list[tuple[str, sql.Composable]]:
    """The target columns ferry writes, each with the expression over the model's row (``m``)
    that fills it; refuses a spec whose SQL and target do not fit together."""
    where = f"model {model.name}"
    if not target:
        raise SpecError(f"{where}: target table {model.target} does not exist")
    if "_key" not in out:
        raise SpecError(f"{where}: its SQL must return a column named _key")
    if model.key_column not in target:
        raise SpecError(f"{where}: {model.target} has no column {model.key_column}")
    fk_cols = {p.column: i for i, p in enumerate(model.parents) if p.column}
    columns: list[tuple[str, sql.Composable]] = []
    for name in out:
        if name.startswith("_"):
            continue
        if name not in target:
            raise SpecError(f"{where}: output column {name} is not a column of {model.target}")
        if name in fk_cols or name == model.key_column:
            raise SpecError(f"{where}: column {name} is filled by ferry; drop it from the SQL")
        columns.append((name, sql.SQL("m.{}").format(sql.Identifier(name))))
    for col, i in fk_cols.items():
        if col not in target:
            raise SpecError(f"{where}: parent column {col} is not a column of {model.target}")
        columns.append((col, sql.SQL("m._ferry_pu{}").format(sql.Literal(i))))
    for p in model.parents:
        for key in p.keys:
            if key not in out:
                raise SpecError(f"{where}: parent key {key} is not an output column of its SQL")
    if model.merge_into and model.merge_into not in out:
        raise SpecError(f"{where}: merge_into {model.merge_into} is not an output column")
    return columns


def _parallel_safe(conn: psycopg.Connection, model: Model) -> bool:
    """Chunks may run at once only if no unique index can make two of them collide.

    Which of two colliding rows is quarantined must not depend on timing: with a unique
    index on anything but the key columns (an email, say), chunks run in key order.
    """
    allowed = {model.key_column, model.legacy_column}
    rows = conn.execute(
        "SELECT i.indexprs IS NOT NULL OR i.indpred IS NOT NULL, "
        "ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey)) FROM pg_index i "
        "WHERE i.indrelid = to_regclass(%s) AND i.indisunique",
        [catalog.regclass(model.target)],
    ).fetchall()
    conn.commit()
    return all(not expr and len(cols) == 1 and cols[0] in allowed for expr, cols in rows)


def _hashable(conn: psycopg.Connection, types: list[str]) -> bool:
    """Whether every written column's type has a 64-bit hash function (json, point: no).

    ``hash_record_extended`` costs a seventh of ``md5(ROW(...)::text)``, which spends its
    time printing every column as text; it fails on a type without one even when NULL.
    """
    probe = sql.SQL("SELECT hash_record_extended(ROW({}), 0)").format(
        sql.SQL(", ").join(sql.SQL("NULL::{}").format(sql.SQL(t)) for t in types)  # type: ignore[arg-type]
    )
    try:
        with conn.transaction():
            conn.execute(probe)
    except psycopg.errors.UndefinedFunction:
        conn.commit()
        return False
    conn.commit()
    return True


# Base types whose equal values print alike and whose hash sets no value apart from NULL's
# 0 but by chance: a row hash over them sees every change. (numeric only with a declared
# scale: 1.0 = 1.00.)
_EXACT_TYPES = {"bool", "bytea", "char", "int2", "int4", "int8", "oid", "date", "time",
                "timestamp", "timestamptz", "uuid"}  # fmt: skip
_TEXT_TYPES = {"text", "varchar"}


def hash_kinds(conn: psycopg.Connection, table: str) -> dict[str, str]:
    """How each column of ``table`` enters a row hash (``Plan.target_hash``): ``value``, as
    itself; ``collated``, text and varchar under "C" (under a nondeterministic collation a
    change of case hashed alike); ``text``, its text (``C``) for every other type. Why:
    jsonb's hash does not see its structure (``5`` and ``[5]``, ``[[1],2]`` and
    ``[[1,2]]`` hash alike), a float zero and an empty jsonb hash as NULL, an array's hash
    not its shape, a citext's not its case: a change between two such values never reached
    the target, nor verify's sight."""
    rows = conn.execute(
        "WITH RECURSIVE d (name, typ, typmod) AS ("
        " SELECT a.attname::text, a.atttypid, a.atttypmod FROM pg_attribute a"
        " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
        " UNION ALL SELECT d.name, t.typbasetype, CASE WHEN d.typmod >= 0 THEN d.typmod"
        " ELSE t.typtypmod END FROM d JOIN pg_type t ON t.oid = d.typ"
        " WHERE t.typtype = 'd') "
        "SELECT d.name, t.typname::text, t.typtype::text, d.typmod "
        "FROM d JOIN pg_type t ON t.oid = d.typ WHERE t.typtype <> 'd'",
        [catalog.regclass(table)],
    ).fetchall()
    conn.commit()
    kinds: dict[str, str] = {}
    for name, typ, typtype, typmod in rows:
        if typ in _TEXT_TYPES:
            kinds[name] = "collated"
        elif typ in _EXACT_TYPES or typtype == "e" or (typ == "numeric" and typmod >= 0):
            kinds[name] = "value"
        else:
            kinds[name] = "text"
    return kinds


def rewrites(conn: psycopg.Connection, table: str) -> bool:
    """Whether ``table`` has a trigger that fires before each row is inserted or updated in
    ferry's sessions (``session_replication_role`` origin): it may write other values than
    ferry's, whose hash then is not the row's (``chunk.Runner._record_as_stored``)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = to_regclass(%s) "
        "AND NOT tgisinternal AND tgenabled IN ('O', 'A') AND tgtype & 3 = 3 "
        "AND tgtype & 20 <> 0)",
        [catalog.regclass(table)],
    ).fetchone()
    conn.commit()
    return bool(row and row[0])


class Plan:
    """Everything about one model that does not change between chunks."""

    def __init__(
        self, conn: psycopg.Connection | None, spec: Spec, model: Model,
        shape: Shape | None = None,
    ) -> None:  # fmt: skip
        if shape is None:
            assert conn is not None
            shape = Shape.read(conn, spec, model)
        self.spec, self.model, self.shape = spec, model, shape
        self.parent_led, self.own_led = shape.parent_led, shape.own_led
        # False: a row whose survivor has no fate yet is left ``pending`` for a later pass;
        # True (the last pass, and verify): its survivor is missing.
        self.final = False
        self.target = sql.Identifier(model.target_schema, model.target_table)
        self.body = spec.model_sql(model)
        self.uuid_name = model.source if model.accounts else model.name
        self.source_table = model.source
        self.columns: list[tuple[str, str, sql.Composable]] = [
            (name, shape.target[name], expr)
            for name, expr in _written(model, shape.output, shape.target)
        ]
        self.hashable, self.parallel_safe = shape.hashable, shape.parallel_safe
        self.key_type, self.refusals = shape.key_type, shape.refusals
        self.fates = self._fates()
        # Try again rows the database refused though nothing about them changed: the
        # target's constraints did, or an operator asks (``quarantine retry``).
        self.retry_refused = False

    def _fates(self) -> Fates:
        st: list[str] = ["migrated"]
        rs: list[str | None] = [None]
        if self.shape.repeats:
            st.append("quarantined")
            rs.append(DUPLICATE_KEY)
        if self.shape.named is not None:
            st.append("quarantined")
            rs.append(NOT_CONVERTED)
        m = self.model
        for r in m.rules:
            if r.kind == "exclude":
                st.append("excluded")
                rs.append(r.name)
        for _ in m.parents:  # a parent of the model's own with no fate yet
            st.append(PENDING)
            rs.append(None)
        for _ in m.parents:
            st.append("excluded")
            rs.append("parent_excluded")
        for r in m.rules:
            if r.kind == "reject":
                st.append("quarantined")
                rs.append(r.name)
        for p in m.parents:
            st.append("quarantined")
            rs.append(p.missing or f"orphan_{p.model}")
        for _ in m.parents:
            st.append("quarantined")
            rs.append("parent_quarantined")
        st += ["excluded", "quarantined", "quarantined", PENDING, "merged"]
        rs += [*SURVIVOR_REASONS, None, m.merge_rule]
        merged = len(st) - 1
        states: list[str | None] = [None] * len(st)
        messages: list[str | None] = [None] * len(st)
        # A row that would be written with a NOT NULL column empty: refused, as the server
        # would refuse it, in the CASE that decides the fate (``predict`` for the rest).
        for col in self.refusals.not_null:
            st.append("quarantined")
            rs.append(predict.NOT_NULL_REASON)
            states.append(predict.NOT_NULL)
            messages.append(predict.not_null_message(self.refusals.table, col))
        return Fates(st, rs, states, messages, merged)

    def fate_case(self) -> sql.Composable:
        """One CASE per row: predicates run once, in the order exclude > reject > merge."""
        m = self.model
        whens: list[sql.Composable] = []
        ri = {id(r): i for i, r in enumerate(m.rules)}

        def rule(i: int) -> sql.Composable:
            return sql.SQL("m.{}").format(sql.Identifier(f"_ferry_r{i}"))

        def pkey(j: int) -> sql.Composable:
            """The parent's key is set (and, for a row that is its own parent, ignored)."""
            p = m.parents[j]
            if p.model != m.name:
                return set_sql("m", p.keys)
            return sql.SQL("{} AND {} <> m._key::text").format(
                set_sql("m", p.keys), text_sql("m", p.keys)
            )

        def ps(j: int) -> sql.Composable:
            return sql.Identifier(f"p{j}", "status")

        if self.shape.repeats:
            whens.append(sql.SQL("m._ferry_dup"))
        if self.shape.named is not None:
            whens.append(sql.SQL("m._ferry_named"))
        for r in m.rules:
            if r.kind == "exclude":
                whens.append(rule(ri[id(r)]))
        for j, p in enumerate(m.parents):
            # A parent of the model's own may be decided later in the run: wait for it.
            whens.append(
                sql.SQL("{k} AND ({s} IS NULL OR {s} = 'deleted') AND {w}").format(
                    k=pkey(j), s=ps(j), w=sql.Literal(p.model == m.name and not self.final)
                )
            )
        for j in range(len(m.parents)):
            whens.append(sql.SQL("{} AND {} = 'excluded'").format(pkey(j), ps(j)))
        for r in m.rules:
            if r.kind == "reject":
                whens.append(rule(ri[id(r)]))
        for j in range(len(m.parents)):
            whens.append(
                sql.SQL("{k} AND ({s} IS NULL OR {s} = 'deleted')").format(k=pkey(j), s=ps(j))
            )
        for j in range(len(m.parents)):
            whens.append(sql.SQL("{} AND {} = 'quarantined'").format(pkey(j), ps(j)))
        if m.merge_into:
            merge = sql.SQL("m.{0} IS NOT NULL AND m.{0}::text <> m._key::text").format(
                sql.Identifier(m.merge_into)
            )
            gone = sql.SQL("(s.status IS NULL OR s.status = 'deleted')")
            whens += [
                sql.SQL("{} AND s.status = 'excluded'").format(merge),
                sql.SQL("{} AND s.status = 'quarantined'").format(merge),
                sql.SQL("{} AND {} AND {}").format(merge, gone, sql.Literal(self.final)),
                sql.SQL("{} AND {}").format(merge, gone),
                merge,
            ]
        else:
            whens += [sql.SQL("false")] * 5
        # Of a row to be written, the first NOT NULL column left empty (in column order, as
        # the server checks them): a written column's value is NULL exactly when what fills
        # it is, a cast of a value being a value.
        for col in self.refusals.not_null:
            whens.append(sql.SQL("{} IS NULL").format(self._filled_by(col)))
        parts = [
            sql.SQL("WHEN {} THEN {}").format(w, sql.Literal(i + 1)) for i, w in enumerate(whens)
        ]
        return sql.SQL("CASE {} ELSE 0 END").format(sql.SQL(" ").join(parts))

    def expected(self, bounds: sql.Composable, numbered: bool = True) -> sql.Composed:
        """Every row the model yields within ``bounds``: fate, target UUID, values, row hash.

        Columns: ``_ferry_key``, ``_ferry_n``, ``_ferry_fate``, ``_ferry_status``,
        ``_ferry_reason``, ``_ferry_repairs``, ``_ferry_uuid``, the target columns (NULL unless
        migrated) and ``_ferry_hash`` (hash of the target columns, as ``target_hash`` computes
        it from a stored row). ``bounds`` is a predicate on ``m0._key``. ``_ferry_n`` numbers
        the rows in key order for bisection; without ``numbered`` it is NULL (no sort). Rows
        the target would refuse are quarantined already, with ``_ferry_sqlstate`` and
        ``_ferry_message``, or ``blocked`` (``predict.overlay``).
        """
        m = self.model
        inner = sql.SQL("{} WHERE {} OFFSET 0").format(with_rules(m, self.body), bounds)
        if self.shape.repeats:
            # Rows of a key the stage repeats: one row for them all, quarantined
            # (duplicate_key) before any rule, so that none of them is picked. Where the
            # source's rows go to several models, the key's fate is the first one's (in spec
            # order) that yields any of its rows: the later ones leave it out.
            taken = taken_earlier(self.spec, m, sql.SQL("d._key"))
            inner = sql.SQL(
                "SELECT * FROM (SELECT d.*, {dup} AS _ferry_dup, row_number() OVER "
                "(PARTITION BY d._key) AS _ferry_dn FROM ({i}) d) d "
                "WHERE NOT d._ferry_dup OR (d._ferry_dn = 1{t}) OFFSET 0"
            ).format(
                dup=repeated(*self.shape.repeats, sql.SQL("d._key")), i=inner,
                t=sql.SQL("") if taken is None else sql.SQL(" AND NOT ({})").format(taken),
            )  # fmt: skip
        if self.shape.named is not None:
            # A key that does not read, named by its bytes: its row is quarantined.
            inner = sql.SQL("SELECT d.*, {} AS _ferry_named FROM ({}) d OFFSET 0").format(
                self.shape.named, inner
            )
        joins = sql.SQL(" ").join(
            sql.SQL("LEFT JOIN {led} {a} ON {a}.model = {pm} AND {a}.source_key = {k}").format(
                led=self.parent_led[j],
                a=sql.Identifier(f"p{j}"),
                pm=sql.Literal(p.model),
                k=text_sql("m", p.keys),
            )
            for j, p in enumerate(m.parents)
        )
        if m.merge_into:
            joins = sql.SQL(
                "{} LEFT JOIN {} s ON s.model = {} AND s.source_key = m.{}::text"
            ).format(joins, self.own_led, sql.Literal(m.name), sql.Identifier(m.merge_into))
        parent_cols = sql.SQL("").join(
            sql.SQL(", {} AS {}").format(self._parent_uuid(j), sql.Identifier(f"_ferry_pu{j}"))
            for j in range(len(m.parents))
        )
        survivor = sql.SQL(", s.target_uuid AS _ferry_su" if m.merge_into else "")
        with_fate = sql.SQL(
            "SELECT m.*{pc}{su}, {case} AS _ferry_fate FROM ({inner}) m {joins} OFFSET 0"
        ).format(pc=parent_cols, su=survivor, case=self.fate_case(), inner=inner, joins=joins)
        repairs = [r for r in m.rules if r.kind == "repair"]
        ri = {id(r): i for i, r in enumerate(m.rules)}
        # Repairs are what was done to a row that was written: a migrated row's only.
        repair_arr = (
            sql.SQL(
                "CASE WHEN m._ferry_fate = 0 THEN array_remove(ARRAY[{}]::text[], NULL) "
                "ELSE '{{}}'::text[] END"
            ).format(
                sql.SQL(", ").join(
                    sql.SQL("CASE WHEN m.{} THEN {} END").format(
                        sql.Identifier(f"_ferry_r{ri[id(r)]}"), sql.Literal(r.name)
                    )
                    for r in repairs
                )
            )
            if repairs
            else sql.SQL("'{}'::text[]")
        )
        own = self.own_uuid(sql.SQL("m._key"))
        if m.merge_into:
            # The survivor's own UUID, or, if it is merged too, the one it merged into.
            merged = self.fates.merged
            uuid = sql.SQL("CASE m._ferry_fate WHEN 0 THEN {} WHEN {} THEN m._ferry_su END").format(
                own, sql.Literal(merged)
            )
        else:
            uuid = sql.SQL("CASE m._ferry_fate WHEN 0 THEN {} END").format(own)
        values = [
            sql.SQL("CASE WHEN m._ferry_fate = 0 THEN ({})::{} END AS {}").format(
                expr, sql.SQL(typ), sql.Identifier(col)
            )
            for col, typ, expr in self.columns
        ]
        statuses = sql.Literal(self.fates.statuses)
        reasons = sql.Literal(self.fates.reasons)
        shaped = sql.SQL(
            "SELECT m._key::text AS _ferry_key, {n} AS _ferry_n, m._key AS _ferry_k, "
            "m._ferry_fate, ({st}::text[])[m._ferry_fate + 1] AS _ferry_status, "
            "({rs}::text[])[m._ferry_fate + 1] AS _ferry_reason, {rep} AS _ferry_repairs, "
            "{uuid} AS _ferry_uuid, {vals} FROM ({wf}) m OFFSET 0"
        ).format(
            n=sql.SQL("row_number() OVER (ORDER BY m._key)" if numbered else "NULL::bigint"),
            st=statuses, rs=reasons, rep=repair_arr, uuid=uuid,
            vals=sql.SQL(", ").join(values), wf=with_fate,
        )  # fmt: skip
        if self.refusals.not_null:
            # Only the NOT NULL fates, after ``merged``, have a state: no subscript for the rest.
            refused = sql.SQL(
                "CASE WHEN c._ferry_fate > {m} THEN ({}::text[])[c._ferry_fate + 1] END "
                "AS _ferry_sqlstate, CASE WHEN c._ferry_fate > {m} THEN "
                "({}::text[])[c._ferry_fate + 1] END AS _ferry_message"
            ).format(
                sql.Literal(self.fates.states), sql.Literal(self.fates.messages),
                m=sql.Literal(self.fates.merged),
            )  # fmt: skip
        else:
            refused = sql.SQL("NULL::text AS _ferry_sqlstate, NULL::text AS _ferry_message")
        hashed = sql.SQL(
            "SELECT c.*, CASE WHEN c._ferry_fate = 0 THEN {h} END AS _ferry_hash, {refused} "
            "FROM ({shaped}) c"
        ).format(h=self.target_hash("c"), refused=refused, shaped=shaped)
        return predict.overlay(
            self.refusals, hashed, [n for n, _, _ in self.columns], self.target,
            m.key_column, self.own_led, m.name, self.key_type,
        )  # fmt: skip

    def _parent_uuid(self, j: int) -> sql.Composable:
        """The UUID a row's parent ``j`` has in the target (over the parent's ledger row)."""
        p = self.model.parents[j]
        if p.model != self.model.name:
            return sql.SQL("{}.target_uuid").format(sql.Identifier(f"p{j}"))
        # A row that is its own parent points at itself.
        return sql.SQL("CASE WHEN {k} = m._key::text THEN {own} ELSE {a}.target_uuid END").format(
            k=text_sql("m", p.keys), own=self.own_uuid(sql.SQL("m._key")),
            a=sql.Identifier(f"p{j}"),
        )  # fmt: skip

    def _filled_by(self, column: str) -> sql.Composable:
        """What fills a written column, where the fate is decided: the model's output, or a
        parent's UUID."""
        for j, p in enumerate(self.model.parents):
            if p.column == column:
                return self._parent_uuid(j)
        return sql.SQL("m.{}").format(sql.Identifier(column))

    def refused_hash(self, alias: str) -> sql.Composed:
        """What the ledger keeps of a row the database refused: its hash with the digest of
        the target's rules, so that it is sent again only when one of the two changed."""
        return sql.SQL("md5({}._ferry_hash || {})").format(
            sql.Identifier(alias), sql.Literal(self.refusals.digest)
        )

    def own_uuid(self, key: sql.Composable) -> sql.Composed:
        """The UUID of the row whose source key ``key`` evaluates to, whatever its fate."""
        return uuid_sql(self.spec.ledger_schema, self.spec.namespace, self.uuid_name, key)

    def candidates(
        self, bounds: sql.Composable, led: sql.Composable, fresh: bool = False
    ) -> list[sql.Composable]:
        """Statements leaving in ``_ferry_c`` the rows whose outcome the ledger does not have.

        Two steps, because the planner would hash the model's whole ledger (millions of
        rows) to compare one chunk; with the chunk in a temp table first, index lookups on
        the ledger's key are forced for that one join without touching the model's own plan.
        ``led`` holds the model's ledger rows (its partition). ``fresh``: it holds none yet (a
        first load), so every row is new and one step does.
        """
        if fresh:
            return [
                sql.SQL(
                    "CREATE TEMP TABLE _ferry_c ON COMMIT DROP AS SELECT c.*, "
                    "NULL::text AS _old_status, NULL::uuid AS _old_uuid, NULL::text AS _old_hash, "
                    "false AS _conflict FROM ({}) c"
                ).format(self.expected(bounds))
            ]
        return [
            sql.SQL("CREATE TEMP TABLE _ferry_e ON COMMIT DROP AS {}").format(
                self.expected(bounds)
            ),
            sql.SQL("SET LOCAL enable_hashjoin = off"),
            sql.SQL("SET LOCAL enable_mergejoin = off"),
            sql.SQL(
                "CREATE TEMP TABLE _ferry_c ON COMMIT DROP AS "
                "SELECT c.*, l.status AS _old_status, l.target_uuid AS _old_uuid, "
                "l.row_hash AS _old_hash, false AS _conflict "
                "FROM _ferry_e c LEFT JOIN {led} l ON l.model = {model} "
                "AND l.source_key = c._ferry_key "
                "WHERE (l.model IS NULL OR l.status IS DISTINCT FROM c._ferry_status "
                "OR l.reason IS DISTINCT FROM c._ferry_reason OR l.repairs <> c._ferry_repairs "
                "OR l.target_uuid IS DISTINCT FROM c._ferry_uuid "
                "OR {changed} "
                "OR l.sqlstate IS DISTINCT FROM c._ferry_sqlstate) "
                # A row the database refused is not sent to it again as it was, unless the
                # target's constraints changed or an operator asks: each try logs it. (Not
                # a unique or foreign key violation: those depend on other rows.)
                "AND NOT coalesce(NOT {retry} AND l.status = 'quarantined' "
                "AND c._ferry_fate = 0 AND l.sqlstate NOT IN ('23505', '23503') "
                "AND l.row_hash = {refused}, false) "
                # An operator's decision (ferry quarantine exclude) stands until they undo it.
                "AND l.decided_by IS NULL"
            ).format(
                led=led,
                model=sql.Literal(self.model.name),
                changed=self.hash_differs("c", sql.SQL("c._ferry_hash"), sql.SQL("l.row_hash")),
                retry=sql.Literal(self.retry_refused),
                refused=self.refused_hash("c"),
            ),
            sql.SQL("SET LOCAL enable_hashjoin = on"),
            sql.SQL("SET LOCAL enable_mergejoin = on"),
            sql.SQL("DROP TABLE _ferry_e"),
        ]

    def target_hash(self, alias: str) -> sql.Composable:
        """Hash of the written columns of a row, the same from a candidate and a stored row.

        It only has to notice that a row changed (in the source, or the application's edit of
        a row ferry wrote): 64 bits miss one change in 2^64, provided that no two values a
        column may hold hash alike by construction; those enter by their text
        (``hash_kinds``). The text costs more than the value's own hash: 0.13 us a jsonb
        here.
        """
        # The form's number first: a change between two values an earlier form hashed
        # alike would otherwise give the earlier hash of the new row the new hash of the
        # old one (both count a NULL as 0), and ``hash_differs`` would not see it.
        return sql.SQL("hash_record_extended(ROW({}, {}), 0)::text").format(
            sql.Literal(HASH_FORM), sql.SQL(", ").join(self.hash_elements(alias))
        )

    def hash_elements(self, alias: str) -> list[sql.Composable]:
        """The written columns of row ``alias`` as ``target_hash`` hashes them."""
        kinds = self.shape.hashed_as or {}
        out: list[sql.Composable] = []
        for n, _, _ in self.columns:
            c = sql.Identifier(alias, n)
            kind = kinds.get(n, "value")
            if kind == "text":
                out.append(sql.SQL('{}::text COLLATE "C"').format(c))
            elif kind == "collated":
                out.append(sql.SQL('{} COLLATE "C"').format(c))
            else:
                out.append(c)
        return out

    def _earlier_hashes(self, alias: str) -> list[sql.Composable]:
        """The forms ``target_hash`` had before HASH_FORM 3 (every row's hash differs from
        them: the form's number leads it now): a ledger written before keeps them until
        ``rehash`` or a new write replaces them. None for a model that writes no column."""
        if not self.columns:
            return []
        cols = sql.SQL(", ").join(sql.Identifier(alias, n) for n, _, _ in self.columns)
        if not self.hashable:
            return [sql.SQL("md5(ROW({})::text)").format(cols)]
        record = sql.SQL("hash_record_extended(ROW({}), 0)").format(cols)
        forms: list[sql.Composable] = [sql.SQL("{}::text").format(record)]
        for terms in (self._null_twins(alias, zeros=False), self._null_twins(alias)):
            form = sql.SQL("({} # {})::text").format(record, terms)
            if terms is not None and form not in forms:
                forms.append(form)
        return forms

    def _null_twins(self, alias: str, zeros: bool = True) -> sql.Composable | None:
        """The terms that an earlier ``target_hash`` XORed into the row's hash for values
        hashed as NULL is: an empty jsonb array or object, and (``zeros``) a float or
        numeric zero. None where the row had none."""
        terms: list[sql.Composable] = []
        for i, (n, t, _) in enumerate(self.columns):
            c = sql.Identifier(alias, n)
            if t == "jsonb":
                terms.append(
                    sql.SQL(
                        "CASE WHEN pg_column_size({c}) <= 8 THEN CASE jsonb_typeof({c}) "
                        "WHEN 'array' THEN {a}::int8 ELSE {o}::int8 END ELSE 0 END"
                    ).format(
                        c=c,
                        a=sql.Literal(_EMPTY_MARK + 2 * i),
                        o=sql.Literal(_EMPTY_MARK + 2 * i + 1),
                    )
                )
            elif zeros and (t in _FLOATS or t.startswith("numeric")):
                terms.append(
                    sql.SQL("CASE WHEN {c} = 0 THEN {z}::int8 ELSE 0 END").format(
                        c=c, z=sql.Literal(_ZERO_MARK + i)
                    )
                )
        return sql.SQL(" # ").join(terms) if terms else None

    def holds_hash(self, alias: str, stored: sql.Composable) -> sql.Composable:
        """Whether row ``alias`` is the one whose hash the ledger stored (``stored``), in the
        form of ``target_hash`` or of an earlier one."""
        now = sql.SQL("{} = {}").format(self.target_hash(alias), stored)
        before = self._earlier_hashes(alias)
        if not before:
            return now
        return sql.SQL("({} OR {} IN ({}))").format(now, stored, sql.SQL(", ").join(before))

    def hash_differs(
        self, alias: str, hashed: sql.Composable, stored: sql.Composable
    ) -> sql.Composable:
        """Whether row ``alias``, whose ``target_hash`` is ``hashed``, differs from the row
        whose hash the ledger stored: in every form. A row the application edited keeps an
        earlier form (``rehash`` takes only rows ferry's hash still holds), and is not taken
        for a change of its source."""
        now = sql.SQL("{} IS DISTINCT FROM {}").format(stored, hashed)
        before = self._earlier_hashes(alias)
        if not before:
            return now
        return sql.SQL("({} AND NOT coalesce({} IN ({}), false))").format(
            now, stored, sql.SQL(", ").join(before)
        )


# Terms of jsonb columns holding an empty container, and of float and numeric columns
# holding zero, in the row hash of HASH_FORM 2 (``Plan._null_twins``).
_EMPTY_MARK = 0x2545F4914F6CDD1D
_ZERO_MARK = 0x5851F42D4C957F2D
_FLOATS = ("double precision", "real")
# The form of ``Plan.target_hash`` a ledger's row hashes are in (``rehash``). 3: columns
# whose hashes set values alike enter by their text (``hash_kinds``).
HASH_FORM = 3


def repeated(stage: sql.Composable, column: sql.Composable, key: sql.Composable) -> sql.Composed:
    """Whether the stage holds ``key`` in more than one row (its source repeats it)."""
    return sql.SQL("(SELECT count(*) FROM {} s WHERE s.{} = {}) > 1").format(stage, column, key)


def taken_earlier(spec: Spec, model: Model, key: sql.Composable) -> sql.Composable | None:
    """Whether a model before ``model`` in spec order, accounting for the same source,
    yields a row of ``key``: a key the source repeats then has its fate there, not here."""
    if not model.accounts:
        return None
    before = spec.models[: spec.models.index(model)]
    bodies = [spec.model_sql(o) for o in before if o.accounts and o.source == model.source]
    if not bodies:
        return None
    return sql.SQL(" OR ").join(
        sql.SQL("EXISTS (SELECT FROM ({}) e WHERE e._key = {})").format(sql.SQL(b), key)  # type: ignore[arg-type]
        for b in bodies
    )


def with_rules(model: Model, body: str) -> sql.Composed:
    """The model's rows (``m0``), each with its rules' verdicts as ``_ferry_r0``, ...."""
    rules = [
        sql.SQL(", ({}) AS {}").format(sql.SQL(r.when), sql.Identifier(f"_ferry_r{i}"))  # type: ignore[arg-type]
        for i, r in enumerate(model.rules)
    ]
    return sql.SQL("SELECT m0.*{} FROM ({}) m0").format(
        sql.SQL("").join(rules),
        sql.SQL(body),  # type: ignore[arg-type]
    )
