"""Stage: copy every source table and CSV file into the stage schema of the target database.

Rows stream from COPY to COPY in blocks, never parsed in Python, so memory stays flat and the
speed is close to what the two servers can do. The copy is binary: every column is selected
as a built-in type both servers read the same way (enums and user types as text, domains as
their base type: ``columns.py``). The target converts the source's text from its encoding
(``encodings.py``); a source whose server never checked its bytes is staged raw behind a
view that converts them.
"""

from __future__ import annotations

import hashlib
import json
import selectors
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import psycopg
from psycopg import pq, sql
from psycopg.abc import Buffer

from ferry import catalog
from ferry.engine import columns, encodings, keys, rowid
from ferry.engine.columns import Column
from ferry.errors import FerryError
from ferry.spec import COMPOSITE_KEY, Source, Spec

_BLOCK = 1 << 20


@dataclass(frozen=True)
class StageResult:
    source: str
    rows: int
    bytes: int
    seconds: float
    digest: str | None = None  # a file's SHA-256, as staged whole (``unchanged_file``)
    columns: str | None = None  # the table's columns, as staged (``columns_digest``)
    shape: str | None = None  # the table's definition, as staged (``catalog.table_shapes``)


def source_columns(conn: psycopg.Connection, table: str) -> list[Column]:
    """Columns of a source table with their stage types (``columns.py``)."""
    return columns.source_columns(conn, table)


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


def _create(
    conn: psycopg.Connection, spec: Spec, src: Source, cols: list[Column], raw: bool = False
) -> sql.Composed:
    """A new stage table, for a ``COPY ... FREEZE`` in the same transaction; the raw table
    behind the stage's view if ``raw``.

    Rows copied frozen are all-visible from the start: the transform's first reads need not
    stamp every tuple's commit status into its page (dirtying all of them), index-only scans
    count a chunk without the heap, and autovacuum, which an insert of millions of rows
    wakes, finds nothing to do. A table created in the transaction is invisible to others
    until it commits, so freezing breaks no snapshot.
    """
    _drop(conn, spec, src)
    name = encodings.raw_name(src.stage_table) if raw else src.stage_table
    target = sql.Identifier(spec.stage_schema, name)
    conn.execute(
        sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(
            target,
            sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.raw_type)) for c in cols
            ),
        )
    )
    # privileges.close would at the end of the run, behind any autovacuum of the table.
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(target))
    return target


def _drop(conn: psycopg.Connection, spec: Spec, src: Source) -> None:
    """The earlier stage of a source, a table or a view over a raw table, whichever it was."""
    for name in (src.stage_table, encodings.raw_name(src.stage_table)):
        row = conn.execute(
            "SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
            [sql.Identifier(spec.stage_schema, name).as_string(conn)],
        ).fetchone()
        if row is not None:
            kind = "VIEW" if row[0] == "v" else "TABLE"
            conn.execute(
                sql.SQL("DROP {} {}").format(sql.SQL(kind), sql.Identifier(spec.stage_schema, name))
            )


def stored(conn: psycopg.Connection, spec: Spec, src: Source) -> sql.Identifier:
    """The table that holds a source's staged rows: the stage table, or the raw table behind
    the stage's view (what ``TRUNCATE`` empties, which a view refuses)."""
    raw = sql.Identifier(spec.stage_schema, encodings.raw_name(src.stage_table))
    return raw if catalog.exists(conn, raw) else sql.Identifier(spec.stage_schema, src.stage_table)


def _view(
    conn: psycopg.Connection, spec: Spec, src: Source, cols: list[Column], encoding: str
) -> None:
    """The stage models read: raw columns converted from the declared encoding. A value
    that does not convert fails there, in the model's chunk, and only its row is
    quarantined (with the database's reason)."""
    raw = encodings.raw_name(src.stage_table)
    view = sql.Identifier(spec.stage_schema, src.stage_table)
    exprs = [
        sql.SQL("convert_from({c}, {e})::{t} AS {c}").format(
            c=sql.Identifier(c.name), e=sql.Literal(encoding), t=sql.SQL(c.type)
        )
        if c.raw
        else sql.Identifier(c.name)
        for c in cols
    ]
    if src.stage_key == COMPOSITE_KEY:  # a composite key's text, or a row's identity
        exprs.append(sql.Identifier(src.stage_key))
    conn.execute(
        sql.SQL("CREATE VIEW {} AS SELECT {} FROM {}").format(
            view, sql.SQL(", ").join(exprs), sql.Identifier(spec.stage_schema, raw)
        )
    )
    encodings.mark(conn, "VIEW", view, encoding, raw)


