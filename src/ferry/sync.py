"""Differential sync: bring the target in step with a legacy database that kept running.

Each source is diffed against its stage copy (``diff.py``: checksums over key buckets on each
server), and only changed rows are re-staged. Then only the affected rows are transformed:
the changed keys, the rows still in quarantine (a parent may have arrived), and the children
of rows whose fate or UUID changed. Deleted source rows follow their model's ``on_delete``.
A row the application edited since ferry wrote it is not overwritten: it is a conflict.

A sync takes over only from a migrate that finished (``_check_migrated``). A sync that dies
after re-staging (killed, a lost connection, an error in a model) leaves the stage ahead of
the ledger: the next diff finds nothing to do for the rows it changed. So the keys a diff
found go into ``<ledger>.resync`` in the transaction that re-stages them, as a rollback
hands keys back (``rollback.py``), and stay there until a sync ends well. A sync that finds
keys an earlier one left there also looks again at the children of every key it looks at,
since the fates that the dead sync changed before it died are no change to it.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ferry import diff, ledger, rollback, stage, status, transform
from ferry.errors import FerryError
from ferry.pipeline import Progress, SessionPairs, _session, recorded_run, run_model
from ferry.spec import Model, Source, Spec


@dataclass
class SyncResult:
    run_id: int
    seconds: float = 0.0
    bytes_from_source: int = 0
    diffs: dict[str, diff.TableDiff] = field(default_factory=dict)
    models: list[transform.ModelResult] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    source_counts: dict[str, ledger.SourceCounts] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(d.changed for d in self.diffs.values()) or bool(self.counts.get("resynced"))


def _restage(
    source: str, target: str, spec: Spec, data_dir: Path, jobs: int, run_id: int
) -> dict[str, diff.TableDiff]:
    """Diff every source against its stage and copy only what changed; the keys it changed
    are handed on in the same transaction (``_hand_on``)."""
    pairs = SessionPairs(source, target, "ferry-sync")

    def one(src: Source) -> tuple[str, diff.TableDiff]:
        s, t = pairs.get()
        stage_rel = (spec.stage_schema, src.stage_table)
        if not _stage_exists(t, spec, src):
            raise FerryError(f"source {src.name} was never staged: run ferry migrate first")
        if src.csv is not None:
            assert src.columns is not None
            _load_csv(t, src, data_dir)
            result = diff.sync_stage_table(
                t, ("pg_temp", "_ferry_csv"), t, stage_rel, [src.key], list(src.columns)
            )
            t.execute("DROP TABLE IF EXISTS pg_temp._ferry_csv")
        else:
            assert src.table is not None
            cols = [c.name for c in stage.source_columns(s, src.table)]
            s.rollback()
            result = diff.sync_stage_table(
                s,
                tuple(src.table.split(".")),
                t,
                stage_rel,
                [src.key],
                cols,  # type: ignore[arg-type]
            )
            s.rollback()
        _hand_on(t, spec, src, result, run_id)
        # The stage's changes and the keys handed on: one transaction of this session.
        t.commit()
        return src.name, result

    with pairs, ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return dict(pool.map(one, spec.sources))


def _check_migrated(conn: psycopg.Connection, spec: Spec, run_id: int) -> None:
    """A sync takes over from a migrate that finished. After one that died, the stage holds
    every source row and the ledger only some: a diff would find nothing, and the rows the
    migrate never reached would stay missing while every sync said all was well."""
    last = status.last_run(conn, spec, "kind = 'migrate' AND run_id < %s", [run_id])
    conn.commit()
    if last is None:
        raise FerryError("nothing was migrated into this target yet: run ferry migrate first")
    if last.status != "ok":
        raise FerryError(
            f"the last migrate (run {last.run_id}) did not finish: run ferry migrate again (it "
            "goes on from where it stopped), then sync"
        )


def _hand_on(
    conn: psycopg.Connection, spec: Spec, src: Source, found: diff.TableDiff, run_id: int
) -> None:
    """Record the keys a diff changed in the stage for every model of the source, until a
    sync takes them (``rollback.pending_resync``, cleared by ``rollback.clear_resync``)."""
    keys = [_key_text(k) for k in found.inserted + found.updated + found.deleted]
    models = [m.name for m in spec.models if m.source == src.name]
    if not keys or not models:
        return
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (model, source_key, run_id) SELECT m, k, %s "
            "FROM unnest(%s::text[]) m, unnest(%s::text[]) k "
            "ON CONFLICT (model, source_key) DO UPDATE SET run_id = EXCLUDED.run_id"
        ).format(sql.Identifier(spec.ledger_schema, "resync")),
        [run_id, models, keys],
    )


def _stage_exists(conn: psycopg.Connection, spec: Spec, src: Source) -> bool:
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL",
        [sql.Identifier(spec.stage_schema, src.stage_table).as_string(conn)],
    ).fetchone()
    return bool(row and row[0])


def _load_csv(conn: psycopg.Connection, src: Source, data_dir: Path) -> None:
    """The file as it is now, in a temp table beside its stage: both sides on one server."""
    assert src.columns is not None
    conn.execute("DROP TABLE IF EXISTS pg_temp._ferry_csv")
    conn.execute(
        sql.SQL("CREATE TEMP TABLE _ferry_csv ({})").format(
            sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in src.columns)
        )
    )
    path = data_dir / (src.csv or "")
    try:
        with (
            path.open("rb") as fh,
            conn.cursor().copy("COPY _ferry_csv FROM STDIN (FORMAT CSV, HEADER true)") as copy,
        ):
            while block := fh.read(1 << 20):
                copy.write(block)
    except OSError as exc:
        raise FerryError(f"source {src.name}: cannot read {path}: {exc.strerror}") from None
    conn.execute(
        sql.SQL("ALTER TABLE _ferry_csv ADD PRIMARY KEY ({})").format(sql.Identifier(src.key))
    )
    conn.commit()


def _key_text(key: tuple[Any, ...]) -> str:
    return str(key[0])


def _queue_deletes(
    conn: psycopg.Connection, spec: Spec, model: Model, keys: list[str], run_id: int
) -> None:
    """Queue the target rows ferry wrote for these keys; ``apply_pending_deletes`` removes
    them once every model has run, children first."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {pend} (target_table, target_uuid, model, source_key, row_hash, "
            "run_id) SELECT target_table, target_uuid, model, source_key, row_hash, %s "
            "FROM {led} WHERE model = %s AND source_key = ANY(%s) AND status = 'migrated' "
            "AND target_uuid IS NOT NULL ON CONFLICT DO NOTHING"
        ).format(
            pend=sql.Identifier(spec.ledger_schema, "pending_deletes"),
            led=sql.Identifier(spec.ledger_schema, "ledger"),
        ),
        [run_id, model.name, keys],
    )


