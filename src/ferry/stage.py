"""Stage: copy every source table and CSV file into the stage schema of the target database.

Rows stream from COPY to COPY in blocks, never parsed in Python, so memory stays flat and the
speed is close to what the two servers can do. Binary COPY is used where both sides read the
column types the same way (built-in types); other columns travel as text.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import psycopg
from psycopg import pq, sql
from psycopg.abc import Buffer

from ferry.errors import FerryError
from ferry.spec import Source, Spec

_BLOCK = 1 << 20


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    binary: bool


@dataclass(frozen=True)
class StageResult:
    source: str
    rows: int
    bytes: int
    seconds: float


def source_columns(conn: psycopg.Connection, table: str) -> list[Column]:
    """Columns of a source table; types outside pg_catalog (enums, domains) travel as text."""
    rows = conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod),
               t.typnamespace = 'pg_catalog'::regnamespace AND t.typtype = 'b'
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        [table],
    ).fetchall()
    if not rows:
        raise FerryError(f"source table {table} does not exist or has no columns")
    return [Column(n, t if b else "text", bool(b)) for n, t, b in rows]


def relay(
    out: Iterable[Buffer], into: psycopg.Copy, progress: Callable[[int], None] | None = None
) -> int:
    """Pass a ``COPY TO`` stream (or a file's blocks) on to a ``COPY FROM``, a megabyte at a
    time; returns bytes.

    Each psycopg write goes through its wait machinery: passing rows on one by one cost a
    core's worth of Python on a 2M-row table (3.5 s of CPU against 2.1 s gathered, the stage
    of ``dispatch_notification`` 30% faster). ``COPY FROM`` does not care where a block ends.
    A piece that is a block already (``copy_out``'s, a file's) is written as it is, not copied.
    """
    total = 0
    block = bytearray()
    for piece in out:
        if not block and len(piece) >= _BLOCK:
            total += _write(into, piece, progress)
            continue
        block += piece
        if len(block) >= _BLOCK:
            total += _write(into, block, progress)
            block = bytearray()
    if block:
        total += _write(into, block, progress)
    return total


def _write(into: psycopg.Copy, block: Buffer, progress: Callable[[int], None] | None) -> int:
    into.write(block)
    n = len(block)
    if progress:
        progress(n)
    return n


def copy_out(conn: psycopg.Connection, query: sql.Composable) -> Iterator[Buffer]:
    """The output of a ``COPY … TO STDOUT`` in blocks of about a megabyte, read from libpq.

    psycopg hands out one row per read, each through its generic wait machinery: about a
    microsecond of Python a row, under the interpreter lock every stage thread shares (the
    2M-row table: 2.4 s of CPU, 1.1 s read this way). The waiting is psycopg's own (flush,
    wait until readable, consume input, then read what libpq holds), which TLS needs too.
    ``conn`` is idle or in a transaction before and after; a stream left unfinished closes it,
    since a connection in the middle of a COPY can do nothing else.
    """
    pg = conn.pgconn
    ready = selectors.DefaultSelector()  # epoll or kqueue: select() stops at descriptor 1024
    done = False
    try:
        ready.register(pg.socket, selectors.EVENT_READ | selectors.EVENT_WRITE)
        pg.send_query(query.as_bytes(conn))
        while pg.flush():
            ready.select()
        ready.modify(pg.socket, selectors.EVENT_READ)
        res = _result(pg, ready)
        if res is None or res.status != pq.ExecStatus.COPY_OUT:
            _raise(res, "COPY TO did not start")
        block = bytearray()
        while True:
            nbytes, data = pg.get_copy_data(1)
            if nbytes > 0:
                block += data
                if len(block) >= _BLOCK:
                    yield block
                    block = bytearray()
            elif nbytes == 0:
                ready.select()
                pg.consume_input()
            else:  # -1: the data is over (psycopg raises for -2)
                break
        if block:
            yield block
        res = _result(pg, ready)
        if res is None or res.status != pq.ExecStatus.COMMAND_OK:
            _raise(res, "COPY TO did not finish")
        if _result(pg, ready) is not None:
            raise psycopg.ProgrammingError("COPY TO returned more than one result")
        done = True
    finally:
        ready.close()
        if not done:
            conn.close()


def _result(pg: pq.abc.PGconn, ready: selectors.BaseSelector) -> pq.abc.PGresult | None:
    """The next result, waiting for it without holding the interpreter lock."""
    while pg.is_busy():
        ready.select()
        pg.consume_input()
    return pg.get_result()


def _raise(res: pq.abc.PGresult | None, what: str) -> NoReturn:
    """The database's error as psycopg would raise it (its class from the SQLSTATE)."""
    if res is None:
        raise psycopg.OperationalError(what)
    state = (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode("ascii", "replace")
    primary = res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY)
    message = primary.decode("utf-8", "replace") if primary else what
    try:
        cls = psycopg.errors.lookup(state)
    except KeyError:
        cls = psycopg.DatabaseError
    raise cls(message)


