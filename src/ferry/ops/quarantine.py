"""Quarantine review: list what is held back, look at one staged row, retry, decide.

Why: quarantined rows are the part of a migration no rule could settle. Before cutover an
operator goes through them: some resolve once a parent arrives or a target constraint is
fixed (``retry``), some are legacy junk that the business agrees to leave behind
(``exclude``, with a note that the report shows). Every decision is recorded in the ledger
(``decided_by``, ``decision``, ``decided_at``) and the transform never overrides a decided
row, so a decision stands across syncs until ``undo``.

Decisions and retries are runs (kinds ``decision`` and ``retry``), taken under the run lock
and with before-images in the history, so they cannot interleave with a sync and a rollback
past them undoes them like any other change.

Health data: ``show_row`` is the one place ferry reads a row's contents for a person, and
only on their explicit request; it returns the values to the caller (the CLI prints them to
the terminal) and never logs them. Everything else here carries keys, reasons and counts.
"""

from __future__ import annotations

import getpass
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from ferry import catalog, ledger
from ferry.conninfo import connect
from ferry.engine import settle, stage
from ferry.engine.pipeline import Progress, session
from ferry.errors import QuarantineError
from ferry.ledger import runs
from ferry.spec import Spec

OPERATOR = "operator"  # the reason of a row an operator excluded
UNDONE = "operator_undone"  # the reason of an undone decision's row until it is settled


@dataclass
class Entry:
    """One ledger row under review: keys, reasons, SQLSTATE and times, never row contents."""

    model: str
    source_table: str
    source_key: str
    status: str
    reason: str | None
    sqlstate: str | None
    message: str | None
    first_seen: datetime
    updated_at: datetime
    tries: int
    decided_by: str | None = None
    decision: str | None = None
    decided_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for k in ("first_seen", "updated_at", "decided_at"):
            out[k] = out[k].isoformat() if out[k] is not None else None
        return out


@dataclass
class RetryResult:
    run_id: int | None  # None: nothing matched, no run was recorded
    keys: int = 0
    transitions: Counter[tuple[str | None, str]] = field(default_factory=Counter)
    still_quarantined: int = 0
    deleted: int = 0

    @property
    def fixed(self) -> int:
        return sum(n for (old, new), n in self.transitions.items() if old == "quarantined"
                   and new != "quarantined")  # fmt: skip


def models_for(spec: Spec, table: str) -> list[str]:
    """``table`` names a model, or a source (every model fed by it)."""
    if any(m.name == table for m in spec.models):
        return [table]
    found = [m.name for m in spec.models if m.source == table]
    if not found:
        raise QuarantineError(f"{table} is neither a model nor a modelled source of {spec.name}")
    return found


def _check_stage(conn: psycopg.Connection, spec: Spec) -> None:
    """A run that settles fates reads the stage: an emptied one would make every row look
    deleted from the source, one staged under another definition of its source than the
    spec's would give the fates of the old one."""
    emptied = ledger.emptied_of(conn, spec, [s.name for s in spec.sources])
    redefined = stage.redefined(conn, spec, note=False)
    gone = [s.name for s in spec.sources if s.name in emptied]
    other = [s.name for s in spec.sources if s.name in redefined]
    conn.commit()
    if gone:
        raise QuarantineError(
            f"the stage copy of {', '.join(gone)} is empty (a server crash or restart empties "
            "ferry's unlogged stage): run ferry sync first, which copies it again"
        )
    if other:
        raise QuarantineError(
            f"{', '.join(other)}: the spec defines the source otherwise than when it was "
            "staged (its table, file, key, columns or encoding): run ferry sync first, which "
            "stages it again"
        )


_ENTRY_COLS = (
    "model, source_table, source_key, status, reason, sqlstate, message, first_seen, "
    "updated_at, tries, decided_by, decision, decided_at"
)


def list_entries(
    target: str, spec: Spec, *, table: str | None = None, reason: str | None = None,
    decided: bool = False, limit: int | None = None,
) -> tuple[list[Entry], int]:  # fmt: skip
    """Quarantined rows (or, with ``decided``, the operator's decisions), oldest first;
    returns at most ``limit`` of them and how many matched in all."""
    models = models_for(spec, table) if table else None
    where = sql.SQL(
        "decided_by IS NOT NULL" if decided else "status = 'quarantined' AND decided_by IS NULL"
    )
    query = sql.SQL(
        "SELECT {cols}, count(*) OVER () FROM {led} WHERE {where} "
        "AND (%s::text[] IS NULL OR model = ANY(%s)) AND (%s::text IS NULL OR reason = %s) "
        "ORDER BY first_seen, model, length(source_key), source_key LIMIT %s"
    ).format(
        cols=sql.SQL(_ENTRY_COLS),
        led=ledger.table(spec, "ledger"),
        where=where,
    )
    with connect(target, app="ferry-quarantine") as conn:
        runs.require_ledger(conn, spec, QuarantineError)
        rows = conn.execute(query, [models, models, reason, reason, limit]).fetchall()
    total = int(rows[0][-1]) if rows else 0
    return [Entry(*r[:-1]) for r in rows], total