def _add_key(
    conn: psycopg.Connection, spec: Spec, src: Source, target: sql.Composed, cols: list[Column]
) -> None:
    """The stage's primary key; for a composite key, on the column holding its text, which a
    trigger keeps as the parts change (a diff writes the parts only); for a table with no key,
    on the identity of each row (``rowid.py``). A key the source repeats is indexed instead:
    its rows are all quarantined (``duplicate_key``), and the others go on."""
    if src.keyless:
        rowid.add(conn, target, [c.name for c in cols])
    elif len(src.keys) > 1:
        _composite(conn, spec, src, target)
    try:
        with conn.transaction():  # a savepoint: a key that repeats fails only this
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                    target, sql.Identifier(src.stage_key)
                )
            )
    except psycopg.errors.UniqueViolation:
        conn.execute(
            sql.SQL("CREATE INDEX ON {} ({})").format(target, sql.Identifier(src.stage_key))
        )
    except psycopg.errors.NotNullViolation:
        raise FerryError(
            f"source {src.name}: key column{'s' if len(src.keys) > 1 else ''} "
            f"{', '.join(src.keys)} holds NULL (NotNullViolation): a row without a key "
            'cannot be named (declare key = "*" for a table without a reliable key)'
        ) from None


def allow_repeats(conn: psycopg.Connection, table: sql.Composable) -> None:
    """A stage whose source now repeats a key: its primary key becomes a plain index on the
    same columns, so that the repeated rows are staged and quarantined (``duplicate_key``)."""
    label = table.as_string(conn)
    row = conn.execute(
        "SELECT c.conname, ARRAY(SELECT a.attname::text FROM unnest(c.conkey) k(n) "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n) "
        "FROM pg_constraint c WHERE c.conrelid = to_regclass(%s) AND c.contype IN ('p', 'u')",
        [label],
    ).fetchone()
    if row is None:
        return
    conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table, sql.Identifier(row[0])))
    conn.execute(
        sql.SQL("CREATE INDEX ON {} ({})").format(
            table, sql.SQL(", ").join(map(sql.Identifier, row[1]))
        )
    )


def unique_key(conn: psycopg.Connection, spec: Spec, src: Source) -> bool:
    """Whether the stage of ``src`` holds each key once (its primary key): False once its
    source repeated a key (``allow_repeats``). A source never staged counts as unique."""
    table = stored(conn, spec, src)
    row = conn.execute(
        "SELECT to_regclass(%s) IS NULL OR EXISTS (SELECT FROM pg_index i "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indnkeyatts = 1 "
        "AND a.attname = %s)",
        [table.as_string(conn), table.as_string(conn), src.stage_key],
    ).fetchone()
    return bool(row and row[0])


def _composite(conn: psycopg.Connection, spec: Spec, src: Source, target: sql.Composed) -> None:
    key = sql.Identifier(src.stage_key)
    text = keys.text_sql("t", src.keys)
    fn = sql.Identifier(spec.stage_schema, f"{src.stage_table}__key")
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} text").format(target, key))
    conn.execute(sql.SQL("UPDATE {} t SET {} = {}").format(target, key, text))
    conn.execute(
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $f$ "
            "BEGIN NEW.{key} := {text}; RETURN NEW; END $f$"
        ).format(fn=fn, key=key, text=keys.text_sql("new", src.keys))
    )
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION {}()"
        ).format(sql.Identifier("_ferry_key"), target, fn)
    )