def _create(conn: psycopg.Connection, spec: Spec, src: Source, cols: list[Column]) -> sql.Composed:
    """A new stage table, for a ``COPY ... FREEZE`` in the same transaction.

    Rows copied frozen are all-visible from the start: the transform's first reads need not
    stamp every tuple's commit status into its page (dirtying all of them), index-only scans
    count a chunk without the heap, and autovacuum, which an insert of millions of rows
    wakes, finds nothing to do. A table created in the transaction is invisible to others
    until it commits, so freezing breaks no snapshot.
    """
    target = sql.Identifier(spec.stage_schema, src.stage_table)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
    conn.execute(
        sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(
            target,
            sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type)) for c in cols
            ),
        )
    )
    return target


def _add_key(conn: psycopg.Connection, spec: Spec, src: Source, target: sql.Composed) -> None:
    try:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(target, sql.Identifier(src.key))
        )
    except (psycopg.errors.UniqueViolation, psycopg.errors.NotNullViolation) as exc:
        raise FerryError(
            f"source {src.name}: key column {src.key} is not unique and not null "
            f"({type(exc).__name__})"
        ) from None


def _analyze(conn: psycopg.Connection, table: sql.Composed) -> None:
    """After the copy commits: the rows a transaction wrote count as changed when it ends,
    so after an ANALYZE inside it autovacuum analyzed the table again during the transform
    (the demo's 2M-row source: 0.24 s of CPU). A server flushes those counts at most once a
    second, so a copy shorter than that may still be analyzed twice: a small table."""
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    conn.commit()


def stage_table(
    source: psycopg.Connection, target: psycopg.Connection, spec: Spec, src: Source,
    progress: Callable[[int], None] | None = None,
) -> StageResult:  # fmt: skip
    """Replace the stage copy of one source table, in one target transaction."""
    assert src.table is not None
    t0 = time.perf_counter()
    cols = source_columns(source, src.table)
    if src.key not in {c.name for c in cols}:
        raise FerryError(f"source {src.name}: key column {src.key} is not in {src.table}")
    binary = all(c.binary for c in cols)
    fmt = sql.SQL("FORMAT BINARY" if binary else "FORMAT TEXT")
    query = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT ({})").format(
        sql.SQL(", ").join(
            sql.Identifier(c.name)
            if c.binary
            else sql.SQL("{}::text").format(sql.Identifier(c.name))
            for c in cols
        ),
        sql.Identifier(*src.table.split(".")),
        fmt,
    )
    with target.transaction():
        dest = _create(target, spec, src, cols)
        cur = target.cursor()  # its rowcount, from COPY's own tag, is the rows staged
        with cur.copy(sql.SQL("COPY {} FROM STDIN ({}, FREEZE)").format(dest, fmt)) as into:
            nbytes = relay(copy_out(source, query), into, progress)
        rows = cur.rowcount
        _add_key(target, spec, src, dest)
    _analyze(target, dest)
    source.rollback()
    return StageResult(src.name, rows, nbytes, time.perf_counter() - t0)


def stage_csv(
    target: psycopg.Connection, spec: Spec, src: Source, data_dir: Path,
    progress: Callable[[int], None] | None = None,
) -> StageResult:  # fmt: skip
    """Stage a CSV file with every column as text: casts belong to the models, where a bad
    value quarantines one row instead of failing the whole file."""
    assert src.csv is not None and src.columns is not None
    t0 = time.perf_counter()
    path = data_dir / src.csv
    names = list(src.columns)
    try:
        with path.open("rb") as fh:
            header = fh.readline().decode("utf-8").strip().split(",")
    except OSError as exc:
        raise FerryError(f"source {src.name}: cannot read {path}: {exc.strerror}") from None
    if [h.strip().strip('"') for h in header] != names:
        raise FerryError(
            f"source {src.name}: the header of {path.name} has columns {header}, "
            f"the spec declares {names}"
        )
    cols = [Column(n, "text", False) for n in names]
    with target.transaction():
        dest = _create(target, spec, src, cols)
        copy = sql.SQL("COPY {} FROM STDIN (FORMAT CSV, HEADER true, FREEZE)").format(dest)
        cur = target.cursor()
        with path.open("rb") as fh, cur.copy(copy) as into:
            nbytes = relay(iter(lambda: fh.read(_BLOCK), b""), into, progress)
        rows = cur.rowcount
        _add_key(target, spec, src, dest)
    _analyze(target, dest)
    return StageResult(src.name, rows, nbytes, time.perf_counter() - t0)


def record(conn: psycopg.Connection, spec: Spec, result: StageResult, run_id: int) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {}.staged (source, rows, bytes, seconds, run_id) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (source) DO UPDATE SET rows = EXCLUDED.rows, "
            "bytes = EXCLUDED.bytes, seconds = EXCLUDED.seconds, run_id = EXCLUDED.run_id, "
            "staged_at = clock_timestamp()"
        ).format(sql.Identifier(spec.ledger_schema)),
        [result.source, result.rows, result.bytes, result.seconds, run_id],
    )
