"""Range-checksum diff between a source table and its stage copy, and the differential re-stage.

Why
---
A later run must move only what changed. Reading both tables in full into Python would cost
the whole table in transfer and memory on every sync; instead each server aggregates its own
rows into per-bucket ``(count, checksum)`` pairs over primary-key buckets, only buckets whose
pairs differ are split further, and only rows of the smallest differing buckets are listed
as ``(key, strong row hash)`` pairs. Transfer and work beyond one scan per side grow with the
number of changed rows, not with the table.

Buckets
-------
* A single integer key (smallint, integer, bigint) is bucketed by key range. A bucket is a
  range of 2**shift keys named by its first key. Level 0 covers min..max of both sides with
  a few intervals, each with its own width, so that a bucket holds about 128 rows (at most
  32,768 buckets): the widths come from the key's equi-depth histogram in ``pg_stats``, so a
  dense run of ids gets narrow buckets and a sparse stretch wide ones (stale or missing
  statistics cost speed, never correctness). Level 0 is one sequential scan and a hash
  aggregate per side. Deeper levels read only the differing buckets: by index range scans
  where a side has a btree index led by the key, else (a CSV in a TEMP table) by one scan
  that finds each key's range by binary search (``width_bucket``). Empty buckets are never
  returned, so sparse keys cost nothing.
* Any other key (text, uuid, composite, or an integer range wider than 2**63) is bucketed by
  the top bits of a 64-bit hash of the key (the fingerprint below, over the key columns,
  with another seed). Each level is one scan per side, filtered by a hash semi-join on the
  parents, so a change costs one more scan per level than a no-op.

A differing bucket is listed row by row when that is expected to be cheaper than splitting
it, by a small cost model (returned bucket rows and listed rows against fingerprinting rows
again, with the change density estimated from the share of buckets that differed), or when
it holds at most 8 rows or a single key; otherwise it is split into 2**bits children.

Hashes -- which, and why a change cannot hide
---------------------------------------------
*Bucket checksum*: ``count(*)`` plus the exact sum (nothing wraps: the high and low
halves are summed apart) of a 64-bit per-row *fingerprint*. Measured on a 2M-row
notification table (PostgreSQL 15): a count(*) scan 0.1 s; ``hashtextextended`` of
``ROW(...)::text`` 1.2-1.4 s, most of it in the text output of every column; ``md5`` of the
same text 2.5-2.7 s; the fingerprint about 0.5 s. It chains, column by column in the given
order, the type's own 64-bit extended hash function (``hashint4extended``,
``hashtextextended`` under collation "C", ``timestamp_hash_extended``, ``uuid_hash_extended``
...) -- used only for types whose equality means identical text output, so the fingerprint
is as faithful as the row text -- and one ``hashtextextended`` of ``ROW(other columns)::text``
for every other type (numeric, where 1.0 = 1.00; jsonb; interval, where '1 day' = '24
hours'; float; char(n); arrays; user types ...). A NULL column contributes a per-position
constant, so NULL and '' differ. The chain is ``h = hashint8extended(h, 0) # e_i``:
order-sensitive and non-linear.

These are lookup3 hashes: fast, well mixed, not cryptographic. A bucket whose rows changed
compares equal only if its count is equal and the exact sums of 64-bit fingerprints
coincide: for accidental changes that is about 2**-64 (~5e-20) per differing bucket, so a
sync that met a million differing buckets a day would, on average, miss one change in about
5e10 years. What the bucket level does not give is resistance to an adversary: someone who
can write crafted values into the legacy database could, with work, make their own edit of
a row keep its fingerprint, and that edit (only that one) would not reach the stage. The
row level below cannot catch that, since a bucket that compares equal is never opened.

*Row level*: in a differing bucket each side lists ``(key, substr(sha256(textsend(
ROW(c1, ..., cn)::text)), 1, 16))`` -- 128 bits of SHA-256 of the row's full text. It costs
about what ``decode(md5(...), 'hex')`` costs (2.2 s against 2.0-2.6 s for 2M rows here), is
the same 16 bytes on the wire, and, unlike md5, has no known way to produce collisions: a
changed row in an opened bucket is missed only if its old and new text collide in those 128
bits (about 3e-39 by accident). Keys missing on one side are exact, no hash involved.

Both sessions get the same ``DateStyle`` (ISO, YMD), ``TimeZone`` (UTC), ``IntervalStyle``
(postgres), ``extra_float_digits`` (1: shortest exact), ``bytea_output`` (hex),
``lc_monetary`` (C) for the transaction (``SET LOCAL``), and ``jit`` off (compiling a
one-pass aggregate costs more than it saves). PostgreSQL 11 or newer (extended hash
functions, ``sha256``). Differences of text output between server versions (floats before
12) can only produce extra "updated" rows, never a miss.

Where the stage holds a column as another type than the source (an enum as text, a domain
as its base type, raw bytes of a ``SQL_ASCII`` source: ``columns.py``), the source is read
through the expressions the stage copy used; any other difference of types is refused. A
stage that is a view over a raw table is compared by its table. Servers in different
encodings (a LATIN1 source, a UTF8 stage) would hash different bytes for the same text: then
both sessions set ``client_encoding`` to the source's encoding (the one the stage recorded,
``encodings.py``) and text is hashed as ``textsend`` gives it, the same bytes on both sides.

Transactions and consistency
----------------------------
The source is read in one ``REPEATABLE READ, READ ONLY`` transaction when the connection is
idle on entry, so every level (and, in :func:`sync_stage_table`, the copy) sees one snapshot.
The stage writes of :func:`apply_diff` happen in one transaction. Both sides' aggregates run
concurrently on two threads (they are two servers). Their bucket sums come back in name
order through server-side cursors, a batch at a time, and are merged as two sorted streams:
only the differing buckets are held, so a no-op sync's memory does not grow with the table
(level 0 has up to 32,768 buckets a side). When both sides are the same connection (a CSV
loaded into a TEMP table in the target), they run one after the other, their two cursors
read in turn, and the copy is a server-side ``INSERT ... SELECT``.

Relations are a ``psycopg.sql.Composable`` (``sql.Identifier("public", "t")``) or a
``(schema, name)`` pair. Errors are :class:`ferry.errors.FerryError`; their messages name
tables, columns and counts and never carry row contents (database errors that may quote a
value are reduced to their class and SQLSTATE).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from ferry.conninfo import apply
from ferry.engine import columns as colmod
from ferry.engine import encodings, keyarray
from ferry.engine.stage import allow_repeats, relay
from ferry.errors import FerryError, describe, lost

__all__ = [
    "ApplyStats",
    "Keys",
    "Rel",
    "TableDiff",
    "apply_diff",
    "diff_table",
    "sync_stage_keys",
    "sync_stage_table",
]

Rel = sql.Composable | tuple[str, str]
Key = tuple[Any, ...]
T = TypeVar("T")

# Session settings that fix the text form of every value on both sides.
SESSION_SETTINGS: tuple[tuple[str, str], ...] = (
    *colmod.TEXT_SETTINGS,
    ("jit", "off"),
    # The bucket sums are read through server-side cursors: plan them for all their rows
    # (the default 0.1 favours plans that start fast, a sort of every row over a hash).
    ("cursor_tuple_fraction", "1"),
)

LEVEL0_ROWS_PER_BUCKET = 128
LEVEL0_MAX_BUCKETS = 32768
LEVEL0_MAX_INTERVALS = 16
HASH_KEY_MAX_BITS = 62  # hash-key buckets: at most 62 bits, so shifts stay in 2..64
LEAF_MIN_ROWS = 8  # a differing bucket this small is always listed row by row
MAX_SPLIT_BITS = 12
# Relative costs (measured: about 3 us per listed row -- SHA-256 of the row text, 40 bytes
# on the wire, a dict entry in Python -- about 3 us per returned bucket row, about 0.4 us
# to fingerprint a row again by index range scan).
BUCKET_ROW_COST = 3.0
LEAF_ROW_COST = 3.0
REHASH_ROW_COST = 0.4
SCAN_ROW_COST = 0.15  # a level that must scan the whole table (hashed key, no index): per row
COPY_KEYS_PER_STATEMENT = 50_000
INT8_MAX = 2**63 - 1
FIRST_USER_OID = 16384
_KEY_SEED = 0x5EED
_TEMP_TABLE = "ferry_diff_apply"

# Types whose equality means identical text output: hashed by their own extended hash.
_FAST_HASH: dict[int, str] = {
    20: "hashint8extended({c}, {s})",
    21: "hashint2extended({c}, {s})",
    23: "hashint4extended({c}, {s})",
    26: "hashoidextended({c}, {s})",
    16: "hashint4extended({c}::int4, {s})",
    25: 'hashtextextended({c} COLLATE "C", {s})',
    1043: 'hashtextextended({c}::text COLLATE "C", {s})',
    1083: "time_hash_extended({c}, {s})",
    1114: "timestamp_hash_extended({c}, {s})",
    1184: "timestamp_hash_extended({c} AT TIME ZONE 'UTC', {s})",
    2950: "uuid_hash_extended({c}, {s})",
}
_INT_KEY_TYPES = {20, 21, 23}
# Key types whose values Python holds as they are, one value one text: bool, bytea, the
# integers, text, oid, bpchar, varchar, uuid. Any other key is read as its text (both
# sessions print alike: ``SESSION_SETTINGS``), and goes back cast from it: Python has no
# ``infinity`` date, no BC timestamp, no month in an interval; and a numeric 1.0 that
# became 1.00, a float 0 that became -0, is the same key to Python and the server but
# another to the ledger, which names a key by its text (the row was kept twice).
_PYTHON_KEY_TYPES = {16, 17, 20, 21, 23, 25, 26, 1042, 1043, 2950}
_TEXT_TYPES = {25, 1043}


class Keys(Sequence[Key]):
    """A diff's keys of one kind, in order, read as the list of their tuples (and equal to
    it). Why: a single integer key is held as an int64 array, 8 bytes a key where a tuple
    and its int took 80 (7 MB for a sync of 90,000 changed keys, held to its end); a tuple
    is made again as a key is read. Other keys are held as their list."""

    __slots__ = ("_ints", "_keys")

    def __init__(self, keys: list[Key]) -> None:
        self._keys: list[Key] = keys
        self._ints: array[int] | None = None
        if keys and all(len(k) == 1 and type(k[0]) is int for k in keys):
            try:
                self._ints = array("q", (k[0] for k in keys))
            except OverflowError:  # beyond int64 (a numeric key): kept as the list
                return
            self._keys = []

    def __len__(self) -> int:
        return len(self._keys) if self._ints is None else len(self._ints)

    @overload
    def __getitem__(self, i: int) -> Key: ...
    @overload
    def __getitem__(self, i: slice) -> list[Key]: ...
    def __getitem__(self, i: int | slice) -> Key | list[Key]:
        if self._ints is None:
            return self._keys[i]
        if isinstance(i, slice):
            return [(v,) for v in self._ints[i]]
        return (self._ints[i],)

    def __iter__(self) -> Iterator[Key]:
        if self._ints is None:
            return iter(self._keys)
        return ((v,) for v in self._ints)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (Keys, list, tuple)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: Sequence[Key]) -> list[Key]:
        return [*self, *other]

    def __radd__(self, other: Sequence[Key]) -> list[Key]:
        return [*other, *self]

    def __repr__(self) -> str:
        return repr(list(self))


@dataclass
class TableDiff:
    """The exact difference between a source table and its stage, and what finding it cost.

    ``inserted``: keys only in the source; ``updated``: keys on both sides whose rows differ;
    ``deleted``: keys only in the stage. Each a sorted sequence of key tuples (``Keys``:
    equal to the list of them).
    ``source_rows``/``stage_rows``: row counts seen at level 0; ``buckets_compared``: bucket
    (count, checksum) pairs compared over all levels; ``levels``: bucket levels run;
    ``rows_compared``: keys whose strong row hashes were compared; ``bytes_from_source``:
    bytes the source server sent (result rows, and COPY data when applied); ``seconds``:
    wall time; ``applied``: what :func:`sync_stage_table` wrote, else None.
    """

    source: str
    stage: str
    inserted: Sequence[Key] = field(default_factory=list)
    updated: Sequence[Key] = field(default_factory=list)
    deleted: Sequence[Key] = field(default_factory=list)
    source_rows: int = 0
    stage_rows: int = 0
    buckets_compared: int = 0
    rows_compared: int = 0
    levels: int = 0
    bytes_from_source: int = 0
    seconds: float = 0.0
    applied: ApplyStats | None = None

    @property
    def changed(self) -> int:
        """Number of keys whose row must be written or removed on the stage side."""
        return len(self.inserted) + len(self.updated) + len(self.deleted)

    def summary(self) -> str:
        """One line with names and counts only (safe for logs)."""
        return (
            f"{self.source} -> {self.stage}: +{len(self.inserted)} ~{len(self.updated)} "
            f"-{len(self.deleted)} ({self.source_rows} source rows, {self.buckets_compared} "
            f"buckets, {self.rows_compared} rows compared, {self.bytes_from_source} bytes from "
            f"source, {self.seconds:.2f} s)"
        )


@dataclass
class ApplyStats:
    """What :func:`apply_diff` did on the stage side.

    ``rows_deleted`` counts every stage row removed, including the old versions of updated
    rows (an update is a delete and an insert); ``rows_copied`` the rows written from the
    source; ``bytes_from_source`` the COPY stream's size.
    """

    rows_copied: int = 0
    rows_deleted: int = 0
    bytes_from_source: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# Plumbing


def _as_rel(rel: Rel) -> sql.Composable:
    if isinstance(rel, sql.Composable):
        return rel
    if isinstance(rel, tuple) and len(rel) == 2 and all(isinstance(p, str) for p in rel):
        return sql.Identifier(*rel)
    raise FerryError("a relation must be a psycopg.sql.Composable or a (schema, name) pair")


@contextmanager
def _db_errors(what: str) -> Iterator[None]:
    """Database errors as FerryError saying what the diff was doing, as ``errors.describe``
    shows them (no value quoted), not chained, so that no traceback prints the original. A
    lost connection goes up as it is, for the CLI to say which server to look at."""
    try:
        yield
    except psycopg.Error as exc:
        if lost(exc):
            raise
        raise FerryError(f"{what}: {describe(exc)}") from None


def _result_bytes(cur: psycopg.Cursor[Any], fixed: dict[int, int] | None = None) -> int:
    """Approximate bytes the server sent for the current result (DataRow messages).

    Per row 7 bytes of message header, per field 4 bytes of length plus the value. Widths of
    fixed-size columns come from the result description, ``fixed`` supplies known widths of
    others (the 16-byte row hash); only the remaining columns are measured value by value.
    """
    res = cur.pgresult
    if res is None:
        return 0
    nrows, nfields = res.ntuples, res.nfields
    total = nrows * (7 + 4 * nfields)
    fixed = fixed or {}
    for col in range(nfields):
        # fsize is the binary width of fixed-size types; text-format values vary in length
        width = fixed.get(col, res.fsize(col) if res.fformat(col) == 1 else -1)
        if width > 0:
            total += width * nrows
            continue
        for row in range(nrows):
            value = res.get_value(row, col)
            total += len(value) if value is not None else 0
    return total


@dataclass
class _Side:
    """One end of the comparison: a connection, a relation, and what the catalog says."""

    name: str
    conn: psycopg.Connection[Any]
    rel: sql.Composable
    label: str = ""
    types: dict[str, tuple[int, str, str, bool]] = field(default_factory=dict)
    key_indexed: bool = False
    encoding: str = ""
    version: int = 0
    reltuples: float = -1.0
    bytes: int = 0
    marked: str | None = None  # the encoding the stage recorded (encodings.mark)
    raw: bool = False  # the stage is a view over a raw table, which is what is compared

    def __post_init__(self) -> None:
        self.label = self.rel.as_string(self.conn)

    def describe(self, key: Sequence[str]) -> None:
        with _db_errors(f"reading the catalog entry of {self.name} table {self.label}"):
            if self.name == "stage" and self._behind():
                return self.describe(key)
            head = self.conn.execute(
                "SELECT current_setting('server_encoding'),"
                " current_setting('server_version_num')::int, c.reltuples::float8"
                " FROM pg_class c WHERE c.oid = %s::regclass",
                [self.label],
            ).fetchone()
            assert head is not None
            self.encoding, self.version, self.reltuples = head
            rows = self.conn.execute(
                "SELECT a.attname, a.atttypid::int, format_type(a.atttypid, a.atttypmod),"
                "  format_type(a.atttypid, NULL),"
                "  a.atttypid >= %s OR coalesce(e.oid >= %s, false) OR t.typtype = 'd'"
                " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
                " LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typlen = -1"
                " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                [FIRST_USER_OID, FIRST_USER_OID, self.label],
            ).fetchall()
            self.types = {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}
            if len(key) == 1:
                found = self.conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_index i"
                    " JOIN pg_class ic ON ic.oid = i.indexrelid"
                    " JOIN pg_am am ON am.oid = ic.relam"
                    " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
                    " WHERE i.indrelid = %s::regclass AND am.amname = 'btree'"
                    " AND i.indpred IS NULL AND i.indisvalid AND a.attname = %s)",
                    [self.label, key[0]],
                ).fetchone()
                self.key_indexed = bool(found and found[0])

    def _behind(self) -> bool:
        """Read the stage's mark; a view over a raw table is compared by its table (True)."""
        row = self.conn.execute(
            "SELECT n.nspname, obj_description(c.oid, 'pg_class') FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s::regclass",
            [self.label],
        ).fetchone()
        if row is None:
            return False
        self.marked, raw = encodings.marked(row[1])
        if raw is None or self.raw:
            return False
        self.raw = True
        self.rel = sql.Identifier(row[0], raw)
        self.label = self.rel.as_string(self.conn)
        return True

    def run(
        self,
        query: sql.Composable,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        binary: bool = True,
        fixed: dict[int, int] | None = None,
    ) -> list[tuple[Any, ...]]:
        return list(self.rows(query, params, binary=binary, fixed=fixed))

    def rows(
        self,
        query: sql.Composable,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        binary: bool = True,
        fixed: dict[int, int] | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """``run``, one row at a time: a long result is not also held as a list of tuples."""
        with _db_errors(f"range diff query on {self.name} table {self.label}"):
            cur = self.conn.cursor(binary=binary)
            cur.execute(query, params)
            self.bytes += _result_bytes(cur, fixed)
            yield from cur


@contextmanager
def _session(conn: psycopg.Connection[Any], *, snapshot: bool) -> Iterator[None]:
    """One transaction with the hashing settings; a single snapshot if asked and possible.

    ``SET TRANSACTION`` must be the first statement of a transaction, so the snapshot is
    only taken when the connection is idle on entry; inside a caller's transaction the
    caller's isolation applies. ``SET LOCAL`` (set_config(..., true)) ends with the
    transaction, so the caller's session settings are left as they were.
    """
    idle = conn.info.transaction_status == TransactionStatus.IDLE
    with _db_errors("starting the range diff transaction"), conn.transaction():
        if snapshot and idle:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        apply(conn, SESSION_SETTINGS, local=True)
        yield


class _Pair:
    """Runs one function on both sides: concurrently on two connections, else in turn."""

    def __init__(self, source: _Side, stage: _Side) -> None:
        self.source, self.stage = source, stage
        self.same = source.conn is stage.conn
        self._pool = None if self.same else ThreadPoolExecutor(2, thread_name_prefix="ferry-diff")

    def both(self, fn: Callable[[_Side], T]) -> tuple[T, T]:
        if self._pool is None:
            return fn(self.source), fn(self.stage)
        fut_src = self._pool.submit(fn, self.source)
        fut_stg = self._pool.submit(fn, self.stage)
        return fut_src.result(), fut_stg.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


# --------------------------------------------------------------------------------------------
# SQL building


@dataclass
class _Plan:
    """The SQL fragments both sides share, derived from the key, the columns and their types."""

    key: tuple[str, ...]
    columns: tuple[str, ...]
    int_key: bool
    key_types: tuple[str, ...]
    binary_keys: bool
    fingerprint: sql.Composable
    row_hash: sql.Composable
    key_list: sql.Composable

    @property
    def int_expr(self) -> sql.Composable:
        """The integer key as int8 (range arithmetic is done in int8)."""
        return sql.SQL("{}::int8").format(sql.Identifier("t", self.key[0]))

    hash_expr: sql.Composable  # 64-bit hash of the key: its top bits name a hashed bucket


def _fingerprint(
    columns: Sequence[str],
    types: dict[str, tuple[int, str, str, bool]],
    seed: int = 0,
    transcode: bool = False,
) -> sql.Composable:
    """The 64-bit fingerprint of ``columns`` (see the module docstring for why this shape).

    Also the bucket hash of a non-integer key (over the key columns, another seed): equal
    keys get equal hashes on both sides, and a uuid or text key is hashed without its text
    output. With ``transcode`` (servers in different encodings) text is hashed as the bytes
    of the session's client encoding, which both sides then share (``textsend``).
    """
    parts: list[sql.Composable] = []
    rest: list[sql.Composable] = []
    for pos, col in enumerate(columns):
        ident = sql.Identifier("t", col)
        template = _FAST_HASH.get(types[col][0])
        if transcode and types[col][0] in _TEXT_TYPES:
            template = None
        if template is None:
            rest.append(ident)
            continue
        null_mark = ((pos + 1) * 0x9E3779B97F4A7C15) % 2**64 - 2**63
        parts.append(
            sql.SQL("coalesce({}, {})").format(
                sql.SQL(template).format(c=ident, s=sql.Literal(seed + pos + 1)),
                sql.Literal(null_mark),
            )
        )
    if rest:
        # Record text quotes '' as "" and leaves NULL empty, so the two stay apart.
        text = (
            "hashtextextended(encode(textsend(ROW({})::text), 'hex'), {})"
            if transcode
            else 'hashtextextended(ROW({})::text COLLATE "C", {})'
        )
        parts.append(sql.SQL(text).format(sql.SQL(", ").join(rest), sql.Literal(seed)))
    expr: sql.Composable = parts[0]
    for part in parts[1:]:
        expr = sql.SQL("hashint8extended({}, 0) # {}").format(expr, part)
    return expr


def _make_plan(
    source: _Side, stage: _Side, key: Sequence[str], columns: Sequence[str], transcode: bool
) -> _Plan:
    key, columns = tuple(key), tuple(columns)
    if not key:
        raise FerryError(f"range diff of {stage.label}: no key columns given")
    if not columns:
        raise FerryError(f"range diff of {stage.label}: no columns given")
    if len(set(columns)) != len(columns):
        raise FerryError(f"range diff of {stage.label}: a column is listed twice")
    missing_key = [k for k in key if k not in columns]
    if missing_key:
        raise FerryError(
            f"range diff of {stage.label}: key column(s) {', '.join(missing_key)} "
            "are not among the columns"
        )
    for side in (source, stage):
        absent = [c for c in columns if c not in side.types]
        if absent:
            raise FerryError(f"{side.name} table {side.label} has no column(s) {', '.join(absent)}")
        if side.version < 110000:
            raise FerryError(
                f"{side.name} server of {side.label} is older than PostgreSQL 11 "
                "(no extended hash functions)"
            )
    _read_as_staged(source, stage, key, columns)
    all_cols = sql.SQL(", ").join(sql.Identifier("t", c) for c in columns)
    return _Plan(
        key=key,
        columns=columns,
        int_key=len(key) == 1 and stage.types[key[0]][0] in _INT_KEY_TYPES,
        # With its modifier: a ``character`` with none is ``character(1)``, and a key cast to
        # it was cut to its first letter ('ab' deleted the stage's row 'a').
        key_types=tuple(stage.types[k][1] for k in key),
        binary_keys=not any(stage.types[k][3] for k in key),
        fingerprint=_fingerprint(columns, stage.types, transcode=transcode),
        hash_expr=_fingerprint(key, stage.types, seed=_KEY_SEED, transcode=transcode),
        row_hash=sql.SQL("substr(sha256(textsend(ROW({})::text)), 1, 16)").format(all_cols),
        key_list=sql.SQL(", ").join(
            sql.SQL("{}" if stage.types[k][0] in _PYTHON_KEY_TYPES else "{}::text").format(
                sql.Identifier("t", k)
            )
            for k in key
        ),
    )


def _read_as_staged(
    source: _Side, stage: _Side, key: Sequence[str], columns: Sequence[str]
) -> None:
    """Where the stage holds a column as another type (an enum as text, a domain as its
    base type, raw bytes: ``columns.py``), read the source through the same expressions the
    stage copy used, as a subquery that PostgreSQL flattens (a plain key keeps its index).
    Any other difference of types is refused."""
    differ = [c for c in columns if source.types[c][1] != stage.types[c][1]]
    if not differ and not stage.raw:
        return
    # a raw stage declared UTF-8 names a key whose bytes do not read (``columns.named``)
    utf8 = stage.raw and (stage.marked or encodings.UTF8) == encodings.UTF8
    with _db_errors(f"reading the columns of source table {source.label}"):
        staged = {
            c.name: c
            for c in colmod.source_columns(
                source.conn, source.label, stage.raw, tuple(key), utf8=utf8
            )
        }
    wrong = [c for c in differ if c not in staged or staged[c].raw_type != stage.types[c][1]]
    if wrong:
        raise FerryError(
            f"column types differ between {source.label} and {stage.label}: {', '.join(wrong)}"
        )
    exprs = [
        sql.SQL("{} AS {}").format(
            staged[c].select("t") if c in differ or staged[c].named else sql.Identifier("t", c),
            sql.Identifier(c),
        )
        for c in columns
    ]
    source.rel = sql.SQL("(SELECT {} FROM {} t)").format(sql.SQL(", ").join(exprs), source.rel)


def _key_array_params(plan: _Plan, keys: Sequence[Key]) -> tuple[sql.Composable, list[Any]]:
    """``unnest(%s::t1[], %s::t2[], ...)`` and its parameters: one array per key column.

    A column of integers or of strings goes as the array's text, one string: psycopg dumps
    a list element by element, 12 MB for 50,000 integers (the peak of a sync's diff)."""
    unnest = sql.SQL("unnest({})").format(
        sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(t)) for t in plan.key_types)
    )
    columns = [_array_param(col) for col in zip(*keys, strict=True)] if keys else []
    return unnest, columns or [[] for _ in plan.key]


