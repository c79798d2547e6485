"""Transform: run each model over key-range chunks and write target rows with their fates.

One chunk is one transaction holding its target rows and their ledger rows. Inside it, each
row's fate is decided in SQL (rules, parents, merges), compared with the ledger, and only the
rows whose outcome changed are written, so a re-run or a resumed run writes nothing twice.
An error nobody predicted (unique violation, check constraint, bad cast) is bisected under
savepoints until the failing rows stand alone; they are quarantined with their SQLSTATE and
the rest of the chunk is written.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ferry import ledger, predict
from ferry.errors import FerryError, SpecError, condition_name, safe_message
from ferry.keys import set_sql, text_sql, uuid_sql
from ferry.spec import Model, Spec

# Errors that belong to rows, not to the run: data exceptions (22), integrity (23), and
# exceptions raised by the target's triggers (P0001). Anything else stops the run.
BISECTABLE = (
    psycopg.errors.DataError,
    psycopg.errors.IntegrityError,
    psycopg.errors.RaiseException,
)


# One transaction of a model: a key range [lo, hi) (None: open), or a list of keys (a sync's).
Chunk = tuple[Any, Any, Sequence[str] | None]


class _YieldedTwice(Exception):
    """A first load's chunk, written aside, yields one ``_key`` twice: take the careful way."""


@dataclass
class Fates:
    """The ordered outcomes a row of a model can have, as decided by the fate CASE."""

    statuses: list[str]
    reasons: list[str | None]


@dataclass
class ModelResult:
    model: str
    rows: int
    written: int
    quarantined_by_error: int
    seconds: float
    transitions: Counter[tuple[str | None, str]] = field(default_factory=Counter)
    changed_keys: set[str] = field(default_factory=set)
    # Rows merging into a survivor that has no fate yet: run again once it has one.
    pending: set[str] = field(default_factory=set)
    # Keys that got their first ledger row, where a merge may depend on them (``new_keys``).
    new_keys: set[str] = field(default_factory=set)
    # Keys to run again once the run's deletions are done (``Runner._evict``).
    blocked: set[str] = field(default_factory=set)

    def add(self, other: ModelResult) -> None:
        """Fold a later pass over some of the same model's keys into this result."""
        self.written += other.written
        self.quarantined_by_error += other.quarantined_by_error
        self.seconds += other.seconds
        self.transitions.update(other.transitions)
        self.changed_keys |= other.changed_keys
        self.new_keys |= other.new_keys
        self.blocked |= other.blocked
        self.pending = set(other.pending)


# A row merging into a survivor that has no fate yet: neither written nor recorded in this
# pass (``Runner.pending``); ``pipeline.run_model`` runs it again once the survivor has one.
PENDING = "pending"
# A candidate whose earlier outcome is a row of ferry's in the target: migrated, or kept
# (on_delete keep or flag) when its source row went.
HELD = sql.SQL(
    "(c._old_status = 'migrated' OR (c._old_status = 'deleted' AND c._old_uuid IS NOT NULL))"
)
# survivor excluded, quarantined, or missing (not yielded by the model, or deleted)
SURVIVOR_REASONS = ("survivor_excluded", "survivor_quarantined", "missing_survivor")

# The ledger columns a new row sets (``Runner._ledger_values`` gives them, in this order).
LEDGER_COLUMNS = sql.SQL(
    "model, source_key, source_table, accounts, status, reason, repairs, target_table, "
    "target_uuid, row_hash, run_id, first_run_id, sqlstate, message"
)


class Slots:
    """At most ``n`` chunks computing at once, served in the order they asked.

    ``threading.Semaphore`` is not fair: a worker that releases and asks again at once keeps
    winning, and a small model waiting beside a big one starves for the big one's whole run.
    """

    def __init__(self, n: int) -> None:
        self._free = n
        self._queue: deque[object] = deque()
        self._cond = threading.Condition()

    def __enter__(self) -> None:
        me = object()
        with self._cond:
            self._queue.append(me)
            self._cond.wait_for(lambda: self._free > 0 and self._queue[0] is me)
            self._queue.popleft()
            self._free -= 1
            self._cond.notify_all()

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()


