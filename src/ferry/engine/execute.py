"""Run one model: its chunks on sessions, its first load with constraints set aside, and
the passes that settle its merged rows.

``pipeline`` runs every model of a migrate with these, ``settle`` the keys a sync or a
retry looks at again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, nullcontext

import psycopg
from psycopg import sql

from ferry import ledger
from ferry.conninfo import connect
from ferry.engine import chunk, constraints, deletes, dependencies, query, stage
from ferry.engine.rehash import note_run, rehash
from ferry.errors import DuplicateKeysError, FerryError
from ferry.spec import Spec


class Progress:
    """What a run reports as it goes; the CLI renders it with rich, tests ignore it."""

    def stage_started(self, source: str, total_bytes: int | None) -> None: ...
    def stage_advanced(self, source: str, nbytes: int) -> None: ...
    def stage_done(self, result: stage.StageResult) -> None: ...
    def model_started(self, model: str, total_rows: int) -> None: ...
    def model_advanced(self, model: str, rows: int) -> None: ...
    def model_done(self, result: chunk.ModelResult) -> None: ...


def session(target: str, spec: Spec) -> psycopg.Connection:
    """A target session that reads stage tables by their plain names, as model SQL does, and
    writes with its own path after them, as the application does (``query.use_stage``)."""
    conn = connect(target, app="ferry-transform")
    query.use_stage(conn, spec.stage_schema, writes=True)
    conn.commit()
    return conn


def _session_or(
    conn: psycopg.Connection | None, target: str, spec: Spec
) -> AbstractContextManager[psycopg.Connection]:
    """``conn`` if the caller lends one (left open), else a new session: settle runs a
    sync's models one after another on its own, where a session each cost 5-10 ms."""
    return nullcontext(conn) if conn is not None else session(target, spec)


# A first load smaller than this is not worth dropping and re-adding foreign keys for.
DEFER_MIN_ROWS = 50_000
# A model that wrote this many rows refreshes the planner's statistics of what it wrote.
ANALYZE_AFTER = 10_000


def _attach(conn: psycopg.Connection, spec: Spec, model: str, quiet: bool = False) -> None:
    """Attach a first load's ledger rows written aside, if they still are. ``quiet`` after a
    failure: if this fails too, the next run attaches them (``ledger.attach_leftovers``)."""
    try:
        conn.rollback()
        if ledger.partition_state(conn, spec, model) == "aside":
            ledger.attach(conn, spec, model)
        conn.commit()
    except (psycopg.Error, FerryError):
        if not quiet:
            raise


def _attach_aside(
    target: str, spec: Spec, model: str, written: int, loaded: Callable[[], None]
) -> None:
    with session(target, spec) as conn:
        _attach(conn, spec, model)
        _analyze_ledger(conn, spec, model, written)
    loaded()


def _analyze_ledger(
    conn: psycopg.Connection, spec: Spec, model: str, written: int, small_first: bool = False
) -> None:
    """Fresh ledger statistics after a model wrote ``ANALYZE_AFTER`` rows or more; with
    ``small_first``, after a first load of fewer.

    The next models (and the next sync) join the ledger by model: with statistics that do
    not know a model's rows yet, the planner estimates a handful and picks nested loops over
    whole-table scans (a sync at 100 times DOMAIN.md's delta took twice as long when only a
    model that grew the ledger by a tenth triggered this). A partition never analyzed is
    worse: ``model = 'offices'`` on it is estimated at half a percent of its rows, and the
    first syncs after a migrate, until autovacuum got to it, compared 895 changed offices
    with 894 ledger rows each (37 ms of a 1 s sync). Every column: the conditions on
    ``decided_by``, ``sqlstate`` or ``conflict`` are estimated from them too. Only the
    model's own partition: queries read one model's rows from it (``ledger.table_of``).
    """
    if small_first != (written < ANALYZE_AFTER):
        return
    if small_first and ledger.partition_state(conn, spec, model) is None:
        return
    conn.execute(
        sql.SQL("ANALYZE {}").format(
            sql.Identifier(spec.ledger_schema, ledger.partition_name(model))
        )
    )
    conn.commit()


