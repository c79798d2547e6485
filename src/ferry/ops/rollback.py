"""Rollback: undo ferry's runs, newest first, from the before-images the ledger keeps.

Why it exists: until cutover, a sync that went wrong (a bad spec change, a legacy batch job
gone mad) must be undoable without restoring the whole target database from a backup, which
would also throw away everything the new application wrote since.

What is undone
--------------
``rollback(run=N)`` undoes runs N, N+1, ... up to the latest, newest first: a run's
before-images describe the state the *next* runs started from, so an older run cannot be
undone under newer ones. ``rollback(all_=True)`` undoes every run. Each undone run R:

(a) ledger rows R created (``first_run_id = R``): their target rows are deleted and so are
    the ledger rows;
(b) ledger rows R changed (``<ledger>.history`` holds, per run and key, the ledger row's
    before-image and the before-image of the target row it owned): the target row is
    re-created or updated back from its before-image, a target row the key owns now but did
    not own before is deleted, and the ledger row is restored from its before-image;
(c) run R's history rows (and any deletion it left queued) are removed.

Target rows are re-created parents first, updated, and deleted children first (the spec's
dependency order), all of every run in ONE transaction: a rollback is applied entirely or
not at all. ferry changes only target rows its ledger says it wrote: a row that the
application edited since ferry wrote it (its hash is not the ledger's), or that a row ferry
did not write references, blocks the rollback, which then changes nothing and names the
tables and counts. Target-only rows are never touched. Updates restore only the columns
ferry writes; a re-created row gets its whole before-image back.

The stage
---------
The stage tables are copies of the source and are not rolled back (their earlier contents
were never kept). So after ``rollback(run=N)`` the stage may be ahead of the ledger: the
source rows that run N changed are still staged in their newer form, and a differential
sync would see no difference between source and stage and never re-apply them. Rollback
therefore records every key whose fate it rolled back in ``<ledger>.resync`` (model, key),
and the next ``sync`` treats those keys as changed (staged) or deleted (no longer staged)
whatever the diff says, recomputes derived models named there whole, and clears the table
when it succeeds. Until that sync, ``verify`` reports those keys as differences and the
report's equations for their sources may not add up: the stage holds source rows the ledger
has not taken yet. A following sync brings the target back to what the source says.

When every run is undone (``all_``, or ``run`` at or before the first run), the ledger is
empty and the stage tables are emptied too (truncated, not dropped, so that ``verify``,
the report and the ledger invariant all see zero staged rows and zero fates). The next
``migrate`` re-stages everything; a ``sync`` would re-stage everything as inserts.

Operator decisions (``ferry quarantine exclude``) are runs of kind ``decision`` with their
own before-images, so a rollback past one undoes it like any other change.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from ferry import catalog, ledger
from ferry.conninfo import connect
from ferry.engine import deletes, query, rehash, stage
from ferry.errors import FerryError, RollbackError, describe
from ferry.ledger import runs
from ferry.spec import Model, Spec
from ferry.sync import wal


@dataclass
class RunInfo:
    run_id: int
    kind: str
    status: str
    started_at: datetime
    keys: int = 0  # ledger keys this run created or changed (what undoing it touches)


@dataclass
class RollbackPlan:
    """What a rollback would undo: shown to the operator before they confirm."""

    runs: list[RunInfo]  # newest first
    everything: bool  # no run remains: the ledger ends empty and the stage is emptied

    @property
    def keys(self) -> int:
        return sum(r.keys for r in self.runs)


@dataclass
class RollbackResult:
    run_id: int
    undone: list[int] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    stage_cleared: bool = False
    seconds: float = 0.0
    slot_dropped: str | None = None  # the source's replication slot, when every run was undone


def _ident(spec: Spec, table: str) -> sql.Identifier:
    return sql.Identifier(spec.ledger_schema, table)


def _plan(conn: psycopg.Connection, spec: Spec, run: int | None, all_: bool) -> RollbackPlan:
    if (run is None) == (not all_):
        raise RollbackError("give either a run id to roll back from, or all")
    first = conn.execute(sql.SQL("SELECT min(run_id) FROM {}").format(_ident(spec, "runs")))
    row = first.fetchone()
    if row is None or row[0] is None:
        raise RollbackError("no run is recorded: nothing to roll back")
    earliest = int(row[0])
    if run is not None:
        exists = conn.execute(
            sql.SQL("SELECT 1 FROM {} WHERE run_id = %s").format(_ident(spec, "runs")), [run]
        ).fetchone()
        if not exists:
            raise RollbackError(f"there is no run {run} in {spec.ledger_schema}.runs")
    start = earliest if run is None else run
    keys: dict[int, int] = defaultdict(int)
    for run_id, n in conn.execute(
        sql.SQL(
            "SELECT run_id, count(*) FROM (SELECT run_id, model, source_key FROM {hist} "
            "WHERE run_id >= %s UNION SELECT first_run_id, model, source_key FROM {led} "
            "WHERE first_run_id >= %s) k GROUP BY 1"
        ).format(hist=_ident(spec, "history"), led=_ident(spec, "ledger")),
        [start, start],
    ):
        keys[int(run_id)] = int(n)
    runs = [
        RunInfo(int(r[0]), r[1], r[2], r[3], keys.get(int(r[0]), 0))
        for r in conn.execute(
            sql.SQL(
                "SELECT run_id, kind, status, started_at FROM {} WHERE run_id >= %s "
                "ORDER BY run_id DESC"
            ).format(_ident(spec, "runs")),
            [start],
        )
    ]
    conn.commit()
    return RollbackPlan(runs, start <= earliest)


def plan(target: str, spec: Spec, *, run: int | None = None, all_: bool = False) -> RollbackPlan:
    """What ``rollback`` with the same arguments would undo (read-only)."""
    with connect(target, app="ferry-rollback") as conn:
        runs.require_ledger(conn, spec, RollbackError)
        return _plan(conn, spec, run, all_)


def rollback(
    target: str, spec: Spec, *, run: int | None = None, all_: bool = False,
    source: str | None = None,
) -> RollbackResult:  # fmt: skip
    """Undo runs ``run``..latest (or every run with ``all_``), newest first, in one
    transaction; the rollback itself is recorded as a run of kind ``rollback``. When every
    run is undone, the replication slot of ``--changes wal`` is dropped on ``source``
    (refused up front without it: a slot nobody advances fills the source's disk)."""
    t0 = time.perf_counter()
    with runs.opened(target, spec, "ferry-rollback", error=RollbackError) as conn:
        todo = _plan(conn, spec, run, all_)
        slot = ledger.change_slot(conn, spec) if todo.everything else None
        conn.commit()
        if slot is not None and source is None:
            raise RollbackError(
                f"this target has replication slot {slot.slot} on the source: give the source "
                "(--source) so that undoing every run drops it too"
            )
        with ledger.recorded(conn, spec, "rollback") as (rb_id, counts):
            result = RollbackResult(rb_id)
            _rollback(conn, spec, todo, result)
            result.seconds = time.perf_counter() - t0
            counts.update(
                seconds=round(result.seconds, 3), undone_runs=result.undone,
                **result.counts, stage_cleared=result.stage_cleared,
            )  # fmt: skip
        if slot is not None and source is not None:
            result.slot_dropped = wal.drop_slot(source, conn, spec)
    return result


def _rollback(
    conn: psycopg.Connection, spec: Spec, todo: RollbackPlan, result: RollbackResult
) -> None:
    runs = [r for r in todo.runs if r.run_id != result.run_id]
    # Plans compile the model SQL (against the stage) and commit: all of them before the
    # one transaction that does the work.
    query.use_stage(conn, spec.stage_schema, writes=True)
    conn.commit()
    touched = _touched_models(conn, spec, min((r.run_id for r in runs), default=result.run_id))
    known = {m.name for m in spec.models}
    unknown = sorted(touched - known)
    if unknown:
        raise RollbackError(
            "these runs changed rows of models the spec no longer has: " + ", ".join(unknown)
        )
    plans: dict[str, query.Plan] = {}
    for name in sorted(touched):
        try:
            plans[name] = query.Plan(conn, spec, spec.model(name))
        except FerryError as exc:
            raise RollbackError(f"cannot roll back model {name}: {exc}") from None
    conn.commit()
    refs = {name: deletes.referencing(conn, plans[name].model.target) for name in plans}
    conn.commit()
    with conn.transaction():
        for info in runs:  # newest first
            _undo_run(conn, spec, info.run_id, result, plans, refs)
            result.undone.append(info.run_id)
        if runs:
            rehash.forget_runs(conn, spec, sorted(touched), min(r.run_id for r in runs))
        if todo.everything:
            left = _scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(_ident(spec, "ledger")))
            if left:
                raise RollbackError(
                    f"after undoing every run, {left} ledger rows remain that no recorded run "
                    "created; nothing was changed"
                )
            _clear_stage(conn, spec)
            result.stage_cleared = True
        ledger.drop_empty_partitions(conn, spec)