def _array_param(values: Sequence[Any]) -> Any:
    """One key column's values as an array parameter: as the array's text where every value
    is an integer (its text is its input form) or a string (``keyarray.text``); else the list."""
    if all(type(v) is int for v in values) or all(type(v) is str for v in values):
        return keyarray.text(map(str, values))
    return list(values)


# --------------------------------------------------------------------------------------------
# Buckets
#
# A bucket is named by one int8: for an integer key, the first key of its range; for a hashed
# key, the top bits of the key hash (``hash >> shift``). A level opens a list of parents and
# gives, per side, the query of its children's rows (name, count, sum of high halves, sum of
# low halves) in name order; ``_compare_sums`` merges the two sides' rows as they come.

Query = tuple[sql.Composable, Any]  # a statement and its parameters


@dataclass(frozen=True)
class _Bucket:
    """A bucket found to differ: name, width 2**shift (keys or hash values), last key."""

    name: int
    shift: int
    hi: int  # integer keys: last key of the range; hashed keys: unused
    rows: int  # the larger of the two sides' counts


@dataclass(frozen=True)
class _Range:
    """An integer-key parent: keys lo..hi, split into children of 2**shift keys from ``base``.

    A child's name is its first key inside the parent: ``max(lo, aligned start)``. Level-0
    intervals share one base so that their children line up; deeper parents use base = lo.
    """

    lo: int
    hi: int
    shift: int
    base: int


