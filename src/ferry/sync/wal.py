"""Change capture from the source's write-ahead log: which keys changed, at the cost of the
changes, instead of the range-checksum diff's scan of every row (``diff.py``).

How
---
``ferry migrate --changes wal`` makes a logical replication slot on the source, and each
``ferry sync`` asks it which keys of the spec's tables changed since the last sync, re-stages
just those keys (``diff.sync_stage_keys``: the same comparison and copy as the diff's, for
those keys only) and goes on exactly as after a diff. The slot says only *which keys*; ferry
reads the rows themselves, so order and repeats do not matter: re-staging a key that did not
change is a no-op.

Why the SQL interface and ``test_decoding``
-------------------------------------------
The slot is read with ``pg_logical_slot_peek_changes`` over an ordinary connection: no
streaming loop, feedback or keepalives to keep up, and a sync is a batch anyway. Its output
plugin is ``test_decoding``, shipped with PostgreSQL (contrib) and offered by RDS, Cloud SQL,
Azure and Supabase: it needs no publication, which ``pgoutput`` would need, and creating a
publication needs ownership of the legacy tables, which a migration role seldom has. Its text
output names the table and every column with its value; only the key columns are read out of
it (``_Row``), and nothing of it is ever logged, shown or stored: the rows are health data.
The rows are filtered on the server to the spec's tables before they are sent.

Order of things, and why nothing is lost
----------------------------------------
*Migrate*: the slot is made through the replication protocol (``CREATE_REPLICATION_SLOT ...
EXPORT_SNAPSHOT``), and every stage copy reads the source in the snapshot it exports: that
snapshot sees exactly the transactions that committed before the slot's consistent point, and
the slot delivers exactly those that commit after it. (A slot made with the SQL function and
a snapshot taken after it could miss a transaction whose commit record precedes the
consistent point but which was not yet visible, e.g. one waiting for a synchronous standby.)
A slot already there is kept: its changes since it was made are all still in it, and a
change both staged and delivered is re-staged once more, harmlessly.

*Sync*: (1) a tiny transactional message (``pg_logical_emit_message``, prefix ``ferry``) is
committed with ``synchronous_commit = local``, which flushes the WAL of every commit
acknowledged before it (the slot decodes only flushed WAL, and a source may commit
asynchronously); the WAL flush position F is read, and the slot's changes up to F peeked (not
consumed). (2) A snapshot of the source is taken, and every transaction read is checked to be
visible in it (by its xid): one that is not (its commit is in the WAL but not yet visible)
and every later one are left in the slot for the next sync. (3) Each changed table is
re-staged from its own snapshot, taken after (2), which therefore sees every transaction
kept. (4) Only after the sync's last target transaction commits is the slot advanced, to F
or to the last kept commit: a sync that dies at any point leaves the slot where it was, the
next one reads the same changes again, and the keys it had re-staged wait in the ledger's
resync queue (``sync.py``).

Falling back to the checksum diff
---------------------------------
A TRUNCATE, a delete or key change whose old key the WAL does not carry (the table's replica
identity does not cover the spec's key), a table without a key, a view, an unlogged table (it
writes no WAL): that source's whole table is compared by the diff, and the sync says so. A
table rewritten (SET LOGGED, VACUUM FULL: a new relfilenode, ``_redefined``) is compared
whole once. A slot gone from the source (dropped,
or invalidated by ``max_slot_wal_keep_size``): every table is compared by the diff, with a
warning, and a new slot is made for the next sync, before the diff's snapshots, which read
the snapshot it exports. ``ferry sync --full`` compares every table by the diff and still
moves the slot on.

State: the slot's name and where it was last advanced to are in the ledger
(``ledger.change_slot``), recorded before the slot is made, so that ferry never leaves a slot
its ledger does not name (a forgotten slot keeps WAL on the source until its disk fills).
``ferry status --source`` shows its lag; ``ferry cleanup`` and ``ferry rollback --all`` drop
it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ferry import catalog, ledger
from ferry.conninfo import apply, connect
from ferry.engine import stage
from ferry.errors import ChangeCaptureError, describe
from ferry.spec import Source, Spec
from ferry.sync import diff

PLUGIN = "test_decoding"
CHANGES = ("wal", "checksum")
# Rows fetched per round trip from the server-side cursor over the slot's changes.
FETCH_ROWS = 10_000

Key = tuple[str | None, ...]


# --------------------------------------------------------------------------------------------
# LSNs and snapshots


def lsn_int(lsn: str) -> int:
    """``'16/B374D848'`` -> its byte position, to compare and subtract."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def _visible(xid: int, snapshot: str) -> bool:
    """Whether the 32-bit ``xid`` (a committed transaction) is visible in ``snapshot``, the
    text of a ``pg_snapshot`` (``xmin:xmax:xip,...``, 64-bit), as PostgreSQL compares xids:
    modulo 2**32."""
    _, xmax, xip = snapshot.split(":")
    if ((xid - int(xmax)) & 0xFFFFFFFF) < 0x80000000:  # xid >= xmax: began after the snapshot
        return False
    return xid not in {int(x) & 0xFFFFFFFF for x in xip.split(",") if x}