def show_row(
    target: str, spec: Spec, table: str, key: str
) -> tuple[str, dict[str, Any] | None, list[Entry]]:
    """The staged row of ``key`` (source name, column -> value, or None) and its ledger rows.

    Row contents: for the operator's terminal only. The caller must not log them.
    """
    source = table if any(s.name == table for s in spec.sources) else None
    if source is None:
        if not any(m.name == table for m in spec.models):
            raise QuarantineError(f"{table} is neither a model nor a source of {spec.name}")
        source = spec.model(table).source
    src = spec.source(source)
    stage_t = sql.Identifier(spec.stage_schema, src.stage_table)
    with connect(target, app="ferry-quarantine") as conn:
        runs.require_ledger(conn, spec, QuarantineError)
        if not catalog.exists(conn, stage_t):
            raise QuarantineError(f"source {source} is not staged")
        try:
            # The key as an untyped literal: the server reads it as the key column's type,
            # so the primary key index finds the row.
            cur = conn.execute(
                sql.SQL("SELECT * FROM {} WHERE {} = %s").format(
                    stage_t, sql.Identifier(src.stage_key)
                ),
                [key],
            )
            row = cur.fetchone()
            names = [d.name for d in cur.description or []]
        except psycopg.errors.DataError:
            raise QuarantineError(f"{key!r} is not a valid key of source {source}") from None
        conn.rollback()
        fates = conn.execute(
            sql.SQL(
                "SELECT {cols} FROM {led} WHERE source_table = %s AND source_key = %s ORDER BY 1"
            ).format(cols=sql.SQL(_ENTRY_COLS), led=ledger.table(spec, "ledger")),
            [source, key],
        ).fetchall()
    values = dict(zip(names, row, strict=True)) if row is not None else None
    return source, values, [Entry(*f) for f in fates]


def retry(
    target: str, spec: Spec, *, table: str | None = None, reason: str | None = None,
    progress: Progress | None = None,
) -> RetryResult:  # fmt: skip
    """Run the models again for the quarantined keys that match (and the children of any
    whose outcome changes), in a run of kind ``retry``; then apply the deletions they queued.

    Useful after something outside the stage changed: a target constraint fixed, a trigger
    corrected, a spec rule adjusted. (A sync retries every quarantined row anyway.)
    """
    progress = progress or Progress()
    models = models_for(spec, table) if table else None
    with runs.opened(target, spec, "ferry-retry", error=QuarantineError) as conn:
        _check_stage(conn, spec)
        selected: dict[str, set[str]] = defaultdict(set)
        for model, key in conn.execute(
            sql.SQL(
                "SELECT model, source_key FROM {} WHERE status = 'quarantined' "
                "AND decided_by IS NULL AND (%s::text[] IS NULL OR model = ANY(%s)) "
                "AND (%s::text IS NULL OR reason = %s)"
            ).format(ledger.table(spec, "ledger")),
            [models, models, reason, reason],
        ):
            selected[model].add(key)
        conn.commit()
        result = RetryResult(None, sum(map(len, selected.values())))
        if not result.keys:
            return result
        with ledger.recorded(conn, spec, "retry") as (run_id, counts):
            result.run_id = run_id
            work_keys = settle.Work(keys={m: set(ks) for m, ks in selected.items()}, retry=True)
            with session(target, spec) as work:
                settled = settle.run(work, target, spec, run_id, progress, 1, work_keys)
                result.transitions.update(settled.transitions)
                result.deleted = settled.deleted_rows
                row = work.execute(
                    sql.SQL(
                        "SELECT count(*) FROM {} WHERE status = 'quarantined' "
                        "AND (model, source_key) IN (SELECT * FROM unnest(%s::text[], "
                        "%s::text[]))"
                    ).format(ledger.table(spec, "ledger")),
                    [
                        [m for m, ks in selected.items() for _ in ks],
                        [k for ks in selected.values() for k in ks],
                    ],
                ).fetchone()
                work.commit()
                result.still_quarantined = int(row[0]) if row else 0
            counts.update(
                retried=result.keys, fixed=result.fixed,
                still_quarantined=result.still_quarantined, deleted=result.deleted,
            )  # fmt: skip
    return result


