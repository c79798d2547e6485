"""The whole run: stage every source, transform every model, prove the ledger adds up.

The CLI and the tests call these functions; they take connection strings, not connections,
because stage and transform open their own sessions (one per parallel job).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from ferry import catalog, ledger
from ferry.conninfo import connect
from ferry.engine import chunk, constraints, execute, settle, stage
from ferry.engine.execute import Progress, run_model, session
from ferry.errors import FerryError
from ferry.ledger import runs
from ferry.spec import Source, Spec
from ferry.sync import wal


@dataclass
class RunResult:
    run_id: int
    kind: str
    staged: list[stage.StageResult] = field(default_factory=list)
    models: list[chunk.ModelResult] = field(default_factory=list)
    counts: dict[str, ledger.SourceCounts] = field(default_factory=dict)
    seconds: float = 0.0


class SessionPairs:
    """One (source, target) session pair per worker thread, all closed at the end. Each
    side connects when first asked for: a sync the WAL names no change for needs no source
    session (a connection costs the server a process)."""

    def __init__(self, source: str, target: str, app: str) -> None:
        self.source, self.target, self.app = source, target, app
        self._local = threading.local()
        self._all: list[psycopg.Connection] = []
        self._lock = threading.Lock()

    def get(self) -> tuple[psycopg.Connection, psycopg.Connection]:
        return self.source_session(), self.target_session()

    def source_session(self) -> psycopg.Connection:
        return self._session("source", self.source)

    def target_session(self) -> psycopg.Connection:
        return self._session("target", self.target)

    def _session(self, side: str, conninfo: str) -> psycopg.Connection:
        conn = getattr(self._local, side, None)
        if conn is None:
            conn = connect(conninfo, app=self.app)
            setattr(self._local, side, conn)
            with self._lock:
                self._all.append(conn)
        return conn

    def __enter__(self) -> SessionPairs:
        return self

    def __exit__(self, *exc: object) -> None:
        for conn in self._all:
            conn.close()


class Staging:
    """Every source copied into the stage schema, ``jobs`` at a time, in the background.

    ``staged`` holds a future per source: ``transform_all`` starts each model as soon as the
    sources it reads (``Spec.reads``) are in, instead of after the last one. The largest
    ``jobs - 1`` sources go first, so that no worker is left alone with one of them at the
    end; the others in the order the models read them, so that the first models run while
    the largest is still copying. On the demo the transform waited a second for its 2M-row
    source with one core idle, then another while the first models ran one after the other.
    """

    def __init__(
        self, source: str, target: str, spec: Spec, run_id: int, data_dir: Path, jobs: int,
        progress: Progress, snapshot: wal.Export | None = None, sample: int | None = None,
    ) -> None:  # fmt: skip
        self.source, self.spec, self.run_id = source, spec, run_id
        self.sample = sample  # at most this many rows of each source (``ferry plan --sample``)
        # A replication slot just made: every table is read as the source was when it began
        self.snapshot = snapshot
        self.data_dir, self.jobs, self.progress = data_dir, max(1, jobs), progress
        self.staged: dict[str, Future[stage.StageResult]] = {}
        self._pairs = SessionPairs(source, target, "ferry-stage")
        self._pool = ThreadPoolExecutor(max_workers=self.jobs)

    def __enter__(self) -> Staging:
        with connect(self.source, app="ferry-stage") as conn:
            order = _stage_order(conn, self.spec, self.data_dir, self.jobs)
        for name in order:
            self.staged[name] = self._pool.submit(self._one, self.spec.source(name))
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pairs.__exit__()
        if self.snapshot is not None:
            self.snapshot.close()

    def results(self) -> list[stage.StageResult]:
        return [f.result() for f in self.staged.values()]

    def _one(self, src: Source) -> stage.StageResult:
        s, t = self._pairs.get()
        self.progress.stage_started(src.name, None)

        def adv(n: int) -> None:
            self.progress.stage_advanced(src.name, n)

        if src.csv is not None:
            result = stage.stage_csv(t, self.spec, src, self.data_dir, adv, self.sample)
        else:
            if self.snapshot is not None:
                self.snapshot.use(s)
            result = stage.stage_table(s, t, self.spec, src, adv, self.sample)
        stage.record(t, self.spec, result, self.run_id)
        t.commit()
        self.progress.stage_done(result)
        return result


def stage_all(
    source: str, target: str, spec: Spec, run_id: int, data_dir: Path, jobs: int,
    progress: Progress,
) -> list[stage.StageResult]:  # fmt: skip
    """Copy every source into the stage schema, ``jobs`` tables at a time."""
    with Staging(source, target, spec, run_id, data_dir, jobs, progress) as staging:
        return staging.results()


def _stage_order(source: psycopg.Connection, spec: Spec, data_dir: Path, jobs: int) -> list[str]:
    sizes: dict[str, float] = {}
    for src in spec.sources:
        if src.table is not None:
            row = source.execute(
                "SELECT pg_relation_size(to_regclass(%s))", [catalog.regclass(src.table)]
            ).fetchone()
            sizes[src.name] = float(row[0] or 0) if row else 0.0
        else:
            path = data_dir / (src.csv or "")
            sizes[src.name] = float(path.stat().st_size) if path.exists() else 0.0
    source.rollback()
    largest = sorted(sizes, key=lambda name: -sizes[name])
    read = [name for m in spec.order() for name in sorted(spec.reads(m))]
    first = largest[: jobs - 1]
    return list(dict.fromkeys([*first, *read, *largest]))


def _locks_parents(conn: psycopg.Connection, spec: Spec, model_name: str) -> set[tuple[str, str]]:
    """The tables whose rows a model's first load will lock, if it sets keys aside."""
    model = spec.model(model_name)
    if not model.accounts:
        return set()
    fresh = ledger.first_load(conn, spec, model.name)
    total = ledger.stage_rows(conn, spec, model.source, limit=execute.DEFER_MIN_ROWS)
    found = set(constraints.parents(conn, model.target))
    conn.commit()
    return found if execute.first_big_load(fresh, total) else set()


