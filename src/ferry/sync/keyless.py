"""Sync the stage of a table without a key (``key = "*"``): copy it whole, compare identities.

Why: the range diff buckets and lists rows by their key, and such a table has none. Its rows
are known by their content (``rowid.py``), so a sync copies the table as it is now into a
temporary table beside the stage, gives each row its identity there, and finds what changed
by comparing identities, in the target: rows whose identity is new were inserted, rows whose
identity is gone were deleted (an UPDATE is one of each). Only those rows are written to the
stage. The copy costs the whole table on every sync, not just its changes: what a table
without a key costs.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
from psycopg import sql

from ferry.engine import columns, encodings, rowid, stage
from ferry.engine.columns import Column
from ferry.spec import COMPOSITE_KEY, Source, Spec
from ferry.sync.diff import ApplyStats, TableDiff

_FRESH = "_ferry_rows"


def restage(
    source: psycopg.Connection, target: psycopg.Connection, spec: Spec, src: Source,
    data_dir: Path,
) -> TableDiff:  # fmt: skip
    """Bring the stage of ``src`` in step with its table (or file), in one target transaction
    (the caller commits); the identities that came are ``inserted``, those gone ``deleted``."""
    t0 = time.perf_counter()
    stored = stage.stored(target, spec, src)
    fresh = sql.Identifier(_FRESH)
    if src.table is not None:
        read = encodings.reading(source, src)
        cols = columns.source_columns(source, src.table, read.raw, ())
    else:
        assert src.columns is not None
        cols = [Column(n, "text", False) for n in src.columns]
    names = [c.name for c in cols]
    target.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(fresh))
    target.execute(
        sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
            fresh,
            sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.raw_type)) for c in cols
            ),
        )
    )
    if src.table is not None:
        rows, nbytes = stage.copy_table(source, target, src, read, cols, fresh)
    else:
        rows, nbytes = stage.copy_csv(target, src, data_dir, fresh)
    rowid.add(target, fresh, names)
    key = sql.Identifier(COMPOSITE_KEY)
    gone = target.execute(
        sql.SQL(
            "DELETE FROM {s} s WHERE NOT EXISTS (SELECT FROM {f} f WHERE f.{k} = s.{k}) "
            "RETURNING s.{k}"
        ).format(s=stored, f=fresh, k=key)
    ).fetchall()
    cols_sql = sql.SQL(", ").join(map(sql.Identifier, [*names, COMPOSITE_KEY]))
    came = target.execute(
        sql.SQL(
            "INSERT INTO {s} ({c}) SELECT {c} FROM {f} f WHERE NOT EXISTS "
            "(SELECT FROM {s} s WHERE s.{k} = f.{k}) RETURNING {k}"
        ).format(s=stored, f=fresh, c=cols_sql, k=key)
    ).fetchall()
    target.execute(sql.SQL("DROP TABLE {}").format(fresh))
    if src.table is not None:
        source.rollback()
    seconds = time.perf_counter() - t0
    return TableDiff(
        source=src.table or src.csv or src.name,
        stage=stored.as_string(target),
        inserted=sorted((r[0],) for r in came),
        deleted=sorted((r[0],) for r in gone),
        source_rows=rows,
        stage_rows=rows - len(came) + len(gone),
        rows_compared=rows,
        bytes_from_source=nbytes,
        seconds=seconds,
        applied=ApplyStats(len(came), len(gone), nbytes, seconds),
    )