class Plan:
    """Everything about one model that does not change between chunks."""

    def __init__(self, conn: psycopg.Connection, spec: Spec, model: Model) -> None:
        self.spec, self.model = spec, model
        # Rows of one model are read from its partition (ledger.table_of): the planner's
        # estimates then come from that partition's statistics.
        self.parent_led = [ledger.table_of(conn, spec, p.model) for p in model.parents]
        # A merged row takes its survivor's fate and UUID from the model's own ledger rows.
        self.own_led = ledger.table_of(conn, spec, model.name)
        # False: a row whose survivor has no fate yet is left ``pending`` for a later pass;
        # True (the last pass, and verify): its survivor is missing.
        self.final = False
        self.target = sql.Identifier(model.target_schema, model.target_table)
        self.body = spec.model_sql(model)
        self.uuid_name = model.source if model.accounts else model.name
        self.source_table = model.source
        out = self._output_columns(conn)
        tcols = dict(
            conn.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
                [model.target],
            ).fetchall()
        )
        where = f"model {model.name}"
        if not tcols:
            raise SpecError(f"{where}: target table {model.target} does not exist")
        if "_key" not in out:
            raise SpecError(f"{where}: its SQL must return a column named _key")
        if model.key_column not in tcols:
            raise SpecError(f"{where}: {model.target} has no column {model.key_column}")
        fk_cols = {p.column: i for i, p in enumerate(model.parents) if p.column}
        self.columns: list[tuple[str, str, sql.Composable]] = []
        for name in out:
            if name.startswith("_"):
                continue
            if name not in tcols:
                raise SpecError(f"{where}: output column {name} is not a column of {model.target}")
            if name in fk_cols or name == model.key_column:
                raise SpecError(f"{where}: column {name} is filled by ferry; drop it from the SQL")
            self.columns.append((name, tcols[name], sql.SQL("m.{}").format(sql.Identifier(name))))
        for col, i in fk_cols.items():
            if col not in tcols:
                raise SpecError(f"{where}: parent column {col} is not a column of {model.target}")
            self.columns.append((col, tcols[col], sql.SQL("m._ferry_pu{}").format(sql.Literal(i))))
        for p in model.parents:
            for key in p.keys:
                if key not in out:
                    raise SpecError(f"{where}: parent key {key} is not an output column of its SQL")
        if model.merge_into and model.merge_into not in out:
            raise SpecError(f"{where}: merge_into {model.merge_into} is not an output column")
        self.fates = self._fates()
        self.hashable = self._hashable(conn)
        self.parallel_safe = self._parallel_safe(conn)
        # The type key lists are cast to (Runner._where): the stage key's, whose index then
        # serves them, or for a model that does not account for its source, its _key's own.
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
        self.key_type = row[0] if row else "text"
        # What the target would refuse, checked before the write (``predict``).
        self.refusals = predict.refusals(
            conn, model.target, [n for n, _, _ in self.columns],
            {model.key_column, model.legacy_column or model.key_column},
        )  # fmt: skip
        # Try again rows the database refused though nothing about them changed: the
        # target's constraints did, or an operator asks (``quarantine retry``).
        self.retry_refused = False

    def _parallel_safe(self, conn: psycopg.Connection) -> bool:
        """Chunks may run at once only if no unique index can make two of them collide.

        Which of two colliding rows is quarantined must not depend on timing: with a unique
        index on anything but the key columns (an email, say), chunks run in key order.
        """
        allowed = {self.model.key_column, self.model.legacy_column}
        rows = conn.execute(
            "SELECT i.indexprs IS NOT NULL OR i.indpred IS NOT NULL, "
            "ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey)) FROM pg_index i "
            "WHERE i.indrelid = to_regclass(%s) AND i.indisunique",
            [self.model.target],
        ).fetchall()
        conn.commit()
        return all(not expr and len(cols) == 1 and cols[0] in allowed for expr, cols in rows)

    def _hashable(self, conn: psycopg.Connection) -> bool:
        """Whether every written column's type has a 64-bit hash function (json, point: no).

        ``hash_record_extended`` costs a seventh of ``md5(ROW(...)::text)``, which spends its
        time printing every column as text; it fails on a type without one even when NULL.
        """
        probe = sql.SQL("SELECT hash_record_extended(ROW({}), 0)").format(
            sql.SQL(", ").join(sql.SQL("NULL::{}").format(sql.SQL(t)) for _, t, _ in self.columns)
        )
        try:
            with conn.transaction():
                conn.execute(probe)
        except psycopg.errors.UndefinedFunction:
            conn.commit()
            return False
        conn.commit()
        return True

    def _output_columns(self, conn: psycopg.Connection) -> dict[str, int]:
        """The model's output columns, in order, with their type OIDs."""
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    sql.SQL("SELECT * FROM ({}) m LIMIT 0").format(sql.SQL(self.body)),  # type: ignore[arg-type]
                    binary=True,  # the extended protocol: the server refuses a second statement
                )
                return {d.name: d.type_code for d in cur.description or []}
        except psycopg.Error as exc:
            raise SpecError(
                f"model {self.model.name}: its SQL does not run: {safe_message(exc)}"
            ) from None

    def _fates(self) -> Fates:
        st: list[str] = ["migrated"]
        rs: list[str | None] = [None]
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
        return Fates(st, rs)

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
            sql.SQL(", {a}.target_uuid AS {u}").format(
                a=sql.Identifier(f"p{j}"), u=sql.Identifier(f"_ferry_pu{j}")
            )
            if p.model != m.name
            # A row that is its own parent points at itself.
            else sql.SQL(", CASE WHEN {k} = m._key::text THEN {own} "
                         "ELSE {a}.target_uuid END AS {u}").format(
                k=text_sql("m", p.keys), own=self.own_uuid(sql.SQL("m._key")),
                a=sql.Identifier(f"p{j}"), u=sql.Identifier(f"_ferry_pu{j}"),
            )
            for j, p in enumerate(m.parents)
        )  # fmt: skip
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
            merged = len(self.fates.statuses) - 1
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
        hashed = sql.SQL(
            "SELECT c.*, CASE WHEN c._ferry_fate = 0 THEN {h} END AS _ferry_hash FROM ({shaped}) c"
        ).format(h=self.target_hash("c"), shaped=shaped)
        return predict.overlay(
            self.refusals, hashed, [n for n, _, _ in self.columns], self.target,
            m.key_column, self.own_led, m.name, self.key_type,
        )  # fmt: skip

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
                "OR l.row_hash IS DISTINCT FROM c._ferry_hash "
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
                retry=sql.Literal(self.retry_refused),
                refused=self.refused_hash("c"),
            ),
            sql.SQL("SET LOCAL enable_hashjoin = on"),
            sql.SQL("SET LOCAL enable_mergejoin = on"),
            sql.SQL("DROP TABLE _ferry_e"),
        ]

    def target_hash(self, alias: str) -> sql.Composable:
        """Hash of the written columns of a row, the same from a candidate and a stored row.

        It only has to notice that the application changed a row ferry wrote: 64 bits miss
        one edit in 2^64. md5 of the row's text where a column type has no hash function.
        """
        cols = sql.SQL(", ").join(sql.Identifier(alias, n) for n, _, _ in self.columns)
        if self.hashable:
            return sql.SQL("hash_record_extended(ROW({}), 0)::text").format(cols)
        return sql.SQL("md5(ROW({})::text)").format(cols)


