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

Where the target captures changes from the source's WAL (``wal.py``), the slot names the
changed keys instead, and only those are compared and re-staged (``diff.sync_stage_keys``);
a source the slot cannot speak for (a TRUNCATE, no key, ...) is diffed whole, as is every
source with ``full``. What follows the re-stage is the same either way.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ferry import catalog, ledger
from ferry.engine import chunk, settle, stage
from ferry.engine.columns import Column
from ferry.engine.keys import composite_text
from ferry.engine.pipeline import Progress, SessionPairs, session
from ferry.errors import FerryError
from ferry.ledger.runs import recorded_run
from ferry.spec import Source, Spec
from ferry.sync import diff, keyless, wal


@dataclass
class SyncResult:
    run_id: int
    seconds: float = 0.0
    bytes_from_source: int = 0
    diffs: dict[str, diff.TableDiff] = field(default_factory=dict)
    models: list[chunk.ModelResult] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    source_counts: dict[str, ledger.SourceCounts] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # warnings for the operator (no row data)

    @property
    def changed(self) -> bool:
        return any(d.changed for d in self.diffs.values()) or bool(self.counts.get("resynced"))


def _restage(
    source: str, target: str, spec: Spec, data_dir: Path, jobs: int, run_id: int,
    emptied: set[str], feed: wal.Changes | None = None, full: bool = False,
    redefined: frozenset[str] = frozenset(),
) -> tuple[
    dict[str, diff.TableDiff], dict[str, tuple[set[str], set[str]]], set[str]
]:  # fmt: skip
    """Diff every source against its stage and copy only what changed; the keys it changed
    are handed on (``ledger.hand_on``), and the staging record updated, in the same
    transaction; they are returned as the ledger names them (changed, deleted;
    ``_key_texts``). ``emptied``: the sources whose stage copy was emptied
    (``ledger.emptied_of``; a server crash, or a restart after a failover, empties unlogged
    tables), copied whole.
    With a ``feed`` from the WAL, a table is compared only for the keys it names, unless
    it says to compare the whole table (or the stage was emptied). A CSV file the stage
    holds already (by its digest) is not read into the database; ``full``: it is.
    A table whose columns are no longer those it was staged with (one added, dropped,
    renamed, retyped), and a source whose definition in the spec changed (``redefined``:
    its table, file, key, columns or encoding; ``stage.redefined``), is staged again whole,
    as a migrate would stage it; those sources are returned too, their models to be
    computed whole."""
    pairs = SessionPairs(source, target, "ferry-sync")
    texts: dict[str, tuple[set[str], set[str]]] = {}
    restaged: set[str] = set()
    shapes: dict[str, tuple[str, str]] = {}

    def anew(src: Source, t: psycopg.Connection) -> tuple[str, diff.TableDiff]:
        """Stage ``src`` again whole, as a migrate would."""
        if src.csv is not None:
            staged = stage.stage_csv(t, spec, src, data_dir)
        else:
            s = pairs.source_session()
            if feed is not None and feed.export is not None:
                feed.export.use(s)  # a slot made again: read in the snapshot it exported
            staged = stage.stage_table(s, t, spec, src)
        stage.record(t, spec, staged, run_id)
        t.commit()
        restaged.add(src.name)
        return src.name, diff.TableDiff(source=src.table or src.name, stage=src.stage_table)

    def one(src: Source) -> tuple[str, diff.TableDiff]:
        t = pairs.target_session()
        if src.name in redefined:
            return anew(src, t)
        stage_rel = (spec.stage_schema, src.stage_table)
        shape = None  # the source table's definition, read before a whole diff (WAL only)
        now: list[Column] = []  # its columns, read for a whole diff
        if not src.keyless and src.table is not None and _whole(src, feed, emptied):
            if not shapes:
                shapes.update(stage.recorded_shapes(t, spec))
            s = pairs.source_session()
            shape = catalog.table_shapes(s, [src.table])[0] if feed is not None else None
            recorded = shapes.get(src.name, (None, None))[0]
            _, now = stage.staged_columns(s, src)
            s.rollback()
            if recorded is None:  # staged by a ferry that did not record columns: from now
                stage.note_shape(t, spec, src.name, stage.columns_digest(now), None)
            elif stage.columns_digest(now) != recorded:
                return anew(src, t)
        whole = True  # the diff read the whole stage (its first level counted its rows)
        digest = None  # a CSV source's file, as the stage now holds it
        if src.keyless:  # no key to diff by: copied whole, identities compared
            result = keyless.restage(pairs.source_session(), t, spec, src, data_dir)
            whole = False
        elif src.csv is not None:
            assert src.columns is not None
            digest = stage.file_digest(src, data_dir)
            if not full and src.name not in emptied and stage.unchanged_file(t, spec, src, digest):
                # The file the stage holds: nothing to load or compare.
                result = diff.TableDiff(source=src.csv, stage=src.stage_table)
                whole = False
            else:
                _load_csv(t, src, data_dir)
                result = diff.sync_stage_table(
                    t, ("pg_temp", "_ferry_csv"), t, stage_rel, src.keys, list(src.columns)
                )
                t.execute("DROP TABLE IF EXISTS pg_temp._ferry_csv")
                if not result.changed:  # the same rows (the file was written again)
                    stage.note_digest(t, spec, src.name, digest)
        elif feed is not None and src.name not in feed.full and src.name not in emptied:
            assert src.table is not None
            keys = sorted(feed.keys.get(src.name, ()), key=str)
            whole = False
            if keys:
                s = pairs.source_session()
                cols = [c.name for c in stage.source_columns(s, src.table)]
                s.rollback()
                result = diff.sync_stage_keys(
                    s, tuple(src.table.split(".")), t, stage_rel, src.keys, cols, keys,  # type: ignore[arg-type]
                )  # fmt: skip
                s.rollback()
            else:  # the WAL names no change of this table: nothing to read
                result = diff.TableDiff(source=src.table, stage=src.stage_table)
        else:
            assert src.table is not None
            s = pairs.source_session()
            cols = [c.name for c in now]  # read above: this diff is whole (``_whole``)
            if feed is not None and feed.export is not None:
                feed.export.use(s)  # a slot made again: diff in the snapshot it exported
            result = diff.sync_stage_table(
                s,
                tuple(src.table.split(".")),
                t,
                stage_rel,
                src.keys,
                cols,  # type: ignore[arg-type]
            )
            s.rollback()
        changed = _key_texts(t, spec, src, [*result.inserted, *result.updated])
        gone = _key_texts(t, spec, src, list(result.deleted))
        ledger.hand_on(
            t, spec, [m.name for m in spec.models if m.source == src.name], changed + gone, run_id
        )
        texts[src.name] = (set(changed), set(gone))
        # A stage a crash emptied holds the source as it is now even when the diff found it
        # alike (the source is empty too): its record counted the rows it held before.
        if result.changed or src.name in emptied:
            rows = _staged_rows(t, spec, src, result, whole)
            stage.record(
                t, spec, stage.StageResult(src.name, rows, result.bytes_from_source,
                                           result.seconds, digest), run_id,
            )  # fmt: skip
        if whole and feed is not None and src.table is not None:
            stage.note_shape(t, spec, src.name, None, shape)  # read before the diff
        # The stage's changes, the keys handed on and the record: one transaction.
        t.commit()
        return src.name, result

    with pairs, ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return dict(pool.map(one, spec.sources)), texts, restaged