def _sums_query(body: sql.Composable) -> sql.Composable:
    """Wrap ``SELECT <name> AS _b, <fingerprint> AS _h FROM ...`` into per-bucket sums.

    The high and the low 32 bits of each fingerprint are summed separately as int4 (sum of
    int4 accumulates in int8 and cannot overflow below 2**31 rows per bucket): together they
    carry exactly the information of the full sum (sum = 2**32 hi + lo + 2**31 count), are
    cheaper to aggregate than numeric, and come back as fixed-width integers. OFFSET 0 keeps
    the planner from grouping by the bare expression, where it takes the number of groups for
    the number of rows and sorts instead of hashing. The buckets come in name order (the
    hash aggregate's groups sorted, NULL last), int8 on both servers, for the merge.
    """
    return sql.SQL(
        "SELECT _b, count(*), sum((_h >> 32)::int4),"
        " sum(((_h & 4294967295) - 2147483648)::int4)"
        " FROM ({body} OFFSET 0) _s GROUP BY _b ORDER BY _b NULLS LAST"
    ).format(body=body)


# Bucket sums fetched per round trip. Level 0 has up to 32,768 buckets a side; held whole
# (two dicts, and the client's copy of each result) they made a no-op sync's memory grow with
# the table. Merged batch by batch, only the differing buckets are kept.
SUMS_FETCH_ROWS = 2048