class Runner:
    """Runs one model's chunks on one connection."""

    def __init__(
        self, conn: psycopg.Connection, plan: Plan, run_id: int,
        progress: Callable[[int], None] | None = None, slots: Slots | None = None,
        aside: bool = False,
    ) -> None:  # fmt: skip
        self.conn, self.plan, self.run_id, self.progress = conn, plan, run_id, progress
        # New ledger rows go to the model's own partition: attached, or ``aside`` for a first
        # load (``ledger.partition``), where no primary key refuses a ``_key`` yielded twice
        # and no earlier row can exist.
        self.aside = aside
        self.led = ledger.partition(conn, plan.spec, plan.model.name)
        conn.commit()
        # Shared by every model running at once: at most ``jobs`` chunks compute at a time.
        self.slots = slots or Slots(1)
        self.rows = self.written = self.errors = 0
        # (ledger status before, after) -> rows: what a sync reports as inserted, fixed, ...
        self.transitions: Counter[tuple[str | None, str]] = Counter()
        # Keys whose status or UUID changed: their children must be looked at again.
        self.changed_keys: set[str] = set()
        # Beyond a first load: keys that got their first ledger row (a merge survivor, a
        # parent that rows waiting as orphans were waiting for).
        self.new_keys: set[str] = set()
        self.pending: set[str] = set()
        # Rows refused for a unique value a later key of ferry's held: that row gives it up
        # (``_evict``), and these run again once its deletion is done.
        self.blocked: set[str] = set()
        # Whether an index leads with the target's key (see _insert_new): once, at the first
        # write, which comes after any keys were set aside for the load.
        self._keyed: bool | None = None
        # No ledger row of this model yet: a first load. Stays true for this run, since the
        # run lock keeps anyone else from writing this model's rows and chunks are disjoint.
        self.fresh = ledger.first_load(conn, plan.spec, plan.model.name)
        conn.commit()

    # -- chunk boundaries -------------------------------------------------------------------
    def bounds(self) -> list[tuple[Any, Any]]:
        """Key ranges of about ``chunk_size`` rows each.

        Taken from the stage table's histogram when it has enough buckets (the stage is
        analyzed when loaded): numbering 2M keys to cut them exactly costs a second, and
        chunk sizes only need to be about right. Otherwise every ``chunk_size``-th key.
        """
        plan, spec = self.plan, self.plan.spec
        if not plan.model.accounts:
            return [(None, None)]
        src = spec.source(plan.model.source)
        size = self.chunk_size
        stats = self.conn.execute(
            sql.SQL(
                "SELECT c.reltuples, (s.histogram_bounds::text)::{t}[] FROM pg_class c "
                "LEFT JOIN pg_stats s ON s.schemaname = %s AND s.tablename = %s "
                "AND s.attname = %s WHERE c.oid = to_regclass(%s)"
            ).format(t=sql.SQL(plan.key_type)),
            [spec.stage_schema, src.stage_table, src.stage_key,
             sql.Identifier(spec.stage_schema, src.stage_table).as_string(self.conn)],
        ).fetchone()  # fmt: skip
        if stats and stats[0] is not None and 0 <= stats[0] <= size:
            self.conn.commit()
            return [(None, None)]
        hist = stats[1] if stats else None
        chunks = -(-int(stats[0]) // size) if stats and stats[0] and stats[0] > 0 else 0
        if hist and chunks and len(hist) - 1 >= chunks:
            buckets = len(hist) - 1
            starts = [None] + [hist[round(i * buckets / chunks)] for i in range(1, chunks)]
        else:
            starts = [
                r[0]
                for r in self.conn.execute(
                    sql.SQL(
                        "SELECT k FROM (SELECT {key} AS k, row_number() OVER (ORDER BY {key}) - 1 "
                        "AS n FROM {stage}) s WHERE n % {size} = 0 ORDER BY k"
                    ).format(
                        key=sql.Identifier(src.stage_key),
                        stage=sql.Identifier(spec.stage_schema, src.stage_table),
                        size=sql.Literal(size),
                    )
                )
            ]
            if starts:
                starts[0] = None
        self.conn.commit()
        if not starts:
            return []
        return [(k, starts[i + 1] if i + 1 < len(starts) else None) for i, k in enumerate(starts)]

    @property
    def chunk_size(self) -> int:
        return self.plan.model.chunk_size or self.plan.spec.chunk_size

    def key_chunks(self, keys: Sequence[str]) -> list[Sequence[str]]:
        """A sync's key list in chunks of at most ``chunk_size``, each its own transaction: a
        backlog of changes is then written, and bisected on an error, a chunk at a time, on
        ``jobs`` sessions where the model allows (``pipeline.run_model``). Of equal sizes, so
        that no one chunk is left running alone at the end. In the key's own order (not the
        text's), as a migrate's ranges run: which of two colliding rows a unique index keeps
        must not depend on which run wrote them."""
        keys = [
            r[0]
            for r in self.conn.execute(
                sql.SQL("SELECT k::text FROM unnest({}::{}[]) k ORDER BY k").format(
                    sql.Literal(list(keys)), sql.SQL(self.plan.key_type)
                )
            )
        ]
        self.conn.commit()
        n = -(-len(keys) // self.chunk_size)
        return [keys[i * len(keys) // n : (i + 1) * len(keys) // n] for i in range(n)]

    def _where(
        self, lo: Any, hi: Any, keys: Sequence[Any] | None = None, col: str | None = None
    ) -> sql.Composable:
        """Bounds on the model's ``_key`` (or, with ``col``, on the stage table's key).

        Key lists are cast to the key's own type so that the stage's primary key index
        serves them (a comparison as text would scan the table).
        """
        ref = sql.SQL("m0.{}").format(sql.Identifier(col or "_key"))
        parts: list[sql.Composable] = []
        if lo is not None:
            parts.append(sql.SQL("{} >= {}").format(ref, sql.Literal(lo)))
        if hi is not None:
            parts.append(sql.SQL("{} < {}").format(ref, sql.Literal(hi)))
        if keys is not None:
            parts.append(
                sql.SQL("{} = ANY({}::{}[])").format(
                    ref, sql.Literal([str(k) for k in keys]), sql.SQL(self.plan.key_type)
                )
            )
        return sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")

    def _stage(self) -> tuple[sql.Identifier, str]:
        src = self.plan.spec.source(self.plan.model.source)
        return sql.Identifier(self.plan.spec.stage_schema, src.stage_table), src.stage_key

    def chunks(self, keys: Sequence[str] | None = None) -> list[Chunk]:
        """The chunks of a key list (``key_chunks``), or else of the whole model (``bounds``)."""
        if keys is None:
            return [(lo, hi, None) for lo, hi in self.bounds()]
        return [(None, None, part) for part in self.key_chunks(keys)]

    def run(self, chunks: Sequence[Chunk] | None = None) -> ModelResult:
        """Run the given chunks, or else every chunk of the model."""
        t0 = time.perf_counter()
        for lo, hi, keys in self.chunks() if chunks is None else chunks:
            self._chunk(lo, hi, keys)
        return ModelResult(
            self.plan.model.name, self.rows, self.written, self.errors,
            time.perf_counter() - t0, self.transitions, self.changed_keys, self.pending,
            self.new_keys, self.blocked,
        )  # fmt: skip

    def _chunk(self, lo: Any, hi: Any, keys: Sequence[str] | None) -> None:
        with self.slots:
            # Model SQL names stage tables plainly, as dbt models name their sources.
            self.conn.execute(
                sql.SQL("SET LOCAL search_path = {}, pg_catalog").format(
                    sql.Identifier(self.plan.spec.stage_schema)
                )
            )
            if not (self.fresh and self._first_write(lo, hi, keys)):
                self._range(lo, hi, keys)
            self.conn.commit()

    def _first_write(self, lo: Any, hi: Any, keys: Sequence[str] | None) -> bool:
        """A first load's chunk as one statement; False (and nothing written) if it fails.

        With no earlier outcome to compare with, the rows are computed once and written to
        the target and the ledger straight from the statement's own result: no temporary
        table written and read back, about a tenth of a chunk's time. A row that breaks
        anything (a unique index, a check, a cast, a ``_key`` yielded twice, which the
        ledger's primary key refuses) fails the statement; the chunk then goes the careful
        way, which narrows the error down to its rows. (A unique index set aside for the
        load cannot; ``pipeline`` loads again if it does not build afterwards.)
        """
        conn = self.conn
        seen, keyprint = self._staged(lo, hi, keys, keyprint=self.aside)
        statement = sql.SQL(
            "WITH c AS MATERIALIZED ({expected}), t AS ({insert}), "
            "l AS (INSERT INTO {led} ({cols}) SELECT {vals} FROM c "
            "WHERE _ferry_status NOT IN ({p}, {b})) "
            "SELECT _ferry_status, count(*){twice}, CASE WHEN _ferry_status IN ({p}, {b}) "
            "THEN array_agg(_ferry_key) END, bool_or(_ferry_holder IS NOT NULL) FROM c GROUP BY 1"
        ).format(
            expected=self.plan.expected(self._where(lo, hi, keys), numbered=False),
            insert=self._insert_new(sql.SQL("c"), sql.SQL("_ferry_fate = 0")),
            led=self.led,
            cols=LEDGER_COLUMNS,
            vals=self._ledger_values(),
            p=sql.Literal(PENDING),
            b=sql.Literal(predict.BLOCKED),
            # Aside, no primary key refuses a key yielded twice: the chunk looks for one,
            # unless it yields exactly the keys staged in its range, as an accounting model
            # does: the same number, with the same fingerprint (ledger.fingerprint). The
            # search hashes every key into a table: a tenth of a chunk of system_messages.
            twice=sql.SQL(
                ", (SELECT count(*) <> {n} OR {print} IS DISTINCT FROM {keyprint} FROM c) "
                "AND EXISTS (SELECT FROM c GROUP BY _ferry_key HAVING count(*) > 1)"
                if self.aside
                else ", false"
            ).format(
                n=sql.Literal(seen),
                print=ledger.fingerprint(sql.SQL("_ferry_key")),
                keyprint=sql.Literal(keyprint),
            ),
        )
        try:
            with conn.transaction():
                counts = conn.execute(statement).fetchall()
                # A key yielded twice, or a later key's unique value to take back: the
                # careful way handles both.
                if any(row[2] or row[4] for row in counts):
                    raise _YieldedTwice
        except (*BISECTABLE, _YieldedTwice):
            return False
        for status, n, _, waiting, _ in counts:
            if status == PENDING:
                self.pending.update(waiting)
                continue
            if status == predict.BLOCKED:
                self.blocked.update(waiting)
                continue
            self.transitions[(None, status)] += n
            if status == self.plan.fates.statuses[0]:
                self.written += n
        self.rows += seen
        if self.progress:
            self.progress(seen)
        return True

    def _insert_new(self, source: sql.Composable, where: sql.Composable) -> sql.Composed:
        """INSERT of the target rows in ``source`` that match ``where``.

        In UUID order, because the primary key's index takes random UUIDs a fifth faster in
        order (the pages a chunk touches are visited once each). Which of two colliding rows
        is kept does not depend on it: a statement holding both fails whole, and bisection
        writes the earlier key first. With the key set aside for a first load, the sort
        would order rows for no index (a 50,000-row chunk of the demo's ``system_messages``
        took 0.72 s with it, 0.61 s without).
        """
        plan = self.plan
        names = [n for n, _, _ in plan.columns]
        cols = sql.SQL("").join(sql.SQL(", ") + sql.Identifier(n) for n in names)
        if self._keyed is None:
            row = self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = to_regclass(%s) "
                "AND indkey[0] = (SELECT attnum FROM pg_attribute WHERE attrelid = "
                "to_regclass(%s) AND attname = %s))",
                [plan.model.target, plan.model.target, plan.model.key_column],
            ).fetchone()
            self._keyed = bool(row and row[0])
        return sql.SQL(
            "INSERT INTO {t} ({key}{cols}) SELECT _ferry_uuid{cols} FROM {source} "
            "WHERE {where}{order}"
        ).format(
            t=plan.target,
            key=sql.Identifier(plan.model.key_column),
            cols=cols,
            source=source,
            where=where,
            order=sql.SQL(" ORDER BY _ferry_uuid" if self._keyed else ""),
        )

    def _ledger_values(self) -> sql.Composed:
        """The ledger row of each computed row, in ``LEDGER_COLUMNS`` order."""
        plan = self.plan
        return sql.SQL(
            "{model}, _ferry_key, {src}, {acc}, _ferry_status, _ferry_reason, _ferry_repairs, "
            "{tt}, _ferry_uuid, _ferry_hash, {run}, {run}, _ferry_sqlstate, _ferry_message"
        ).format(
            model=sql.Literal(plan.model.name), src=sql.Literal(plan.source_table),
            acc=sql.Literal(plan.model.accounts), tt=sql.Literal(plan.model.target),
            run=sql.Literal(self.run_id),
        )  # fmt: skip

    def _range(self, lo: Any, hi: Any, keys: Sequence[str] | None) -> None:
        """Compute and write [lo, hi); bisect by source key when computing it fails."""
        conn = self.conn
        try:
            with conn.transaction():
                where = self._where(lo, hi, keys)
                for statement in self.plan.candidates(where, self.led, self.fresh):
                    conn.execute(statement)
                self._check_unique()
                for key, status, holder, message in conn.execute(
                    "DELETE FROM _ferry_c WHERE _ferry_status IN (%s, %s) "
                    "RETURNING _ferry_key, _ferry_status, _ferry_holder, _ferry_message",
                    [PENDING, predict.BLOCKED],
                ).fetchall():
                    (self.pending if status == PENDING else self.blocked).add(key)
                    if holder is not None:
                        self._give_up(holder, predict.UNIQUE, message)
                n = self._count("SELECT count(*) FROM _ferry_c")
                seen = self._seen(lo, hi, keys)
                if n:
                    self._write(1, self._count("SELECT max(_ferry_n) FROM _ferry_c"))
                conn.execute("DROP TABLE _ferry_c")
            self.rows += seen
            if self.progress:
                self.progress(seen)
        except BISECTABLE as exc:
            split = self._split(lo, hi, keys)
            if split is None:
                self._quarantine_source_key(lo, hi, keys, exc)
                return
            for sub in split:
                self._range(*sub)

    def _seen(self, lo: Any, hi: Any, keys: Sequence[str] | None) -> int:
        return self._staged(lo, hi, keys, keyprint=False)[0]

    def _staged(
        self, lo: Any, hi: Any, keys: Sequence[str] | None, keyprint: bool = True
    ) -> tuple[int, int | None]:
        """Staged rows in the range that the model accounts for, and (with ``keyprint``)
        the fingerprint of their keys."""
        plan = self.plan
        if not plan.model.accounts:
            return 0, None
        src = plan.spec.source(plan.model.source)
        where = self._where(lo, hi, keys, src.stage_key)
        return ledger.staged_keys(self.conn, plan.spec, src, where, keyprint)

    def _count(self, query: sql.Composable | str) -> int:
        row = self.conn.execute(query).fetchone()  # type: ignore[arg-type]
        return int(row[0] or 0) if row else 0

    def _check_unique(self) -> None:
        dup = self.conn.execute(
            "SELECT _ferry_key FROM _ferry_c GROUP BY 1 HAVING count(*) > 1 LIMIT 3"
        ).fetchall()
        if dup:
            keys = ", ".join(r[0] for r in dup)
            raise FerryError(f"model {self.plan.model.name} yields the same _key twice: {keys}")

    def _split(
        self, lo: Any, hi: Any, keys: Sequence[str] | None
    ) -> list[tuple[Any, Any, Sequence[str] | None]] | None:
        plan = self.plan
        if keys is not None:
            if len(keys) <= 1:
                return None
            half = len(keys) // 2
            ordered = sorted(keys)
            return [(lo, hi, ordered[:half]), (lo, hi, ordered[half:])]
        if not plan.model.accounts:
            return None
        stage, col = self._stage()
        where = self._where(lo, hi, None, col)
        n = self._count(sql.SQL("SELECT count(*) FROM {} m0 WHERE {}").format(stage, where))
        if n <= 1:
            return None
        mid = self.conn.execute(
            sql.SQL("SELECT {k} FROM {s} m0 WHERE {w} ORDER BY {k} OFFSET {o} LIMIT 1").format(
                k=sql.Identifier(col), s=stage, w=where, o=sql.Literal(n // 2)
            )
        ).fetchone()
        assert mid is not None
        return [(lo, mid[0], None), (mid[0], hi, None)]

    def _quarantine_source_key(
        self, lo: Any, hi: Any, keys: Sequence[str] | None, exc: psycopg.Error
    ) -> None:
        """A single source row whose model SQL fails: quarantine it with the database's error."""
        plan = self.plan
        if keys is not None:
            key = keys[0] if keys else None
        else:
            stage, col = self._stage()
            row = self.conn.execute(
                sql.SQL("SELECT {}::text FROM {} m0 WHERE {}").format(
                    sql.Identifier(col), stage, self._where(lo, hi, None, col)
                )
            ).fetchone()
            key = row[0] if row else None
        if key is None:
            raise FerryError(
                f"model {plan.model.name}: a chunk failed with {condition_name(exc)} "
                f"({exc.sqlstate}) that could not be narrowed to a row: {safe_message(exc)}"
            ) from None
        self._ledger_error(key, exc)
        self.rows += 1
        if self.progress:
            self.progress(1)

    def _ledger_error(self, key: str, exc: psycopg.Error, attempted: str | None = None) -> None:
        """Quarantine one row with the database's error; the same error again writes nothing.
        ``attempted``: the hash of the row the database refused, kept so that the same row
        is not sent again (``Plan.candidates``); None where the row could not be computed."""
        plan = self.plan
        # Aside, the key can have no earlier row, and there is no index to look it up by.
        old = None if self.aside else self.conn.execute(
            sql.SQL(
                "SELECT status, sqlstate, target_uuid, row_hash FROM {} "
                "WHERE model = %s AND source_key = %s"
            ).format(self.led),
            [plan.model.name, key],
        ).fetchone()  # fmt: skip
        self.errors += 1
        if old is not None and old[0] == "quarantined" and old[1] == exc.sqlstate:
            if old[3] != attempted:
                self.conn.execute(
                    sql.SQL(
                        "UPDATE {} SET row_hash = %s WHERE model = %s AND source_key = %s"
                    ).format(self.led),
                    [attempted, plan.model.name, key],
                )
            return
        self.transitions[(old[0] if old else None, "quarantined")] += 1
        if old is not None:
            self.changed_keys.add(key)
        elif not self.fresh:
            self.new_keys.add(key)
        if old is not None:
            ledger.record_history(
                self.conn, plan.spec, self.run_id, plan.model.name, plan.model.target,
                plan.model.key_column, [key],
            )  # fmt: skip
        if old is not None and old[0] == "migrated" and old[2] is not None:
            self.conn.execute(
                sql.SQL(
                    "INSERT INTO {} (target_table, target_uuid, model, source_key, row_hash, "
                    "run_id) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
                ).format(sql.Identifier(plan.spec.ledger_schema, "pending_deletes")),
                [plan.model.target, old[2], plan.model.name, key, old[3], self.run_id],
            )
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {led} AS l (model, source_key, source_table, accounts, status, "
                "reason, sqlstate, message, target_table, run_id, first_run_id, row_hash) VALUES "
                "(%s, %s, %s, %s, 'quarantined', %s, %s, %s, %s, %s, %s, %s){upsert}"
            ).format(
                led=self.led,
                upsert=sql.SQL(
                    ""
                    if self.aside
                    else " ON CONFLICT (model, source_key) DO UPDATE SET status = 'quarantined', "
                    "reason = EXCLUDED.reason, repairs = '{}', sqlstate = EXCLUDED.sqlstate, "
                    "message = EXCLUDED.message, target_uuid = NULL, row_hash = EXCLUDED.row_hash, "
                    "run_id = EXCLUDED.run_id, updated_at = clock_timestamp(), tries = l.tries + 1"
                ),
            ),
            [plan.model.name, key, plan.source_table, plan.model.accounts, condition_name(exc),
             exc.sqlstate, safe_message(exc), plan.model.target, self.run_id, self.run_id,
             attempted],
        )  # fmt: skip

    # -- writing ----------------------------------------------------------------------------
    def _write(self, a: int, b: int) -> None:
        """Write rows a..b of the chunk; on an unpredicted error, bisect until rows stand alone."""
        conn = self.conn
        try:
            with conn.transaction():
                self._write_rows(a, b)
        except BISECTABLE as exc:
            if a >= b:
                self._quarantine_row(a, exc)
                return
            mid = (a + b) // 2
            self._write(a, mid)
            self._write(mid + 1, b)

    def _write_rows(self, a: int, b: int) -> None:
        plan, conn = self.plan, self.conn
        rng = sql.SQL("_ferry_n BETWEEN {} AND {}").format(sql.Literal(a), sql.Literal(b))
        names = [n for n, _, _ in plan.columns]
        key = sql.Identifier(plan.model.key_column)
        # A first load has no earlier outcome to compare with: skip the scans that look.
        old = (
            None
            if self.fresh
            else self.conn.execute(
                sql.SQL(
                    "SELECT count(*) FILTER (WHERE c._old_status IS NOT NULL), "
                    "count(*) FILTER (WHERE {held}) FROM _ferry_c c WHERE {rng}"
                ).format(held=HELD, rng=rng)
            ).fetchone()
        )
        any_old, has_old = (int(old[0]), int(old[1])) if old else (0, 0)
        if any_old:
            # Without statistics the planner guesses the temp table big and hashes whole
            # target and ledger tables to join it; a few rows want index lookups.
            conn.execute("ANALYZE _ferry_c")
        if has_old:
            # Rows ferry wrote earlier and now changes: the application may have edited them.
            conn.execute(
                sql.SQL(
                    "UPDATE _ferry_c c SET _conflict = true "
                    "WHERE {rng} AND {held} "
                    "AND NOT EXISTS (SELECT 1 FROM {t} t WHERE t.{key} = c._old_uuid "
                    "AND {h} = c._old_hash)"
                ).format(rng=rng, held=HELD, t=plan.target, key=key, h=plan.target_hash("t"))
            )
        if any_old:
            # Before-images for rollback, of every row this write changes (not the conflicts).
            conn.execute(
                sql.SQL(
                    "INSERT INTO {hist} (run_id, model, source_key, ledger_before, target_before) "
                    "SELECT {run}, l.model, l.source_key, to_jsonb(l), to_jsonb(t) "
                    "FROM _ferry_c c JOIN {led} l ON l.model = {model} "
                    "AND l.source_key = c._ferry_key "
                    "LEFT JOIN {t} t ON t.{key} = l.target_uuid "
                    "AND l.status IN ('migrated', 'deleted') "
                    "WHERE {rng} AND NOT c._conflict ON CONFLICT DO NOTHING"
                ).format(
                    hist=sql.Identifier(plan.spec.ledger_schema, "history"),
                    run=sql.Literal(self.run_id),
                    led=self.led,
                    model=sql.Literal(plan.model.name),
                    t=plan.target,
                    key=key,
                    rng=rng,
                )
            )
        if has_old:
            # Rows ferry wrote that must go: queued, and deleted once every model has run,
            # children first, so that no foreign key (or ON DELETE CASCADE) sees them go early.
            conn.execute(
                sql.SQL(
                    "INSERT INTO {pend} (target_table, target_uuid, model, source_key, row_hash, "
                    "run_id) SELECT {tt}, c._old_uuid, {model}, c._ferry_key, c._old_hash, {run} "
                    "FROM _ferry_c c WHERE {rng} AND NOT c._conflict AND {held} "
                    "AND (c._ferry_fate <> 0 OR c._ferry_uuid IS DISTINCT FROM c._old_uuid) "
                    "ON CONFLICT DO NOTHING"
                ).format(
                    held=HELD,
                    pend=sql.Identifier(plan.spec.ledger_schema, "pending_deletes"),
                    tt=sql.Literal(plan.model.target),
                    model=sql.Literal(plan.model.name),
                    run=sql.Literal(self.run_id),
                    rng=rng,
                )
            )
        # New rows are plain INSERTs (cheaper than ON CONFLICT); rows ferry wrote before (a
        # row kept when its source row went, too) are UPDATEd in place. A UUID already taken
        # by a row ferry did not write is a unique violation, bisected and quarantined like
        # any other.
        fresh = sql.SQL(
            "{rng} AND c._ferry_fate = 0 AND NOT c._conflict AND (NOT coalesce({held}, false) "
            "OR c._old_uuid IS DISTINCT FROM c._ferry_uuid)"
        ).format(rng=rng, held=HELD)
        cur = conn.execute(self._insert_new(sql.SQL("_ferry_c c"), fresh))
        self.written += max(cur.rowcount, 0)
        if has_old and names:
            cur = conn.execute(
                sql.SQL(
                    "UPDATE {t} t SET {sets} FROM _ferry_c c WHERE {rng} AND c._ferry_fate = 0 "
                    "AND NOT c._conflict AND {held} "
                    "AND c._old_uuid = c._ferry_uuid AND t.{key} = c._ferry_uuid"
                ).format(
                    held=HELD,
                    t=plan.target,
                    key=key,
                    rng=rng,
                    sets=sql.SQL(", ").join(
                        sql.SQL("{0} = c.{0}").format(sql.Identifier(n)) for n in names
                    ),
                )
            )
            self.written += max(cur.rowcount, 0)
        conn.execute(
            sql.SQL(
                "INSERT INTO {led} ({cols}) SELECT {vals} FROM _ferry_c "
                "WHERE {rng} AND NOT _conflict AND _old_status IS NULL"
            ).format(led=self.led, cols=LEDGER_COLUMNS, vals=self._ledger_values(), rng=rng)
        )
        if any_old:
            conn.execute(
                sql.SQL(
                    "UPDATE {led} l SET status = c._ferry_status, reason = c._ferry_reason, "
                    "repairs = c._ferry_repairs, sqlstate = c._ferry_sqlstate, "
                    "message = c._ferry_message, "
                    "target_uuid = c._ferry_uuid, row_hash = c._ferry_hash, conflict = false, "
                    "run_id = {run}, updated_at = clock_timestamp(), tries = l.tries + 1 "
                    "FROM _ferry_c c WHERE {rng} AND NOT c._conflict AND c._old_status IS NOT NULL "
                    "AND l.model = {model} AND l.source_key = c._ferry_key"
                ).format(
                    led=self.led,
                    run=sql.Literal(self.run_id),
                    rng=rng,
                    model=sql.Literal(plan.model.name),
                )
            )
        if has_old:
            conn.execute(
                sql.SQL(
                    "UPDATE {led} l SET conflict = true, updated_at = clock_timestamp() "
                    "FROM _ferry_c c WHERE {rng} AND c._conflict AND l.model = {model} "
                    "AND l.source_key = c._ferry_key"
                ).format(led=self.led, rng=rng, model=sql.Literal(plan.model.name))
            )
        # Counted last: a write that fails is rolled back to its savepoint, and so is not news.
        for prev, new, n in conn.execute(
            sql.SQL(
                "SELECT _old_status, _ferry_status, count(*) FROM _ferry_c "
                "WHERE {} AND NOT _conflict GROUP BY 1, 2"
            ).format(rng)
        ):
            self.transitions[(prev, new)] += n
        if not self.fresh:
            self.new_keys.update(
                r[0]
                for r in conn.execute(
                    sql.SQL(
                        "SELECT _ferry_key FROM _ferry_c WHERE {} AND _old_status IS NULL"
                    ).format(rng)
                )
            )
        if not any_old:
            return
        self.changed_keys.update(
            r[0]
            for r in conn.execute(
                sql.SQL(
                    "SELECT _ferry_key FROM _ferry_c WHERE {} AND NOT _conflict "
                    "AND _old_status IS NOT NULL AND "
                    "(_old_status IS DISTINCT FROM _ferry_status "
                    "OR _old_uuid IS DISTINCT FROM _ferry_uuid)"
                ).format(rng)
            )
        )

    def _quarantine_row(self, n: int, exc: psycopg.Error) -> None:
        row = self.conn.execute(
            sql.SQL("SELECT _ferry_key, {} FROM _ferry_c c WHERE _ferry_n = %s").format(
                self.plan.refused_hash("c")
            ),
            [n],
        ).fetchone()
        if row is None:
            return
        self._ledger_error(row[0], exc, row[1])
        if isinstance(exc, psycopg.errors.UniqueViolation) and not self.fresh:
            self._evict(n, row[0], exc)

    def _evict(self, n: int, key: str, exc: psycopg.errors.UniqueViolation) -> None:
        """A unique violation nobody predicted (``predict`` finds most before the write):
        if the row that holds the value is ferry's, of this model, with a later key, it
        gives the value up (``_give_up``) and the refused row runs again once it is gone."""
        plan = self.plan
        holder = _holder(self.conn, plan, exc.diag.constraint_name, n)
        if holder is None or holder[0] == key:
            return
        later = self.conn.execute(
            sql.SQL("SELECT %s::{t} > %s::{t}").format(t=sql.SQL(plan.key_type)),
            [holder[0], key],
        ).fetchone()
        in_chunk = self.conn.execute(
            "SELECT 1 FROM _ferry_c WHERE _ferry_key = %s", [holder[0]]
        ).fetchone()
        if not (later and later[0]) or in_chunk:
            return
        self._give_up(holder[0], exc.sqlstate or predict.UNIQUE, safe_message(exc))
        self.blocked.add(key)

    def _give_up(self, holder: str, sqlstate: str, message: str) -> None:
        """Of ferry's rows colliding on a unique key, the lowest key is the one written, as
        in a migrate that writes them in key order, whichever run brought them: ``holder``,
        a later key of this model, gives the value up. Quarantined as a unique violation,
        its target row queued for deletion (children first, as every deletion); the rows
        blocked on it run again once the run's deletions are done (``settle``)."""
        plan = self.plan
        ledger.record_history(
            self.conn, plan.spec, self.run_id, plan.model.name, plan.model.target,
            plan.model.key_column, [holder],
        )  # fmt: skip
        ledger.queue_deletes(self.conn, plan.spec, plan.model.name, [holder], self.run_id)
        self.conn.execute(
            sql.SQL(
                "UPDATE {} SET status = 'quarantined', reason = 'unique_violation', "
                "sqlstate = %s, message = %s, repairs = '{{}}', target_uuid = NULL, "
                "row_hash = NULL, run_id = %s, updated_at = clock_timestamp(), "
                "tries = tries + 1 WHERE model = %s AND source_key = %s AND status = 'migrated'"
            ).format(self.led),
            [sqlstate, message, self.run_id, plan.model.name, holder],
        )
        self.transitions[("migrated", "quarantined")] += 1
        self.changed_keys.add(holder)
        # Run again too, once its row is gone: refused then as a migrate would refuse it.
        self.blocked.add(holder)


def _holder(
    conn: psycopg.Connection, plan: Plan, index: str | None, n: int
) -> tuple[str, str] | None:
    """(source key, UUID) of the row of ferry's, of ``plan``'s model, that holds the values
    of unique index ``index`` that candidate row ``n`` of ``_ferry_c`` wants; None if the
    holder is not such a row, or the index is not one ``predict`` checks (its expressions
    read a column ferry does not write, or only the primary or legacy key). The index's own
    expressions are evaluated on both sides, so that an expression index (``lower(email)``)
    is matched as the database matches it."""
    # The indexes the prediction knows (``predict.refusals``): their expressions, as read
    # once for the model.
    unique = next((u for u in plan.refusals.uniques if u.name == index), None)
    if unique is None:
        return None
    exprs, pred = unique.exprs, unique.predicate
    cols = sql.SQL(", ").join(sql.Identifier(name) for name, _, _ in plan.columns)
    wanted = sql.SQL(", ").join(
        sql.SQL("({}) AS {}").format(sql.SQL(e), sql.Identifier(f"k{i}"))  # type: ignore[arg-type]
        for i, e in enumerate(exprs)
    )
    same = sql.SQL(" AND ").join(
        sql.SQL("({}) = w.{}").format(sql.SQL(e), sql.Identifier(f"k{i}"))  # type: ignore[arg-type]
        for i, e in enumerate(exprs)
    )
    if pred:
        same = sql.SQL("{} AND ({})").format(same, sql.SQL(pred))  # type: ignore[arg-type]
    key = sql.Identifier(plan.model.key_column)
    try:
        with conn.transaction():
            row = conn.execute(
                sql.SQL(
                    "SELECT l.source_key, h.id::text FROM (SELECT {wanted} FROM (SELECT {cols} "
                    "FROM _ferry_c WHERE _ferry_n = {n}) s) w CROSS JOIN LATERAL "
                    "(SELECT {key} AS id FROM {t} WHERE {same}) h JOIN {led} l "
                    "ON l.model = {model} AND l.status = 'migrated' AND l.target_uuid = h.id "
                    "LIMIT 1"
                ).format(
                    wanted=wanted, cols=cols, n=sql.Literal(n), key=key, t=plan.target,
                    same=same, led=plan.own_led, model=sql.Literal(plan.model.name),
                )
            ).fetchone()  # fmt: skip
    except psycopg.Error:
        return None
    return None if row is None else (row[0], row[1])


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


def own_dependencies(model: Model) -> list[list[str]]:
    """The output columns through which a row's fate depends on other rows of its own model:
    ``merge_into``, and the key of a parent that is the model itself."""
    columns = [[model.merge_into]] if model.merge_into else []
    return columns + [p.keys for p in model.parents if p.model == model.name]


def dependents(
    conn: psycopg.Connection, spec: Spec, model: Model, columns: list[str],
    keys: Collection[str],
) -> set[str]:  # fmt: skip
    """Keys of ``model``'s rows whose output ``columns`` (a parent's key, ``merge_into``)
    hold any of ``keys``: the rows whose fate follows theirs. Run with the stage schema on
    the search path."""
    if not keys:
        return set()
    body = sql.SQL(spec.model_sql(model))  # type: ignore[arg-type]
    # Keys as a literal: model SQL may hold a % that a parameter placeholder would trip on.
    rows = conn.execute(
        sql.SQL("SELECT m0._key::text FROM ({}) m0 WHERE {} = ANY({})").format(
            body, text_sql("m0", columns), sql.Literal(sorted(keys))
        )
    ).fetchall()
    conn.commit()
    return {r[0] for r in rows}


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


def reads(conn: psycopg.Connection, spec: Spec, model: Model) -> Reads:
    """Asked of PostgreSQL, from a view of the model's SQL and rules (its dependencies and
    its parse tree), never guessed from their text. Run with the stage schema on the search
    path, as the models run."""
    with conn.transaction(force_rollback=True):
        conn.execute(
            sql.SQL("CREATE TEMP VIEW _ferry_reads AS {}").format(
                with_rules(model, spec.model_sql(model))
            ),
            binary=True,  # the extended protocol: the server refuses a second statement
        )
        tables = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT c.relname, c.oid::int FROM pg_rewrite r JOIN pg_depend d "
                "ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid "
                "JOIN pg_class c ON c.oid = d.refobjid "
                "WHERE r.ev_class = 'pg_temp._ferry_reads'::regclass "
                "AND c.relnamespace = to_regnamespace(%s)",
                [spec.stage_schema],
            )
        }
        row = conn.execute(
            "SELECT ev_action FROM pg_rewrite WHERE ev_class = 'pg_temp._ferry_reads'::regclass"
        ).fetchone()
    own = tables.get(spec.source(model.source).stage_table) if model.accounts else None
    local = own is None or (row is not None and _row_local(str(row[0]), own))
    return Reads({src.name for src in spec.sources if src.stage_table in tables}, local)


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


def _node_end(tree: str, start: int) -> int:
    """The index after the ``}`` that closes the node opening at ``start`` (a backslash
    escapes the character after it)."""
    depth, i = 0, start
    while i < len(tree):
        ch = tree[i]
        if ch == "\\":
            i += 2
            continue
        depth += (ch == "{") - (ch == "}")
        i += 1
        if depth == 0:
            break
    return i


def undo_first_load(conn: psycopg.Connection, plan: Plan) -> int:
    """Take out a first load whose unique keys could not come back; returns the rows deleted.

    Its target rows are found by UUID and by hash, one row per ledger row: a row the
    application wrote with the same UUID, or changed since, is not ferry's to delete. The
    model's ledger rows all come from that load (it was a first load), so they all go.
    Only for a table without its unique keys: with them, the load would not need undoing.
    """
    key = sql.Identifier(plan.model.key_column)
    model = sql.Literal(plan.model.name)
    led = ledger.table_of(conn, plan.spec, plan.model.name)
    with conn.transaction():
        deleted = conn.execute(
            sql.SQL(
                "DELETE FROM {t} t USING (SELECT DISTINCT ON (l.source_key) x.ctid AS tid "
                "FROM {led} l JOIN {t} x ON x.{key} = l.target_uuid WHERE l.model = {model} "
                "AND l.status = 'migrated' AND {h} = l.row_hash ORDER BY l.source_key, x.ctid) d "
                "WHERE t.ctid = d.tid"
            ).format(t=plan.target, led=led, key=key, model=model, h=plan.target_hash("x"))
        ).rowcount
        conn.execute(sql.SQL("DELETE FROM {} WHERE model = {}").format(led, model))
    conn.commit()
    return max(deleted, 0)


def apply_pending_deletes(conn: psycopg.Connection, spec: Spec, run_id: int) -> tuple[int, int]:
    """Delete the queued target rows, children's tables first; return (deleted, conflicts).

    A queued row is deleted only if it is still what ferry wrote (its hash matches) and no row
    references it any more: the application's own rows are never touched, not even through an
    ON DELETE CASCADE. A row edited, or referenced by the application's, is kept and its
    ledger row flagged as a conflict; one still referenced by a row of ferry's that a later
    pass of the run rewrites (a row blocked on a unique value) stays queued for that pass.
    """
    pend = sql.Identifier(spec.ledger_schema, "pending_deletes")
    led = sql.Identifier(spec.ledger_schema, "ledger")
    deleted = conflicts = 0
    conn.execute(
        sql.SQL("SET search_path = {}, pg_catalog").format(sql.Identifier(spec.stage_schema))
    )
    for model in reversed(spec.order()):
        if not conn.execute(
            sql.SQL("SELECT 1 FROM {} WHERE model = %s LIMIT 1").format(pend), [model.name]
        ).fetchone():
            continue
        plan = Plan(conn, spec, model)
        key = sql.Identifier(model.key_column)
        guarded: list[sql.Composable] = [sql.SQL("{} = p.row_hash").format(plan.target_hash("t"))]
        protected, held = _referenced(conn, spec, model)
        if protected | held:
            guarded.append(
                sql.SQL("NOT t.{} = ANY({}::uuid[])").format(
                    key, sql.Literal(sorted(protected | held))
                )
            )
        later = sql.SQL("NOT p.target_uuid = ANY({}::uuid[])").format(sql.Literal(sorted(held)))
        with conn.transaction():
            cur = conn.execute(
                sql.SQL(
                    "DELETE FROM {t} t USING {pend} p WHERE p.model = %s "
                    "AND t.{key} = p.target_uuid "
                    "AND {ok}"
                ).format(t=plan.target, pend=pend, key=key, ok=sql.SQL(" AND ").join(guarded)),
                [model.name],
            )
            deleted += max(cur.rowcount, 0)
            # Whatever is left was edited or is referenced by the application: keep it, say so.
            cur = conn.execute(
                sql.SQL(
                    "UPDATE {led} l SET conflict = true, updated_at = clock_timestamp() "
                    "FROM {pend} p, {t} t WHERE p.model = %s AND l.model = p.model "
                    "AND l.source_key = p.source_key AND t.{key} = p.target_uuid AND {later}"
                ).format(led=led, pend=pend, t=plan.target, key=key, later=later),
                [model.name],
            )
            conflicts += max(cur.rowcount, 0)
            conn.execute(
                sql.SQL("DELETE FROM {} p WHERE p.model = %s AND {}").format(pend, later),
                [model.name],
            )
    conn.commit()
    return deleted, conflicts


def _referenced(conn: psycopg.Connection, spec: Spec, model: Model) -> tuple[set[str], set[str]]:
    """Queued rows of ``model`` still referenced: by a row ferry did not write (kept, a
    conflict), or only by rows of ferry's not queued themselves (kept for a later pass).

    Two steps so that the ledger (millions of rows, no index on target_uuid) is read at most
    once, and only when queued rows are referenced at all: children are deleted first, so
    usually nothing references them by now.
    """
    pend = sql.Identifier(spec.ledger_schema, "pending_deletes")
    refs: dict[str, set[str]] = {}
    for ref_table, ref_col, ref_pk in referencing(conn, model.target):
        # A referencing row queued for deletion too (a child in the same table) goes first.
        rows = conn.execute(
            sql.SQL(
                "SELECT p.target_uuid::text, {pk} FROM {pend} p "
                "JOIN {rt} r ON r.{rc} = p.target_uuid WHERE p.model = %s "
                "AND NOT EXISTS (SELECT FROM {pend} q WHERE q.target_table = {rtt} "
                "AND q.target_uuid = {rpk})"
            ).format(
                rtt=sql.Literal(ref_table),
                rpk=sql.SQL("r.{}").format(sql.Identifier(ref_pk)) if ref_pk else sql.SQL("NULL"),
                pk=sql.SQL("r.{}::text").format(sql.Identifier(ref_pk))
                if ref_pk
                else sql.SQL("NULL"),
                pend=pend,
                rt=sql.SQL(ref_table),
                rc=sql.Identifier(ref_col),
            ),
            [model.name],
        ).fetchall()
        for parent, child in rows:
            refs.setdefault(parent, set()).add(child)
    if not refs:
        return set(), set()
    children = sorted({c for cs in refs.values() for c in cs if c is not None})
    ours = {
        r[0]
        for r in conn.execute(
            sql.SQL(
                "SELECT target_uuid::text FROM {} WHERE status = 'migrated' "
                "AND target_uuid = ANY(%s::uuid[])"
            ).format(sql.Identifier(spec.ledger_schema, "ledger")),
            [children],
        )
    }
    protected = {p for p, cs in refs.items() if any(c is None or c not in ours for c in cs)}
    return protected, set(refs) - protected


def referencing(conn: psycopg.Connection, target: str) -> list[tuple[str, str, str | None]]:
    """Single-column foreign keys pointing at ``target``: (table, column, its uuid primary key).

    Without a single-column UUID primary key the referencing rows cannot be ferry's, so any
    reference at all protects the row.
    """
    rows = conn.execute(
        "SELECT c.conrelid::regclass::text, a.attname, "
        "(SELECT pa.attname FROM pg_constraint pk JOIN pg_attribute pa "
        " ON pa.attrelid = pk.conrelid AND pa.attnum = pk.conkey[1] "
        " WHERE pk.conrelid = c.conrelid AND pk.contype = 'p' AND cardinality(pk.conkey) = 1 "
        " AND pa.atttypid = 'uuid'::regtype) "
        "FROM pg_constraint c "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
        "WHERE c.contype = 'f' AND c.confrelid = to_regclass(%s) AND cardinality(c.conkey) = 1",
        [target],
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]
