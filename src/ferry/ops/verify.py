"""Verify: an independent check that the target holds what the spec yields.

The ledger's own counts prove only that the ledger is consistent with itself. Verify instead
recomputes every model from the stage (``Plan.expected``) and compares the result with the
target tables, checks the target's foreign keys row by row (a row inserted with triggers
disabled passes every constraint check but this one), checks the ledger invariant (its keys
by fingerprint), and, given a ground-truth file, compares every planted row's fate with what
was planted.

It compares by fingerprints in the database, as the sync's diff does: each model's recomputed
fates against the ledger's, and its rows against the target's, as a count and a sum of 64-bit
hashes computed where the rows are, the recomputation split over ``jobs`` sessions. Only a
model whose fingerprints differ is compared row by row, to name the rows (at SF=1 the row by
row comparison of every model took 35 s, four fifths of them materialising and joining the 2M
rows of one model in temporary tables).

Problems name tables, models, source keys, target UUIDs, reasons and counts -- never row
contents: they end up in terminals and CI logs, and the rows are health data.
"""

from __future__ import annotations

import csv
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import TypeVar

import psycopg
from psycopg import sql

from ferry import catalog, ledger
from ferry.conninfo import apply, connect, pinned
from ferry.engine import chunk, stage
from ferry.engine.dependencies import own_dependencies
from ferry.engine.keys import uuid_sql
from ferry.engine.query import Plan, use_stage
from ferry.errors import FerryError, InvariantError, VerifyError, safe_message
from ferry.spec import Model, Spec

T = TypeVar("T")

# How many keys a problem names: enough to find the rows, few enough to read.
SAMPLE = 10
TRUTH_HEADER = ("source_table", "source_key", "status", "reason")

# An order-independent checksum of (uuid, hash) pairs: the sum of 60 bits of an md5 per row.
# A sum needs no sort, so it stays cheap on millions of rows; with the count beside it, a
# lost, an added or a changed row shows (a collision needs two changes cancelling to 2^-60).
_ROWSUM = "coalesce(sum(('x' || substr(md5({u}::text || {h}), 1, 15))::bit(60)::bigint), 0)"

# A model whose stage holds at least this many rows is recomputed in parts, one per session:
# below it, a part costs more to start than it saves.
SPLIT_ROWS = 100_000


def _fp(*values: sql.Composable) -> sql.Composed:
    """A row's fingerprint: PostgreSQL's 64-bit hash of the values, NULLs included. Summed
    (as numeric: no overflow) beside a count, it tells two sets apart unless their
    differences cancel (2^-64); ``hash_record_extended`` costs a tenth of an md5 of the text."""
    return sql.SQL("hash_record_extended(ROW({}), 0)").format(sql.SQL(", ").join(values))


def _row_fp(plan: Plan, alias: str, uuid: str) -> sql.Composed:
    """A written row's fingerprint: its UUID (column ``uuid`` of ``alias``) and the columns
    ferry writes as ``target_hash`` sees them, the same from a recomputed row
    (``Plan.expected``) and a stored one. One hash of the values: hashing ``target_hash``'s
    text instead cost a fifth more on the 2M rows of the demo's largest model."""
    return _fp(sql.Identifier(alias, uuid), *plan.hash_elements(alias))


@dataclass
class Problem:
    """One thing that is wrong, located: which table, which keys, what, how many.

    ``keys`` are source keys where ferry knows them; ``uuids`` are target primary keys. Both
    are samples (at most ``SAMPLE``); ``count`` is the number of rows affected.
    """

    kind: str
    table: str
    keys: list[str]
    detail: str
    count: int = 0
    uuids: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"[{self.kind}] {self.table}: {self.detail}"
        if self.keys:
            more = " ..." if self.count > len(self.keys) else ""
            text += f"; keys {', '.join(self.keys)}{more}"
        if self.uuids:
            more = " ..." if self.count > len(self.uuids) else ""
            text += f"; uuids {', '.join(self.uuids)}{more}"
        return text


@dataclass
class VerifyReport:
    """What verify found, and what it looked at (so "no problems" means something)."""

    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        seen = ", ".join(f"{k} {v}" for k, v in self.checked.items())
        if self.ok:
            return f"verify ok ({seen})"
        lines = [f"verify found {len(self.problems)} problem(s) ({seen}):"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)

    def raise_for_problems(self) -> None:
        """For callers that want a failed verify to be an exception (CI, scripts)."""
        if not self.ok:
            raise VerifyError(self.summary())


def verify(target: str, spec: Spec, truth: Path | None = None, jobs: int = 2) -> VerifyReport:
    """Check the target against the spec, its foreign keys, the ledger and the ground truth.

    Read-only on the target (it creates only temporary tables). Problems come back in the
    report rather than as an exception, so one run shows all of them. ``jobs``: sessions
    that recompute the models beside the main one (a large model in as many parts), and one
    more for the rest meanwhile; one more again checks the ledger's invariant, the foreign
    keys and the truth.
    """
    t0 = time.perf_counter()
    report = VerifyReport(checked={"models": 0, "rows": 0, "foreign_keys": 0})
    with connect(target, app="ferry-verify") as conn:
        if not _ledger_exists(conn, spec):
            report.problems.append(
                Problem("ledger", spec.ledger_schema, [], "no ledger: ferry has not run here")
            )
            return report
        # Values read and parse as the runs that wrote them did (``ledger.session_settings``).
        settings = ledger.session_settings(conn, spec, record=False)
        apply(conn, settings)
        # Model SQL names stage tables plainly; temp tables are still found first (pg_temp).
        use_stage(conn, spec.stage_schema)
        # The fates verify recomputes, model by model: its children and merged rows take
        # their parents' and survivors' fates from here, not from the ledger it checks.
        conn.execute(
            "CREATE TEMP TABLE _ferry_f (model text, source_key text, status text, "
            "target_uuid uuid, PRIMARY KEY (model, source_key))"
        )
        conn.commit()
        emptied = _emptied_stages(conn, spec, report)
        with (
            pinned(target, settings),
            _Sessions(target, spec, 1, serial=True) as side,
            _Sessions(target, spec, jobs, spare=1) as sessions,
        ):
            # The checks that read no recomputed rows run meanwhile, in a session of their own.
            invariant = side.submit(_apart(lambda c, r: _check_invariant(c, spec, r, emptied)))
            fks = side.submit(_apart(lambda c, r: _check_foreign_keys(c, spec, r)))
            truths = side.submit(
                _apart(lambda c, r: _check_truth(c, spec, truth, r) if truth else None)
            )
            # Models whose recomputed fates equal the ledger's: their children read the
            # ledger's fates (the same rows) from any session, instead of ``_ferry_f``.
            agreed: set[str] = set()
            found: dict[str, VerifyReport] = {}  # each model's problems, in the spec's order
            started: dict[str, Callable[[], _Fast | None]] = {}
            pending: list[_Fast] = []

            def settle(model: Model, fast: _Fast | None) -> None:
                """Take a model's fingerprints of fates (or, where they differ, check it row
                by row); its target's side goes on in the other sessions."""
                out = found[model.name]
                if fast is None:
                    if _check_model(conn, spec, model, out, agreed):
                        _check_written(conn, spec, model, out)
                    return
                agreed.add(model.name)
                out.checked["models"] += 1
                out.checked["rows"] += fast.rows
                if model.legacy_column and fast.legacy is None:
                    fast.legacy = sessions.submit(
                        partial(_more_legacy_rows, spec=spec, model=model)
                    )
                _check_written(conn, spec, model, out, legacy=False)
                pending.append(fast)

            for model in spec.order():
                if spec.reads(model) & emptied:
                    continue
                found[model.name] = VerifyReport(checked={"models": 0, "rows": 0})
                # Its parents first: whose fates it reads depends on theirs. Other models'
                # parts meanwhile keep the sessions busy.
                for parent in {p.model for p in model.parents} & set(started):
                    settle(spec.model(parent), started.pop(parent)())
                begun = _fast_fates(conn, sessions, spec, model, agreed)
                if begun is None:
                    settle(model, None)
                else:
                    started[model.name] = begun
            for name, finish in started.items():
                settle(spec.model(name), finish())
            # Where the target's side differs, or the target holds rows with a legacy key that
            # the ledger does not account for, the rows are named from the recomputed model
            # (``_ferry_v``).
            for fast in pending:
                legacy = fast.legacy is not None and fast.legacy.result()
                if fast.same() and not legacy:
                    continue
                out = found[fast.model.name]
                if _check_model(conn, spec, fast.model, out, agreed, count=False) and legacy:
                    _check_written(conn, spec, fast.model, out, legacy=True, merge=False)
            for out in found.values():
                report.problems += out.problems
                for k in ("models", "rows"):
                    report.checked[k] += out.checked[k]
            for done in (invariant, fks, truths):
                checked = done.result()
                report.problems += checked.problems
                report.checked["foreign_keys"] += checked.checked.pop("foreign_keys")
                report.checked.update(checked.checked)
    report.seconds = time.perf_counter() - t0
    return report