def _fetch(side: _Side, cur: psycopg.ServerCursor[Any]) -> list[tuple[Any, ...]]:
    """The next batch of a side's bucket sums; the bytes the server sent for it counted."""
    with _db_errors(f"range diff query on {side.name} table {side.label}"):
        rows = cur.fetchmany(SUMS_FETCH_ROWS)
        side.bytes += _result_bytes(cur)
    return rows


class _SumStream:
    """One side's bucket sums in name order, through a server-side cursor, a batch at a time.

    A bucket named NULL (a NULL key, which sorts last) is not yielded: its rows are counted
    in ``nulls``.
    """

    def __init__(self, side: _Side, cur: psycopg.ServerCursor[Any], query: Query) -> None:
        self.side, self.cur, self.query = side, cur, query
        self.batch: list[tuple[Any, ...]] = []
        self.nulls: int | None = None

    def start(self) -> None:
        """Declare the cursor and fetch the first batch: the server aggregates the level."""
        with _db_errors(f"range diff query on {self.side.name} table {self.side.label}"):
            self.cur.execute(*self.query)
        self.batch = self._next()

    def _next(self) -> list[tuple[Any, ...]]:
        rows = _fetch(self.side, self.cur)
        if rows and rows[-1][0] is None:
            self.nulls = rows.pop()[1]
        return rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while self.batch:
            yield from self.batch
            self.batch = [] if self.nulls is not None else self._next()


def _compare_sums(
    pair: _Pair, query: Callable[[_Side], Query], sizes: dict[int, int]
) -> tuple[int, int, int, int | None]:
    """Merge both sides' bucket sums, as two streams sorted by name, into ``sizes``: the
    larger row count of each bucket whose (count, checksum) differ or that one side lacks.

    Both queries start at once (two servers aggregate in parallel; on one connection, two
    cursors in turn). Returns the buckets compared, the rows of each side, and the rows of a
    bucket named NULL (the source's, else the stage's), if any.
    """
    with ExitStack() as stack:
        streams = {}
        for side in (pair.source, pair.stage):
            cur = side.conn.cursor(name=f"ferry_diff_{side.name}", binary=True)
            stack.callback(cur.close)
            streams[side.name] = _SumStream(side, cur, query(side))
        pair.both(lambda side: streams[side.name].start())
        src_stream, stg_stream = streams["source"], streams["stage"]
        compared = src_total = stg_total = 0
        src, stg = iter(src_stream), iter(stg_stream)
        a, b = next(src, None), next(stg, None)
        while a is not None or b is not None:
            compared += 1
            if b is None or (a is not None and a[0] < b[0]):  # the source's only
                src_total += a[1]
                sizes[a[0]] = a[1]
                a = next(src, None)
            elif a is None or b[0] < a[0]:  # the stage's only
                stg_total += b[1]
                sizes[b[0]] = b[1]
                b = next(stg, None)
            else:
                src_total += a[1]
                stg_total += b[1]
                if a != b:
                    sizes[a[0]] = max(a[1], b[1])
                a, b = next(src, None), next(stg, None)
        nulls = src_stream.nulls if src_stream.nulls is not None else stg_stream.nulls
    return compared, src_total, stg_total, nulls