# --------------------------------------------------------------------------------------------
# The source's side: can it, and the slot's state


def check_source(conn: psycopg.Connection) -> None:
    """Raise ``ChangeCaptureError`` saying what the source lacks for ``--changes wal``."""
    row = conn.execute(
        "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int,"
        " current_setting('max_wal_senders')::int, r.rolreplication OR r.rolsuper,"
        " (SELECT count(*) FROM pg_replication_slots)::int, current_user,"
        " current_setting('server_encoding')"
        " FROM pg_roles r WHERE r.rolname = current_user"
    ).fetchone()
    conn.commit()
    assert row is not None
    level, slots, senders, replication, used, user, encoding = row
    problems = []
    if encoding == "SQL_ASCII":
        # The decoded rows would come as bytes of an unknown encoding, keys among them.
        problems.append("its server encoding is SQL_ASCII (not supported for --changes wal)")
    if level != "logical":
        problems.append(
            f"its wal_level is {level}, not logical (set wal_level = logical and restart the "
            "server; on RDS or Cloud SQL, the logical replication flag of the instance)"
        )
    if not replication:
        problems.append(
            f"role {user} has no REPLICATION attribute (ALTER ROLE {user} REPLICATION; "
            "on RDS: GRANT rds_replication TO the role)"
        )
    if slots <= used:
        problems.append(f"no free replication slot (max_replication_slots = {slots}, all used)")
    if senders < 1:
        problems.append("max_wal_senders is 0 (the slot is made over a replication connection)")
    if problems:
        raise ChangeCaptureError(
            "change capture from the WAL (--changes wal) needs logical decoding on the "
            "source: " + "; ".join(problems) + ". Without it, sync compares rows by checksums"
        )


@dataclass
class SlotState:
    """A slot as the source sees it now (``pg_replication_slots``); ``None`` fields: gone."""

    slot: str
    exists: bool = False
    database: str | None = None
    plugin: str | None = None
    wal_status: str | None = None  # reserved, extended, unreserved, lost (13+)
    active: bool = False
    confirmed: str | None = None  # confirmed_flush_lsn
    lag_bytes: int | None = None  # WAL written since confirmed: what a sync would read
    retained_bytes: int | None = None  # WAL kept on the source's disk for the slot
    safe_wal_size: int | None = None  # bytes more before it is invalidated (13+, if limited)
    current_database: str = ""

    @property
    def usable(self) -> bool:
        return (
            self.exists
            and self.database == self.current_database
            and self.plugin == PLUGIN
            and self.wal_status != "lost"
        )