def _apart(
    check: Callable[[psycopg.Connection, VerifyReport], None],
) -> Callable[[psycopg.Connection], VerifyReport]:
    """A check that writes to a report of its own, to run in another session."""

    def run(conn: psycopg.Connection) -> VerifyReport:
        found = VerifyReport(checked={"foreign_keys": 0})
        check(conn, found)
        return found

    return run


class _Sessions:
    """``jobs`` more sessions on the target, each in its own thread, for the parts of the
    check that can run at once: the database does the work, so threads do.

    ``serial``: without parallel workers. The side session's checks run beside ``jobs``
    sessions that keep the cores busy already: workers of its scans only took CPU from them
    (and each built its own copy of a join's hash table). ``spare``: sessions beyond
    ``jobs`` (which is what a large model is split by): while its parts take ``jobs`` of
    them, the small models, whose queries wait for each other's, go on in the spare one
    instead of after the parts, with a core idle between their queries (at SF=1, 1.5 s
    at the end of each run)."""

    def __init__(
        self, target: str, spec: Spec, jobs: int, serial: bool = False, spare: int = 0
    ) -> None:
        self.target, self.spec, self.jobs = target, spec, max(1, jobs)
        self.serial = serial
        self._local = threading.local()
        self._conns: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.jobs + spare, thread_name_prefix="ferry-verify")

    def __enter__(self) -> _Sessions:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            for conn in self._conns:  # stop what still runs for a check that failed
                conn.cancel_safe()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for conn in self._conns:
            conn.close()

    def _conn(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.target, app="ferry-verify")
            with self._lock:
                self._conns.append(conn)
            use_stage(conn, self.spec.stage_schema)
            if self.serial:
                conn.execute("SET max_parallel_workers_per_gather = 0")
            conn.commit()
            self._local.conn = conn
        return conn

    def submit(self, work: Callable[[psycopg.Connection], T]) -> Future[T]:
        """``work`` on whichever session is free."""

        def run() -> T:
            conn = self._conn()
            try:
                return work(conn)
            finally:
                conn.rollback()

        return self._pool.submit(run)

    def one(self, query: sql.Composable, params: Sequence[object] = ()) -> Future[tuple]:
        """The one row ``query`` returns, from whichever session is free."""
        return self.submit(lambda conn: _one(conn, query, params))


def _now(conn: psycopg.Connection, query: sql.Composable) -> Future[tuple]:
    """``_Sessions.one`` on the main session (which holds ``_ferry_f``), run at once."""
    done: Future[tuple] = Future()
    try:
        done.set_result(_one(conn, query))
    except psycopg.Error as exc:
        done.set_exception(exc)
    return done


@dataclass
class _Fast:
    """A model whose fates agree with the ledger, its rows' comparison under way: ``want``
    is the count and sum of fingerprints of the rows the target must hold, ``have`` will be
    the target's; ``legacy``: whether the target has rows with a legacy key beyond the
    ledger's (``_more_legacy_rows``)."""

    model: Model
    rows: int
    want: tuple[int, Decimal]
    have: list[Future[tuple]]
    exact: Callable[[], list[Future[tuple]]] | None = None
    legacy: Future[bool] | None = None

    def same(self) -> bool:
        """Whether the target holds the rows the model yields (waits for its sessions). A
        query that failed is not an answer: ``_check_model`` then says why. ``have`` may be
        the whole table's figures: if they differ, ``exact`` gives those of the model's rows
        (the ledger's migrated UUIDs, and any other UUID of the model's keys)."""
        try:
            done = [f.result() for f in self.have]
        except psycopg.Error:
            return False
        if self.want == (sum(r[0] for r in done), sum((r[1] for r in done), Decimal(0))):
            return True
        if self.exact is None:
            return False
        self.have, self.exact = self.exact(), None
        return self.same()