class _IntBuckets:
    """Key-range buckets of a single integer key, read by index range scans where possible."""

    def __init__(self, plan: _Plan, lo: int, hi: int, rows: float, indexed: bool) -> None:
        self.plan, self.lo, self.hi, self.rows, self.indexed = plan, lo, hi, rows, indexed

    def level0(self, hist: Sequence[int] | None) -> list[_Range]:
        """Intervals covering lo..hi, each with a width giving ~LEVEL0_ROWS_PER_BUCKET rows.

        Densities come from the key's histogram (equi-depth, from ANALYZE) where there is
        one, so dense runs get narrow buckets and sparse stretches wide ones; keys beyond the
        histogram get the smaller of the neighbouring and the overall density. Adjacent
        intervals of equal width are merged; if more than 16 remain, one width for all.
        Stale statistics only cost speed: every key in lo..hi falls in exactly one interval.
        """
        lo, hi = self.lo, self.hi
        span = hi - lo + 1
        rows = self.rows if self.rows > 0 else float(span)
        overall = min(1.0, rows / span)
        target = max(float(LEVEL0_ROWS_PER_BUCKET), rows / LEVEL0_MAX_BUCKETS)

        def shift_for(density: float) -> int:
            width = target / max(density, 1e-18)
            return max(0, min(62, round(math.log2(max(1.0, width)))))

        starts: list[tuple[int, int]] = [(lo, shift_for(overall))]
        points = sorted({int(v) for v in hist or ()})
        if len(points) >= 3:
            per = rows / (len(points) - 1)
            dens = [per / max(1, b - a) for a, b in itertools.pairwise(points)]
            starts = [(lo, shift_for(min(dens[0], overall)))]  # keys below the histogram
            starts += [(a, shift_for(d)) for a, d in zip(points, dens, strict=False)]
            starts.append((points[-1], shift_for(min(dens[-1], overall))))  # keys above it
            starts = [(max(a, lo), s) for a, s in starts if a <= hi]
        merged: list[tuple[int, int]] = []
        for start, shift in starts:
            if merged and merged[-1][0] == start:
                merged[-1] = (start, shift)  # a later piece starting at the same key wins
            elif not merged or merged[-1][1] != shift:
                merged.append((start, shift))
        if len(merged) > LEVEL0_MAX_INTERVALS:
            merged = [(lo, shift_for(overall))]
        ends = [s - 1 for s, _ in merged[1:]] + [hi]
        return [_Range(s, e, sh, lo) for (s, sh), e in zip(merged, ends, strict=True)]

    def _child_name(self, r: _Range) -> sql.Composable:
        aligned = sql.SQL("({base}::int8 + ((({k} - {base}::int8) >> {s}) << {s}))").format(
            k=self.plan.int_expr, base=sql.Literal(r.base), s=sql.Literal(r.shift)
        )
        if r.base == r.lo:
            return aligned
        return sql.SQL("greatest({}::int8, {})").format(sql.Literal(r.lo), aligned)

    def query0(self, side: _Side, parents: list[_Range]) -> Query:
        """Level 0: one sequential scan; the interval is picked by a short CASE."""
        name = self._child_name(parents[-1])
        if len(parents) > 1:
            whens = sql.SQL(" ").join(
                sql.SQL("WHEN {k} <= {hi}::int8 THEN {n}").format(
                    k=self.plan.int_expr, hi=sql.Literal(r.hi), n=self._child_name(r)
                )
                for r in parents[:-1]
            )
            # a NULL key passes every WHEN, and greatest() would name it the last interval
            name = sql.SQL("CASE WHEN {k} IS NULL THEN NULL {w} ELSE {n} END").format(
                k=self.plan.int_expr, w=whens, n=name
            )
        body = sql.SQL("SELECT {name} AS _b, {fp} AS _h FROM {rel} t").format(
            name=name, fp=self.plan.fingerprint, rel=side.rel
        )
        return _sums_query(body), None

    def _scope(
        self, side: _Side, los: list[int], his: list[int], shifts: list[int]
    ) -> tuple[sql.Composable, dict[str, Any]]:
        """FROM/WHERE for the rows with keys in sorted, disjoint ranges; ``_p`` is the range.

        With a btree index led by the key: a nested loop of index range scans. Without one (a
        CSV in a TEMP table): one scan, the range found by binary search (width_bucket).
        """
        k = self.plan.int_expr
        params = {"lo": los, "hi": his, "s": shifts}
        if side.key_indexed:
            clause = sql.SQL(
                "FROM unnest(%(lo)s::int8[], %(hi)s::int8[], %(s)s::int4[]) AS _p(_lo, _hi, _s)"
                " JOIN {rel} t ON {kk} >= _p._lo AND {kk} <= _p._hi"
            ).format(rel=side.rel, kk=sql.Identifier("t", self.plan.key[0]))
        else:
            clause = sql.SQL(
                "FROM {rel} t, LATERAL (SELECT (%(lo)s::int8[])[_w._i] AS _lo,"
                " (%(hi)s::int8[])[_w._i] AS _hi, (%(s)s::int4[])[_w._i] AS _s"
                " FROM (SELECT width_bucket({k}, %(lo)s::int8[]) AS _i) _w) _p"
                " WHERE {k} <= _p._hi"
            ).format(rel=side.rel, k=k)
        return clause, params

    def query(self, side: _Side, parents: list[_Range]) -> Query:
        scope, params = self._scope(
            side, [p.lo for p in parents], [p.hi for p in parents], [p.shift for p in parents]
        )
        body = sql.SQL(
            "SELECT _p._lo + ((({k} - _p._lo) >> _p._s) << _p._s) AS _b, {fp} AS _h {scope}"
        ).format(k=self.plan.int_expr, fp=self.plan.fingerprint, scope=scope)
        return _sums_query(body), params

    def batches(self, parents: list[_Range]) -> Iterator[list[_Range]]:
        """Consecutive parents with about ``SUMS_PER_BATCH`` children in all (an index range
        scan each, so a batch costs no more than its share of one query)."""
        group: list[_Range] = []
        held = 0
        for p in parents:
            group.append(p)
            held += ((p.hi - p.base) >> p.shift) - ((p.lo - p.base) >> p.shift) + 1
            if held >= SUMS_PER_BATCH:
                yield group
                group, held = [], 0
        if group:
            yield group

    def children(
        self, parents: list[_Range], names: list[int], sizes: dict[Any, int]
    ) -> list[_Bucket]:
        los = [p.lo for p in parents]
        out = []
        for name in names:
            p = parents[bisect.bisect_right(los, name) - 1]
            start = p.base + (((name - p.base) >> p.shift) << p.shift)
            hi = min(start + (1 << p.shift) - 1, p.hi)
            out.append(_Bucket(name, p.shift, hi, sizes[name]))
        return out

    def max_bits(self, bucket: _Bucket) -> int:
        return bucket.shift

    def level_cost(self, rows: int) -> float:
        """Fixed cost of one more level: nothing by index, a full scan without one."""
        return 0.0 if self.indexed else rows * SCAN_ROW_COST

    def split(self, buckets: list[tuple[_Bucket, int]]) -> list[_Range]:
        parents = [_Range(b.name, b.hi, b.shift - bits, b.name) for b, bits in buckets]
        return sorted(parents, key=lambda r: r.lo)

    def leaf_scope(
        self, side: _Side, buckets: list[_Bucket]
    ) -> tuple[sql.Composable, dict[str, Any]]:
        los: list[int] = []
        his: list[int] = []
        for b in sorted(buckets, key=lambda b: b.name):
            if his and b.name == his[-1] + 1:
                his[-1] = b.hi  # adjacent ranges: one index scan
            else:
                los.append(b.name)
                his.append(b.hi)
        return self._scope(side, los, his, [0] * len(los))


@dataclass(frozen=True)
class _Prefixes:
    """Hashed-key parents: the buckets ``hash >> shift IN names``, split at ``child_shift``."""

    shift: int | None  # None: the whole table (level 0)
    names: tuple[int, ...]
    child_shift: int