def first_big_load(fresh: bool, total: int) -> bool:
    """Whether a load sets the target's foreign keys aside (when allowed to)."""
    return fresh and total >= DEFER_MIN_ROWS


# Passes over a model's merged rows before ferry gives up on their survivors settling.
MERGE_PASSES = 50


def run_model(
    target: str, spec: Spec, model_name: str, run_id: int, progress: Progress, jobs: int = 1,
    keys: list[str] | None = None, defer_constraints: bool = False,
    slots: chunk.Slots | None = None, released: Callable[[], None] | None = None,
    loaded: Callable[[], None] = lambda: None, retry: bool = False,
    conn: psycopg.Connection | None = None, shapes: dict[str, query.Shape] | None = None,
) -> chunk.ModelResult:  # fmt: skip
    """One model, then again for the rows whose fate depends on rows of the model that this
    run decided: merge survivors, and parents in the model itself.
    ``retry``: rows the database refused are sent to it again even if nothing about them
    changed (``quarantine retry``).

    A merged row takes its survivor's fate, a child its parent's (``query.Plan.
    fate_case``): a row whose survivor or parent had no fate yet is left pending, and one
    whose survivor's or parent's fate changed (refused by the target, excluded, merged
    elsewhere) is decided again, until nothing changes. Rows still pending when a pass
    decides nothing have no such row: a last pass calls it missing, and their own
    dependents follow. A child is written only once its parent is, so the target's foreign
    key holds at every commit, whatever the chunks and the sessions.
    ``conn``: a session with no transaction open, to run on (see ``_session_or``);
    ``shapes``: the plans' facts a run read already (``query.Shape``), added to.
    """
    shapes = {} if shapes is None else shapes
    model = spec.model(model_name)
    result = _run_model(
        target, spec, model_name, run_id, progress, jobs, keys, defer_constraints, slots,
        released, (lambda: None) if dependencies.own_dependencies(model) else loaded, retry=retry,
        conn=conn, shapes=shapes,
    )  # fmt: skip
    columns = dependencies.own_dependencies(model)
    if not columns:
        return result
    moved = result.changed_keys | result.new_keys
    final = False
    for _ in range(MERGE_PASSES):
        with _session_or(conn, target, spec) as asking:
            todo = set(result.pending)
            for column in columns:
                todo |= dependencies.dependents(asking, spec, model, column, moved)
            asking.commit()
        if not todo:
            loaded()
            return result
        before = set(result.pending)
        again = _run_model(
            target, spec, model_name, run_id, progress, jobs, sorted(todo), final=final,
            retry=retry, conn=conn, shapes=shapes,
        )  # fmt: skip
        result.add(again)
        moved = again.changed_keys | again.new_keys
        final = not final and bool(again.pending) and again.pending == before and not moved
    raise FerryError(
        f"model {model.name}: rows depending on its own rows did not settle after "
        f"{MERGE_PASSES} passes"
    )