class Checks:
    """The invariant's counts, taken for each source as soon as its fates are final.

    No step of a run changes a fate after the model that wrote it has loaded (deleting the
    queued rows flags conflicts only). So a source's rows are counted, and its keys
    fingerprinted (``ledger.source_counts``), once the models of that source have loaded,
    beside the models still loading or putting their keys back: after the last model, an
    anti-join of every staged key with the ledger and the counts of the whole ledger ran
    alone on one core, for 2.5 s of the demo's run. A model that loads again
    (``_unique_back``) has its source counted again. Each query waits for a chunk slot like
    a chunk.
    """

    def __init__(self, target: str, spec: Spec, slots: chunk.Slots) -> None:
        self.target, self.spec, self.slots = target, spec, slots
        self._waiting = {
            m.source: set(ledger.models_of(spec, m.source)) for m in spec.models if m.accounts
        }
        self._counts: dict[str, Future[dict[str, ledger.SourceCounts]]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1)

    def loaded(self, model_name: str) -> Callable[[], None]:
        model = self.spec.model(model_name)

        def signal() -> None:
            if not model.accounts:
                return
            with self._lock:
                waiting = self._waiting[model.source]
                waiting.discard(model.name)
                if not waiting:  # again after a load that ran again: the later one counts
                    self._counts[model.source] = self._pool.submit(self._count, model.source)

        return signal

    def _count(self, source: str) -> dict[str, ledger.SourceCounts]:
        with self.slots, session(self.target, self.spec) as conn:
            return ledger.source_counts(conn, self.spec, {source})

    def __enter__(self) -> Checks:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def check(
        self, conn: psycopg.Connection
    ) -> tuple[dict[str, ledger.SourceCounts], dict[str, ledger.Discrepancy]]:
        """``ledger.discrepancies`` with what was counted; what was not, it counts now."""
        self._pool.shutdown(wait=True)
        counts: dict[str, ledger.SourceCounts] = {}
        for future in self._counts.values():
            if not future.exception():
                counts.update(future.result())
        missing = set(self._waiting) - set(counts)
        counts.update(ledger.source_counts(conn, self.spec, missing) if missing else {})
        ordered = {s.name: counts[s.name] for s in self.spec.sources if s.name in counts}
        return ledger.discrepancies(conn, self.spec, counts=ordered)