def _fast_fates(
    conn: psycopg.Connection, sessions: _Sessions, spec: Spec, model: Model, agreed: set[str]
) -> Callable[[], _Fast | None] | None:
    """Start comparing the model's recomputed fates with the ledger's by fingerprints; the
    function returned waits for them and, if they agree, starts the comparison of its rows
    with the target's. None (now or then): they differ (or cannot be computed), and
    ``_check_model`` is to compare them row by row and say how.

    The same sets as ``_materialize`` and ``_compare_fates``: the recomputed rows less those
    the database refused or an operator decided (the ledger's fate stands for those, if the
    row is still staged); and the ledger's rows of the model less the same. If the fates
    agree, every row the spec yields as migrated has its UUID among the ledger's migrated
    rows, so the target's rows to compare (``_ferry_ids``) are those and the own UUIDs of
    the rows it yields otherwise. The recomputation runs in parts (key ranges, ``_parts``)
    in the other sessions, the ledger's side beside it; a model whose parents' fates are
    verify's own (``_ferry_f``, a temporary table) runs here, whole. A model that a unique
    index on other columns could make refuse rows is never split: which of two rows is
    refused depends on the rows computed together.
    """
    try:
        plan = Plan(conn, spec, model)
    except (FerryError, psycopg.Error):
        conn.rollback()
        return None
    plan.final = True
    here = False
    leds: list[sql.Composable] = []
    for p, led in zip(model.parents, plan.parent_led, strict=True):
        if p.model != model.name and p.model not in agreed:
            led, here = sql.Identifier("_ferry_f"), True
        leds.append(led)
    plan.parent_led = leds
    # The model's own partition of the ledger: the planner has statistics for it, not for
    # the whole ledger (it took 2M rows for 200, and looked each up by index).
    led, name = plan.own_led, sql.Literal(model.name)
    refused = sql.SQL(
        "((l.status = 'quarantined' AND l.sqlstate IS NOT NULL) OR l.decided_by IS NOT NULL)"
    )
    parts = [sql.SQL("true")]
    if not here and plan.parallel_safe:
        parts = _parts(conn, spec, plan, sessions.jobs)
    # Refused and decided rows are left out of the recomputation: an anti-join with the
    # model's ledger, a scan of it per part (0.35 CPU-s for each part of 1M rows). Most
    # models have none: a refused row is quarantined with its SQLSTATE, which that status's
    # index finds at once; a decided one, which it does not, the ledger's side counts, and
    # only then are the parts computed again without it (``_fast_rows``).
    try:
        some = _one(
            conn,
            sql.SQL(
                "SELECT EXISTS (SELECT FROM {led} l WHERE l.model = {name} "
                "AND l.status = 'quarantined' AND l.sqlstate IS NOT NULL)"
            ).format(led=led, name=name),
        )[0]
    except psycopg.Error:
        some = True
    conn.rollback()
    without = sql.SQL(
        "NOT EXISTS (SELECT FROM {led} l WHERE l.model = {name} AND {refused} "
        "AND l.source_key = m0._key::text) AND "
    ).format(led=led, name=name, refused=refused)

    def compute(exclude: bool) -> list[Future[tuple]]:
        queries = _fast_queries(plan, parts, without if exclude else sql.SQL(""))
        if here:
            done = [_now(conn, q) for q in queries]
        elif len(parts) > 1:
            done = [sessions.submit(partial(_scanned, query=q)) for q in queries]
        else:
            done = [sessions.one(q) for q in queries]
        conn.rollback()
        return done

    # The ledger's side: its fates, less those the recomputation leaves to the ledger,
    # whose own UUIDs the target's side needs.
    staged = _staged_clause(spec, plan)
    # Also the rows ferry wrote to the target or kept there (``_more_legacy_rows``' count,
    # for a table of the model's alone), and the refused rows. OFFSET 0: ``left_`` once per
    # row, not per aggregate.
    ledger_side = sql.SQL(
        "SELECT count(*) FILTER (WHERE x.live_ AND NOT x.left_), "
        "coalesce(sum({fate}) FILTER (WHERE x.live_ AND NOT x.left_), 0), "
        "count(*) FILTER (WHERE x.left_), array_agg({own}) FILTER (WHERE x.left_), "
        "count(*) FILTER (WHERE x.target_uuid IS NOT NULL "
        "AND (x.status IN ('migrated', 'deleted') OR x.conflict)), "
        "count(*) FILTER (WHERE x.refused_) "
        "FROM (SELECT l.source_key, l.status, l.reason, l.repairs, l.target_uuid, l.conflict, "
        "{refused} AS refused_, l.status <> 'deleted' AS live_, "
        "l.status <> 'deleted' AND {refused}{staged} AS left_ "
        "FROM {led} l WHERE l.model = {name} OFFSET 0) x"
    ).format(
        fate=_fp(*_columns("x", ["source_key", "status", "reason", "repairs", "target_uuid"])),
        own=plan.own_uuid(sql.SQL("x.source_key")), refused=refused, staged=staged, led=led,
        name=name,
    )  # fmt: skip
    # The parts first, one per session, so that they end together; the ledger's side (1.5 s
    # for 2M rows) then runs beside the rest. A model computed here: the ledger's side first,
    # to run in a session while this one computes.
    if here:
        ledger_done = sessions.one(ledger_side)
        done = compute(some)
    else:
        done = compute(some)
        ledger_done = sessions.one(ledger_side)
    again = None if some else partial(compute, True)
    whole = _whole(plan)
    return partial(
        _fast_rows, sessions, plan, ledger_done, done, again,
        None if whole is None else sessions.one(whole),
    )  # fmt: skip


def _scanned(conn: psycopg.Connection, query: sql.Composable) -> tuple:
    """A part of a large model, its key range read by a scan of the stage, not by its key's
    index: that looked up a buffer per row (a part of 1M rows: 6.8 s, 6.4 without).
    Bitmap scans stay, for lookups the model's SQL makes. The transaction is the query's."""
    conn.execute("SET LOCAL enable_indexscan = off")
    return _one(conn, query)


def _fast_queries(
    plan: Plan, parts: Sequence[sql.Composable], without: sql.Composable
) -> list[sql.Composable]:
    """Per part, the recomputed fates' count and fingerprint, and the written rows': the
    model's rows in the part, ``without`` (a predicate and ``AND``, or nothing) in front."""
    queries = []
    for part in parts:
        bounds = sql.SQL("{}{}").format(without, part)
        queries.append(
            sql.SQL(
                "SELECT count(*), coalesce(sum({fate}), 0), "
                "count(*) FILTER (WHERE e._ferry_fate = 0), "
                "coalesce(sum({row}) FILTER (WHERE e._ferry_fate = 0), 0), "
                "array_agg({own}) FILTER (WHERE e._ferry_fate <> 0) FROM ({expected}) e"
            ).format(
                fate=_fp(*_columns("e", [f"_ferry_{c}" for c in _FATE])),
                row=_row_fp(plan, "e", "_ferry_uuid"),
                own=plan.own_uuid(sql.SQL("e._ferry_key")),
                expected=plan.expected(bounds, numbered=False),
            )
        )
    return queries


def _fast_rows(
    sessions: _Sessions, plan: Plan, ledger_done: Future[tuple], done: list[Future[tuple]],
    again: Callable[[], list[Future[tuple]]] | None, whole: Future[tuple] | None,
) -> _Fast | None:  # fmt: skip
    """The second half of ``_fast_fates``: the fates' fingerprints compared, the rows'
    comparison started. ``again``: the recomputation with the refused rows left out, if
    ``done`` has them in and the ledger's side finds any; ``whole``: ``_whole``'s figures."""
    model, led, name = plan.model, plan.own_led, sql.Literal(plan.model.name)
    try:
        n_l, fates_l, n_left, left, wrote, refused = ledger_done.result()
        if refused and again is not None:
            for f in done:  # the work at hand is not needed, but its session is
                f.exception()
            done = again()
        results = [f.result() for f in done]
    except (FerryError, psycopg.Error):
        return None
    if (sum(r[0] for r in results), sum(r[1] for r in results)) != (n_l, fates_l):
        return None
    # The target's side: its rows under the ledger's migrated UUIDs, and under the own UUIDs
    # of the other rows (as a rule none), less those already counted. Two queries: a union
    # under IN is estimated at 200 rows, and joined by 2M index lookups.
    others = [u for r in results for u in (r[4] or [])] + list(left or [])
    key = sql.Identifier(model.key_column)
    migrated = sql.SQL(
        "SELECT FROM {led} l WHERE l.model = {name} AND l.status = 'migrated' "
        "AND l.target_uuid = t.{key}"
    ).format(led=led, name=name, key=key)

    def side(where: sql.Composable, params: Sequence[object] = ()) -> Future[tuple]:
        return sessions.one(
            sql.SQL("SELECT count(*), coalesce(sum({row}), 0) FROM {t} t WHERE {where}").format(
                row=_row_fp(plan, "t", model.key_column),
                t=plan.target,
                where=where,
            ),
            params,
        )

    def exact() -> list[Future[tuple]]:
        have = [side(sql.SQL("EXISTS ({})").format(migrated))]
        if others:
            where = sql.SQL("t.{} = ANY(%s::uuid[]) AND NOT EXISTS ({})").format(key, migrated)
            have.append(side(where, [others]))
        return have

    want = (sum(r[2] for r in results), sum((r[3] for r in results), Decimal(0)))
    if whole is not None:
        more = _more_than(whole, wrote) if model.legacy_column else None
        return _Fast(model, sum(r[0] for r in results) + n_left, want, [whole], exact, more)
    return _Fast(model, sum(r[0] for r in results) + n_left, want, exact())


def _whole(plan: Plan) -> sql.Composed | None:
    """For a table of the model's alone: the count and fingerprint of all its rows, and how
    many carry a legacy key (``_more_legacy_rows``' count), in one scan. Such a table holds,
    as a rule, just the model's rows: if the whole table's fingerprint is theirs, no join
    with the ledger is needed (2M rows: 1.5 CPU-s). It needs no fates, so it runs beside
    their recomputation, not after it (at SF=1 it was the last query, one core idle)."""
    model = plan.model
    if sum(m.target == model.target for m in plan.spec.models) != 1:
        return None
    legacy = (
        sql.SQL(", count(*) FILTER (WHERE t.{} IS NOT NULL)").format(
            sql.Identifier(model.legacy_column)
        )
        if model.legacy_column
        else sql.SQL("")
    )
    return sql.SQL("SELECT count(*), coalesce(sum({row}), 0){legacy} FROM {t} t").format(
        row=_row_fp(plan, "t", model.key_column), legacy=legacy, t=plan.target
    )