def slot_state(conn: psycopg.Connection, slot: str) -> SlotState:
    """The slot's row, and its lag in bytes; read by any role (the view is public)."""
    version = conn.info.server_version
    extra = "wal_status, safe_wal_size" if version >= 130000 else "NULL, NULL"
    current = "pg_current_wal_lsn()"
    row = conn.execute(
        sql.SQL(
            "SELECT database, plugin, {extra}, active, confirmed_flush_lsn::text,"
            " ({cur} - confirmed_flush_lsn)::int8, ({cur} - restart_lsn)::int8"
            " FROM pg_replication_slots WHERE slot_name = %s"
        ).format(extra=sql.SQL(extra), cur=sql.SQL(current)),
        [slot],
    ).fetchone()
    db = conn.execute("SELECT current_database()").fetchone()
    conn.commit()
    state = SlotState(slot, current_database=db[0] if db else "")
    if row is None:
        return state
    state.exists = True
    (state.database, state.plugin, state.wal_status, state.safe_wal_size, state.active,
     state.confirmed, state.lag_bytes, state.retained_bytes) = row  # fmt: skip
    return state


def _drop(conn: psycopg.Connection, slot: str) -> bool:
    """Drop the slot if it is there; whether it was."""
    found = conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot])
    if found.fetchone() is None:
        conn.commit()
        return False
    try:
        conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
    except psycopg.Error as exc:
        conn.rollback()
        raise ChangeCaptureError(
            f"cannot drop replication slot {slot} on the source: {describe(exc)}"
        ) from None
    conn.commit()
    return True


def drop_slot(source: str, target_conn: psycopg.Connection, spec: Spec) -> str | None:
    """Drop this target's slot on the source, then forget it in the ledger (in that order:
    a slot the ledger still names can be dropped again; one it forgot, nobody would). The
    slot's name, or None when the ledger names none."""
    found = ledger.change_slot(target_conn, spec)
    target_conn.commit()
    if found is None:
        return None
    with connect(source, app="ferry-cleanup") as conn:
        _drop(conn, found.slot)
    ledger.forget_slot(target_conn, spec, found.slot)
    target_conn.commit()
    return found.slot


# --------------------------------------------------------------------------------------------
# Making a slot, with the snapshot that goes with it