def _analyze(conn: psycopg.Connection, table: sql.Composed) -> None:
    """After the copy commits: the rows a transaction wrote count as changed when it ends,
    so after an ANALYZE inside it autovacuum analyzed the table again during the transform
    (the demo's 2M-row source: 0.24 s of CPU). A server flushes those counts at most once a
    second, so a copy shorter than that may still be analyzed twice: a small table."""
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    conn.commit()


def stage_table(
    source: psycopg.Connection, target: psycopg.Connection, spec: Spec, src: Source,
    progress: Callable[[int], None] | None = None, sample: int | None = None,
) -> StageResult:  # fmt: skip
    """Replace the stage copy of one source table, in one target transaction; ``sample``:
    only that many rows of it (``sampled``)."""
    assert src.table is not None
    t0 = time.perf_counter()
    # Read before the rows: a definition changed meanwhile shows as changed the next time.
    [shape] = catalog.table_shapes(source, [src.table])
    read, cols = staged_columns(source, src)
    with target.transaction():
        dest = _create(target, spec, src, cols, read.raw)
        rows, nbytes = copy_table(source, target, src, read, cols, dest, progress, sample)
        _add_key(target, spec, src, dest, cols)
        encodings.mark(target, "TABLE", dest, read.encoding)
        if read.raw:
            _view(target, spec, src, cols, read.encoding)
    _analyze(target, dest)
    source.rollback()
    return StageResult(
        src.name, rows, nbytes, time.perf_counter() - t0, None, columns_digest(cols), shape
    )


def staged_columns(
    source: psycopg.Connection, src: Source
) -> tuple[encodings.Reading, list[Column]]:
    """How a source table is read, and the columns it is staged with."""
    assert src.table is not None
    read = encodings.reading(source, src)
    cols = columns.source_columns(
        source, src.table, read.raw, tuple(src.keys), utf8=read.encoding == encodings.UTF8
    )
    return read, cols


def columns_digest(cols: Sequence[Column]) -> str:
    """The columns a table is staged with, their names and types: a sync whose source has
    others stages it again whole, as a migrate of the source as it is now would."""
    text = "|".join(f"{c.name}:{c.type}:{c.raw}" for c in cols)
    return hashlib.md5(text.encode()).hexdigest()


def recorded_shapes(conn: psycopg.Connection, spec: Spec) -> dict[str, tuple[str, str]]:
    """Per source, its columns and its definition as last staged (None: not recorded, by
    a ferry before they were)."""
    rows = conn.execute(sql.SQL("SELECT source, columns, shape FROM {}").format(_record(spec)))
    return {r[0]: (r[1], r[2]) for r in rows.fetchall()}


def note_shape(
    conn: psycopg.Connection, spec: Spec, source: str, columns: str | None, shape: str | None
) -> None:
    """The stage of ``source`` now holds the table as defined by ``columns`` and ``shape``."""
    conn.execute(
        sql.SQL(
            "UPDATE {} SET columns = coalesce(%s, columns), shape = coalesce(%s, shape) "
            "WHERE source = %s"
        ).format(_record(spec)),
        [columns, shape, source],
    )