def _more_than(counted: Future[tuple], wrote: int) -> Future[bool]:
    """``_more_legacy_rows`` from counts at hand: the target's rows with a legacy key (the
    third figure of ``counted``) against the ledger's ``wrote``. If the count failed, the
    caller is to look row by row (``_check_written``), which says why."""
    more: Future[bool] = Future()

    def done(f: Future[tuple]) -> None:
        more.set_result(
            f.cancelled() or f.exception() is not None or int(f.result()[2]) > int(wrote)
        )

    counted.add_done_callback(done)
    return more


# A fate, as ``_compare_fates`` compares it: the recomputed row's columns (``_ferry_*``).
_FATE = ("key", "status", "reason", "repairs", "uuid")


def _columns(alias: str, names: Sequence[str]) -> list[sql.Composable]:
    return [sql.Identifier(alias, n) for n in names]


def _parts(conn: psycopg.Connection, spec: Spec, plan: Plan, jobs: int) -> list[sql.Composable]:
    """Key ranges to recompute a model in, one per session if its stage is large: cut at its
    key's histogram, as ``chunk.Runner.bounds`` cuts a migrate's chunks. Ranges, not a hash
    of the key: the planner then estimates each part's rows (for a hash, 0.5% of them, and
    it looked up the ledger by index for every row)."""
    if jobs < 2 or not plan.model.accounts:
        return [sql.SQL("true")]
    src = spec.source(plan.model.source)
    rows, hist = chunk.histogram(conn, spec, src, plan.key_type)
    conn.commit()
    if rows is None or rows < SPLIT_ROWS or not hist:
        return [sql.SQL("true")]
    cuts = [
        chunk.bound(hist[round(i * (len(hist) - 1) / jobs)], plan.key_type) for i in range(1, jobs)
    ]
    key = sql.SQL("m0._key")
    return [
        sql.SQL(" AND ").join(
            [sql.SQL("{} >= {}").format(key, lo) for lo in cuts[i - 1 : i] if i > 0]
            + [sql.SQL("{} < {}").format(key, hi) for hi in cuts[i : i + 1]]
        )
        for i in range(jobs)
    ]


def _ledger_exists(conn: psycopg.Connection, spec: Spec) -> bool:
    found = catalog.exists(conn, sql.Identifier(spec.ledger_schema, "ledger"))
    conn.commit()
    return found


def _led(spec: Spec) -> sql.Identifier:
    return sql.Identifier(spec.ledger_schema, "ledger")


def _one(conn: psycopg.Connection, query: sql.Composable, params: Sequence[object] = ()) -> tuple:
    # No parameters: none parsed either (a model's SQL may hold a ``%``).
    row = conn.execute(query, params or None).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return tuple(row)


# -- (a) models against the target ---------------------------------------------------------


def _emptied_stages(conn: psycopg.Connection, spec: Spec, report: VerifyReport) -> set[str]:
    """Sources whose stage copy is empty though it held rows (``ledger.emptied_of``), or
    was staged under another definition of the source than the spec's (``stage.redefined``):
    said once, rather than as every one of their keys missing or changed."""
    emptied = ledger.emptied_of(conn, spec, [src.name for src in spec.sources])
    redefined = stage.redefined(conn, spec, note=False) - emptied
    for src in spec.sources:
        if src.name in redefined:
            report.problems.append(
                Problem(
                    "stage",
                    src.name,
                    [],
                    "its definition in the spec (table, file, key, columns or encoding) is not "
                    "the one it was staged under; run ferry sync to stage it again (models "
                    "reading it are not checked)",
                )
            )
        elif src.name in emptied:
            report.problems.append(
                Problem(
                    "stage",
                    src.name,
                    [],
                    "the stage copy is empty though it held rows (the ledger holds fates of "
                    "them, or the staging record counted them): a server crash or restart "
                    "empties ferry's unlogged stage; run ferry sync to copy it again (models "
                    "reading it are not checked)",
                )
            )
    conn.commit()
    return emptied | redefined


# Passes over a model's merged rows, each with the survivors' fates of the one before.
SURVIVOR_PASSES = 5


def _check_model(
    conn: psycopg.Connection, spec: Spec, model: Model, report: VerifyReport,
    agreed: set[str], count: bool = True,
) -> bool:  # fmt: skip
    """Recompute one model, compare fates with the ledger and rows with the target.

    Parents' fates come from verify's own recomputation (``_ferry_f``, or the ledger for the
    ``agreed`` models, whose recomputed fates are the ledger's); a merged row's survivor's
    fate too, found by passes until they agree. A model that cannot be recomputed (its SQL
    fails, its target is gone) is a problem of that model; verify goes on with the others.
    ``count``: add the model to ``report.checked`` (not when its fingerprints already did).
    """
    try:
        plan = Plan(conn, spec, model)
        plan.final = True
        # Parents of other models: verify's own fates; of the model itself (and survivors),
        # the ledger's first, then the passes' own until they agree.
        plan.parent_led = [
            led if p.model == model.name or p.model in agreed else sql.Identifier("_ferry_f")
            for p, led in zip(model.parents, plan.parent_led, strict=True)
        ]
        _materialize(conn, plan)
        for _ in range(SURVIVOR_PASSES if own_dependencies(model) else 0):
            if not _record_fates(conn, spec, model):
                break
            plan.own_led = sql.Identifier("_ferry_f")
            plan.parent_led = [sql.Identifier("_ferry_f")] * len(model.parents)
            _materialize(conn, plan)
        if model.merge_into or spec.children(model.name):
            _record_fates(conn, spec, model)
        conn.commit()
        if count:
            report.checked["models"] += 1
            report.checked["rows"] += int(_one(conn, sql.SQL("SELECT count(*) FROM _ferry_v"))[0])
        if not _duplicates(conn, model, report):
            _compare_fates(conn, spec, model, report)
            _compare_rows(conn, spec, plan, report)
        return True
    except FerryError as exc:
        report.problems.append(Problem("model", model.target, [], f"model {model.name}: {exc}"))
    except psycopg.Error as exc:
        report.problems.append(
            Problem("model", model.target, [], f"model {model.name}: {safe_message(exc)}")
        )
    finally:
        conn.rollback()
    return False


def _record_fates(conn: psycopg.Connection, spec: Spec, model: Model) -> bool:
    """Keep the model's recomputed fates (``_ferry_v``) in ``_ferry_f`` for the models that
    depend on them; returns whether they changed. A row the database refused, or an
    operator decided, has the ledger's fate: the spec cannot know it."""
    name = sql.Literal(model.name)
    before = _one(
        conn,
        sql.SQL(
            "SELECT count(*), coalesce(sum(hashtext(source_key || status || "
            "coalesce(target_uuid::text, ''))), 0) FROM _ferry_f WHERE model = {}"
        ).format(name),
    )
    conn.execute(sql.SQL("DELETE FROM _ferry_f WHERE model = {}").format(name))
    conn.execute(
        sql.SQL(
            "INSERT INTO _ferry_f SELECT {name}, v.key, "
            "CASE WHEN l.sqlstate IS NOT NULL OR l.decided_by IS NOT NULL THEN l.status "
            "ELSE v.status END, CASE WHEN l.sqlstate IS NOT NULL OR l.decided_by IS NOT NULL "
            "THEN l.target_uuid ELSE v.uuid END FROM _ferry_v v LEFT JOIN {led} l "
            "ON l.model = {name} AND l.source_key = v.key AND l.status <> 'deleted' "
            "ON CONFLICT DO NOTHING"
        ).format(name=name, led=_led(spec))
    )
    after = _one(
        conn,
        sql.SQL(
            "SELECT count(*), coalesce(sum(hashtext(source_key || status || "
            "coalesce(target_uuid::text, ''))), 0) FROM _ferry_f WHERE model = {}"
        ).format(name),
    )
    return before != after