class Export:
    """A slot just made, and the snapshot it exported: valid while the replication
    connection that made it stays open and idle, so that is kept until every session that
    needs the snapshot took it (``use``), or ``close``."""

    def __init__(self, source: str, slot: str, sessions: int) -> None:
        self.slot = slot
        self._left = sessions
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        try:
            self._conn = connect(
                make_conninfo(source, replication="database"), autocommit=True, app="ferry-slot"
            )
            row = self._conn.execute(
                sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL {} EXPORT_SNAPSHOT").format(
                    sql.Identifier(slot), sql.Identifier(PLUGIN)
                )
            ).fetchone()
        except psycopg.Error as exc:
            self.close()
            raise ChangeCaptureError(
                f"cannot make replication slot {slot} on the source: {describe(exc)}"
            ) from None
        assert row is not None
        self.lsn: str = row[1]
        self.snapshot: str = row[2]
        if sessions <= 0:
            self.close()

    def use(self, conn: psycopg.Connection) -> None:
        """Open a transaction on ``conn`` (idle) that sees the source as the slot began."""
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(self.snapshot)))
        with self._lock:
            self._left -= 1
            done = self._left <= 0
        if done:
            self.close()

    def close(self) -> None:
        """The snapshot is not needed any more (the slot stays)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _new_name() -> str:
    return "ferry_" + uuid.uuid4().hex[:24]


def _table_sources(spec: Spec) -> list[Source]:
    return [s for s in spec.sources if s.table is not None]


def _make(
    source: str, target_conn: psycopg.Connection, spec: Spec, slot: str, run_id: int
) -> Export:
    """Record the slot in the ledger, then make it; its snapshot for every table source."""
    ledger.record_slot(target_conn, spec, slot, run_id)
    target_conn.commit()
    return Export(source, slot, len(_table_sources(spec)))


def for_migrate(
    source: str, target_conn: psycopg.Connection, spec: Spec, changes: str | None, run_id: int
) -> Export | None:
    """Before a migrate stages: the slot made (or made again) with the snapshot the stage
    must read in, when the run captures changes from the WAL (``changes`` is ``wal``, or
    None and the ledger names a slot); None when the stage may take its own snapshots.
    ``checksum`` drops a slot the ledger names."""
    if changes is not None and changes not in CHANGES:
        raise ChangeCaptureError(f"--changes must be one of {', '.join(CHANGES)}, not {changes}")
    found = ledger.change_slot(target_conn, spec)
    target_conn.commit()
    if changes == "checksum":
        if found is not None:
            drop_slot(source, target_conn, spec)
        return None
    if found is None and changes is None:
        return None
    with connect(source, app="ferry-slot") as conn:
        check_source(conn)
        state = slot_state(conn, found.slot) if found else None
        if state is not None and state.usable:
            return None  # every change since it was made is in it: the stage may be newer
        if state is not None and state.exists:
            _check_ours(state)
            _drop(conn, state.slot)  # invalidated (lost): it can deliver nothing more
    return _make(source, target_conn, spec, found.slot if found else _new_name(), run_id)


def _check_ours(state: SlotState) -> None:
    if state.database != state.current_database:
        raise ChangeCaptureError(
            f"replication slot {state.slot} belongs to database {state.database}, not to the "
            f"source database {state.current_database}: is --source the database migrated?"
        )
    if state.plugin != PLUGIN:
        raise ChangeCaptureError(
            f"replication slot {state.slot} decodes with {state.plugin}, not {PLUGIN}: "
            "not ferry's; drop it or run ferry cleanup"
        )


# --------------------------------------------------------------------------------------------
# Reading the changed keys


@dataclass
class _Table:
    """A relation whose changes count for a source (the table, or one of its partitions)."""

    source: Source
    covered: bool  # the replica identity carries the key's old values (deletes, key changes)
    printed: str  # schema.name as the plugin prints it (quote_ident's quoting)


@dataclass
class Changes:
    """What the slot says since the last sync, for one sync.

    ``keys``: per source, the keys (as text, one per key column) some change named;
    ``full``: per source, why its whole table is compared by the diff instead; ``upto``: the
    LSN to advance the slot to once the sync has committed (None: leave it);
    ``export``: a slot made again, whose snapshot the full diff must read in.
    """

    slot: str
    keys: dict[str, set[Key]] = field(default_factory=dict)
    full: dict[str, str] = field(default_factory=dict)
    upto: str | None = None
    confirmed: str | None = None
    changes: int = 0
    transactions: int = 0
    held_back: int = 0  # transactions read but left in the slot (not yet visible)
    bytes: int = 0
    notes: list[str] = field(default_factory=list)
    export: Export | None = None

    def counts(self) -> dict[str, Any]:
        """For the run record: names, counts and LSNs only."""
        return {
            "slot": self.slot,
            "changes": self.changes,
            "transactions": self.transactions,
            "held_back": self.held_back,
            "bytes": self.bytes,
            "keys": {name: len(k) for name, k in sorted(self.keys.items())},
            "full": dict(sorted(self.full.items())),
            "upto": self.upto,
        }


def read(
    source: str, target_conn: psycopg.Connection, spec: Spec, *, full: bool = False
) -> Changes | None:
    """The keys changed since the slot was last advanced; None when this target's syncs
    compare by checksums (the ledger names no slot). ``full``: every table is compared by
    the diff (an audit), and the slot still moves on."""
    found = ledger.change_slot(target_conn, spec)
    target_conn.commit()
    if found is None:
        return None
    changes = Changes(found.slot)
    with connect(source, app="ferry-changes") as conn:
        state = slot_state(conn, found.slot)
        if not state.usable:
            return _remade(source, target_conn, spec, state, changes)
        changes.confirmed = state.confirmed
        tables = _tables(conn, spec, changes)
        _peek(conn, found.slot, tables, changes)
        _redefined(conn, target_conn, spec, changes)  # a TRUNCATE's own reason first
    changes.notes += [f"source {name}: {why}" for name, why in sorted(changes.full.items())]
    if full:
        for src in _table_sources(spec):
            changes.full.setdefault(src.name, "--full: compared by checksums")
    return changes


def _remade(
    source: str, target_conn: psycopg.Connection, spec: Spec, state: SlotState, changes: Changes
) -> Changes:
    """The slot is gone (or lost its WAL): every table by the diff, and a new slot made
    before the diff's snapshots, which read the snapshot it exports."""
    why = "is gone from the source" if not state.exists else f"is {state.wal_status}"
    if state.exists:
        _check_ours(state)
    note = f"replication slot {state.slot} {why}: every table is compared by checksums"
    for src in _table_sources(spec):
        changes.full[src.name] = "the slot was gone: compared by checksums"
    try:
        with connect(source, app="ferry-slot") as conn:
            check_source(conn)
            if state.exists:
                _drop(conn, state.slot)
        changes.export = _make(source, target_conn, spec, state.slot, _run_of(target_conn, spec))
        note += f"; a new slot {state.slot} is made for the next sync"
    except ChangeCaptureError as exc:
        note += f"; no new slot could be made ({exc})"
    changes.notes.append(note)
    return changes