def transform_all(
    target: str, spec: Spec, run_id: int, progress: Progress, jobs: int,
    defer_constraints: bool, checks: Checks, staged: Mapping[str, Future[stage.StageResult]],
) -> list[chunk.ModelResult]:  # fmt: skip
    """Run each model once its parents are done and the sources it reads are ``staged``,
    then delete what they queued, children first.

    Models that share only an ancestor (jaws, case_files and payments under orders) run side
    by side, up to ``jobs`` of them: most are one chunk, which one session runs on one core,
    and the other core would idle. However many models run, at most ``jobs`` chunks compute
    at once. Two models writing one table run in turn, so that which of two colliding
    rows a unique index keeps does not depend on timing. A first load whose foreign keys are
    set aside locks the rows of their parent tables (``constraints.suspended``), and setting
    another table's keys to one of them aside would wait on that: it runs alone beside any
    model that writes or locks one of them, until its keys are back (they are validated after
    that without locks that stop the others, so the next models start meanwhile).
    """
    order = spec.order()
    deps = {m.name: {p.model for p in m.parents} - {m.name} for m in order}
    for i, m in enumerate(order):
        deps[m.name] |= {o.name for o in order[:i] if o.target == m.target}
    reads = {m.name: [staged[s] for s in spec.reads(m)] for m in order}
    locks: dict[str, set[tuple[str, str]]] = {}  # once its sources are staged: it counts rows
    pending = [m.name for m in order]
    done: dict[str, chunk.ModelResult] = {}
    limit = max(1, jobs)
    slots = checks.slots

    def table(name: str) -> tuple[str, str]:
        schema, _, rel = spec.model(name).target.partition(".")
        return schema, rel

    # Set when a model's parents are unlocked again, which is before the model is done.
    released: dict[str, Future[None]] = {m.name: Future() for m in order}

    def release(name: str) -> Callable[[], None]:
        return lambda: released[name].set_result(None)

    with connect(target, app="ferry-transform") as conn, ThreadPoolExecutor(limit) as pool:
        running: dict[Future[chunk.ModelResult], str] = {}
        while pending or running:
            for future in staged.values():
                if future.done() and (failed := future.exception()) is not None:
                    raise failed  # the source's own error, as staging it raised it
            for name in list(pending):
                if len(running) >= limit or not deps[name] <= done.keys():
                    continue
                if not all(f.done() for f in reads[name]):
                    continue
                for future in reads[name]:  # one may have failed since the check above
                    if (failed := future.exception()) is not None:
                        raise failed
                if name not in locks:
                    locks[name] = _locks_parents(conn, spec, name) if defer_constraints else set()
                held = set().union(*(locks[r] for r in running.values() if not released[r].done()))
                written = {table(r) for r in running.values()}
                # A load locking a table that another model running writes or locks would
                # wait on it, and could hold a chunk slot while it waits: not at once.
                if not locks[name] & (held | written) and table(name) not in held:
                    pending.remove(name)
                    running[pool.submit(
                        run_model, target, spec, name, run_id, progress, jobs, None,
                        defer_constraints, slots, release(name),
                        checks.loaded(name),
                    )] = name  # fmt: skip
            staging = {f for name in pending for f in reads[name] if not f.done()}
            # Cannot happen: deps follow spec.order(), and locks need company.
            if not running and not staging:
                raise FerryError(f"no model can start: {', '.join(pending)}")
            unlocking = [
                released[r] for r in running.values() if locks[r] and not released[r].done()
            ]
            finished, _ = wait([*running, *unlocking, *staging], return_when=FIRST_COMPLETED)
            for future in finished:
                if future in running:
                    done[running.pop(future)] = future.result()
    with connect(target, app="ferry-transform") as conn:
        # Rows refused for a value that a row now gone held: written by the pass after.
        _, again = settle.delete_pending(conn, spec, run_id)
    results = [done[m.name] for m in order]
    for r in results:
        r.blocked |= again.get(r.model, set())
    return results


def migrate(
    source: str, target: str, spec: Spec, *, data_dir: Path | None = None, jobs: int = 2,
    progress: Progress | None = None, defer_constraints: bool = True,
    changes: str | None = None, sample: int | None = None,
) -> RunResult:  # fmt: skip
    """Full run: re-stage everything, then bring every model's rows up to date.

    Safe to repeat and to resume after a crash: rows whose outcome did not change are not
    written again. ``changes``: where later syncs learn what changed: ``wal`` (a logical
    replication slot on the source, made before the stage's snapshot: ``wal.py``),
    ``checksum`` (the range diff; drops a slot), or None (as the ledger says). ``sample``:
    stage at most that many rows of each source (``ferry plan``).
    """
    progress = progress or Progress()
    t0 = time.perf_counter()
    with runs.recorded_run(target, spec, "migrate") as (conn, run_id, counts):
        result = RunResult(run_id, "migrate")
        data = data_dir or spec.base_dir
        snapshot = wal.for_migrate(source, conn, spec, changes, run_id)
        with (
            Staging(
                source, target, spec, run_id, data, jobs, progress, snapshot, sample
            ) as staging,
            Checks(target, spec, chunk.Slots(max(1, jobs))) as checks,
        ):
            result.models = transform_all(
                target, spec, run_id, progress, jobs, defer_constraints, checks, staging.staged
            )
            result.staged = staging.results()
            result.counts, bad = checks.check(conn)
        blocked = {m.model: m.blocked for m in result.models if m.blocked}
        if bad or blocked:
            # What the full pass could not settle alone: keys the invariant names (rows
            # deleted from the source since an earlier run, rows that moved to another
            # model), and rows refused for a value a later key of ferry's gave up
            # (chunk.Runner._give_up). Settled with every fate that depends on theirs, and
            # proved again (every source when rows were blocked: their pass moves fates).
            with session(target, spec) as work_conn:
                work = settle.discrepant(work_conn, spec, bad)
                for model, keys in blocked.items():
                    work.keys[model] = work.keys.get(model, set()) | keys
                checked = set(bad) | ({s.name for s in spec.sources} if blocked else set())
                settled = settle.run(
                    work_conn, target, spec, run_id, progress, jobs, work, checked=checked
                )
            result.counts.update(settled.counts)
            result.models += settled.models
        result.seconds = time.perf_counter() - t0
        counts.update(run_counts(result))
    return result


def run_counts(result: RunResult) -> dict[str, object]:
    """What a run record keeps: enough for the history in reports, no row contents."""
    return {
        "seconds": round(result.seconds, 3),
        "staged": {s.source: s.rows for s in result.staged},
        "written": {m.model: m.written for m in result.models},
        "quarantined_by_error": sum(m.quarantined_by_error for m in result.models),
        "rows": sum(m.rows for m in result.models),
    }