def _materialize(conn: psycopg.Connection, plan: Plan) -> None:
    """What the model yields now, once: every later comparison reads these temp tables.

    ``_ferry_v`` holds every row the model yields with its fate, and ``own``: the UUID the
    row's own key maps to, whatever its fate. ``_ferry_e`` is what must be in the target: the
    migrated rows, less those the database refused (a unique or check violation quarantined
    with its SQLSTATE: the spec yields them, the target rightly lacks them). ``_ferry_ids`` is
    every target id this model may account for: the own UUID of every row it yields (so an
    excluded, quarantined or refused row that is present in the target shows) and every UUID
    the ledger says it wrote. Any other row of the table is the application's own.
    """
    spec = plan.spec
    led, name = _led(spec), sql.Literal(plan.model.name)
    own = plan.own_uuid(sql.SQL("e._ferry_key"))
    conn.execute("DROP TABLE IF EXISTS _ferry_v, _ferry_e, _ferry_ids")
    # A row the database refused (a failed cast, a unique or check violation) is taken as
    # refused, and one an operator decided as decided: computing it again could fail the
    # whole model on the cast that refused it.
    refused = sql.SQL(
        "{led} l WHERE l.model = {name} AND ((l.status = 'quarantined' AND l.sqlstate IS NOT "
        "NULL) OR l.decided_by IS NOT NULL)"
    ).format(led=led, name=name)
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE _ferry_v AS SELECT e._ferry_key AS key, e._ferry_fate AS fate, "
            "e._ferry_status AS status, e._ferry_reason AS reason, e._ferry_repairs AS repairs, "
            "e._ferry_uuid AS uuid, e._ferry_hash AS hash, {own} AS own FROM ({expected}) e "
            "UNION ALL SELECT l.source_key, 0, 'migrated', NULL, '{{}}', {lown}, NULL, {lown} "
            "FROM {refused}{staged}"
        ).format(
            own=own,
            expected=plan.expected(
                sql.SQL("NOT EXISTS (SELECT FROM {} AND l.source_key = m0._key::text)").format(
                    refused
                )
            ),
            lown=plan.own_uuid(sql.SQL("l.source_key")),
            refused=refused,
            staged=_staged_clause(spec, plan),
        )
    )
    conn.execute("ANALYZE _ferry_v")
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE _ferry_e AS SELECT v.key, v.uuid, v.hash FROM _ferry_v v "
            "WHERE v.fate = 0 AND NOT EXISTS (SELECT 1 FROM {led} l WHERE l.model = {name} "
            "AND l.source_key = v.key AND ((l.status = 'quarantined' AND l.sqlstate IS NOT NULL) "
            "OR l.decided_by IS NOT NULL))"
        ).format(led=led, name=name)
    )
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE _ferry_ids AS SELECT own AS u FROM _ferry_v "
            "UNION SELECT target_uuid FROM {led} WHERE model = {name} AND status = 'migrated' "
            "AND target_uuid IS NOT NULL"
        ).format(led=led, name=name)
    )
    conn.execute("ANALYZE _ferry_e")
    conn.execute("ANALYZE _ferry_ids")


def _staged_clause(spec: Spec, plan: Plan) -> sql.Composable:
    """`` AND`` the refused row's key is still staged (for a model that accounts for it).

    As ``IN`` over the stage's keys, not a correlated ``EXISTS``: in a select list that is
    a subplan run per refused row, each a scan of the whole stage (the key's text matches
    no index), while ``IN`` hashes the stage's keys once."""
    if not plan.model.accounts:
        return sql.SQL("")
    src = spec.source(plan.model.source)
    return sql.SQL(" AND coalesce(l.source_key IN (SELECT s.{}::text FROM {} s), false)").format(
        sql.Identifier(src.stage_key), sql.Identifier(spec.stage_schema, src.stage_table)
    )


def _check_written(
    conn: psycopg.Connection, spec: Spec, model: Model, report: VerifyReport,
    legacy: bool | None = None, merge: bool = True,
) -> None:  # fmt: skip
    """Beyond the rows the spec yields (``_compare_rows``): every merged row's survivor is
    a migrated row of the model with its target row, and (where the model fills a legacy
    key column) every row with a legacy key has the ledger row of ferry's write. The latter
    runs after ``_check_model``, whose ``_ferry_v`` it reads; ``legacy``: whether to run
    it, if the caller counted already (``_more_legacy_rows``); ``merge``: the former."""
    led, name = _led(spec), sql.Literal(model.name)
    table = sql.Identifier(model.target_schema, model.target_table)
    key = sql.Identifier(model.key_column)
    checks = []
    if model.merge_into and merge:
        checks.append(
            (
                "merge",
                sql.SQL(
                    "SELECT l.source_key FROM {led} l WHERE l.model = {name} AND l.status = "
                    "'merged' AND NOT (EXISTS (SELECT FROM {led} s WHERE s.model = {name} "
                    "AND s.status = 'migrated' AND s.target_uuid = l.target_uuid) "
                    "AND EXISTS (SELECT FROM {t} t WHERE t.{k} = l.target_uuid))"
                ),
                "merged into a row that is not a migrated row of the model in the target",
            )
        )
    if legacy is None:
        legacy = bool(model.legacy_column) and _more_legacy_rows(conn, spec, model)
    if legacy:
        checks.append(
            (
                "extra",
                sql.SQL(
                    "SELECT t.{k}::text FROM {t} t WHERE t.{legacy} IS NOT NULL "
                    "AND NOT EXISTS (SELECT FROM {led} l WHERE l.target_table = {tt} "
                    "AND l.target_uuid = t.{k}) AND NOT EXISTS (SELECT FROM {led} l "
                    "WHERE l.model = {name} AND l.conflict AND {own} = t.{k}) "
                    # A row the spec yields is _compare_rows' to report.
                    "AND NOT EXISTS (SELECT FROM _ferry_v v WHERE v.own = t.{k})"
                ),
                f"in the target with a {model.legacy_column} but no ledger row of ferry's write",
            )
        )
    own = uuid_sql(
        spec.ledger_schema, spec.namespace, model.source if model.accounts else model.name,
        sql.SQL("l.source_key"),
    )  # fmt: skip
    try:
        for kind, query, what in checks:
            n, keys = _one(
                conn,
                sql.SQL(
                    "SELECT count(*), (array_agg(k ORDER BY length(k), k))[1:{s}] FROM ({q}) x(k)"
                ).format(
                    s=sql.Literal(SAMPLE),
                    q=query.format(
                        led=led, name=name, t=table, k=key, tt=sql.Literal(model.target),
                        legacy=sql.Identifier(model.legacy_column or "id"), own=own,
                    ),
                ),
            )  # fmt: skip
            if n:
                label = "uuids" if kind == "extra" else "keys"
                problem = Problem(
                    kind, model.target, [], f"model {model.name}: {n} row(s) {what}", n
                )
                setattr(problem, label, list(keys or []))
                report.problems.append(problem)
    except psycopg.Error as exc:
        report.problems.append(
            Problem("model", model.target, [], f"model {model.name}: {safe_message(exc)}")
        )
    finally:
        conn.rollback()