def _mark_deleted(
    conn: psycopg.Connection, spec: Spec, model: Model, keys: list[str], run_id: int
) -> set[str]:
    """Source rows that are gone: their ledger rows say so, and their target rows follow the
    model's ``on_delete`` (deleted after every model ran, children first). Returns the keys
    whose ledger row changed."""
    if not keys:
        return set()
    led = sql.Identifier(spec.ledger_schema, "ledger")
    reason = {"delete": "source_deleted", "keep": "kept", "flag": "flagged"}[model.on_delete]
    with conn.transaction():
        ledger.record_history(conn, spec, run_id, model.name, model.target, model.key_column, keys)
        if model.on_delete == "delete":
            _queue_deletes(conn, spec, model, keys, run_id)
        rows = conn.execute(
            sql.SQL(
                "UPDATE {led} SET status = 'deleted', reason = %s, run_id = %s, "
                "target_uuid = CASE WHEN %s THEN NULL ELSE target_uuid END, "
                "updated_at = clock_timestamp() "
                "WHERE model = %s AND source_key = ANY(%s) AND status <> 'deleted' "
                "RETURNING source_key"
            ).format(led=led),
            [reason, run_id, model.on_delete == "delete", model.name, keys],
        ).fetchall()
    return {r[0] for r in rows}


def _quarantined(
    conn: psycopg.Connection, spec: Spec, model: Model, refused_only: bool = False
) -> list[str]:
    """Quarantined keys to try again. A rule's verdict is a function of the stage and the
    parents' fates: when no stage row changed it cannot change, and only the rows the
    database refused (the target may have changed under them) are worth another try."""
    rows = conn.execute(
        sql.SQL(
            "SELECT source_key FROM {} WHERE model = %s AND status = 'quarantined' "
            "AND (NOT %s OR sqlstate IS NOT NULL)"
        ).format(sql.Identifier(spec.ledger_schema, "ledger")),
        [model.name, refused_only],
    ).fetchall()
    return [r[0] for r in rows]