class _HashBuckets:
    """Buckets by the top bits of a 64-bit hash of the key text (text, uuid, composite keys).

    Each level is one scan per side filtered by a hash semi-join on the parent prefix; the
    row fingerprint is computed only for rows that pass the filter.
    """

    def __init__(self, plan: _Plan, rows: float) -> None:
        self.plan, self.rows = plan, rows

    def level0(self) -> list[_Prefixes]:
        rows = self.rows if self.rows > 0 else 1e6
        buckets = max(1.0, min(LEVEL0_MAX_BUCKETS, rows / LEVEL0_ROWS_PER_BUCKET))
        bits = min(HASH_KEY_MAX_BITS, max(1, round(math.log2(buckets))))
        return [_Prefixes(None, (), 64 - bits)]

    def _scope(self, side: _Side, shift: int | None, names: Sequence[int]) -> sql.Composable:
        if shift is None:
            return sql.SQL("FROM {} t").format(side.rel)
        return sql.SQL(
            "FROM {rel} t WHERE ({h} >> {s}) IN (SELECT unnest({names}::int8[]))"
        ).format(rel=side.rel, h=self.plan.hash_expr, s=sql.Literal(shift), names=sql.Placeholder())

    def query0(self, side: _Side, parents: list[_Prefixes]) -> Query:
        return self.query(side, parents)

    def batches(self, parents: list[_Prefixes]) -> Iterator[list[_Prefixes]]:
        """One batch: each would be another scan of the whole table."""
        yield parents

    def query(self, side: _Side, parents: list[_Prefixes]) -> Query:
        (p,) = parents
        body = sql.SQL("SELECT {h} >> {cs} AS _b, {fp} AS _h {scope}").format(
            h=self.plan.hash_expr,
            cs=sql.Literal(p.child_shift),
            fp=self.plan.fingerprint,
            scope=self._scope(side, p.shift, p.names),
        )
        return _sums_query(body), None if p.shift is None else [list(p.names)]

    def children(
        self, parents: list[_Prefixes], names: list[int], sizes: dict[Any, int]
    ) -> list[_Bucket]:
        (p,) = parents
        return [_Bucket(n, p.child_shift, 0, sizes[n]) for n in names]

    def max_bits(self, bucket: _Bucket) -> int:
        return bucket.shift - (64 - HASH_KEY_MAX_BITS)

    def level_cost(self, rows: int) -> float:
        """Fixed cost of one more level: a scan of the whole table, hashing every key."""
        return rows * SCAN_ROW_COST

    def split(self, buckets: list[tuple[_Bucket, int]]) -> list[_Prefixes]:
        """One shift per level (the filter is one hash semi-join): the median bucket's bits."""
        bits = sorted(b for _, b in buckets)[len(buckets) // 2]
        shift = buckets[0][0].shift
        return [_Prefixes(shift, tuple(b.name for b, _ in buckets), shift - bits)]

    def leaf_scope(self, side: _Side, buckets: list[_Bucket]) -> tuple[sql.Composable, list[Any]]:
        return self._scope(side, buckets[0].shift, ()), [[b.name for b in buckets]]


def _leaf_hashes(side: _Side, plan: _Plan, scope: sql.Composable, params: Any) -> dict[Key, bytes]:
    query = sql.SQL("SELECT {keys}, {h} {scope}").format(
        keys=plan.key_list, h=plan.row_hash, scope=scope
    )
    nkey = len(plan.key)
    hash_width = 16 if plan.binary_keys else 34  # bytea, binary or as hex text
    out: dict[Key, bytes] = {}
    repeated: dict[Key, list[bytes]] = {}
    for r in side.rows(query, params, binary=plan.binary_keys, fixed={nkey: hash_width}):
        key = r[:nkey]
        if key in out:
            repeated.setdefault(key, [out[key]]).append(r[nkey])
        out[key] = r[nkey]
    # A key the table repeats (its rows are quarantined, duplicate_key): its rows' hashes
    # as one, in any order, so that any change among them shows.
    for key, hashes in repeated.items():
        joined = b"".join(sorted(h if isinstance(h, bytes) else str(h).encode() for h in hashes))
        out[key] = hashlib.sha256(joined).digest()[:16]
    nulls = sum(1 for k in out if None in k)
    if nulls:
        raise FerryError(f"{side.name} table {side.label} has {nulls} row(s) with a NULL key")
    return out


def _split_bits(n: int, rate: float, max_bits: int) -> tuple[int, float]:
    """Bits to split a differing bucket of ``n`` rows by (0: list its rows now), and the
    expected saving of that split over listing.

    Expected cost (see BUCKET_ROW_COST ...): listing costs ``n`` key/hash rows; splitting
    into ``f`` children costs up to ``min(f, n)`` bucket rows, fingerprinting ``n`` rows
    again, and listing the children that differ (one step of look-ahead). Given at least one
    change in the bucket and changes at ``rate`` per row, a child of ``n/f`` rows differs
    with probability ``(1 - exp(-rate n/f)) / (1 - exp(-rate n))``.
    """
    if n <= LEAF_MIN_ROWS or max_bits <= 0:
        return 0, 0.0
    best_bits, best_cost = 0, n * LEAF_ROW_COST
    at_least_one = -math.expm1(-rate * n) or 1e-300
    for bits in range(1, min(max_bits, MAX_SPLIT_BITS) + 1):
        f = 1 << bits
        q = min(1.0, max(1.0 / f, -math.expm1(-rate * n / f) / at_least_one))
        cost = min(f, n) * BUCKET_ROW_COST + n * REHASH_ROW_COST + n * q * LEAF_ROW_COST
        if cost < best_cost:
            best_bits, best_cost = bits, cost
    return best_bits, n * LEAF_ROW_COST - best_cost


def _int_setup(pair: _Pair, plan: _Plan) -> _IntBuckets | _HashBuckets | None:
    """Buckets for an integer key from both sides' min/max; None if both sides are empty.

    An integer key whose range is wider than 2**63 falls back to hash buckets (the range
    arithmetic is done in int8).
    """
    k = sql.Identifier(plan.key[0])

    def bounds(side: _Side) -> tuple[Any, ...]:
        query = sql.SQL("SELECT min({k})::int8, max({k})::int8 FROM {r} t").format(k=k, r=side.rel)
        return side.run(query)[0]

    (smin, smax), (tmin, tmax) = pair.both(bounds)
    lows = [v for v in (smin, tmin) if v is not None]
    if not lows:
        return None
    lo, hi = min(lows), max(v for v in (smax, tmax) if v is not None)
    rows = max(pair.source.reltuples, pair.stage.reltuples)
    if hi - lo > INT8_MAX:
        plan.int_key = False
        return _HashBuckets(plan, rows)
    indexed = pair.source.key_indexed and pair.stage.key_indexed
    return _IntBuckets(plan, lo, hi, rows, indexed)


def _histogram(side: _Side, column: str) -> list[int] | None:
    """The key's equi-depth histogram bounds from pg_stats, if ANALYZE made one."""
    row = side.run(
        sql.SQL(
            "SELECT s.histogram_bounds::text::int8[] FROM pg_stats s"
            " JOIN pg_class c ON c.relname = s.tablename"
            " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schemaname"
            " WHERE c.oid = %s::regclass AND s.attname = %s AND NOT s.inherited"
        ),
        [side.label, column],
    )
    return list(row[0][0]) if row and row[0][0] else None


# Child buckets summed per round trip at levels below the first: when changes are dense a
# level has a child for nearly every 8 rows, and its sums, held all at once, would take more
# memory than the rows the sync changes.
SUMS_PER_BATCH = 16_384

# Leaf rows listed per round trip: when changes are dense nearly every bucket differs, and
# listing them all at once would hold the whole table's (key, hash) pairs in memory.
LIST_ROWS_PER_BATCH = 16_384


def _batches(leaves: list[_Bucket], rows: int) -> Iterator[list[_Bucket]]:
    """Consecutive groups of leaves holding about ``rows`` rows each."""
    batch: list[_Bucket] = []
    held = 0
    for leaf in leaves:
        batch.append(leaf)
        held += leaf.rows
        if held >= rows:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


def _new_or_changed(
    src_rows: dict[Key, bytes], stg_rows: dict[Key, bytes], inserted: list[Key],
    updated: list[Key],
) -> None:  # fmt: skip
    """Keys whose (key, hash) pair the stage does not hold: new rows, or changed ones. A
    loop, not a difference of item sets, which held a third copy of the listed rows."""
    for key, digest in src_rows.items():
        held = stg_rows.get(key)
        if held is None:
            inserted.append(key)
        elif held != digest:
            updated.append(key)


def _run_diff(pair: _Pair, plan: _Plan, result: TableDiff) -> None:
    source, stage = pair.source, pair.stage
    buckets: _IntBuckets | _HashBuckets | None
    parents: list[Any]
    if plan.int_key:
        buckets = _int_setup(pair, plan)
        if buckets is None:
            return  # both sides empty
    else:
        buckets = _HashBuckets(plan, max(source.reltuples, stage.reltuples))
    if isinstance(buckets, _IntBuckets):
        hist = _histogram(stage, plan.key[0]) or _histogram(source, plan.key[0])
        parents = buckets.level0(hist)
    else:
        parents = buckets.level0()
    inserted: list[Key] = []
    updated: list[Key] = []
    deleted: list[Key] = []
    while parents:
        first = result.levels == 0
        result.levels += 1
        # Per batch of parents, only what differs is kept: names and sizes.
        sizes: dict[int, int] = {}
        compared = src_total = stg_total = 0
        query = buckets.query0 if first else buckets.query
        for group in [parents] if first else buckets.batches(parents):
            n, src_n, stg_n, nulls = _compare_sums(
                pair, lambda side, p=group, q=query: q(side, p), sizes
            )
            if nulls is not None:
                raise FerryError(
                    f"{nulls} row(s) with a NULL key in {source.label} or {stage.label}"
                )
            compared, src_total, stg_total = compared + n, src_total + src_n, stg_total + stg_n
        if first:
            result.source_rows, result.stage_rows = src_total, stg_total
        result.buckets_compared += compared
        if not sizes:
            break
        differing = sorted(sizes)
        # Change rate per row, from the share of differing buckets (Poisson), for the model.
        share = min(len(differing) / compared, 1.0 - 0.5 / compared)
        rows = max(src_total, stg_total)
        rate = -math.log1p(-share) / max(rows / compared, 1.0)
        leaves: list[_Bucket] = []
        splits: list[tuple[_Bucket, int]] = []
        memo: dict[tuple[int, int], tuple[int, float]] = {}  # sizes repeat; the model is pure
        saving = 0.0
        for bucket in buckets.children(parents, differing, sizes):
            cap = buckets.max_bits(bucket)
            choice = memo.get((bucket.rows, cap))
            if choice is None:
                choice = memo[(bucket.rows, cap)] = _split_bits(bucket.rows, rate, cap)
            if choice[0]:
                splits.append((bucket, choice[0]))
                saving += choice[1]
            else:
                leaves.append(bucket)
        if splits and saving < buckets.level_cost(max(result.source_rows, result.stage_rows)):
            # another level would scan the whole table for less than it saves: list now
            leaves += [b for b, _ in splits]
            splits = []
        for batch in _batches(leaves, LIST_ROWS_PER_BATCH):
            src_rows, stg_rows = pair.both(
                lambda side, lv=batch: _leaf_hashes(side, plan, *buckets.leaf_scope(side, lv))
            )
            gone = stg_rows.keys() - src_rows.keys()
            result.rows_compared += len(src_rows) + len(gone)
            deleted.extend(gone)
            _new_or_changed(src_rows, stg_rows, inserted, updated)
            del src_rows, stg_rows
        parents = buckets.split(splits) if splits else []
    result.inserted = Keys(sorted(inserted))
    result.updated = Keys(sorted(updated))
    result.deleted = Keys(sorted(deleted))


@contextmanager
def _opened(
    source_conn: psycopg.Connection[Any],
    source_rel: Rel,
    stage_conn: psycopg.Connection[Any],
    stage_rel: Rel,
    key: Sequence[str],
    columns: Sequence[str],
) -> Iterator[tuple[_Pair, _Plan, TableDiff]]:
    """Both sessions open (settings, source snapshot), catalogs read, plan checked."""
    source = _Side("source", source_conn, _as_rel(source_rel))
    stage = _Side("stage", stage_conn, _as_rel(stage_rel))
    pair = _Pair(source, stage)
    try:
        with ExitStack() as stack:
            stack.enter_context(_session(source.conn, snapshot=not pair.same))
            if not pair.same:
                stack.enter_context(_session(stage.conn, snapshot=False))
            pair.both(lambda side: side.describe(key))
            transcode = source.encoding != stage.encoding
            if transcode:
                _read_alike(pair)
            plan = _make_plan(source, stage, key, columns, transcode)
            yield pair, plan, TableDiff(source=source.label, stage=stage.label)
    finally:
        pair.close()


def _read_alike(pair: _Pair) -> None:
    """Servers in different encodings: both sessions read text in the encoding the source's
    bytes are in (the stage's mark, else the source server's), so that keys come back equal
    and ``textsend`` gives both sides the same bytes to hash."""
    source, stage = pair.source, pair.stage
    encoding = stage.marked or (
        source.encoding if source.encoding != encodings.UNCHECKED else encodings.UTF8
    )
    with _db_errors("setting the client encoding of the range diff"):
        for side in (source, stage):
            encodings.set_client(side.conn, encoding, local=True)


def diff_table(
    source_conn: psycopg.Connection[Any],
    source_rel: Rel,
    stage_conn: psycopg.Connection[Any],
    stage_rel: Rel,
    key: Sequence[str],
    columns: Sequence[str],
) -> TableDiff:
    """Find exactly which keys were inserted, updated and deleted in the source since staging.

    ``columns`` are hashed in the given order and must include ``key``; both tables must
    have them with the same types. ``source_conn`` may be ``stage_conn`` (a CSV file loaded
    into a TEMP table next to its stage table). Nothing is written.
    """
    started = time.perf_counter()
    with _opened(source_conn, source_rel, stage_conn, stage_rel, key, columns) as opened:
        pair, plan, result = opened
        _run_diff(pair, plan, result)
    result.bytes_from_source = 0 if pair.same else pair.source.bytes
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------------------------
# Applying a diff


def _copy_format(side: _Side, columns: Sequence[str]) -> sql.Composable:
    """BINARY unless a column is of a user-defined type (whose binary form embeds OIDs)."""
    if any(side.types[c][3] for c in columns):
        return sql.SQL("TEXT")
    return sql.SQL("BINARY")


class _Chained:
    """Key sequences read as one, by ``len`` and by slices: a batch of keys at a time."""

    def __init__(self, *parts: Sequence[Key]) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return sum(map(len, self.parts))

    def __getitem__(self, part: slice) -> list[Key]:
        out: list[Key] = []
        offset = 0
        for keys in self.parts:
            lo, hi = max(part.start - offset, 0), min(part.stop - offset, len(keys))
            if lo < hi:
                out.extend(keys[lo:hi])
            offset += len(keys)
        return out


def _run_apply(pair: _Pair, plan: _Plan, diff: TableDiff) -> ApplyStats:
    started = time.perf_counter()
    source, stage = pair.source, pair.stage
    stats = ApplyStats()
    # Read in batches: the keys' tuples are made again for a batch at a time (``Keys``).
    to_copy = _Chained(diff.inserted, diff.updated)
    to_remove = _Chained(diff.inserted, diff.updated, diff.deleted)
    if not to_remove:
        stats.seconds = time.perf_counter() - started
        return stats
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in plan.columns)
    tcols = sql.SQL(", ").join(sql.Identifier("t", c) for c in plan.columns)
    keys = sql.SQL(", ").join(sql.Identifier("t", k) for k in plan.key)
    tmp = sql.Identifier(_TEMP_TABLE)
    conn = stage.conn
    with _db_errors(f"applying the diff to {stage.label}"), conn.transaction():
        if not pair.same:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(tmp))
            conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE {tmp} AS SELECT {tcols} FROM {rel} t WITH NO DATA"
                ).format(tmp=tmp, tcols=tcols, rel=stage.rel)
            )
            fmt = _copy_format(stage, plan.columns)
            for start in range(0, len(to_copy), COPY_KEYS_PER_STATEMENT):
                chunk = to_copy[start : start + COPY_KEYS_PER_STATEMENT]
                unnest, params = _key_array_params(plan, chunk)
                # COPY cannot take server-side parameters; psycopg binds these arrays
                # client-side with its own quoting (no string formatting of values here).
                out = sql.SQL(
                    "COPY (SELECT {tcols} FROM {rel} t WHERE ({keys}) IN (SELECT * FROM {un}))"
                    " TO STDOUT (FORMAT {fmt})"
                ).format(tcols=tcols, rel=source.rel, keys=keys, un=unnest, fmt=fmt)
                inp = sql.SQL("COPY {tmp} ({cols}) FROM STDIN (FORMAT {fmt})").format(
                    tmp=tmp, cols=cols, fmt=fmt
                )
                with (
                    _db_errors(f"copying changed rows from {source.label}"),
                    source.conn.cursor().copy(out, params) as reader,
                    conn.cursor().copy(inp) as writer,
                ):
                    stats.bytes_from_source += relay(reader, writer)
        for start in range(0, len(to_remove), COPY_KEYS_PER_STATEMENT):
            chunk = to_remove[start : start + COPY_KEYS_PER_STATEMENT]
            unnest, params = _key_array_params(plan, chunk)
            cur = conn.execute(
                sql.SQL("DELETE FROM {rel} t WHERE ({keys}) IN (SELECT * FROM {un})").format(
                    rel=stage.rel, keys=keys, un=unnest
                ),
                params,
            )
            stats.rows_deleted += max(cur.rowcount, 0)
        if pair.same:
            for start in range(0, len(to_copy), COPY_KEYS_PER_STATEMENT):
                chunk = to_copy[start : start + COPY_KEYS_PER_STATEMENT]
                unnest, params = _key_array_params(plan, chunk)
                stats.rows_copied += _insert(
                    conn,
                    stage.rel,
                    sql.SQL(
                        "INSERT INTO {dst} ({cols}) SELECT {tcols} FROM {src} t"
                        " WHERE ({keys}) IN (SELECT * FROM {un})"
                    ).format(
                        dst=stage.rel, cols=cols, tcols=tcols, src=source.rel, keys=keys, un=unnest
                    ),
                    params,
                )
        else:
            stats.rows_copied = _insert(
                conn,
                stage.rel,
                sql.SQL("INSERT INTO {dst} ({cols}) SELECT {cols} FROM {tmp}").format(
                    dst=stage.rel, cols=cols, tmp=tmp
                ),
            )
            conn.execute(sql.SQL("DROP TABLE pg_temp.{}").format(tmp))
    stats.seconds = time.perf_counter() - started
    return stats