def _more_legacy_rows(conn: psycopg.Connection, spec: Spec, model: Model) -> bool:
    """Whether the target holds more rows with a legacy key than the ledger says ferry wrote
    there (or kept): two counts, before an anti-join of millions of rows names them. (Fewer
    is ``_compare_rows``' to report: a row the ledger has and the target lacks.)"""
    legacy = sql.Identifier(model.legacy_column or "id")
    table = sql.Identifier(model.target_schema, model.target_table)
    have = _one(conn, sql.SQL("SELECT count(*) FROM {} WHERE {} IS NOT NULL").format(table, legacy))
    wrote = _one(
        conn,
        sql.SQL(
            "SELECT count(*) FROM {} WHERE model = ANY(%s) AND target_uuid IS NOT NULL "
            "AND (status = 'migrated' OR status = 'deleted' OR conflict)"
        ).format(_led(spec)),
        [[m.name for m in spec.models if m.target == model.target]],
    )
    return int(have[0]) > int(wrote[0])


def _duplicates(conn: psycopg.Connection, model: Model, report: VerifyReport) -> bool:
    n, keys = _one(
        conn,
        sql.SQL(
            "SELECT count(*), (array_agg(key ORDER BY length(key), key))[1:{s}] FROM "
            "(SELECT key FROM _ferry_v GROUP BY key HAVING count(*) > 1) d"
        ).format(s=sql.Literal(SAMPLE)),
    )
    if n:
        report.problems.append(
            Problem(
                "model",
                model.target,
                list(keys or []),
                f"model {model.name} yields {n} source key(s) more than once",
                n,
            )
        )
    return bool(n)


def _fate(status: str | None, reason: str | None) -> str:
    if status is None:
        return "nothing"
    return f"{status} ({reason})" if reason else status


def _compare_fates(
    conn: psycopg.Connection, spec: Spec, model: Model, report: VerifyReport
) -> None:
    """Each source row's fate as the spec decides it now versus as the ledger records it.

    Rows the database refused are the one legitimate difference: the spec says migrated, the
    ledger says quarantined with the SQLSTATE.
    """
    rows = conn.execute(
        sql.SQL(
            "SELECT l.status, l.reason, v.status, v.reason, "
            "coalesce(v.repairs, '{{}}') IS DISTINCT FROM coalesce(l.repairs, '{{}}') "
            "AND v.status IS NOT DISTINCT FROM l.status AS repairs_differ, "
            "count(*), (array_agg(coalesce(v.key, l.source_key) "
            "ORDER BY length(coalesce(v.key, l.source_key)), "
            "coalesce(v.key, l.source_key)))[1:{s}] "
            "FROM _ferry_v v FULL JOIN (SELECT * FROM {led} WHERE model = {name} "
            "AND status <> 'deleted') l ON l.source_key = v.key "
            "WHERE NOT coalesce(v.fate = 0 AND l.status = 'quarantined' "
            "AND l.sqlstate IS NOT NULL, false) "
            # An operator's decision on a staged row overrides the spec, on purpose.
            "AND NOT coalesce(v.key IS NOT NULL AND l.decided_by IS NOT NULL, false) "
            "AND (v.key IS NULL OR l.source_key IS NULL OR v.status IS DISTINCT FROM l.status "
            "OR v.reason IS DISTINCT FROM l.reason OR v.repairs IS DISTINCT FROM l.repairs "
            "OR v.uuid IS DISTINCT FROM l.target_uuid) "
            "GROUP BY 1, 2, 3, 4, 5 ORDER BY 6 DESC"
        ).format(led=_led(spec), name=sql.Literal(model.name), s=sql.Literal(SAMPLE))
    ).fetchall()
    for l_status, l_reason, v_status, v_reason, repairs_differ, n, keys in rows:
        if l_status is None:
            what = f"the spec yields {_fate(v_status, v_reason)} but the ledger has no fate"
        elif v_status is None:
            what = f"the ledger says {_fate(l_status, l_reason)} but the stage has no such row"
        elif repairs_differ:
            what = f"{_fate(v_status, v_reason)}, but the repairs differ from the ledger's"
        elif (l_status, l_reason) == (v_status, v_reason):
            what = f"{_fate(v_status, v_reason)}, but the target UUID differs from the ledger's"
        else:
            what = (
                f"the spec yields {_fate(v_status, v_reason)} but the ledger says "
                f"{_fate(l_status, l_reason)}"
            )
        report.problems.append(
            Problem("fate", model.source, list(keys), f"model {model.name}: {n} row(s): {what}", n)
        )


def _compare_rows(conn: psycopg.Connection, spec: Spec, plan: Plan, report: VerifyReport) -> None:
    """Checksum what must be in the target against what is; on a difference, find the rows."""
    model = plan.model
    key = sql.Identifier(model.key_column)
    actual = sql.SQL(
        "SELECT t.{key} AS id, {h} AS hash FROM {t} t JOIN _ferry_ids i ON t.{key} = i.u"
    ).format(key=key, h=plan.target_hash("t"), t=plan.target)
    rowsum = sql.SQL(_ROWSUM)
    want = _one(
        conn,
        sql.SQL("SELECT count(*), {} FROM _ferry_e").format(
            rowsum.format(u=sql.SQL("uuid"), h=sql.SQL("hash"))
        ),
    )
    have = _one(
        conn,
        sql.SQL("SELECT count(*), {} FROM ({}) a").format(
            rowsum.format(u=sql.SQL("id"), h=sql.SQL("hash")), actual
        ),
    )
    if want == have:
        return
    found = conn.execute(
        sql.SQL(
            "WITH a AS ({actual}), d AS ("
            " SELECT CASE WHEN a.id IS NULL THEN 'missing' WHEN e.uuid IS NULL THEN 'extra'"
            " ELSE 'content' END AS kind, coalesce(e.uuid, a.id) AS id,"
            " coalesce(e.key, v.key, x.source_key) AS key, coalesce(l.conflict, false) AS conflict,"
            " l.status AS l_status, l.reason AS l_reason"
            " FROM _ferry_e e FULL JOIN a ON a.id = e.uuid"
            " LEFT JOIN _ferry_v v ON e.uuid IS NULL AND v.own = a.id"
            " LEFT JOIN {led} x ON e.uuid IS NULL AND x.model = {name}"
            "  AND x.target_uuid = a.id AND x.status = 'migrated'"
            " LEFT JOIN {led} l ON l.model = {name}"
            "  AND l.source_key = coalesce(e.key, v.key, x.source_key)"
            " WHERE a.id IS NULL OR e.uuid IS NULL OR a.hash IS DISTINCT FROM e.hash)"
            " SELECT kind, conflict, l_status, l_reason, count(*),"
            " (array_agg(key ORDER BY length(key), key) FILTER (WHERE key IS NOT NULL))[1:{s}],"
            " (array_agg(id::text ORDER BY length(key), key, id))[1:{s}]"
            " FROM d GROUP BY 1, 2, 3, 4 ORDER BY 1, 5 DESC"
        ).format(actual=actual, led=_led(spec), name=sql.Literal(model.name), s=sql.Literal(SAMPLE))
    ).fetchall()
    for kind, conflict, l_status, l_reason, n, keys, uuids in found:
        if conflict:
            kind = "conflict"
            what = (
                "kept in the target, edited there since ferry wrote them or referenced by rows "
                "ferry does not own (the ledger flags a conflict)"
            )
        elif kind == "missing":
            what = "yielded as migrated by the spec but not in the target"
        elif kind == "content":
            what = "in the target with content that differs from what the spec yields"
            if plan.shape.rewrites:
                what += (
                    " (the table has triggers that run as each row is written and may "
                    "change it: verify compares with what the spec yields, not with what "
                    "they made of it)"
                )
        elif l_status == "migrated":
            what = "in the target, recorded as migrated, but the spec no longer yields them"
        else:
            what = f"in the target although the ledger says {_fate(l_status, l_reason)}"
        report.problems.append(
            Problem(
                kind,
                model.target,
                list(keys or []),
                f"model {model.name}: {n} row(s) {what}",
                n,
                list(uuids or []),
            )
        )
    if not found:
        # Equal sets but unequal checksums cannot happen; say so rather than pass silently.
        report.problems.append(
            Problem("content", model.target, [], f"model {model.name}: checksums differ")
        )


