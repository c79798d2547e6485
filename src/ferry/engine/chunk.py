"""Run one model's chunks: each a transaction holding its target rows and their ledger rows.

Inside it, each row's fate is decided in SQL (``query.Plan``), compared with the ledger, and
only the rows whose outcome changed are written, so a re-run or a resumed run writes nothing
twice. An error nobody predicted (unique violation, check constraint, bad cast) is bisected
under savepoints until the failing rows stand alone; they are quarantined with their SQLSTATE
and the rest of the chunk is written.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ferry import catalog, ledger
from ferry.engine import dependencies, keyarray, predict, rehash
from ferry.engine.query import HELD, PENDING, Plan
from ferry.errors import FerryError, SkippedByTrigger, condition_name, safe_message
from ferry.spec import Source, Spec

# Errors that belong to rows, not to the run: data exceptions (22), integrity (23), and
# exceptions raised by the target's triggers (P0001). Anything else stops the run.
BISECTABLE = (
    psycopg.errors.DataError,
    psycopg.errors.IntegrityError,
    psycopg.errors.RaiseException,
    SkippedByTrigger,
)


_INTEGERS = ("smallint", "integer", "bigint")
# Refusals for a value another row holds, which it may have to give up (``Runner._evict``).
_HELD_BY_ANOTHER = (psycopg.errors.UniqueViolation, psycopg.errors.ExclusionViolation)
# One transaction of a model: a key range [lo, hi) (None: open), or a list of keys (a sync's).
Chunk = tuple[Any, Any, Sequence[str] | None]
# The random_page_cost a chunk of listed keys is planned with, when the server's is higher:
# seq_page_cost's, as for a database the cache holds.
KEYS_PAGE_COST = 1.0


@dataclass(frozen=True)
class _Window:
    """Rows of a chunk being written (``_ferry_n`` in ``rng``), and whether any has an
    earlier outcome (``old``) or a row of ferry's in the target (``held``)."""

    rng: sql.Composable
    old: bool
    held: bool


class _YieldedTwice(Exception):
    """A first load's chunk, written aside, yields one ``_key`` twice: take the careful way."""


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
    # Keys that got their first ledger row, where a merge may depend on them (``new_keys``):
    # all of them for a model whose rows depend on its own, else one if any did.
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


def histogram_starts(hist: Sequence[Any], chunks: int) -> list[Any] | None:
    """The first keys of chunks 2 to ``chunks``, from a histogram's bounds (equal numbers of
    rows between neighbours); None if it cannot tell them.

    With as many buckets as chunks or more, chunks start at bucket bounds. With fewer, only
    integer keys: each bucket's range is cut in equal parts, as the planner itself assumes
    rows are spread within a bucket.
    """
    buckets = len(hist) - 1
    if buckets < 1 or chunks < 1:
        return None
    if buckets >= chunks:
        return [hist[round(i * buckets / chunks)] for i in range(1, chunks)]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in hist):
        return None
    starts: list[Any] = []
    for i in range(1, chunks):
        j, rest = divmod(i * buckets, chunks)
        lo, hi = hist[j], hist[min(j + 1, buckets)]
        key = lo + (hi - lo) * rest // chunks
        if not starts or key > starts[-1]:
            starts.append(key)
    return starts


def histogram(
    conn: psycopg.Connection, spec: Spec, src: Source, key_type: str
) -> tuple[float | None, list[Any] | None]:
    """The stage's rows (as last analyzed) and its key's histogram bounds: integers as
    such (``histogram_starts`` cuts between them), any other key as its text, which
    ``bound`` casts back. Python has no ``infinity`` date nor BC timestamp."""
    as_text = sql.SQL("" if key_type in _INTEGERS else "::text[]")
    row = conn.execute(
        sql.SQL(
            "SELECT c.reltuples, (s.histogram_bounds::text)::{t}[]{x} FROM pg_class c "
            "LEFT JOIN pg_stats s ON s.schemaname = %s AND s.tablename = %s "
            "AND s.attname = %s WHERE c.oid = to_regclass(%s)"
        ).format(t=sql.SQL(key_type), x=as_text),
        [spec.stage_schema, src.stage_table, src.stage_key,
         sql.Identifier(spec.stage_schema, src.stage_table).as_string(conn)],
    ).fetchone()  # fmt: skip
    return (row[0], row[1]) if row else (None, None)