def copy_table(
    source: psycopg.Connection, target: psycopg.Connection, src: Source,
    read: encodings.Reading, cols: list[Column], dest: sql.Composable,
    progress: Callable[[int], None] | None = None, sample: int | None = None,
) -> tuple[int, int]:  # fmt: skip
    """COPY a source table's rows (``sample``: only that many, ``sampled``) into ``dest``, a
    table created in the target's open transaction (whose client encoding it sets for the
    rest of it); returns rows and bytes."""
    assert src.table is not None
    for key in src.keys:
        if key not in {c.name for c in cols}:
            raise FerryError(f"source {src.name}: key column {key} is not in {src.table}")
    columns.print_alike(source)
    if read.encoding != encodings.UTF8 or read.raw:
        # the source sends its bytes as they are; the target converts them from this
        encodings.set_client(source, read.encoding, local=True)
    query = sql.SQL("COPY (SELECT {} FROM {}{}) TO STDOUT (FORMAT BINARY)").format(
        sql.SQL(", ").join(c.select() for c in cols),
        sql.Identifier(*src.table.split(".")),
        sampled(src, sample),
    )
    if read.encoding != encodings.UTF8:
        encodings.set_client(target, read.encoding, local=True)
    cur = target.cursor()  # its rowcount, from COPY's own tag, is the rows staged
    try:
        with cur.copy(
            sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY, FREEZE)").format(
                dest, sql.SQL(", ").join(sql.Identifier(c.name) for c in cols)
            )
        ) as into:
            nbytes = relay(copy_out(source, query), into, progress)
    except psycopg.DataError as exc:
        # The raw path converts every column but the key: so the key did not convert.
        raise FerryError(
            f"source {src.name}: a value does not convert from {read.encoding} "
            f"({type(exc).__name__}, SQLSTATE {exc.sqlstate}): "
            + (
                "a key must convert, for the ledger to name its row"
                if read.raw
                else "declare what the bytes are with encoding in the spec"
            )
        ) from None
    return cur.rowcount, nbytes


def sampled(src: Source, sample: int | None) -> sql.Composable:
    """`` ORDER BY key LIMIT n``: the rows of lowest keys, the same ones on every run, for a
    plan on a sample (``ferry plan --sample``); nothing when there is no sample."""
    if sample is None:
        return sql.SQL("")
    order = sql.SQL(", ").join(map(sql.Identifier, src.keys))
    return sql.SQL("{} LIMIT {}").format(
        sql.SQL(" ORDER BY {}").format(order) if src.keys else sql.SQL(""), sql.Literal(sample)
    )


def stage_csv(
    target: psycopg.Connection, spec: Spec, src: Source, data_dir: Path,
    progress: Callable[[int], None] | None = None, sample: int | None = None,
) -> StageResult:  # fmt: skip
    """Stage a CSV file with every column as text: casts belong to the models, where a bad
    value quarantines one row instead of failing the whole file. ``sample``: only that many
    rows (``sampled``), taken after the copy."""
    assert src.columns is not None
    t0 = time.perf_counter()
    cols = [Column(n, "text", False) for n in src.columns]
    with target.transaction():
        dest = _create(target, spec, src, cols)
        digest = hashlib.sha256()
        rows, nbytes = copy_csv(target, src, data_dir, dest, progress, digest.update)
        if sample is not None and rows > sample:
            target.execute(
                sql.SQL("DELETE FROM {t} WHERE ctid NOT IN (SELECT ctid FROM {t}{s})").format(
                    t=dest, s=sampled(src, sample)
                )
            )
            rows = sample
        _add_key(target, spec, src, dest, cols)
    _analyze(target, dest)
    whole = None if sample is not None and rows >= sample else digest.hexdigest()
    return StageResult(src.name, rows, nbytes, time.perf_counter() - t0, whole)


def copy_csv(
    target: psycopg.Connection, src: Source, data_dir: Path, dest: sql.Composable,
    progress: Callable[[int], None] | None = None,
    seen: Callable[[bytes], object] | None = None,
) -> tuple[int, int]:  # fmt: skip
    """COPY a CSV source's file into ``dest``, a table created in the target's open
    transaction, after checking its header; returns rows and bytes. ``seen``: also given
    every block of the file (a digest's ``update``)."""
    assert src.csv is not None and src.columns is not None
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
    copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT CSV, HEADER true, FREEZE)").format(
        dest, sql.SQL(", ").join(map(sql.Identifier, names))
    )
    cur = target.cursor()
    with path.open("rb") as fh, cur.copy(copy) as into:
        blocks = iter(lambda: fh.read(_BLOCK), b"")
        nbytes = relay(blocks if seen is None else _shown(blocks, seen), into, progress)
    return cur.rowcount, nbytes


def _shown(blocks: Iterable[bytes], seen: Callable[[bytes], object]) -> Iterator[bytes]:
    for block in blocks:
        seen(block)
        yield block