def _run_model(
    target: str, spec: Spec, model_name: str, run_id: int, progress: Progress, jobs: int = 1,
    keys: list[str] | None = None, defer_constraints: bool = False,
    slots: chunk.Slots | None = None, released: Callable[[], None] | None = None,
    loaded: Callable[[], None] = lambda: None, final: bool = False, retry: bool = False,
    conn: psycopg.Connection | None = None, shapes: dict[str, query.Shape] | None = None,
) -> chunk.ModelResult:  # fmt: skip
    """One pass of a model: its chunks on ``jobs`` sessions when no unique index makes that
    unsafe.

    With ``defer_constraints``, a model's first load of at least ``DEFER_MIN_ROWS`` rows runs
    with the target's foreign keys set aside and put back after (see ``constraints.py``);
    ``released`` is called when it no longer locks the rows of their parent tables.
    ``loaded`` is called when its ledger rows are in the ledger as this run leaves them
    (again if the load runs again), which can be before its keys are back.
    """
    model = spec.model(model_name)
    with _session_or(conn, target, spec) as conn:
        plan = query.Plan(conn, spec, model, (shapes or {}).get(model.name))
        if shapes is None or model.name not in shapes:  # once a run
            rehash(conn, spec, plan)
        if shapes is not None:
            shapes[model.name] = plan.shape
        plan.final, plan.retry_refused = final, retry
        # Counted only for a whole model: a key list says its own size, and a sync that looks
        # at a few keys of a 2M-row source need not scan its stage for the progress bar.
        whole = keys is None and model.accounts
        total = ledger.stage_rows(conn, spec, model.source) if whole else 0
        progress.model_started(model.name, len(keys) if keys is not None else total)

        def advance(n: int) -> None:
            progress.model_advanced(model.name, n)

        fresh = ledger.first_load(conn, spec, model.name)
        deferred = defer_constraints and keys is None and first_big_load(fresh, total)
        # Its ledger rows too, unless an earlier run left the model an (empty) partition.
        aside = deferred and ledger.partition_state(conn, spec, model.name) is None
        if aside:
            ledger.partition(conn, spec, model.name, aside=True, run_id=run_id)
            conn.commit()
        runner = chunk.Runner(conn, plan, run_id, advance, slots, aside)
        work = runner.chunks(keys)
        # Unique keys too, where no two chunks can collide on one (see constraints.py).
        unique = deferred and plan.parallel_safe and constraints.unique_aside_ok(conn, model.target)
        attaching: Future[None] | None = None
        sorting: Future[None] | None = None
        loaded_all = False

        def keys_back() -> None:
            """The foreign keys are back: sort the unique keys beside what follows."""
            nonlocal sorting
            if released:
                released()
            if unique and loaded_all:  # not when the keys come back after a failure
                sorting = pool.submit(_unique_indexes, target, spec, model.target)

        def attach_if_failed() -> None:
            if attaching is None:  # the load failed: what it wrote is whole chunks, and counts
                _attach(conn, spec, model.name, quiet=True)

        with ExitStack() as stack:
            if aside or unique:
                pool = stack.enter_context(ThreadPoolExecutor(max_workers=2))
            if aside:
                stack.callback(attach_if_failed)
            if deferred:
                guard = stack.enter_context(session(target, spec))
                stack.enter_context(
                    constraints.suspended(
                        guard, spec, model.target, run_id, keys_back, model.name if unique else None
                    )
                )
            if jobs <= 1 or not plan.parallel_safe or len(work) < 2:
                result = runner.run(work)
            else:
                result = _run_parallel(
                    target, spec, plan, run_id, advance, work, jobs, slots, aside
                )
            if aside:
                # The partition's primary key is built while the target's keys come back
                # (constraints.restore, on the guard session): both sort whole tables.
                attaching = pool.submit(
                    _attach_aside, target, spec, model.name, result.written, loaded
                )
            else:  # before the keys come back, when the next models may start
                _analyze_ledger(conn, spec, model.name, result.written)
                loaded()
                if fresh:  # for the syncs after, not the models that may start now
                    _analyze_ledger(conn, spec, model.name, result.written, small_first=True)
            loaded_all = True
        if attaching is not None:
            attaching.result()  # attached before a load may be taken out (_unique_back)
        if sorting is not None:
            sorting.exception()  # an index that would not build, _unique_back tries again
        if unique:  # after the others, which let the next models start (constraints.restore)
            back = _unique_back(conn, target, spec, plan, run_id, advance, slots, result)
            if back is not result:  # taken out and loaded again
                loaded()
            result = back
        if result.written >= ANALYZE_AFTER:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(*model.target.split("."))))
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.model_runs (run_id, model, rows, written, seconds) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run_id, model) DO UPDATE SET "
                "rows = EXCLUDED.rows, written = EXCLUDED.written, seconds = EXCLUDED.seconds"
            ).format(sql.Identifier(spec.ledger_schema)),
            [run_id, model.name, result.rows, result.written, result.seconds],
        )
        note_run(conn, spec, plan, run_id, whole=keys is None)
        conn.commit()
    progress.model_done(result)
    return result