def _whole(src: Source, feed: wal.Changes | None, emptied: set[str]) -> bool:
    """Whether this sync compares the table of ``src`` whole: always by checksums; from the
    WAL where it says to (its definition changed, columns among it: ``wal._redefined``), or
    the stage was emptied. Only then can its columns have changed since it was staged."""
    return feed is None or src.name in feed.full or src.name in emptied


def _staged_rows(
    conn: psycopg.Connection, spec: Spec, src: Source, found: diff.TableDiff, whole: bool
) -> int:
    """Rows the stage holds after the diff was applied, for its record: where the stage
    holds each key once (``ledger.stage_rows`` counts keys), the rows before (the diff's
    first level counted them when it read the whole stage, else the last record says) less
    those the apply removed plus those it copied; else counted (a scan of the whole stage,
    2M rows for a few changed). The record changes in the transaction that changes the
    stage, so it is the stage's count whenever the stage is not empty (a crash empties it:
    then the whole table is diffed)."""
    if found.applied is not None and stage.unique_key(conn, spec, src):
        before = found.stage_rows if whole else stage.recorded_rows(conn, spec, src.name)
        if before is not None:
            return before - found.applied.rows_deleted + found.applied.rows_copied
    return ledger.stage_rows(conn, spec, src.name)


def _check_migrated(conn: psycopg.Connection, spec: Spec, run_id: int) -> None:
    """A sync takes over from a migrate that finished. After one that died, the stage holds
    every source row and the ledger only some: a diff would find nothing, and the rows the
    migrate never reached would stay missing while every sync said all was well."""
    last = ledger.last_run(conn, spec, "kind = 'migrate' AND run_id < %s", [run_id])
    conn.commit()
    if last is None:
        raise FerryError("nothing was migrated into this target yet: run ferry migrate first")
    if last.status != "ok":
        raise FerryError(
            f"the last migrate (run {last.run_id}) did not finish: run ferry migrate again (it "
            "goes on from where it stopped), then sync"
        )
    names = [src.name for src in spec.sources]
    staged = ledger.staged_sources(conn, spec, names)
    conn.commit()
    for name in names:
        if name not in staged:
            raise FerryError(f"source {name} was never staged: run ferry migrate first")


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
    conn.execute(  # not unique: a key the file repeats is quarantined, not refused
        sql.SQL("CREATE INDEX ON _ferry_csv ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, src.keys))
        )
    )
    conn.commit()