def _insert(
    conn: psycopg.Connection[Any], rel: sql.Composable, query: sql.Composable,
    params: Any = None,
) -> int:  # fmt: skip
    """Rows inserted into the stage. A source that now repeats a key its stage held once
    makes the stage's primary key a plain index (``stage.allow_repeats``): the repeated
    rows are staged, and their models quarantine them."""
    try:
        with conn.transaction():
            return max(conn.execute(query, params).rowcount, 0)
    except psycopg.errors.UniqueViolation:
        allow_repeats(conn, rel)
        return max(conn.execute(query, params).rowcount, 0)


def apply_diff(
    source_conn: psycopg.Connection[Any],
    source_rel: Rel,
    stage_conn: psycopg.Connection[Any],
    stage_rel: Rel,
    key: Sequence[str],
    columns: Sequence[str],
    diff: TableDiff,
) -> ApplyStats:
    """Make the stage equal the source for the keys in ``diff``, in one stage transaction.

    Inserted and updated rows are streamed from the source by binary COPY into a TEMP table
    on the stage side; then every key of the diff is deleted from the stage and the copied
    rows are inserted. A key the diff called updated that has meanwhile vanished from the
    source is thus removed, never left stale. Keys travel as arrays, rows never through
    Python objects. Use :func:`sync_stage_table` to diff and copy in one source snapshot.
    """
    with _opened(source_conn, source_rel, stage_conn, stage_rel, key, columns) as opened:
        pair, plan, _ = opened
        return _run_apply(pair, plan, diff)