def _decide(
    target: str, spec: Spec, table: str, key: str, action: str, note: str | None,
    by: str | None,
) -> list[str]:  # fmt: skip
    """Record (``exclude``) or clear (``undo``) an operator's decision on one key, as a run of
    kind ``decision`` with before-images. Returns the models whose ledger row changed."""
    models = models_for(spec, table)
    led = ledger.table(spec, "ledger")
    with runs.opened(target, spec, "ferry-quarantine", error=QuarantineError) as conn:
        _check_stage(conn, spec)
        rows = conn.execute(
            sql.SQL(
                "SELECT model, status, reason, decided_by FROM {} "
                "WHERE model = ANY(%s) AND source_key = %s ORDER BY model"
            ).format(led),
            [models, key],
        ).fetchall()
        conn.commit()
        if not rows:
            raise QuarantineError(f"{table}: no ledger row for key {key}")
        if action == "exclude":
            chosen = [r[0] for r in rows if r[1] == "quarantined" and r[3] is None]
            if not chosen:
                fates = ", ".join(f"{r[0]} {r[1]} ({r[2] or '-'})" for r in rows)
                raise QuarantineError(
                    f"{table} key {key} is not quarantined ({fates}): only a quarantined "
                    "row can be excluded"
                )
        else:
            chosen = [r[0] for r in rows if r[3] is not None]
            if not chosen:
                raise QuarantineError(f"{table} key {key} carries no operator decision")
        with ledger.recorded(conn, spec, "decision") as (run_id, counts):
            with conn.transaction():
                for name in chosen:
                    m = spec.model(name)
                    ledger.record_history(conn, spec, run_id, m.name, m.target, m.key_column, [key])
                if action == "exclude":
                    conn.execute(
                        sql.SQL(
                            "UPDATE {} SET status = 'excluded', reason = %s, decided_by = %s, "
                            "decision = %s, decided_at = clock_timestamp(), run_id = %s, "
                            "updated_at = clock_timestamp() "
                            "WHERE model = ANY(%s) AND source_key = %s"
                        ).format(led),
                        [OPERATOR, by, note, run_id, chosen, key],
                    )
                else:
                    # Back to quarantine, without the old SQLSTATE: settled below, the
                    # row is evaluated afresh and written as whatever it yields now.
                    conn.execute(
                        sql.SQL(
                            "UPDATE {} SET status = CASE status WHEN 'deleted' THEN status "
                            "ELSE 'quarantined' END, reason = CASE status WHEN 'deleted' "
                            "THEN reason ELSE %s END, sqlstate = NULL, message = NULL, "
                            "decided_by = NULL, decision = NULL, decided_at = NULL, "
                            "run_id = %s, updated_at = clock_timestamp() "
                            "WHERE model = ANY(%s) AND source_key = %s"
                        ).format(led),
                        [UNDONE, run_id, chosen, key],
                    )
            # The rows whose fate follows this one's (children, rows merging into it)
            # follow it now, as they would in a fresh migrate with the decision made.
            work = settle.Work(
                keys={name: {key} for name in chosen} if action == "undo" else {},
                outcome={name: {key} for name in chosen},
            )
            with session(target, spec) as settling:
                settle.run(settling, target, spec, run_id, Progress(), 1, work)
            counts.update(action=action, models=chosen, key=key, rows=len(chosen))
            if by:
                counts["by"] = by
    return chosen


def exclude(
    target: str, spec: Spec, table: str, key: str, note: str, by: str | None = None
) -> list[str]:
    """An operator leaves a quarantined row behind, on purpose and with a reason.

    The row becomes ``excluded`` with reason ``operator``; ``by`` defaults to the OS user.
    """
    if not note.strip():
        raise QuarantineError("an exclusion needs a note: why is this row left behind?")
    return _decide(target, spec, table, key, "exclude", note.strip(), by or getpass.getuser())


def undo(target: str, spec: Spec, table: str, key: str) -> list[str]:
    """Clear an operator's decision: the row is evaluated again at once, and takes the fate
    the spec gives it now (with the rows whose fate follows its own)."""
    return _decide(target, spec, table, key, "undo", None, None)