# Key types whose values Python prints as PostgreSQL does.
_PRINTED_ALIKE = ("smallint", "integer", "bigint", "text", "uuid")


def _key_texts(
    conn: psycopg.Connection, spec: Spec, src: Source, keys: list[tuple[Any, ...]]
) -> list[str]:
    """Keys as the ledger names them: the text PostgreSQL prints for the model's ``_key``
    (``ROW(a, b)::text`` for a composite key), in the settings of the target's sessions.
    Integers, text and UUIDs print in Python as they do there; other values (a timestamp,
    a numeric, a date in another DateStyle, a ``char(n)`` padded with spaces its text has
    not) are printed by PostgreSQL, from the stage's key types: a text of Python's own named
    a key the model did not, and its row was lost."""
    if not keys:
        return []
    types = stage.key_types(conn, spec, src)
    if all(t in _PRINTED_ALIKE or t.startswith("character varying") for t in types) and all(
        type(v) in (int, str, uuid.UUID) or v is None for k in keys for v in k
    ):
        if len(keys[0]) == 1:
            return [str(k[0]) for k in keys]
        return [composite_text(list(k)) for k in keys]
    arrays = sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(t)) for t in types)
    names = sql.SQL(", ").join(sql.Identifier(f"k{i}") for i in range(len(types)))
    shown = names if len(types) == 1 else sql.SQL("ROW({})").format(names)
    rows = conn.execute(
        sql.SQL(
            "SELECT ({shown})::text FROM unnest({arrays}) WITH ORDINALITY u({names}, _n) "
            "ORDER BY _n"
        ).format(shown=shown, arrays=arrays, names=names),
        [[k[i] for k in keys] for i in range(len(types))],
    ).fetchall()
    return [r[0] for r in rows]


def sync(
    source: str, target: str, spec: Spec, *, data_dir: Path | None = None, jobs: int = 2,
    progress: Progress | None = None, full: bool = False,
) -> SyncResult:  # fmt: skip
    """One differential sync. Safe to repeat; a sync that finds nothing writes nothing but
    its run record. ``full``: where the WAL names the changed keys, compare every table by
    checksums all the same (an audit)."""
    progress = progress or Progress()
    t0 = time.perf_counter()
    with recorded_run(target, spec, "sync") as (conn, run_id, counts):
        _check_migrated(conn, spec, run_id)
        result = SyncResult(run_id)
        with wal.closing(wal.read(source, conn, spec, full=full)) as feed:
            data = data_dir or spec.base_dir
            emptied = ledger.emptied_of(conn, spec, [src.name for src in spec.sources])
            redefined = frozenset(stage.redefined(conn, spec))
            conn.commit()
            _sync(
                source, target, spec, data, jobs, progress, result, emptied, feed, full,
                redefined,
            )  # fmt: skip
        if feed is not None:
            # Only now, the sync's work committed: a sync that died before read them again.
            note = wal.advance(source, conn, spec, feed)
            result.notes += feed.notes + ([note] if note else [])
            result.counts["changes"] = "wal"
            result.counts["wal"] = feed.counts()
            result.bytes_from_source += feed.bytes
            result.counts["bytes_from_source"] = result.bytes_from_source
        if result.notes:
            result.counts["notes"] = result.notes
        result.seconds = time.perf_counter() - t0
        result.counts["seconds"] = round(result.seconds, 3)
        counts.update(result.counts)
    return result