def bound(value: Any, key_type: str) -> sql.Composable:
    """A key bound (``histogram``, a split's middle key) as SQL of the key's type."""
    return sql.SQL("{}::{}").format(sql.Literal(value), sql.SQL(key_type))


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
        # parent that rows waiting as orphans were waiting for). Every one only where rows
        # of the model depend on its own rows (``execute.run_model``); for the others, one
        # tells ``settle`` that orphans may have a parent now (67,000 inserted keys, held to
        # the end of a sync, took 7 MB).
        self.new_keys: set[str] = set()
        self._every_new = bool(dependencies.own_dependencies(plan.model))
        self.pending: set[str] = set()
        # Rows refused for a unique value a later key of ferry's held: that row gives it up
        # (``_evict``), and these run again once its deletion is done.
        self.blocked: set[str] = set()
        # A row the database refused that the prediction let through (``_again_for_values``).
        self._unpredicted = False
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

        Taken from the stage table's histogram (the stage is analyzed when loaded):
        numbering 2M keys to cut them exactly costs a second, and chunk sizes only need to be
        about right. An integer key with fewer buckets than chunks (past 100 chunks at the
        default statistics target) has its buckets cut evenly between their bounds
        (``histogram_starts``): numbering the demo's 6.1M keys at SF=3 took 7 s, alone before
        the model's first chunk. Otherwise every ``chunk_size``-th key.
        """
        plan, spec = self.plan, self.plan.spec
        if not plan.model.accounts:
            return [(None, None)]
        src = spec.source(plan.model.source)
        size = self.chunk_size
        rows, hist = histogram(self.conn, spec, src, plan.key_type)
        if rows is not None and 0 <= rows <= size:
            self.conn.commit()
            return [(None, None)]
        chunks = -(-int(rows) // size) if rows and rows > 0 else 0
        cut = histogram_starts(hist, chunks) if hist and chunks else None
        if cut is not None:
            starts = [None, *cut]
        else:
            starts = [
                r[0]
                for r in self.conn.execute(
                    sql.SQL(
                        "SELECT k::text FROM (SELECT {key} AS k, row_number() OVER "
                        "(ORDER BY {key}) - 1 AS n FROM {stage}) s "
                        "WHERE n % {size} = 0 ORDER BY s.k"
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
        # The server sorts and answers with positions: the caller's strings are reused, not
        # held a second time as the server's text of each key.
        keys = [
            keys[r[0] - 1]
            for r in self.conn.execute(
                sql.SQL("SELECT i FROM unnest({}::{}[]) WITH ORDINALITY u(k, i) ORDER BY k").format(
                    keyarray.literal(keys), sql.SQL(self.plan.key_type)
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
            parts.append(sql.SQL("{} >= {}").format(ref, bound(lo, self.plan.key_type)))
        if hi is not None:
            parts.append(sql.SQL("{} < {}").format(ref, bound(hi, self.plan.key_type)))
        if keys is not None:
            parts.append(
                sql.SQL("{} = ANY({}::{}[])").format(
                    ref, keyarray.literal(map(str, keys)), sql.SQL(self.plan.key_type)
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
        if self._unpredicted:
            self._again_for_values()
        return ModelResult(
            self.plan.model.name, self.rows, self.written, self.errors,
            time.perf_counter() - t0, self.transitions, self.changed_keys, self.pending,
            self.new_keys, self.blocked,
        )  # fmt: skip

    def _chunk(self, lo: Any, hi: Any, keys: Sequence[str] | None) -> None:
        with self.slots:
            # A deferred constraint (or constraint trigger) of the target's refuses a row at
            # COMMIT, where no statement names it and the whole run failed: checked at each
            # statement's end instead, it refuses the rows that break it, as any other does.
            self.conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            if keys is not None:
                # A list of keys (a sync's) reads a few rows of each parent by its index; at
                # the default random_page_cost (4, for disks) the planner hashed whole parent
                # tables and ledgers instead: at SF=5, 1,532 changed files hashed 125,000
                # orders (60 ms against 14). Pages a sync reads are mostly cached. At 1.1,
                # 2,696 changed messages still hashed 42,095 cases and 35,325 discussions
                # (47-50 ms against 33-41 at 1.0).
                self.conn.execute(
                    "SELECT set_config('random_page_cost', least(current_setting("
                    "'random_page_cost')::float8, %s)::text, true)",
                    [KEYS_PAGE_COST],
                )
            # A trigger that changes a row after it is written: the one statement would
            # record the row it wrote, not the row stored (``_record_as_stored``).
            fast = self.fresh and self.plan.shape.rewrites != "after"
            if not (fast and self._first_write(lo, hi, keys)):
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
        insert = self._insert_new(sql.SQL("c"), sql.SQL("_ferry_fate = 0"))
        rows, hashed = sql.SQL("c"), sql.SQL("c._ferry_hash")
        if self.plan.shape.rewrites:
            # The hash of each row as the target's triggers let it be stored
            # (``_record_as_stored``), from the insert's own result.
            insert = sql.SQL("{} RETURNING {} AS _ferry_id, {} AS _ferry_stored").format(
                insert,
                sql.Identifier("_ferry_t", self.plan.model.key_column),
                self.plan.target_hash("_ferry_t"),
            )
            rows = sql.SQL("c LEFT JOIN t ON t._ferry_id = c._ferry_uuid")
            hashed = sql.SQL("coalesce(t._ferry_stored, c._ferry_hash)")
        statement = sql.SQL(
            "WITH c AS MATERIALIZED ({expected}), t AS ({insert}), "
            "l AS (INSERT INTO {led} ({cols}) SELECT {vals} FROM {rows} "
            "WHERE _ferry_status NOT IN ({p}, {b})) "
            "SELECT _ferry_status, count(*){twice}, array_agg(_ferry_key) FILTER (WHERE "
            "_ferry_status IN ({p}, {b})), bool_or(_ferry_holder IS NOT NULL){skipped} "
            "FROM c GROUP BY 1"
        ).format(
            expected=self.plan.expected(self._where(lo, hi, keys), numbered=False),
            insert=insert,
            led=self.led,
            cols=LEDGER_COLUMNS,
            vals=self._ledger_values(hashed),
            rows=rows,
            # A row a trigger skipped (it returned NULL), or stored under another key, is
            # not in the target under its own: the careful way quarantines it
            # (``_check_stored``).
            skipped=sql.SQL(
                ", (SELECT count(*) FROM c JOIN t ON t._ferry_id = c._ferry_uuid) "
                "<> (SELECT count(*) FROM c WHERE _ferry_fate = 0)"
                if self.plan.shape.rewrites
                else ", false"
            ),
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
                if any(row[2] or row[4] or row[5] for row in counts):
                    raise _YieldedTwice
        except (*BISECTABLE, _YieldedTwice):
            return False
        for status, n, _, waiting, _, _ in counts:
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
                [
                    catalog.regclass(plan.model.target),
                    catalog.regclass(plan.model.target),
                    plan.model.key_column,
                ],
            ).fetchone()
            self._keyed = bool(row and row[0])
        return sql.SQL(
            "INSERT INTO {t} AS _ferry_t ({key}{cols}) SELECT _ferry_uuid{cols} FROM {source} "
            "WHERE {where}{order}"
        ).format(
            t=plan.target,
            key=sql.Identifier(plan.model.key_column),
            cols=cols,
            source=source,
            where=where,
            order=sql.SQL(" ORDER BY _ferry_uuid" if self._keyed else ""),
        )

    def _ledger_values(self, hashed: sql.Composable = sql.SQL("c._ferry_hash")) -> sql.Composed:
        """The ledger row of each computed row (``c``), in ``LEDGER_COLUMNS`` order."""
        plan = self.plan
        return sql.SQL(
            "{model}, c._ferry_key, {src}, {acc}, c._ferry_status, c._ferry_reason, "
            "c._ferry_repairs, {tt}, c._ferry_uuid, {hashed}, {run}, {run}, c._ferry_sqlstate, "
            "c._ferry_message"
        ).format(
            model=sql.Literal(plan.model.name), src=sql.Literal(plan.source_table),
            acc=sql.Literal(plan.model.accounts), tt=sql.Literal(plan.model.target),
            run=sql.Literal(self.run_id), hashed=hashed,
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
                waiting = conn.execute(
                    "DELETE FROM _ferry_c WHERE _ferry_status IN (%s, %s) "
                    "RETURNING _ferry_key, _ferry_status, _ferry_holder, _ferry_message",
                    [PENDING, predict.BLOCKED],
                ).fetchall()
                holders = {h: m for _, _, h, m in waiting if h is not None}
                # A later key holding a wanted value gives it up, as in a migrate that
                # writes in key order, unless the chunk writes it (which may free the value:
                # the next pass tells). Waiting itself, it never would: rows swapping unique
                # values wait on each other in every pass.
                written = self._written(sorted(holders))
                holders = {h: m for h, m in holders.items() if h not in written}
                for key, status, _, _ in waiting:
                    (self.pending if status == PENDING else self.blocked).add(key)
                for holder, message in sorted(holders.items()):
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

    def _written(self, keys: list[str]) -> set[str]:
        """Of ``keys``, those the chunk is about to write (rows of ``_ferry_c``)."""
        if not keys:
            return set()
        rows = self.conn.execute(
            "SELECT _ferry_key FROM _ferry_c WHERE _ferry_key = ANY(%s)", [keys]
        ).fetchall()
        return {r[0] for r in rows}

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
        # distinct keys: a key the stage repeats (duplicate_key) is not split
        n = self._count(
            sql.SQL("SELECT count(DISTINCT {}) FROM {} m0 WHERE {}").format(
                sql.Identifier(col), stage, where
            )
        )
        if n <= 1:
            return None
        mid = self.conn.execute(
            sql.SQL(
                "SELECT k::text FROM (SELECT DISTINCT {k} AS k FROM {s} m0 WHERE {w} "
                "ORDER BY {k} OFFSET {o} LIMIT 1) x"
            ).format(k=sql.Identifier(col), s=stage, w=where, o=sql.Literal(n // 2))
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
                "SELECT status, sqlstate, target_uuid, row_hash, decided_by IS NOT NULL FROM {} "
                "WHERE model = %s AND source_key = %s"
            ).format(self.led),
            [plan.model.name, key],
        ).fetchone()  # fmt: skip
        if old is not None and old[4]:
            # An operator's decision stands (``Plan.candidates`` leaves such rows out): a row
            # computed only because a failing chunk held it is not quarantined over it.
            return
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
                ).format(ledger.table(plan.spec, "pending_deletes")),
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
        """Rows a..b of ``_ferry_c``, in named steps; those about earlier outcomes run only
        where the rows have one (a first load has none, and skips the scans that look)."""
        w = self._window(a, b)
        if w.held:
            self._flag_conflicts(w)
        if w.old:
            self._keep_before_images(w)
        if w.held:
            self._queue_replaced(w)
        self._insert_rows(w)
        if w.held:
            self._update_rows(w)
        if self.plan.shape.rewrites:
            self._check_stored(w)
        self._record_new(w)
        if w.old:
            self._record_changed(w)
        if w.held:
            self._record_conflicts(w)
        if self.plan.shape.rewrites:
            self._record_as_stored(w)
        self._tally(w)

    def _window(self, a: int, b: int) -> _Window:
        rng = sql.SQL("_ferry_n BETWEEN {} AND {}").format(sql.Literal(a), sql.Literal(b))
        if self.fresh:
            return _Window(rng, False, False)
        old = self.conn.execute(
            sql.SQL(
                "SELECT count(*) FILTER (WHERE c._old_status IS NOT NULL), "
                "count(*) FILTER (WHERE {held}) FROM _ferry_c c WHERE {rng}"
            ).format(held=HELD, rng=rng)
        ).fetchone()
        w = _Window(rng, bool(old and old[0]), bool(old and old[1]))
        if w.old:
            # Without statistics the planner guesses the temp table big and hashes whole
            # target and ledger tables to join it; a few rows want index lookups.
            self.conn.execute("ANALYZE _ferry_c")
        return w

    def _flag_conflicts(self, w: _Window) -> None:
        """Rows ferry wrote earlier and now changes: the application may have edited them
        (locked first: ``Plan.lock``)."""
        plan = self.plan
        plan.lock(
            self.conn,
            sql.SQL(
                "FROM {t} t JOIN _ferry_c c ON t.{key} = c._old_uuid WHERE {rng} AND {held}"
            ).format(
                t=plan.target, key=sql.Identifier(plan.model.key_column), rng=w.rng, held=HELD
            ),
        )
        self.conn.execute(
            sql.SQL(
                "UPDATE _ferry_c c SET _conflict = true "
                "WHERE {rng} AND {held} "
                "AND NOT EXISTS (SELECT 1 FROM {t} t WHERE t.{key} = c._old_uuid "
                "AND {h})"
            ).format(
                rng=w.rng, held=HELD, t=plan.target, key=sql.Identifier(plan.model.key_column),
                h=plan.holds_hash("t", sql.SQL("c._old_hash")),
            )
        )  # fmt: skip

    def _keep_before_images(self, w: _Window) -> None:
        """Before-images for rollback, of every row this write changes (not the conflicts)."""
        plan = self.plan
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {hist} (run_id, model, source_key, ledger_before, target_before) "
                "SELECT {run}, l.model, l.source_key, to_jsonb(l.*), to_jsonb(t.*) "
                "FROM _ferry_c c JOIN {led} l ON l.model = {model} "
                "AND l.source_key = c._ferry_key "
                "LEFT JOIN {t} t ON t.{key} = l.target_uuid "
                "AND l.status IN ('migrated', 'deleted') "
                "WHERE {rng} AND NOT c._conflict ON CONFLICT DO NOTHING"
            ).format(
                hist=ledger.table(plan.spec, "history"),
                run=sql.Literal(self.run_id), led=self.led, model=sql.Literal(plan.model.name),
                t=plan.target, key=sql.Identifier(plan.model.key_column), rng=w.rng,
            )
        )  # fmt: skip

    def _queue_replaced(self, w: _Window) -> None:
        """Rows ferry wrote that must go: queued, and deleted once every model has run,
        children first, so that no foreign key (or ON DELETE CASCADE) sees them go early."""
        plan = self.plan
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {pend} (target_table, target_uuid, model, source_key, row_hash, "
                "run_id) SELECT {tt}, c._old_uuid, {model}, c._ferry_key, c._old_hash, {run} "
                "FROM _ferry_c c WHERE {rng} AND NOT c._conflict AND {held} "
                "AND (c._ferry_fate <> 0 OR c._ferry_uuid IS DISTINCT FROM c._old_uuid) "
                "ON CONFLICT DO NOTHING"
            ).format(
                held=HELD, pend=ledger.table(plan.spec, "pending_deletes"),
                tt=sql.Literal(plan.model.target), model=sql.Literal(plan.model.name),
                run=sql.Literal(self.run_id), rng=w.rng,
            )
        )  # fmt: skip

    def _insert_rows(self, w: _Window) -> None:
        """New rows are plain INSERTs (cheaper than ON CONFLICT). A UUID already taken by a
        row ferry did not write is a unique violation, bisected and quarantined like any
        other."""
        new = sql.SQL(
            "{rng} AND c._ferry_fate = 0 AND NOT c._conflict AND (NOT coalesce({held}, false) "
            "OR c._old_uuid IS DISTINCT FROM c._ferry_uuid)"
        ).format(rng=w.rng, held=HELD)
        cur = self.conn.execute(self._insert_new(sql.SQL("_ferry_c c"), new))
        self.written += max(cur.rowcount, 0)

    def _update_rows(self, w: _Window) -> None:
        """Rows ferry wrote before (a row kept when its source row went, too), in place."""
        plan = self.plan
        names = [n for n, _, _ in plan.columns]
        if not names:
            return
        cur = self.conn.execute(
            sql.SQL(
                "UPDATE {t} t SET {sets} FROM _ferry_c c WHERE {rng} AND c._ferry_fate = 0 "
                "AND NOT c._conflict AND {held} "
                "AND c._old_uuid = c._ferry_uuid AND t.{key} = c._ferry_uuid"
            ).format(
                held=HELD, t=plan.target, key=sql.Identifier(plan.model.key_column), rng=w.rng,
                sets=sql.SQL(", ").join(
                    sql.SQL("{0} = c.{0}").format(sql.Identifier(n)) for n in names
                ),
            )
        )  # fmt: skip
        self.written += max(cur.rowcount, 0)

    def _record_new(self, w: _Window) -> None:
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {led} ({cols}) SELECT {vals} FROM _ferry_c c "
                "WHERE {rng} AND NOT c._conflict AND c._old_status IS NULL"
            ).format(led=self.led, cols=LEDGER_COLUMNS, vals=self._ledger_values(), rng=w.rng)
        )

    def _record_changed(self, w: _Window) -> None:
        self.conn.execute(
            sql.SQL(
                "UPDATE {led} l SET status = c._ferry_status, reason = c._ferry_reason, "
                "repairs = c._ferry_repairs, sqlstate = c._ferry_sqlstate, "
                "message = c._ferry_message, "
                "target_uuid = c._ferry_uuid, row_hash = c._ferry_hash, conflict = false, "
                "run_id = {run}, updated_at = clock_timestamp(), tries = l.tries + 1 "
                "FROM _ferry_c c WHERE {rng} AND NOT c._conflict AND c._old_status IS NOT NULL "
                "AND l.model = {model} AND l.source_key = c._ferry_key"
            ).format(
                led=self.led, run=sql.Literal(self.run_id), rng=w.rng,
                model=sql.Literal(self.plan.model.name),
            )
        )  # fmt: skip

    def _check_stored(self, w: _Window) -> None:
        """A trigger that returns NULL skips the row, without an error (or one that sets
        another key stores it where ferry will not look): written, it would be recorded as
        migrated and not be there. Raised to be bisected and quarantined."""
        plan = self.plan
        row = self.conn.execute(
            sql.SQL(
                "SELECT EXISTS (SELECT FROM _ferry_c c WHERE {rng} AND c._ferry_fate = 0 "
                "AND NOT c._conflict AND NOT EXISTS (SELECT FROM {t} t "
                "WHERE t.{key} = c._ferry_uuid))"
            ).format(rng=w.rng, t=plan.target, key=sql.Identifier(plan.model.key_column))
        ).fetchone()
        if row and row[0]:
            raise SkippedByTrigger(
                f"a trigger on {plan.model.target} skipped the row, or changed its key"
            )

    def _record_as_stored(self, w: _Window) -> None:
        """A trigger may have changed what was written (a value normalized, a timestamp
        set): the ledger keeps the hash of the row as the target holds it, or the row
        would pass for one the application edited, and its source's changes be withheld
        as conflicts. Read back in the write's transaction, so no edit can come between."""
        rehash.as_stored(
            self.conn, self.plan, self.led,
            sql.SQL("c._ferry_key = l.source_key AND {} AND c._ferry_fate = 0 "
                    "AND NOT c._conflict").format(w.rng),
            sql.SQL(", _ferry_c c"),
        )  # fmt: skip

    def _record_conflicts(self, w: _Window) -> None:
        self.conn.execute(
            sql.SQL(
                "UPDATE {led} l SET conflict = true, updated_at = clock_timestamp() "
                "FROM _ferry_c c WHERE {rng} AND c._conflict AND l.model = {model} "
                "AND l.source_key = c._ferry_key"
            ).format(led=self.led, rng=w.rng, model=sql.Literal(self.plan.model.name))
        )

    def _tally(self, w: _Window) -> None:
        """Counted last: a write that fails is rolled back to its savepoint, and so is not
        news."""
        conn, rng = self.conn, w.rng
        for prev, new, n in conn.execute(
            sql.SQL(
                "SELECT _old_status, _ferry_status, count(*) FROM _ferry_c "
                "WHERE {} AND NOT _conflict GROUP BY 1, 2"
            ).format(rng)
        ):
            self.transitions[(prev, new)] += n
        if not self.fresh and (self._every_new or not self.new_keys):
            self.new_keys.update(
                r[0]
                for r in conn.execute(
                    sql.SQL(
                        "SELECT _ferry_key FROM _ferry_c WHERE {} AND _old_status IS NULL{}"
                    ).format(rng, sql.SQL("" if self._every_new else " LIMIT 1"))
                )
            )
        if not w.old:
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

    def _again_for_values(self) -> None:
        """A row was refused by the database, which the prediction had not seen coming:
        rows refused because they wanted a unique value it wanted (a lower key of their
        chunk) may find that value free after all. They run again in a later pass, as a
        migrate writing in key order would have written them; else where chunks fall
        decided their fate. Found in the ledger, once the chunks are done: an unchanged
        refusal never reaches ``_ferry_c``."""
        name = self.plan.model.name
        refused = ledger.refused_keys(self.conn, self.plan.spec, [name], [predict.UNIQUE])
        self.blocked.update(refused.get(name, ()))
        self._unpredicted = False

    def _quarantine_row(self, n: int, exc: psycopg.Error) -> None:
        self._unpredicted = True
        row = self.conn.execute(
            sql.SQL("SELECT _ferry_key, {} FROM _ferry_c c WHERE _ferry_n = %s").format(
                self.plan.refused_hash("c")
            ),
            [n],
        ).fetchone()
        if row is None:
            return
        self._ledger_error(row[0], exc, row[1])
        if isinstance(exc, _HELD_BY_ANOTHER) and not self.fresh:
            self._evict(n, row[0], exc)

    def _evict(self, n: int, key: str, exc: psycopg.Error) -> None:
        """A unique or exclusion violation nobody predicted (``predict`` finds most unique
        ones before the write): if the row that holds the value is ferry's, of this model,
        with a later key, it gives the value up (``_give_up``) and the refused row runs
        again once it is gone."""
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
        reason = "exclusion_violation" if sqlstate == predict.EXCLUSION else "unique_violation"
        self.conn.execute(
            sql.SQL(
                "UPDATE {} SET status = 'quarantined', reason = %s, "
                "sqlstate = %s, message = %s, repairs = '{{}}', target_uuid = NULL, "
                "row_hash = NULL, run_id = %s, updated_at = clock_timestamp(), "
                "tries = tries + 1 WHERE model = %s AND source_key = %s AND status = 'migrated'"
            ).format(self.led),
            [reason, sqlstate, message, self.run_id, plan.model.name, holder],
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
    # once for the model; or an exclusion constraint's, with its operators.
    unique = next((u for u in plan.refusals.uniques if u.name == index), None)
    if unique is not None:
        exprs, pred, ops = unique.exprs, unique.predicate, ["="] * len(unique.exprs)
    else:
        excluded = predict.exclusion(conn, plan.model.target, index) if index else None
        if excluded is None:
            return None
        exprs, pred, ops = excluded.exprs, excluded.predicate, excluded.operators
    cols = sql.SQL(", ").join(sql.Identifier(name) for name, _, _ in plan.columns)
    wanted = sql.SQL(", ").join(
        sql.SQL("({}) AS {}").format(sql.SQL(e), sql.Identifier(f"k{i}"))  # type: ignore[arg-type]
        for i, e in enumerate(exprs)
    )
    same = sql.SQL(" AND ").join(
        sql.SQL("({}) {} w.{}").format(sql.SQL(e), sql.SQL(op), sql.Identifier(f"k{i}"))  # type: ignore[arg-type]
        for i, (e, op) in enumerate(zip(exprs, ops, strict=True))
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