def _children_of(
    conn: psycopg.Connection, spec: Spec, model: Model, parent: str, parent_keys: set[str]
) -> set[str]:
    """Keys of ``model``'s rows that point at any of ``parent_keys`` of model ``parent``."""
    found: set[str] = set()
    body = sql.SQL(spec.model_sql(model))  # type: ignore[arg-type]
    for p in model.parents:
        if p.model != parent or not parent_keys:
            continue
        rows = conn.execute(
            sql.SQL("SELECT m0._key::text FROM ({}) m0 WHERE m0.{}::text = ANY({})").format(
                body, sql.Identifier(p.key), sql.Literal(sorted(parent_keys))
            )
        ).fetchall()
        found.update(r[0] for r in rows)
    conn.commit()
    return found


def _release(
    conn: psycopg.Connection, spec: Spec, model: Model, keys: set[str], run_id: int
) -> set[str]:
    """Ledger rows of ``model`` whose source row the model no longer yields (a record that
    changed kind now belongs to another model; a role removed from a list): their target
    rows are queued for deletion and their ledger rows removed."""
    if not keys:
        return set()
    led = sql.Identifier(spec.ledger_schema, "ledger")
    body = sql.SQL(spec.model_sql(model))  # type: ignore[arg-type]
    # Typed like the stage key, so that the stage's primary key index finds them.
    key_type = sql.SQL(transform.Plan(conn, spec, model).key_type)
    yielded = {
        r[0]
        for r in conn.execute(
            sql.SQL("SELECT m0._key::text FROM ({}) m0 WHERE m0._key = ANY({}::{}[])").format(
                body, sql.Literal(sorted(keys)), key_type
            )
        )
    }
    gone = sorted(keys - yielded)
    if not gone:
        conn.commit()
        return set()
    with conn.transaction():
        ledger.record_history(conn, spec, run_id, model.name, model.target, model.key_column, gone)
        _queue_deletes(conn, spec, model, gone, run_id)
        rows = conn.execute(
            sql.SQL(
                "DELETE FROM {} WHERE model = %s AND source_key = ANY(%s) RETURNING source_key"
            ).format(led),
            [model.name, gone],
        ).fetchall()
    return {r[0] for r in rows}


def _ledger_keys(conn: psycopg.Connection, spec: Spec, model: Model) -> set[str]:
    rows = conn.execute(
        sql.SQL("SELECT source_key FROM {} WHERE model = %s AND status <> 'deleted'").format(
            sql.Identifier(spec.ledger_schema, "ledger")
        ),
        [model.name],
    ).fetchall()
    return {r[0] for r in rows}


def sync(
    source: str, target: str, spec: Spec, *, data_dir: Path | None = None, jobs: int = 2,
    progress: Progress | None = None,
) -> SyncResult:  # fmt: skip
    """One differential sync. Safe to repeat; a sync that finds nothing writes nothing but
    its run record."""
    progress = progress or Progress()
    t0 = time.perf_counter()
    with recorded_run(target, spec, "sync") as (conn, run_id, counts):
        _check_migrated(conn, spec, run_id)
        rollback.ensure_resync(conn, spec)
        result = SyncResult(run_id)
        _sync(source, target, spec, data_dir or spec.base_dir, jobs, progress, result)
        result.seconds = time.perf_counter() - t0
        result.counts["seconds"] = round(result.seconds, 3)
        counts.update(result.counts)
    return result