def _sync(
    source: str, target: str, spec: Spec, data_dir: Path, jobs: int, progress: Progress,
    result: SyncResult, emptied: set[str], feed: wal.Changes | None = None, full: bool = False,
    redefined: frozenset[str] = frozenset(),
) -> None:  # fmt: skip
    result.diffs, texts, restaged = _restage(
        source, target, spec, data_dir, jobs, result.run_id, emptied, feed, full, redefined
    )
    if restaged:
        result.counts["restaged"] = sorted(restaged)
        result.notes.append(
            f"source {', '.join(sorted(restaged))}: its columns, or its definition in the "
            "spec, changed since it was staged; staged again whole, its models computed whole"
        )
        emptied = emptied | restaged
    result.bytes_from_source = sum(d.bytes_from_source for d in result.diffs.values())
    changed = {n: c for n, (c, _) in texts.items()}
    deleted = {n: d for n, (_, d) in texts.items()}
    if emptied:
        result.counts["stage_emptied"] = sorted(emptied)
    with session(target, spec) as conn:
        conflicts_before = _conflicts(conn, spec)
        # Keys a rollback or a sync that died handed on: the stage is ahead of the ledger for
        # them, so the diff alone would never bring them back (see rollback.py, and above).
        again, gone, rederive = ledger.pending_resync(conn, spec, result.run_id)
        for name, ks in again.items():
            changed.setdefault(name, set()).update(ks)
        for name, ks in gone.items():
            deleted.setdefault(name, set()).update(ks)
        resynced = sum(map(len, again.values())) + sum(map(len, gone.values())) + len(rederive)
        if resynced:
            result.counts["resynced"] = resynced
        quiet = not any(changed.values()) and not any(deleted.values()) and not rederive
        # A stage a crash emptied was copied again whole: its models are computed whole, and
        # the fates of rows deleted from the source meanwhile show as keys not staged. So
        # are the models whose target's rules changed since they last ran.
        whole = {m.name for m in spec.models if m.source in emptied} | rederive
        ruled = settle.rules_changed(conn, spec)
        if ruled:
            result.counts["rules_changed"] = sorted(ruled)
            result.notes.append(
                f"model {', '.join(sorted(ruled))}: its target's constraints, indexes, "
                "triggers or types are not those it last ran under (changed, or forgotten "
                "by a rollback); computed whole"
            )
        whole |= ruled
        work = settle.Work(
            changed, deleted, whole=whole, quarantined="refused" if quiet else "all",
            resumed=bool(resynced),
        )  # fmt: skip
        proven = not full and _proven(conn, spec, result.run_id)
        settled = settle.run(
            conn, target, spec, result.run_id, progress, jobs, work, emptied, proven
        )
        result.models = settled.models
        result.source_counts = settled.counts
        if settled.reconciled:
            result.counts["reconciled"] = settled.reconciled
        if settled.redefined:
            result.counts["redefined"] = sorted(settled.redefined)
            result.notes.append(
                f"model {', '.join(sorted(settled.redefined))}: its definition in the spec "
                "changed since it last ran whole (or it is new); computed whole"
            )
        # Counted again only where the run wrote: the others' flags are as they were.
        after = {m: n for m, n in conflicts_before.items() if m not in settled.written}
        after.update(_conflicts(conn, spec, settled.written))
        conflicts = sum(after.values())
        ledger.clear_resync(conn, spec)
        conn.commit()
    transitions = settled.transitions
    result.counts.update(
        {
            "source_inserted": sum(len(d.inserted) for d in result.diffs.values()),
            "source_updated": sum(len(d.updated) for d in result.diffs.values()),
            "source_deleted": sum(len(d.deleted) for d in result.diffs.values()),
            "bytes_from_source": result.bytes_from_source,
            "inserted": transitions[(None, "migrated")],
            "updated": transitions[("migrated", "migrated")],
            "deleted": settled.deleted_rows,
            "fixed_on_retry": transitions[("quarantined", "migrated")],
            "newly_quarantined": sum(
                n for (old, new), n in transitions.items() if new == "quarantined" and old != new
            ),
            "newly_excluded": sum(
                n for (old, new), n in transitions.items() if new == "excluded" and old != new
            ),
            "conflicts": conflicts,
            "new_conflicts": max(0, conflicts - sum(conflicts_before.values())),
        }
    )


# Runs that end by proving the invariant for what they changed (a rollback leaves the stage
# ahead of the ledger for the next sync to settle).
PROVING_RUNS = ("migrate", "sync", "retry", "decision")


def _proven(conn: psycopg.Connection, spec: Spec, run_id: int) -> bool:
    """Whether the run before this one proved the invariant and ended well: what it did not
    change holds as the runs before it proved."""
    last = ledger.last_run(conn, spec, "run_id < %s", [run_id])
    conn.commit()
    return last is not None and last.status == "ok" and last.kind in PROVING_RUNS


def _conflicts(
    conn: psycopg.Connection, spec: Spec, models: set[str] | None = None
) -> dict[str, int]:
    """Ledger rows flagged as conflicts, per model; of ``models`` only (their partitions
    alone are read), or of all."""
    if models is not None and not models:
        return {}
    where = sql.SQL("conflict")
    if models is not None:
        where = sql.SQL("conflict AND model = ANY(%s)")
    rows = conn.execute(
        sql.SQL("SELECT model, count(*) FROM {} WHERE {} GROUP BY model").format(
            ledger.table(spec, "ledger"), where
        ),
        None if models is None else [sorted(models)],
    ).fetchall()
    conn.commit()
    return {m: int(n) for m, n in rows}