def sync_stage_table(
    source_conn: psycopg.Connection[Any],
    source_rel: Rel,
    stage_conn: psycopg.Connection[Any],
    stage_rel: Rel,
    key: Sequence[str],
    columns: Sequence[str],
) -> TableDiff:
    """Diff, then apply, in one source snapshot and one stage transaction.

    The returned diff's ``applied`` holds the copy's figures; its ``bytes_from_source`` and
    ``seconds`` cover both the diff and the copy. A diff that finds nothing writes nothing.
    """
    started = time.perf_counter()
    with _opened(source_conn, source_rel, stage_conn, stage_rel, key, columns) as opened:
        pair, plan, result = opened
        _run_diff(pair, plan, result)
        result.applied = _run_apply(pair, plan, result)
    diff_bytes = 0 if pair.same else pair.source.bytes
    result.bytes_from_source = diff_bytes + result.applied.bytes_from_source
    result.seconds = time.perf_counter() - started
    return result


def _diff_keys(pair: _Pair, plan: _Plan, result: TableDiff, keys: Sequence[Key]) -> None:
    """What ``_run_diff`` finds, for the given keys only: their rows listed on both sides by
    key (index lookups), compared by the same strong row hash."""
    inserted: list[Key] = []
    updated: list[Key] = []
    deleted: list[Key] = []
    tkeys = sql.SQL(", ").join(sql.Identifier("t", k) for k in plan.key)
    for start in range(0, len(keys), COPY_KEYS_PER_STATEMENT):
        unnest, params = _key_array_params(plan, keys[start : start + COPY_KEYS_PER_STATEMENT])

        def listed(side: _Side, u: sql.Composable = unnest, p: list[Any] = params) -> dict:
            scope = sql.SQL("FROM {rel} t WHERE ({keys}) IN (SELECT * FROM {un})").format(
                rel=side.rel, keys=tkeys, un=u
            )
            return _leaf_hashes(side, plan, scope, p)

        src_rows, stg_rows = pair.both(listed)
        gone = stg_rows.keys() - src_rows.keys()
        result.rows_compared += len(src_rows) + len(gone)
        result.source_rows += len(src_rows)
        result.stage_rows += len(stg_rows)
        deleted.extend(gone)
        _new_or_changed(src_rows, stg_rows, inserted, updated)
    result.inserted = Keys(sorted(inserted))
    result.updated = Keys(sorted(updated))
    result.deleted = Keys(sorted(deleted))


def sync_stage_keys(
    source_conn: psycopg.Connection[Any],
    source_rel: Rel,
    stage_conn: psycopg.Connection[Any],
    stage_rel: Rel,
    key: Sequence[str],
    columns: Sequence[str],
    keys: Sequence[Sequence[Any]],
) -> TableDiff:
    """:func:`sync_stage_table` for a known set of candidate keys (a change feed named them:
    ``wal.py``): only their rows are compared and copied, in one source snapshot and one stage
    transaction, and the result is what the full diff would say of them. A key given that
    did not change (a change undone, one already staged) comes back in no list. Keys may be
    given as text: they are cast to the stage's key types. Only ``source_rows`` and
    ``stage_rows`` differ in meaning: the rows found for these keys, not whole tables."""
    started = time.perf_counter()
    with _opened(source_conn, source_rel, stage_conn, stage_rel, key, columns) as opened:
        pair, plan, result = opened
        _diff_keys(pair, plan, result, [tuple(k) for k in keys])
        result.levels = 1 if keys else 0
        result.applied = _run_apply(pair, plan, result)
    diff_bytes = 0 if pair.same else pair.source.bytes
    result.bytes_from_source = diff_bytes + result.applied.bytes_from_source
    result.seconds = time.perf_counter() - started
    return result