def _sync(
    source: str, target: str, spec: Spec, data_dir: Path, jobs: int, progress: Progress,
    result: SyncResult,
) -> None:  # fmt: skip
    result.diffs = _restage(source, target, spec, data_dir, jobs, result.run_id)
    result.bytes_from_source = sum(d.bytes_from_source for d in result.diffs.values())
    changed = {n: {_key_text(k) for k in d.inserted + d.updated} for n, d in result.diffs.items()}
    deleted = {n: [_key_text(k) for k in d.deleted] for n, d in result.diffs.items()}
    transitions: Counter[tuple[str | None, str]] = Counter()
    outcome_changed: dict[str, set[str]] = defaultdict(set)
    conflicts_before = 0
    with _session(target, spec) as conn:
        for name, d in result.diffs.items():
            if d.changed:
                rows = ledger.stage_rows(conn, spec, name)
                staged = stage.StageResult(name, rows, d.bytes_from_source, d.seconds)
                stage.record(conn, spec, staged, result.run_id)
        conn.commit()
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE conflict").format(
                sql.Identifier(spec.ledger_schema, "ledger")
            )
        ).fetchone()
        conflicts_before = int(row[0]) if row else 0
        conn.commit()
        # Keys a rollback or a sync that died handed on: the stage is ahead of the ledger for
        # them, so the diff alone would never bring them back (see rollback.py, and above).
        again, gone, rederive = rollback.pending_resync(conn, spec, result.run_id)
        for name, ks in again.items():
            changed.setdefault(name, set()).update(ks)
        for name, ks in gone.items():
            deleted[name] = sorted(set(deleted.get(name, [])) | ks)
        resynced = sum(map(len, again.values())) + sum(map(len, gone.values())) + len(rederive)
        if resynced:
            result.counts["resynced"] = resynced
        resumed = bool(resynced)
        quiet = not any(changed.values()) and not any(deleted.values()) and not rederive
        moved = {name for name in {*changed, *deleted} if changed.get(name) or deleted.get(name)}
        for model in spec.order():
            src_changed = changed.get(model.source, set())
            src_deleted = deleted.get(model.source, [])
            # Another source its SQL reads changed (a lookup, a table joined for a column):
            # which of its rows that reaches is not known here, so the model is computed
            # whole, and only the rows that differ are written.
            others = moved - {model.source}
            through = bool(others and others & transform.reads(conn, spec, model))
            keys: set[str] | None
            if model.accounts:
                outcome_changed[model.name] |= _mark_deleted(conn, spec, model, src_deleted,
                                                             result.run_id)  # fmt: skip
                if resumed:
                    outcome_changed[model.name] |= set(src_deleted)
                if through:
                    keys = None
                else:
                    keys = set(src_changed)
                    keys |= set(_quarantined(conn, spec, model, refused_only=quiet))
                    for p in {p.model for p in model.parents}:
                        keys |= _children_of(conn, spec, model, p, outcome_changed[p])
                    keys -= set(src_deleted)
            else:
                # Derived rows (a list split into rows): small, recomputed whole when touched.
                touched = bool(src_changed or src_deleted or through or model.name in rederive)
                touched = touched or any(outcome_changed[p.model] for p in model.parents)
                keys = None if touched else set(_quarantined(conn, spec, model, quiet))
            conn.commit()
            if keys is not None and not keys:
                continue
            before = _ledger_keys(conn, spec, model) if keys is None else set()
            runner_result = run_model(
                target, spec, model.name, result.run_id, progress, jobs=jobs,
                keys=None if keys is None else sorted(keys),
            )  # fmt: skip
            result.models.append(runner_result)
            transitions.update(runner_result.transitions)
            outcome_changed[model.name] |= runner_result.changed_keys
            if resumed:
                outcome_changed[model.name] |= before if keys is None else keys
            # Keys the model was asked about but no longer yields leave it.
            released = _release(conn, spec, model, before if keys is None else keys, result.run_id)
            outcome_changed[model.name] |= released
        deleted_rows, _ = transform.apply_pending_deletes(conn, spec, result.run_id)
        touched: dict[str, set[str]] = defaultdict(set)
        for name in result.diffs:
            touched_keys = changed.get(name, set()) | set(deleted.get(name, []))
            if touched_keys:
                touched[name] |= touched_keys
        for m in result.models:
            model = spec.model(m.model)
            if model.accounts and (m.written or m.transitions or m.changed_keys):
                touched[model.source] |= m.changed_keys
        result.source_counts = ledger.check_invariant(conn, spec, dict(touched))
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE conflict").format(
                sql.Identifier(spec.ledger_schema, "ledger")
            )
        ).fetchone()
        rollback.clear_resync(conn, spec)
        conn.commit()
    result.counts.update(
        {
            "source_inserted": sum(len(d.inserted) for d in result.diffs.values()),
            "source_updated": sum(len(d.updated) for d in result.diffs.values()),
            "source_deleted": sum(len(d.deleted) for d in result.diffs.values()),
            "bytes_from_source": result.bytes_from_source,
            "inserted": transitions[(None, "migrated")],
            "updated": transitions[("migrated", "migrated")],
            "deleted": deleted_rows,
            "fixed_on_retry": transitions[("quarantined", "migrated")],
            "newly_quarantined": sum(
                n for (old, new), n in transitions.items() if new == "quarantined" and old != new
            ),
            "newly_excluded": sum(
                n for (old, new), n in transitions.items() if new == "excluded" and old != new
            ),
            "conflicts": int(row[0]) if row else 0,
            "new_conflicts": max(0, (int(row[0]) if row else 0) - conflicts_before),
        }
    )