def _run_of(conn: psycopg.Connection, spec: Spec) -> int:
    row = conn.execute(
        sql.SQL("SELECT max(run_id) FROM {}").format(ledger.table(spec, "runs"))
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _tables(
    conn: psycopg.Connection, spec: Spec, changes: Changes
) -> dict[tuple[str, str], _Table]:
    """The relations whose changes count, by (schema, name) as the plugin prints them: each
    table source, its partitions and inheritance children (changes come by the leaf). A
    source that is no table (a view), or has no key: its changes mean a full diff."""
    sources = _table_sources(spec)
    if not sources:
        return {}
    names = [sql.Identifier(*s.table.split(".")).as_string(conn) for s in sources if s.table]
    rows = conn.execute(
        """
        WITH RECURSIVE s AS (
            SELECT n, to_regclass(name) AS root
            FROM unnest(%s::text[]) WITH ORDINALITY AS u(name, n)
        ), tree AS (
            SELECT n, root AS relid FROM s WHERE root IS NOT NULL
            UNION ALL
            SELECT t.n, i.inhrelid FROM tree t JOIN pg_inherits i ON i.inhparent = t.relid
        )
        SELECT t.n, n.nspname, c.relname, quote_ident(n.nspname) || '.' || quote_ident(c.relname),
               c.relkind::text, c.relreplident::text, c.relpersistence = 'u',
               coalesce((SELECT array_agg(a.attname::text) FROM pg_index i
                         JOIN pg_attribute a ON a.attrelid = i.indrelid
                          AND a.attnum = ANY(i.indkey)
                         WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary)
                            OR (c.relreplident = 'i' AND i.indisreplident))), '{}')
        FROM tree t JOIN pg_class c ON c.oid = t.relid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        """,
        [names],
    ).fetchall()
    conn.commit()
    found: dict[tuple[str, str], _Table] = {}
    for n, schema, rel, printed, kind, ident, unlogged, ident_cols in rows:
        src = sources[int(n) - 1]
        if kind not in ("r", "p"):
            changes.full[src.name] = "not a table (a view?): compared by checksums"
            continue
        if unlogged:  # written to no WAL: no change of it is ever decoded
            changes.full[src.name] = (
                f"{printed} is unlogged, so its changes are not in the WAL: compared by checksums"
            )
            continue
        covered = ident == "f" or (ident in ("d", "i") and set(src.keys) <= set(ident_cols))
        found[(schema, rel)] = _Table(src, covered and bool(src.keys), printed)
    return found


def _redefined(
    conn: psycopg.Connection, target_conn: psycopg.Connection, spec: Spec, changes: Changes
) -> None:
    """Tables whose definition changed since they were staged are compared whole: a
    partition attached, detached or dropped, an inheritance child added or let go, a column
    rewritten (``ALTER COLUMN ... TYPE ... USING``), dropped or added, a replica identity
    changed (even back): the WAL carries no row change for any of it."""
    sources = [s for s in _table_sources(spec) if s.table]
    staged = stage.recorded_shapes(target_conn, spec)
    target_conn.commit()
    now = catalog.table_shapes(conn, [s.table for s in sources])
    conn.commit()
    for src, shape in zip(sources, now, strict=True):
        if shape is None or staged.get(src.name, (None, None))[1] != shape:
            changes.full.setdefault(
                src.name, "its definition changed since it was staged: compared by checksums"
            )


def _peek(
    conn: psycopg.Connection, slot: str, tables: dict[tuple[str, str], _Table], changes: Changes
) -> None:
    """Read the slot's changes up to the WAL flushed now, keep the keys; cut at the first
    transaction not yet visible (see the module docstring)."""
    # Values are printed by the session that decodes: the forms the diff's session reads back.
    apply(conn, diff.SESSION_SETTINGS)
    conn.commit()
    with conn.transaction():
        # Every commit acknowledged before now is flushed once this one is: the slot can only
        # decode flushed WAL, and an asynchronous commit (synchronous_commit = off) may not be.
        conn.execute("SET LOCAL synchronous_commit = local")
        conn.execute("SELECT pg_logical_emit_message(true, 'ferry', '')")
    row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
    assert row is not None
    flushed: str = row[0]
    # A change is ours when the text before its first ": " is one of our tables' heads: a
    # hashed lookup. Testing every head as a prefix of every change cost 75 ms, twice their
    # decoding, for the 20k changes the demo's delta writes to tables outside the spec. A
    # name holding ": " itself (a partition's, quoted) is still tested as a prefix, and so
    # is every TRUNCATE then, whose text lists several tables.
    heads = [f"table {t.printed}" for t in tables.values()]
    odd = [f"{h}: " for h in heads if ": " in h]
    odd_test = (
        "OR (starts_with(data, 'table ') AND (EXISTS (SELECT 1 FROM unnest(%s::text[]) p "
        "WHERE starts_with(data, p)) OR data LIKE '%%: TRUNCATE:%%'))"
        if odd
        else ""
    )
    query = f"""
        WITH c AS MATERIALIZED (
            SELECT n, xid::text::int8 AS xid, lsn::text AS lsn, data
            FROM pg_logical_slot_peek_changes(%s, %s::pg_lsn, NULL, 'include-xids', '0',
                 'skip-empty-xacts', '1') WITH ORDINALITY AS p(lsn, xid, data, n)
        ), r AS (
            SELECT n, xid, lsn, data FROM c
            WHERE split_part(data, ': ', 1) IN (SELECT unnest(%s::text[]))
               OR (starts_with(data, 'table ') AND split_part(data, ': ', 2) = 'TRUNCATE')
               {odd_test}
        )
        SELECT n, xid, lsn, data FROM r
        UNION ALL
        SELECT n, xid, lsn, NULL FROM c WHERE data = 'COMMIT' AND xid IN (SELECT xid FROM r)
        ORDER BY 1
    """
    txns: list[tuple[int, str, dict[str, set[Key]], dict[str, str]]] = []
    keys: dict[str, set[Key]] = {}
    full: dict[str, str] = {}
    try:
        with conn.transaction(), conn.cursor(name="ferry_changes") as cur:
            cur.itersize = FETCH_ROWS
            cur.execute(query, [slot, flushed, heads, *([odd] if odd else [])])
            for _, xid, lsn, data in cur:
                if data is None:  # the transaction's COMMIT: its end LSN
                    txns.append((int(xid), lsn, keys, full))
                    keys, full = {}, {}
                    continue
                changes.bytes += len(data) + 24
                changes.changes += 1
                _Row(data, tables, keys, full).read()
        snap = conn.execute(
            "SELECT pg_current_snapshot()::text"
            if conn.info.server_version >= 130000
            else "SELECT txid_current_snapshot()::text"
        ).fetchone()
        conn.commit()
    except psycopg.Error as exc:
        conn.rollback()
        raise ChangeCaptureError(
            f"cannot read the changes of replication slot {slot}: {describe(exc)} (ferry "
            "cleanup drops the slot; syncs then compare by checksums)"
        ) from None
    assert snap is not None
    upto: str | None = flushed
    for i, (xid, _, _, _) in enumerate(txns):
        if not _visible(xid, snap[0]):
            changes.held_back = len(txns) - i
            upto = txns[i - 1][1] if i else None
            txns = txns[:i]
            break
    changes.transactions = len(txns)
    for _, _, k, f in txns:
        for name, ks in k.items():
            changes.keys.setdefault(name, set()).update(ks)
        for name, why in f.items():
            changes.full.setdefault(name, why)
    if upto is not None and changes.confirmed and lsn_int(upto) <= lsn_int(changes.confirmed):
        upto = None
    changes.upto = upto


_TOAST = object()  # a value the WAL does not carry: unchanged and stored out of line


class _Malformed(Exception):
    """A row the parser does not follow; never carries the row's text."""


class _Row:
    """One change as ``test_decoding`` prints it, read only as far as the key columns:

    ``table public.t: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:2 name[text]:'x'``

    Identifiers are printed as ``quote_identifier`` does; a value as its type's output, in
    single quotes with quotes doubled, except numbers, booleans, bit strings (``B'01'``),
    ``null`` and ``unchanged-toast-datum``. An old key is there for a delete, and for an
    update that changed the replica identity.
    """

    def __init__(
        self, text: str, tables: dict[tuple[str, str], _Table], keys: dict[str, set[Key]],
        full: dict[str, str],
    ) -> None:  # fmt: skip
        self.text, self.tables, self.keys, self.full = text, tables, keys, full
        self.pos = len("table ")

    def read(self) -> None:
        try:
            self._read()
        except (_Malformed, IndexError, ValueError):
            # Cannot tell which table or key: every table this row could be of, by the diff.
            for t in self._named_tables():
                self.full.setdefault(t.source.name, "a change the parser could not read")

    def _named_tables(self) -> list[_Table]:
        return [t for t in self.tables.values() if t.printed in self.text]

    def _read(self) -> None:
        names = [self._qualified()]
        while self.text.startswith(", ", self.pos):
            self.pos += 2
            names.append(self._qualified())
        if not self.text.startswith(": ", self.pos):
            raise _Malformed
        self.pos += 2
        end = self.text.index(":", self.pos)
        action = self.text[self.pos : end]
        self.pos = end + 1
        found = [self.tables[n] for n in names if n in self.tables]
        if action == "TRUNCATE":
            for t in found:
                self.full.setdefault(
                    t.source.name, "a TRUNCATE: its whole table is compared by checksums"
                )
            return
        if not found:
            return
        table = found[0]
        src = table.source
        if src.name in self.full:
            return
        if not src.keys:
            self.full[src.name] = "no key: compared by checksums"
            return
        if action != "INSERT" and not table.covered:
            self.full[src.name] = (
                "an update or delete, and the table's replica identity does not carry the "
                "key: compared by checksums"
            )
            return
        wanted = set(src.keys)
        if action in ("INSERT", "UPDATE"):
            old: dict[str, Any] = {}
            if self.text.startswith(" old-key:", self.pos):
                self.pos += len(" old-key:")
                old = self._columns(None)
                self._key(src, old, {})
            new = self._columns(wanted)
            self._key(src, new, old)
        elif action == "DELETE":
            self._key(src, self._columns(wanted), {})
        else:
            raise _Malformed

    def _key(self, src: Source, values: dict[str, Any], old: dict[str, Any]) -> None:
        parts: list[str | None] = []
        for col in src.keys:
            value = values.get(col, _TOAST)
            if value is _TOAST:
                value = old.get(col, _TOAST)
            if value is _TOAST or value is None:
                self.full.setdefault(
                    src.name, "a change without its key in the WAL: compared by checksums"
                )
                return
            parts.append(value)
        self.keys.setdefault(src.name, set()).add(tuple(parts))

    def _qualified(self) -> tuple[str, str]:
        schema = self._ident()
        if self.text[self.pos] != ".":
            raise _Malformed
        self.pos += 1
        return schema, self._ident()

    def _ident(self) -> str:
        text, i = self.text, self.pos
        if text[i] == '"':
            return self._quoted('"')
        j = i
        while j < len(text) and text[j] not in '.:,[ "':
            j += 1
        if j == i:
            raise _Malformed
        self.pos = j
        return text[i:j]

    def _quoted(self, quote: str) -> str:
        """A token in ``quote`` marks from here, a doubled mark standing for one."""
        text, i = self.text, self.pos
        j = i + 1
        while True:
            q = text.index(quote, j)
            if text.startswith(quote, q + 1):
                j = q + 2
                continue
            self.pos = q + 1
            return text[i + 1 : q].replace(quote * 2, quote)

    def _columns(self, wanted: set[str] | None) -> dict[str, Any]:
        """Columns from here to the end or to `` new-tuple:``: name -> text (None for
        NULL, ``_TOAST``), stopping early once every ``wanted`` column is read."""
        text = self.text
        out: dict[str, Any] = {}
        while self.pos < len(text):
            if text[self.pos] != " ":
                raise _Malformed
            self.pos += 1
            if text.startswith("new-tuple:", self.pos):
                self.pos += len("new-tuple:")
                return out
            if text.startswith("(no-tuple-data)", self.pos):
                self.pos += len("(no-tuple-data)")
                continue
            name = self._ident()
            if text[self.pos] != "[":
                raise _Malformed
            self.pos = text.index("]:", self.pos) + 2
            out[name] = self._value()
            if wanted is not None and wanted <= out.keys():
                return out
        return out

    def _value(self) -> Any:
        text, i = self.text, self.pos
        if text[i] == "'":
            return self._quoted("'")
        j = text.find(" ", i)
        j = len(text) if j < 0 else j
        self.pos = j
        raw = text[i:j]
        if raw == "null":
            return None
        if raw == "unchanged-toast-datum":
            return _TOAST
        if raw.startswith("B'") and raw.endswith("'"):
            return raw[2:-1]
        return raw


# --------------------------------------------------------------------------------------------
# After the sync


def advance(source: str, target_conn: psycopg.Connection, spec: Spec, changes: Changes) -> str:
    """Move the slot past what the sync took, once the sync has committed: a note for the
    operator if that failed (the next sync reads the same changes again, harmlessly)."""
    if changes.upto is None:
        return ""
    try:
        with connect(source, app="ferry-changes") as conn:
            conn.execute(
                "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", [changes.slot, changes.upto]
            )
            conn.commit()
    except (psycopg.Error, ChangeCaptureError) as exc:
        return (
            f"replication slot {changes.slot} was not advanced ({describe(exc)}): the next "
            "sync reads the same changes again"
        )
    ledger.slot_advanced(target_conn, spec, changes.slot, changes.upto)
    target_conn.commit()
    return ""


@contextmanager
def closing(changes: Changes | None) -> Iterator[Changes | None]:
    """Whatever happens, a snapshot still exported is let go."""
    try:
        yield changes
    finally:
        if changes is not None and changes.export is not None:
            changes.export.close()