def file_digest(src: Source, data_dir: Path) -> str:
    """The SHA-256 of a CSV source's file as it is now."""
    path = data_dir / (src.csv or "")
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while block := fh.read(_BLOCK):
                digest.update(block)
    except OSError as exc:
        raise FerryError(f"source {src.name}: cannot read {path}: {exc.strerror}") from None
    return digest.hexdigest()


def _record(spec: Spec) -> sql.Identifier:
    """The ledger's record of each source's staging (``ledger.table(spec, "staged")``,
    which this module cannot import: the ledger imports it)."""
    return sql.Identifier(spec.ledger_schema, "staged")


def unchanged_file(conn: psycopg.Connection, spec: Spec, src: Source, digest: str) -> bool:
    """Whether the stage holds the file ``digest`` names, as recorded when it was staged
    or synced last: then a sync need not load and compare it (two scans and an index of the
    file's rows). The caller asks only of a stage not emptied since (``ledger.emptied_of``: by
    a crash; a rollback of everything drops the records)."""
    row = conn.execute(
        sql.SQL("SELECT s.digest = %s FROM {} s WHERE s.source = %s").format(_record(spec)),
        [digest, src.name],
    ).fetchone()
    return bool(row and row[0])


def key_types(conn: psycopg.Connection, spec: Spec, src: Source) -> list[str]:
    """The SQL types of a source's key columns, as its stage holds them."""
    rows = dict(
        conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            [sql.Identifier(spec.stage_schema, src.stage_table).as_string(conn)],
        ).fetchall()
    )
    return [rows[k] for k in src.keys]


def recorded_rows(conn: psycopg.Connection, spec: Spec, source: str) -> int | None:
    """The rows the last record of ``source`` counted (None: none recorded)."""
    row = conn.execute(
        sql.SQL("SELECT rows FROM {} WHERE source = %s").format(_record(spec)),
        [source],
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def note_digest(conn: psycopg.Connection, spec: Spec, source: str, digest: str) -> None:
    """The file a source's stage holds is now ``digest`` (its rows unchanged)."""
    conn.execute(
        sql.SQL("UPDATE {} SET digest = %s WHERE source = %s").format(_record(spec)),
        [digest, source],
    )


def record(conn: psycopg.Connection, spec: Spec, result: StageResult, run_id: int) -> None:
    """The stage of a source as it now is, under the spec's definition of the source: a
    sync asks first whether that changed (``redefined``), and stages it whole if so."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {t} (source, rows, bytes, seconds, run_id, digest, columns, shape, "
            "definition) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (source) DO UPDATE SET "
            "rows = EXCLUDED.rows, bytes = EXCLUDED.bytes, seconds = EXCLUDED.seconds, "
            "run_id = EXCLUDED.run_id, digest = EXCLUDED.digest, "
            "columns = coalesce(EXCLUDED.columns, {t}.columns), "
            "shape = coalesce(EXCLUDED.shape, {t}.shape), definition = EXCLUDED.definition, "
            "staged_at = clock_timestamp()"
        ).format(t=_record(spec)),
        [
            result.source,
            result.rows,
            result.bytes,
            result.seconds,
            run_id,
            result.digest,
            result.columns,
            result.shape,
            spec.source(result.source).definition,
        ],
    )


def redefined(conn: psycopg.Connection, spec: Spec, note: bool = True) -> set[str]:
    """Sources whose definition in the spec (table, file, key, columns, encoding) is not
    the one they were staged under: their stage is no longer what a migrate would stage. A
    record from a ferry that kept no definitions takes the spec as it is (``note``: and
    keeps it from now; verify only reads)."""
    current = {src.name: src.definition for src in spec.sources}
    rows = conn.execute(
        sql.SQL("SELECT source, definition FROM {} WHERE source = ANY(%s)").format(_record(spec)),
        [list(current)],
    ).fetchall()
    unknown = [name for name, definition in rows if definition is None]
    if unknown and note:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET definition = (%s::jsonb ->> source) WHERE source = ANY(%s)"
            ).format(_record(spec)),
            [json.dumps(current), unknown],
        )
    return {name for name, definition in rows if definition not in (None, current[name])}