# -- (b) the ledger invariant -----------------------------------------------------------------


def _check_invariant(
    conn: psycopg.Connection, spec: Spec, report: VerifyReport, emptied: set[str]
) -> None:
    """The ledger's own check, run so that it scales.

    Where the keys' fingerprints differ, it names the keys by anti-joins that end in
    ``ORDER BY .. LIMIT 10``, for which the planner may pick a nested loop over the whole
    ledger per staged row: hours on millions of rows. Within this transaction only, nested
    loops are off, so they run as hash anti-joins.
    """
    try:
        conn.execute("SET LOCAL enable_nestloop = off")
        # Totals and fingerprints: verify reports no breakdown by reason.
        counts = ledger.source_counts(
            conn, spec, [s.name for s in spec.sources if s.name not in emptied], totals=True
        )
        _, bad = ledger.discrepancies(conn, spec, counts=counts)
        if bad:
            raise InvariantError(ledger.invariant_message(bad))
    except InvariantError as exc:
        report.problems.append(
            Problem(
                "invariant",
                f"{spec.ledger_schema}.ledger",
                [],
                str(exc),
            )
        )
    finally:
        conn.rollback()


# -- (c) foreign keys -------------------------------------------------------------------------

_FKS = """
SELECT c.conname, c.confmatchtype, pn.nspname, pc.relname,
       ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
       ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)
FROM pg_constraint c
JOIN pg_class pc ON pc.oid = c.confrelid
JOIN pg_namespace pn ON pn.oid = pc.relnamespace
WHERE c.contype = 'f' AND c.conrelid = to_regclass(%s)
ORDER BY c.conname
"""


def _target_tables(spec: Spec) -> dict[str, list[Model]]:
    out: dict[str, list[Model]] = defaultdict(list)
    for m in spec.order():
        out[m.target].append(m)
    return dict(out)


def _check_foreign_keys(conn: psycopg.Connection, spec: Spec, report: VerifyReport) -> None:
    """Count child rows whose foreign key has no parent row, for every FK of every target.

    PostgreSQL enforces FKs with triggers; a row written while they were off (replica
    session, DISABLE TRIGGER) breaks the FK silently. Set-based: one scan of each table for
    all its FKs (an anti-join per FK scanned the demo's 2M messages three times); an FK that
    scan cannot check is checked alone, so that the error names it.
    """
    for table, models in _target_tables(spec).items():
        schema, name = table.split(".")
        child, key = sql.Identifier(schema, name), sql.Identifier(models[0].key_column)
        fks = conn.execute(_FKS, [catalog.regclass(table)]).fetchall()
        conn.commit()
        report.checked["foreign_keys"] += len(fks)
        try:
            with conn.transaction():
                found = _orphans(conn, child, key, fks) if fks else []
        except psycopg.Error:
            found = []
            for fk in fks:
                try:
                    with conn.transaction():
                        found += _orphans(conn, child, key, [fk])
                except psycopg.Error as exc:
                    report.problems.append(
                        Problem("error", table, [], f"cannot check {fk[0]}: {safe_message(exc)}")
                    )
                    found.append((0, None))
        for (conname, _, pschema, pname, cols, pcols), (n, ids) in zip(fks, found, strict=True):
            if not n:
                continue
            keys = _source_keys(conn, spec, table, ids or [])
            report.problems.append(
                Problem(
                    "fk",
                    table,
                    keys,
                    f"{n} row(s) reference {pschema}.{pname} ({', '.join(cols)} -> "
                    f"{', '.join(pcols)}) rows that do not exist [constraint {conname}]",
                    n,
                    list(ids or []),
                )
            )
        conn.rollback()


def _orphans(
    conn: psycopg.Connection, child: sql.Identifier, key: sql.Identifier, fks: Sequence[tuple]
) -> list[tuple[int, list[str] | None]]:
    """For each FK (a row of ``_FKS``): how many rows of ``child`` reference no parent row,
    and a sample of their ``key``s. Counted first over the distinct values (``_orphan_counts``);
    only where some are missing, the rows are joined to name them."""
    try:
        with conn.transaction():
            counted = _orphan_counts(conn, child, fks)
    except psycopg.Error:  # a column type that cannot be grouped: the rows are joined
        counted = None
    if counted is not None and not any(counted):
        return [(0, None)] * len(fks)
    return _named_orphans(conn, child, key, fks)


def _parent(
    i: int, fk: tuple, cols: Sequence[sql.Composable], on: sql.Composable = sql.SQL("true")
) -> tuple[sql.Composable, sql.Composable]:
    """FK ``fk`` (a row of ``_FKS``) of child columns ``cols``: the left join to its parent
    ``p{i}`` (``on`` besides), and the predicate of an orphan, its columns set as the FK's
    MATCH requires and no parent row."""
    _, match, pschema, pname, _, pcols = fk
    p = sql.Identifier(f"p{i}")
    join = sql.SQL("LEFT JOIN {} {} ON {} AND {}").format(
        sql.Identifier(pschema, pname),
        p,
        on,
        sql.SQL(" AND ").join(
            sql.SQL("{}.{} = {}").format(p, sql.Identifier(pc), c)
            for pc, c in zip(pcols, cols, strict=True)
        ),
    )
    missing = sql.SQL("{}.{} IS NULL").format(p, sql.Identifier(pcols[0]))
    all_set = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(c) for c in cols)
    if match == "f":  # MATCH FULL: all null, or all set and present
        any_set = sql.SQL(" OR ").join(sql.SQL("{} IS NOT NULL").format(c) for c in cols)
        return join, sql.SQL("({}) AND (NOT ({}) OR {})").format(any_set, all_set, missing)
    return join, sql.SQL("{} AND {}").format(all_set, missing)  # MATCH SIMPLE: a NULL exempts


def _orphan_counts(
    conn: psycopg.Connection, child: sql.Identifier, fks: Sequence[tuple]
) -> list[int] | None:
    """Each FK's orphan rows, counted by one scan of ``child`` that groups its FK columns
    (one grouping set per FK's columns) and joins only the distinct values to the parents:
    on the demo's 2M messages with three FKs, 1.1 s where joining every row took 2.0 s."""
    sets = list(dict.fromkeys(tuple(fk[4]) for fk in fks))
    names = list(dict.fromkeys(c for s in sets for c in s))
    if len(names) > 31:  # more columns than GROUPING() takes: the rows are joined instead
        return None
    col = {c: sql.Identifier("g", f"c{j}") for j, c in enumerate(names)}

    def grouping(s: tuple[str, ...]) -> sql.Literal:
        """What ``GROUPING()`` of every FK column gives in set ``s``: a bit per column left
        out, the first column's highest."""
        return sql.Literal(
            sum(1 << (len(names) - 1 - j) for j, c in enumerate(names) if c not in s)
        )

    joins: list[sql.Composable] = []
    counts: list[sql.Composable] = []
    for i, fk in enumerate(fks):
        s = grouping(tuple(fk[4]))
        join, orphan = _parent(i, fk, [col[c] for c in fk[4]], sql.SQL("g.s = {}").format(s))
        joins.append(join)
        counts.append(
            sql.SQL("coalesce(sum(g.n) FILTER (WHERE g.s = {} AND {}), 0)").format(s, orphan)
        )
    plain = sql.SQL(", ").join(map(sql.Identifier, names))
    row = _one(
        conn,
        sql.SQL(
            "SELECT {counts} FROM (SELECT {plain}, GROUPING({plain}), count(*) FROM {child} "
            "GROUP BY GROUPING SETS ({sets})) g({aliases}, s, n) {joins}"
        ).format(
            counts=sql.SQL(", ").join(counts),
            plain=plain,
            child=child,
            sets=sql.SQL(", ").join(
                sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Identifier, s))) for s in sets
            ),
            aliases=sql.SQL(", ").join(sql.Identifier(f"c{j}") for j in range(len(names))),
            joins=sql.SQL(" ").join(joins),
        ),
    )
    return [int(n) for n in row]