def _touched_models(conn: psycopg.Connection, spec: Spec, start: int) -> set[str]:
    rows = conn.execute(
        sql.SQL(
            "SELECT model FROM {hist} WHERE run_id >= %s UNION "
            "SELECT model FROM {led} WHERE first_run_id >= %s"
        ).format(hist=_ident(spec, "history"), led=_ident(spec, "ledger")),
        [start, start],
    ).fetchall()
    conn.commit()
    return {r[0] for r in rows}


def _scalar(conn: psycopg.Connection, query: sql.Composable, params: Any = None) -> int:
    row = conn.execute(query, params).fetchone()
    return int(row[0] or 0) if row else 0


def _columns(conn: psycopg.Connection, table: str) -> list[str]:
    """Every column a row image can set: not dropped, not generated."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
            "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            [catalog.regclass(table)],
        )
    ]


def _undo_run(
    conn: psycopg.Connection, spec: Spec, run_id: int, result: RollbackResult,
    plans: dict[str, query.Plan], refs: dict[str, list[tuple[str, str, str, str | None]]],
) -> None:  # fmt: skip
    """Undo one run, every later run being undone already (see the module docstring)."""
    hist, led = _ident(spec, "history"), _ident(spec, "ledger")
    conn.execute("DROP TABLE IF EXISTS pg_temp._ferry_rb")
    # One row per key the run created or changed: its before-images (NULL: it had no ledger
    # row before the run). A before-image of a row the run itself created is not a before.
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE _ferry_rb AS "
            "SELECT coalesce(h.model, l.model) AS model, "
            "coalesce(h.source_key, l.source_key) AS source_key, "
            "h.ledger_before, h.target_before "
            "FROM (SELECT model, source_key, ledger_before, target_before FROM {hist} "
            "WHERE run_id = %s AND (ledger_before->>'first_run_id')::bigint <> %s) h "
            "FULL JOIN (SELECT model, source_key FROM {led} WHERE first_run_id = %s) l "
            "ON l.model = h.model AND l.source_key = h.source_key"
        ).format(hist=hist, led=led),
        [run_id, run_id, run_id],
    )
    conn.execute("CREATE INDEX ON _ferry_rb (model, source_key)")
    conn.execute("ANALYZE _ferry_rb")
    present = {r[0] for r in conn.execute("SELECT DISTINCT model FROM _ferry_rb")}
    order = [m for m in spec.order() if m.name in present]

    def recreate() -> None:
        for model in order:  # parents first: a re-created row's parents exist before it
            result.counts["target_recreated"] += _recreate(conn, model)

    def restore() -> None:
        for model in order:
            result.counts["target_restored"] += _restore(conn, spec, model, plans[model.name])

    def delete() -> None:
        for model in reversed(order):  # children first: nothing references a row when it goes
            result.counts["target_deleted"] += _delete(
                conn, spec, model, plans[model.name], refs[model.name]
            )

    # Rows re-created and restored before the run's own rows go, so that a restored row's
    # parent is back first; but a row the run wrote or changed may hold a unique value that
    # a re-created row takes back (a lower key that a later key gave the value up to): then
    # it goes, or is restored, first. The first order that breaks no constraint is kept.
    counted = Counter(result.counts)
    orders = [
        (recreate, restore, delete),
        (delete, recreate, restore),
        (restore, delete, recreate),
        (delete, restore, recreate),
    ]
    for i, steps in enumerate(orders):
        result.counts = Counter(counted)
        try:
            with conn.transaction():
                for step in steps:
                    step()
            break
        except psycopg.errors.IntegrityError as exc:
            if i == len(orders) - 1:
                raise RollbackError(
                    f"run {run_id}: its rows cannot be put back without breaking "
                    f"{describe(exc)}; nothing was changed"
                ) from None
    cur = conn.execute(
        sql.SQL(
            "DELETE FROM {led} l USING _ferry_rb b WHERE l.model = b.model "
            "AND l.source_key = b.source_key AND b.ledger_before IS NULL"
        ).format(led=led)
    )
    result.counts["ledger_removed"] += max(cur.rowcount, 0)
    cols = _columns(conn, led.as_string(conn))
    cur = conn.execute(
        sql.SQL(
            "INSERT INTO {led} ({cols}) SELECT {rcols} FROM _ferry_rb b "
            "CROSS JOIN LATERAL jsonb_populate_record(NULL::{led}, b.ledger_before) r "
            "WHERE b.ledger_before IS NOT NULL "
            "ON CONFLICT (model, source_key) DO UPDATE SET {sets}"
        ).format(
            led=led,
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
            rcols=sql.SQL(", ").join(sql.Identifier("r", c) for c in cols),
            sets=sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in cols
            ),
        )
    )
    result.counts["ledger_restored"] += max(cur.rowcount, 0)
    for model in order:
        _restored_as_stored(conn, model, plans[model.name])
    cur = conn.execute(
        sql.SQL(
            "INSERT INTO {} (model, source_key, run_id) SELECT model, source_key, %s "
            "FROM _ferry_rb ON CONFLICT (model, source_key) DO UPDATE SET run_id = EXCLUDED.run_id"
        ).format(_ident(spec, "resync")),
        [result.run_id],
    )
    result.counts["keys"] += max(cur.rowcount, 0)
    conn.execute(sql.SQL("DELETE FROM {} WHERE run_id = %s").format(hist), [run_id])
    conn.execute(
        sql.SQL("DELETE FROM {} WHERE run_id = %s").format(_ident(spec, "pending_deletes")),
        [run_id],
    )
    conn.execute("DROP TABLE _ferry_rb")


def _image(model: Model) -> sql.Composable:
    """The rows of ``_ferry_rb`` for ``model`` with their target before-image as ``r``."""
    return sql.SQL(
        "_ferry_rb b CROSS JOIN LATERAL jsonb_populate_record(NULL::{t}, b.target_before) r"
    ).format(t=sql.Identifier(model.target_schema, model.target_table))


def _recreate(conn: psycopg.Connection, model: Model) -> int:
    """Rows the run deleted (or moved to another UUID): back from their whole before-image."""
    target = sql.Identifier(model.target_schema, model.target_table)
    key = sql.Identifier(model.key_column)
    cols = _columns(conn, model.target)
    cur = conn.execute(
        sql.SQL(
            "INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE SELECT {rcols} FROM {image} "
            "WHERE b.model = %s AND b.target_before IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM {t} t WHERE t.{key} = r.{key})"
        ).format(
            t=target,
            key=key,
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
            rcols=sql.SQL(", ").join(sql.Identifier("r", c) for c in cols),
            image=_image(model),
        ),
        [model.name],
    )
    return max(cur.rowcount, 0)


def _restore(conn: psycopg.Connection, spec: Spec, model: Model, plan: query.Plan) -> int:
    """Rows the run updated: ferry's columns back to the before-image, if still ferry's."""
    if not plan.columns:
        return 0
    target = sql.Identifier(model.target_schema, model.target_table)
    key = sql.Identifier(model.key_column)
    led = _ident(spec, "ledger")
    differs = sql.SQL(
        "b.model = {m} AND b.target_before IS NOT NULL AND t.{key} = r.{key} "
        "AND {ht} IS DISTINCT FROM {hr}"
    ).format(m=sql.Literal(model.name), key=key, ht=plan.target_hash("t"),
             hr=plan.target_hash("r"))  # fmt: skip
    plan.lock(
        conn,
        sql.SQL("FROM {image} JOIN {t} t ON t.{key} = r.{key} WHERE b.model = {m}").format(
            image=_image(model), t=target, key=key, m=sql.Literal(model.name)
        ),
    )
    # The row must be the one the ledger says ferry wrote, as ferry wrote it.
    blocked = _scalar(
        conn,
        sql.SQL(
            "SELECT count(*) FROM {image} JOIN {t} t ON t.{key} = r.{key} "
            "LEFT JOIN {led} l ON l.model = b.model AND l.source_key = b.source_key "
            "WHERE {differs} AND NOT coalesce(l.status IN ('migrated', 'deleted') "
            "AND l.target_uuid = t.{key} AND {ht}, false)"
        ).format(
            image=_image(model),
            t=target,
            key=key,
            led=led,
            differs=differs,
            ht=plan.holds_hash("t", sql.SQL("l.row_hash")),
        ),
    )
    if blocked:
        raise RollbackError(
            f"rollback refused, nothing was changed: {model.target}: {blocked} row(s) of model "
            f"{model.name} were edited in the target since ferry wrote them; resolve those "
            "conflicts first"
        )
    names = [n for n, _, _ in plan.columns]
    cur = conn.execute(
        sql.SQL("UPDATE {t} t SET {sets} FROM {image} WHERE {differs}").format(
            t=target,
            image=_image(model),
            differs=differs,
            sets=sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(n), sql.Identifier("r", n)) for n in names
            ),
        )
    )
    return max(cur.rowcount, 0)


def _restored_as_stored(conn: psycopg.Connection, model: Model, plan: query.Plan) -> None:
    """Where the table's triggers change a row as it is written (an ``updated_at`` set to
    now), the row put back is not its before-image: the ledger takes the hash of the row as
    stored, as a run does, or the row would pass for one the application edited."""
    if plan.shape.rewrites and plan.columns:
        rehash.as_stored(
            conn, plan, plan.own_led,
            sql.SQL("b.model = l.model AND b.source_key = l.source_key "
                    "AND b.target_before IS NOT NULL"),
            sql.SQL(", _ferry_rb b"),
        )  # fmt: skip


def _delete(
    conn: psycopg.Connection, spec: Spec, model: Model, plan: query.Plan,
    refs: list[tuple[str, str, str, str | None]],
) -> int:  # fmt: skip
    """Target rows a key owns now but did not own before the run: deleted, if still ferry's
    and referenced by nothing (children went first, so a reference is someone else's)."""
    target = sql.Identifier(model.target_schema, model.target_table)
    key = sql.Identifier(model.key_column)
    led = _ident(spec, "ledger")
    going = sql.SQL(
        "FROM _ferry_rb b JOIN {led} l ON l.model = b.model AND l.source_key = b.source_key "
        "JOIN {t} t ON t.{key} = l.target_uuid "
        "WHERE b.model = {m} AND l.status IN ('migrated', 'deleted') "
        "AND (b.target_before IS NULL OR (b.target_before->>{kc})::uuid <> l.target_uuid)"
    ).format(led=led, t=target, key=key, m=sql.Literal(model.name),
             kc=sql.Literal(model.key_column))  # fmt: skip
    referenced = (
        sql.SQL(" OR ").join(
            sql.SQL("EXISTS (SELECT 1 FROM {rt} x WHERE x.{rc} = t.{key})").format(
                rt=sql.Identifier(ref_schema, ref_name), rc=sql.Identifier(ref_col), key=key
            )
            for ref_schema, ref_name, ref_col, _ in refs
        )
        if refs
        else sql.SQL("false")
    )
    plan.lock(conn, going, delete=True)
    edited, held = conn.execute(
        sql.SQL(
            "SELECT count(*) FILTER (WHERE NOT coalesce({ht}, false)), "
            "count(*) FILTER (WHERE {ref}) {going}"
        ).format(ht=plan.holds_hash("t", sql.SQL("l.row_hash")), ref=referenced, going=going)
    ).fetchone() or (0, 0)
    if edited or held:
        why = []
        if edited:
            why.append(f"{edited} row(s) were edited in the target since ferry wrote them")
        if held:
            why.append(f"{held} row(s) are referenced by rows ferry did not write")
        raise RollbackError(
            f"rollback refused, nothing was changed: {model.target} (model {model.name}): "
            + "; ".join(why)
        )
    cur = conn.execute(
        sql.SQL(
            "DELETE FROM {t} t USING _ferry_rb b JOIN {led} l ON l.model = b.model "
            "AND l.source_key = b.source_key WHERE t.{key} = l.target_uuid AND b.model = {m} "
            "AND l.status IN ('migrated', 'deleted') "
            "AND (b.target_before IS NULL OR (b.target_before->>{kc})::uuid <> l.target_uuid)"
        ).format(
            t=target, led=led, key=key, m=sql.Literal(model.name), kc=sql.Literal(model.key_column)
        )
    )
    return max(cur.rowcount, 0)


def _clear_stage(conn: psycopg.Connection, spec: Spec) -> None:
    """Every run undone: no staged row may stay without a fate, so the stage is emptied."""
    for src in spec.sources:
        ident = stage.stored(conn, spec, src)
        if catalog.exists(conn, ident):
            conn.execute(sql.SQL("TRUNCATE {}").format(ident))
    conn.execute(sql.SQL("DELETE FROM {}").format(_ident(spec, "staged")))
    conn.execute(sql.SQL("DELETE FROM {}").format(_ident(spec, "resync")))


# -- what sync needs -------------------------------------------------------------------------