def _unique_indexes(target: str, spec: Spec, table: str) -> None:
    with session(target, spec) as conn:
        constraints.build_unique_indexes(conn, spec, table)


def _unique_back(
    conn: psycopg.Connection, target: str, spec: Spec, plan: query.Plan, run_id: int,
    advance: Callable[[int], None], slots: chunk.Slots | None,
    result: chunk.ModelResult,
) -> chunk.ModelResult:  # fmt: skip
    """Put back the unique keys a first load set aside; if rows collide, load it again.

    The load is taken out (``put_back``) and run once more, one chunk at a time, with the
    keys in place: bisection then quarantines the rows that collide, in key order, exactly
    as a load with ``--keep-constraints`` does.
    """
    undone = put_back(conn, target, spec, plan.model.target)
    conn.commit()
    if not undone:
        return result
    advance(-result.rows)
    return chunk.Runner(conn, plan, run_id, advance, slots).run()


def put_back(
    conn: psycopg.Connection, target: str, spec: Spec, table: str | None = None
) -> set[str]:
    """Put back what is set aside (``constraints.restore``), of one table or, for what a
    crashed run left, of all, before anything else touches them. A unique key that cannot
    be built takes out the first load that set it aside (``deletes.undo_first_load``),
    once per model, and the rest is tried again. Returns the models taken out, which must
    load again (the next migrate does)."""
    undone: set[str] = set()
    if table is None:
        ledger.attach_leftovers(conn, spec)
    while True:
        try:
            constraints.restore(conn, spec, table)
            return undone
        except DuplicateKeysError as exc:
            conn.rollback()
            if exc.model is None or exc.model in undone:
                raise FerryError(
                    f"{exc.table}: rows that the application wrote while unique key {exc.name} "
                    "was set aside share a value; ferry took its own rows out again: fix those "
                    "rows, then run ferry again"
                ) from None
            if exc.model not in {m.name for m in spec.models}:
                raise FerryError(
                    f"{exc.table}: unique key {exc.name} cannot be built again, and model "
                    f"{exc.model}, whose first load set it aside, is not in this spec: run "
                    "ferry with the spec that loaded it"
                ) from None
            undone.add(exc.model)
            with session(target, spec) as work:
                plan = query.Plan(work, spec, spec.model(exc.model))
                deletes.undo_first_load(work, plan)


def _run_parallel(
    target: str, spec: Spec, plan: query.Plan, run_id: int, advance: Callable[[int], None],
    work: list[chunk.Chunk], jobs: int, slots: chunk.Slots | None = None,
    aside: bool = False,
) -> chunk.ModelResult:  # fmt: skip
    """Chunks are independent transactions: hand them to ``jobs`` sessions."""
    t0 = time.perf_counter()
    # Chunks far apart run at once: neighbours would insert into the same last pages of the
    # legacy-key and ledger indexes and wait on each other's buffer locks.
    stride = -(-len(work) // jobs)
    order = [work[i + j * stride] for i in range(stride) for j in range(jobs)
             if i + j * stride < len(work)]  # fmt: skip
    pending = list(reversed(order))
    lock = threading.Lock()

    def worker() -> chunk.Runner:
        with session(target, spec) as conn:
            runner = chunk.Runner(conn, plan, run_id, advance, slots, aside)
            while True:
                with lock:
                    if not pending:
                        return runner
                    piece = pending.pop()
                runner.run([piece])

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        runners = [f.result() for f in [pool.submit(worker) for _ in range(jobs)]]
    transitions: Counter[tuple[str | None, str]] = Counter()
    for r in runners:
        transitions.update(r.transitions)
    return chunk.ModelResult(
        plan.model.name,
        sum(r.rows for r in runners),
        sum(r.written for r in runners),
        sum(r.errors for r in runners),
        time.perf_counter() - t0,
        transitions,
        set().union(*(r.changed_keys for r in runners)),
        set().union(*(r.pending for r in runners)),
        set().union(*(r.new_keys for r in runners)),
        set().union(*(r.blocked for r in runners)),
    )