def _named_orphans(
    conn: psycopg.Connection, child: sql.Identifier, key: sql.Identifier, fks: Sequence[tuple]
) -> list[tuple[int, list[str] | None]]:
    """``_orphans`` row by row: a left join to each parent (the referenced columns are
    unique, so it adds no rows, and a row it matched has them set)."""
    joins: list[sql.Composable] = []
    counts: list[sql.Composable] = []
    for i, fk in enumerate(fks):
        join, orphan = _parent(i, fk, [sql.Identifier("c", col) for col in fk[4]])
        joins.append(join)
        counts.append(
            sql.SQL(
                "count(*) FILTER (WHERE {o}), "
                "(array_agg(c.{k}::text ORDER BY c.{k}) FILTER (WHERE {o}))[1:{s}]"
            ).format(o=orphan, k=key, s=sql.Literal(SAMPLE))
        )
    row = _one(
        conn,
        sql.SQL("SELECT {} FROM {} c {}").format(
            sql.SQL(", ").join(counts), child, sql.SQL(" ").join(joins)
        ),
    )
    return [(int(row[2 * i]), row[2 * i + 1]) for i in range(len(fks))]


def _source_keys(conn: psycopg.Connection, spec: Spec, table: str, ids: Iterable[str]) -> list[str]:
    """The source keys ferry wrote these target ids from (none for the application's rows)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT source_key FROM {} WHERE target_table = %s "
            "AND status = 'migrated' AND target_uuid::text = ANY(%s) ORDER BY 1"
        ).format(_led(spec)),
        [table, list(ids)],
    ).fetchall()
    return [r[0] for r in rows]


# -- (d) ground truth -------------------------------------------------------------------------


def _source_names(spec: Spec) -> dict[str, str]:
    """Names a truth file may use for a source: its spec name, stage table or legacy table."""
    names: dict[str, str] = {}
    for src in spec.sources:
        for alias in (src.table, (src.table or "").split(".")[-1], src.stage_table, src.name):
            if alias:
                names[alias] = src.name
    return names


def read_truth(path: Path, spec: Spec) -> tuple[list[tuple[str, str, str, str]], list[Problem]]:
    """Parse the ground-truth CSV; rows naming an unknown source become problems."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise VerifyError(f"{path}: cannot read the truth file: {exc.strerror}") from None
    names = _source_names(spec)
    rows: list[tuple[str, str, str, str]] = []
    unknown: dict[str, int] = defaultdict(int)
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != TRUTH_HEADER:
            raise VerifyError(f"{path}: the header must be {','.join(TRUTH_HEADER)}")
        for line, rec in enumerate(reader, start=2):
            if not rec:
                continue
            if len(rec) != len(TRUTH_HEADER):
                raise VerifyError(f"{path}:{line}: expected {len(TRUTH_HEADER)} fields")
            # The key as written: a text key may begin or end with spaces.
            table, status, reason = rec[0].strip(), rec[2].strip(), rec[3].strip()
            key = rec[1]
            if status not in ledger.STATUSES:
                raise VerifyError(f"{path}:{line}: unknown status {status!r}")
            if table not in names:
                unknown[table] += 1
                continue
            rows.append((names[table], key, status, reason))
    problems = [
        Problem("truth", table, [], f"the truth file names an unknown source ({n} row(s))", n)
        for table, n in sorted(unknown.items())
    ]
    return rows, problems


def _check_truth(conn: psycopg.Connection, spec: Spec, path: Path, report: VerifyReport) -> None:
    """Every planted row has its planted fate; every other staged row is plainly migrated."""
    rows, problems = read_truth(path, spec)
    report.problems.extend(problems)
    report.checked["truth_rows"] = len(rows)
    conn.execute(
        "CREATE TEMP TABLE _ferry_truth (source_table text, source_key text, status text, "
        "reason text) ON COMMIT DROP"
    )
    with conn.cursor() as cur, cur.copy("COPY _ferry_truth FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    conn.execute("ANALYZE _ferry_truth")
    # One pass over the ledger for both questions, a planted row's fate and an unplanted
    # row's (a scan of 2.6M rows each took 0.5 CPU-s at SF=1): a full join keeps the planted
    # rows the ledger lacks and the ledger's rows the truth does not name, and only the
    # rows in question are kept. A plainly migrated row whose key the truth does not name
    # can be neither, so only the others go into the join: the test of a key is a hash of
    # one text (the join's of two, and its filter, cost 0.25 CPU-s more on the demo's 2.6M
    # rows of which 0.1M pass).
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE _ferry_tj ON COMMIT DROP AS SELECT t.source_table AS t_table, "
            "t.source_key AS t_key, t.status AS t_status, t.reason AS t_reason, "
            "l.source_table, l.source_key, l.status, l.reason, l.repairs "
            "FROM (SELECT source_table, source_key, status, reason, repairs FROM {led} "
            "WHERE accounts AND (status <> 'migrated' OR cardinality(repairs) <> 0 "
            "OR source_key IN (SELECT source_key FROM _ferry_truth))) l FULL JOIN _ferry_truth t "
            "ON l.source_table = t.source_table AND l.source_key = t.source_key "
            "AND (l.status <> 'deleted' OR t.status = 'deleted') "
            "WHERE CASE WHEN t.source_key IS NULL "
            # Not planted: a row of the ledger expected plainly migrated.
            "THEN l.status <> 'deleted' AND (l.status <> 'migrated' OR l.repairs <> '{{}}') "
            # Planted: expected its planted fate.
            "ELSE l.status IS DISTINCT FROM t.status "
            "OR (t.status = 'migrated' AND t.reason <> '' AND NOT t.reason = ANY(l.repairs)) "
            "OR (t.status = 'migrated' AND t.reason = '' AND l.repairs <> '{{}}') "
            "OR (t.status NOT IN ('migrated', 'deleted') AND coalesce(l.reason, '') <> t.reason) "
            "END"
        ).format(led=_led(spec))
    )
    wrong = conn.execute(
        "SELECT t_table, t_key, t_status, t_reason, status, reason, repairs FROM _ferry_tj "
        "WHERE t_key IS NOT NULL ORDER BY 1, length(t_key), 2"
    ).fetchall()
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for table, key, status, reason, l_status, l_reason, repairs in wrong:
        want = _fate(status, reason)
        if l_status == "migrated" and repairs:
            got = f"migrated (repairs: {', '.join(repairs)})"
        else:
            got = _fate(l_status, l_reason)
        groups[(table, want, got)].append(key)
    for (table, want, got), keys in groups.items():
        report.problems.append(
            Problem(
                "truth",
                table,
                keys[:SAMPLE],
                f"{len(keys)} planted row(s) expected {want} but the ledger says {got}",
                len(keys),
            )
        )
    unplanted = conn.execute(
        sql.SQL(
            "SELECT source_table, status, reason, repairs, count(*), "
            "(array_agg(source_key ORDER BY length(source_key), source_key))[1:{s}] "
            "FROM _ferry_tj WHERE t_key IS NULL GROUP BY 1, 2, 3, 4 ORDER BY 1, 5 DESC"
        ).format(s=sql.Literal(SAMPLE))
    ).fetchall()
    for table, status, reason, repairs, n, keys in unplanted:
        got = f"migrated (repairs: {', '.join(repairs)})" if repairs else _fate(status, reason)
        report.problems.append(
            Problem(
                "truth",
                table,
                list(keys),
                f"{n} row(s) not planted, so expected plain migrated, but the ledger says {got}",
                n,
            )
        )
    conn.rollback()
