"""Foreign keys and plain indexes set aside for a model's first load, and put back.

A row inserted into a table with foreign keys runs one lookup-and-lock per key on the parent
table: on a 2M-row table with three keys that is about half of the load's time (measured on
``system_messages``: 26 µs a row with its keys, 6 without). For a model's first load ferry
instead drops the table's foreign keys, loads, and adds them back: the check then runs once,
as one set-based query; plain (not unique) indexes likewise come back by one sort. This
needs nothing but table ownership: no superuser, no ``session_replication_role``, no
disabled triggers.

Why this is the default for first loads, and what guards it:

- ferry's own rows cannot break a key: their parents come from the ledger, which only names
  rows ferry wrote, and a merge re-points children to a row that exists.
- While the keys are off, a guard session holds every row of the parent tables locked
  ``FOR KEY SHARE``, the lock a foreign key's own check takes on the row it finds. The
  application goes on inserting parents and updating them, but cannot delete one or change
  its key behind ferry's back (its ``ON DELETE`` action would not reach the rows being
  loaded): such a statement waits until the keys are back. A ``SHARE`` lock on the tables
  would instead stop every write to them for the whole load, which on a live target can be
  hours without sign-ups. Locking costs about 0.6 µs a parent row (2M rows: 1.2 s). The
  locks come a few milliseconds after the drop commits; ``VALIDATE`` covers that moment too.
- A row the application writes into the child table meanwhile is not checked when written;
  ``VALIDATE CONSTRAINT`` checks it afterwards, and if it dangles the run fails, naming the
  key, which stays enforced for new rows.
- The definitions are saved in the ledger schema before the drop, in their own transaction,
  so a crash leaves them recorded; every run restores what is recorded before it does
  anything else.

Unique keys (the primary key included) are set aside too, but only for a first load into
an empty table that no foreign key of another table references, that no publication sends
and whose unique keys are not deferrable (``unique_aside_ok``): a random UUID's descent into
a 2M-row primary key and a legacy key's into its unique index cost about 3 µs a row, against
a second to build both by sorting. ferry's own rows cannot collide on the primary key (the
ledger's key refuses a legacy key loaded twice, and a UUID is a function of it); they can on
another unique key, if the model's SQL fills it with something other than its key, and the
application can write a row that collides. Then the build fails, and the model's first load
is taken out (its target rows, those still as ferry wrote them, and its ledger rows) and run
again with the keys in place, where bisection quarantines the rows that collide, as it does
without this. Meanwhile the application's upserts into that table (``ON CONFLICT``) fail,
for want of the key they name: ``--keep-constraints`` if it makes them.

Autovacuum is set aside too, for the table alone (its ``autovacuum_enabled`` storage
parameter, recorded like the keys): an insert of millions of rows wakes it while the load
runs, and its ``VACUUM`` of a table being loaded took CPU from the load, then held the lock
that putting the keys back needs (SF=1: 2 to 4 s of a 21 s migrate, growing with the table).
It comes back with the keys; the server's next round vacuums the table then.

``ferry migrate --keep-constraints`` loads with the keys in place instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg import sql

from ferry import catalog, ledger
from ferry.errors import DuplicateKeysError, FerryError
from ferry.spec import Spec

# An ALTER TABLE waits for every transaction using the table, and every statement that comes
# after it waits behind it: one long report reading a parent would stall the application for
# as long as ferry waited. So an attempt queues for LOCK_WAIT seconds at most, then steps
# aside for a growing pause, until LOCK_BUDGET seconds have gone by.
#
# Stepping aside also undoes the one deadlock the guard's row locks allow: an application
# DELETE of a parent row waits on the guard's lock while holding its own on the table, which
# putting the keys back needs. Below PostgreSQL's deadlock_timeout (1 s by default) ferry's
# attempt gives up before its deadlock check would cancel it, and tries again until the
# DELETE gives up (Supabase's API roles time out after a few seconds).
LOCK_WAIT = 0.5
LOCK_BUDGET = 300.0
#
# Two holders are exceptions. An autovacuum worker: the server cancels one that blocks a
# lock request for deadlock_timeout, but only if the request is still waiting then; stepping
# aside before that, ferry waited for whole VACUUMs of the tables it had just loaded. When
# one holds a lock on the table or a table its keys reference, the next attempt waits past
# that moment. And ferry's own sessions (a validation behind the unique keys' sort): their
# lock ends when their statement does, which a pause grown to seconds overshot; the pause
# stops growing at OWN_PAUSE (ferry still steps aside 0.4 s of every 0.9 behind them).
OWN_PAUSE = 0.4


def _ddl(conn: psycopg.Connection, table: str, statements: Sequence[sql.Composable]) -> None:
    """Run ``statements`` in one savepoint (or transaction), each attempt queueing for a
    lock at most ``LOCK_WAIT`` seconds (longer behind an autovacuum worker)."""
    deadline = time.monotonic() + LOCK_BUDGET
    pause, wait = 0.1, LOCK_WAIT
    # Called outside a transaction, it leaves none open: the holders' query opens one.
    outside = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    while True:
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(
                        sql.Literal(f"{round(wait * 1000)}ms")
                    )
                )
                for statement in statements:
                    conn.execute(statement)
            return
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            if time.monotonic() + pause > deadline:
                raise FerryError(
                    f"{table}: other sessions kept it (or a table its keys reference) locked "
                    f"for {LOCK_BUDGET:.0f} s while ferry set keys aside or put them back; "
                    "try again when they are done"
                ) from None
            holders, deadlock_timeout = _holders(conn, table)
            if outside:
                conn.rollback()
            if "autovacuum" in holders:
                wait = deadlock_timeout + LOCK_WAIT
                continue
            wait = LOCK_WAIT
            time.sleep(min(pause, OWN_PAUSE) if holders == {"ferry"} else pause)
            pause = min(pause * 2, 5.0)


def _holders(conn: psycopg.Connection, table: str) -> tuple[set[str], float]:
    """Who else holds a lock on ``table`` or a table its foreign keys reference (``ferry``,
    ``autovacuum``, ``other``), and the server's ``deadlock_timeout`` in seconds."""
    conn.execute("SELECT pg_stat_clear_snapshot()")  # a transaction keeps the first one
    rows = conn.execute(
        "SELECT DISTINCT CASE WHEN a.backend_type = 'autovacuum worker' THEN 'autovacuum' "
        "WHEN a.application_name LIKE 'ferry%%' THEN 'ferry' ELSE 'other' END "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.granted AND l.pid <> pg_backend_pid() AND l.locktype = 'relation' "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND (l.relation = to_regclass(%s) OR l.relation IN (SELECT confrelid "
        "FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'f'))",
        [catalog.regclass(table), catalog.regclass(table)],
    ).fetchall()
    timeout = conn.execute("SELECT current_setting('deadlock_timeout')::interval").fetchone()
    return {r[0] for r in rows}, float(timeout[0].total_seconds()) if timeout else 1.0


def _table(spec: Spec) -> sql.Identifier:
    return ledger.table(spec, "suspended_constraints")


def unique_aside_ok(conn: psycopg.Connection, target: str) -> bool:
    """Whether a first load may set the unique keys of ``target`` aside as well.

    Empty, because then every row that could collide was written during the load, by ferry
    or the application. Referenced by no other table's key, which would have to go too. Not
    published and with the default replica identity: without a primary key, an UPDATE or
    DELETE on a table that a publication sends fails. Not deferrable, which attaching a
    built index to the constraint again would not bring back.
    """
    row = conn.execute(
        "SELECT c.relkind = 'r' AND c.relreplident = 'd' "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.confrelid = c.oid "
        "AND k.conrelid <> c.oid) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid "
        "AND k.contype IN ('p', 'u') AND k.condeferrable) "
        "AND NOT EXISTS (SELECT 1 FROM pg_publication_tables p "
        "WHERE p.schemaname = n.nspname AND p.tablename = c.relname) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass(%s)",
        [catalog.regclass(target)],
    ).fetchone()
    ok = bool(row and row[0])
    if ok:
        empty = conn.execute(
            sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(sql.Identifier(*target.split(".")))
        ).fetchone()
        ok = bool(empty and empty[0])
    conn.commit()
    return ok


# What a unique index backs: a constraint that comes back with ADD CONSTRAINT ... USING
# INDEX once the index is built, or nothing (the index alone).
_UNIQUE_KINDS = {"PRIMARY KEY": sql.SQL("PRIMARY KEY"), "UNIQUE": sql.SQL("UNIQUE")}


def suspend(
    conn: psycopg.Connection, spec: Spec, target: str, run_id: int, model: str | None = None
) -> int:
    """Record and drop the foreign keys and plain indexes of ``target``, and turn its
    autovacuum off; returns how many of these it set aside.

    Plain indexes (not unique, backing no constraint) are rebuilt after the load by one sort
    instead of one descent per row (``recipient_id`` on 2M rows: 4.5 µs a row, against 2 s
    to build). With ``model`` (the model loading it, when ``unique_aside_ok``) the unique
    keys go too; otherwise they stay, to refuse a duplicate when it is written so that
    bisection can quarantine it. The record lives in ``<ledger>.suspended_constraints``.
    """
    # A partitioned table keeps everything: a foreign key cannot come back NOT VALID on it,
    # its indexes' definitions (ON ONLY) would come back without its partitions', and its
    # autovacuum is its partitions'.
    relkind = conn.execute(
        "SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [catalog.regclass(target)]
    ).fetchone()
    if relkind is None or relkind[0] != "r":
        conn.commit()
        return 0
    # (name, definition, kind, comment): a comment goes with what it is on, and comes back.
    found: list[tuple[str, str, str | None, str | None]] = [
        (r[0], r[1], None, r[2])
        for r in conn.execute(
            "SELECT conname, pg_get_constraintdef(oid), obj_description(oid, 'pg_constraint') "
            "FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'f' "
            "UNION ALL SELECT i.relname, pg_get_indexdef(x.indexrelid), "
            "obj_description(x.indexrelid, 'pg_class') FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = to_regclass(%s) "
            "AND NOT x.indisunique AND NOT x.indisexclusion "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid) "
            "ORDER BY 1",
            [catalog.regclass(target), catalog.regclass(target)],
        )
    ]
    if model is not None:
        # Dropped after the foreign keys: a key of the table to itself depends on its own.
        found += conn.execute(
            "SELECT i.relname, pg_get_indexdef(x.indexrelid), "
            "CASE k.contype WHEN 'p' THEN 'PRIMARY KEY' WHEN 'u' THEN 'UNIQUE' "
            "ELSE 'UNIQUE INDEX' END, coalesce(obj_description(k.oid, 'pg_constraint'), "
            "obj_description(x.indexrelid, 'pg_class')) "
            "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "LEFT JOIN pg_constraint k ON k.conindid = x.indexrelid "
            "AND k.conrelid = x.indrelid AND k.contype IN ('p', 'u') "
            "WHERE x.indrelid = to_regclass(%s) AND x.indisunique ORDER BY 1",
            [catalog.regclass(target)],
        ).fetchall()
    autovacuum = _autovacuum_on(conn, target)
    if autovacuum is not None:
        found.append((_STORAGE, autovacuum, _STORAGE_KIND, None))
    if not found:
        conn.commit()
        return 0
    with conn.transaction():
        for name, definition, kind, comment in found:
            owner = model if kind in _UNIQUE_KINDS or kind == "UNIQUE INDEX" else None
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (target_table, name, definition, run_id, kind, model, "
                    "comment) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
                ).format(_table(spec)),
                [target, name, definition, run_id, kind, owner, comment],
            )
    conn.commit()  # recorded before anything is dropped
    schema = target.split(".")[0]
    _ddl(
        conn, target,
        [
            _autovacuum(target, "false")
            if kind == _STORAGE_KIND
            else sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(*target.split(".")), sql.Identifier(name)
            )
            if not _is_index(definition) or kind in _UNIQUE_KINDS
            else sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name))
            for name, definition, kind, _ in found
        ],
    )  # fmt: skip
    conn.commit()
    return len(found)


# The record of a table's autovacuum set aside: a name no key or index can have, and the
# parameter's value before (empty: not set, the server's default).
_STORAGE, _STORAGE_KIND = "", "STORAGE"


def _autovacuum_on(conn: psycopg.Connection, target: str) -> str | None:
    """``autovacuum_enabled`` of ``target`` as its storage parameters say it ('' if they
    do not), or None if it is off already or the role may not change it (not the owner: a
    table with no key or index to set aside loads as before)."""
    row = conn.execute(
        "SELECT coalesce(v, ''), coalesce(v::boolean, true) FROM (SELECT (SELECT "
        "o.option_value FROM pg_options_to_table(c.reloptions) o "
        "WHERE o.option_name = 'autovacuum_enabled') AS v FROM pg_class c "
        "WHERE c.oid = to_regclass(%s) AND pg_has_role(c.relowner, 'USAGE')) x",
        [catalog.regclass(target)],
    ).fetchone()
    return row[0] if row and row[1] else None


def _autovacuum(table: str, value: str) -> sql.Composed:
    """Set a table's ``autovacuum_enabled`` to ``value``, or reset it (``''``)."""
    t = sql.Identifier(*table.split("."))
    if value == "":
        return sql.SQL("ALTER TABLE {} RESET (autovacuum_enabled)").format(t)
    return sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = {})").format(t, sql.Literal(value))


def _autovacuum_back(conn: psycopg.Connection, spec: Spec, target: str | None) -> int:
    """Give the tables (one, or all) their autovacuum back, as recorded; returns how many."""
    rows = conn.execute(
        sql.SQL(
            "SELECT target_table, definition FROM {} WHERE name = %s "
            "AND (%s::text IS NULL OR target_table = %s) ORDER BY target_table"
        ).format(_table(spec)),
        [_STORAGE, target, target],
    ).fetchall()
    for table, value in rows:
        with conn.transaction():
            if catalog.exists(conn, sql.Identifier(*table.split("."))):
                _ddl(conn, table, [_autovacuum(table, value)])
            _forget(conn, spec, table, _STORAGE)
        conn.commit()
    return len(rows)


def _is_index(definition: str) -> bool:
    """``pg_get_indexdef`` gives a whole ``CREATE INDEX``; a key's definition starts
    ``FOREIGN KEY``."""
    return definition.startswith("CREATE ")


def parents(conn: psycopg.Connection, target: str) -> list[tuple[str, str]]:
    """(schema, table) of every other table that a foreign key of ``target`` points at."""
    return [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT DISTINCT n.nspname, c.relname FROM pg_constraint k "
            "JOIN pg_class c ON c.oid = k.confrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE k.conrelid = to_regclass(%s) AND k.contype = 'f' "
            "AND k.confrelid <> k.conrelid ORDER BY 1, 2",
            [catalog.regclass(target)],
        )
    ]


@contextmanager
def suspended(
    guard: psycopg.Connection, spec: Spec, target: str, run_id: int,
    released: Callable[[], None] | None = None, model: str | None = None,
) -> Iterator[int]:  # fmt: skip
    """Keys of ``target`` off for the block, parent rows locked by ``guard``; yields how many.

    ``guard`` must be a session of its own: it holds a transaction open for the whole block.
    ``released`` is called once the parents are unlocked again (see ``restore``). With
    ``model``, the unique keys are off too (see ``suspend``); after a block that ends well,
    the caller puts them back (``restore``), so as to load again if they cannot come back.
    """
    locked = parents(guard, target)
    guard.commit()
    n = suspend(guard, spec, target, run_id, model)
    try:
        if n:
            _lock(guard, locked)
        elif released:
            released()
        yield n
    except BaseException:
        if n:
            restore(guard, spec, target, released)
        raise
    if n:
        restore(guard, spec, target, released, unique=model is None)


def _lock(conn: psycopg.Connection, tables: list[tuple[str, str]]) -> None:
    """Every row of each table ``FOR KEY SHARE``, held by ``conn``'s open transaction until
    it commits (a released savepoint's row locks stay with the transaction).

    A table the role may not lock (Supabase's ``auth.users``: ``SELECT`` and ``REFERENCES``
    only, and a row lock needs ``UPDATE``) is left to ``VALIDATE``; so is the table being
    loaded, when a key points at itself, since ferry's own workers must write it.
    """
    conn.execute("SELECT 1")  # opens the transaction that holds them: each table a savepoint
    for schema, name in tables:
        lock = sql.SQL("SELECT count(*) FROM (SELECT FROM {} FOR KEY SHARE) s").format(
            sql.Identifier(schema, name)
        )
        try:
            _ddl(conn, f"{schema}.{name}", [lock])  # waits only on rows being deleted
        except psycopg.errors.InsufficientPrivilege:
            continue


def _key_exists(conn: psycopg.Connection, table: str, name: str) -> bool:
    """The key (constraint) ``name`` is on ``table`` (again)."""
    return bool(
        conn.execute(
            "SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s",
            [catalog.regclass(table), name],
        ).fetchone()
    )


def _index_exists(conn: psycopg.Connection, table: str, name: str) -> bool:
    """The index ``name`` is in ``table``'s schema (again)."""
    return bool(
        conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'i'",
            [table.split(".")[0], name],
        ).fetchone()
    )


def _forget(conn: psycopg.Connection, spec: Spec, table: str, name: str) -> None:
    conn.execute(
        sql.SQL("DELETE FROM {} WHERE target_table = %s AND name = %s").format(_table(spec)),
        [table, name],
    )


def _recorded(
    conn: psycopg.Connection, spec: Spec, target: str | None, unique: bool
) -> list[tuple[str, str, str, str | None, str | None, str | None]]:
    """What is set aside, of one table or all: the unique keys, or everything else."""
    return conn.execute(
        sql.SQL(
            "SELECT target_table, name, definition, kind, model, comment FROM {} "
            "WHERE (kind IS NOT NULL) = %s AND (%s::text IS NULL OR target_table = %s) "
            "AND name <> %s ORDER BY target_table, name"
        ).format(_table(spec)),
        [unique, target, target, _STORAGE],
    ).fetchall()


def _commented(table: str, name: str, on_index: bool, comment: str | None) -> list[sql.Composable]:
    """The ``COMMENT`` that was on a key or index when it was set aside, if any."""
    if comment is None:
        return []
    if on_index:
        return [
            sql.SQL("COMMENT ON INDEX {} IS {}").format(
                sql.Identifier(table.split(".")[0], name), sql.Literal(comment)
            )
        ]
    return [
        sql.SQL("COMMENT ON CONSTRAINT {} ON {} IS {}").format(
            sql.Identifier(name), sql.Identifier(*table.split(".")), sql.Literal(comment)
        )
    ]


def build_unique_indexes(conn: psycopg.Connection, spec: Spec, target: str) -> None:
    """Sort the unique keys set aside for ``target`` into their indexes, for ``unique_back``
    to attach as keys in an instant.

    Each build takes ``SHARE`` on the table, which the other builds share: called once the
    foreign keys are back (``restore``, ``keys_back``), it runs beside the rebuilding of the
    plain indexes instead of after the keys' validation, where the last model's sorts ran
    alone on one core at the end of a run. An index whose rows share a value is left to
    ``unique_back``, which raises for it.
    """
    for table, name, definition, kind, _, comment in _recorded(conn, spec, target, unique=True):
        if _index_exists(conn, table, name):
            continue
        steps: list[sql.Composable] = [sql.SQL(definition)]  # type: ignore[arg-type]
        if kind not in _UNIQUE_KINDS:  # a unique index and no key: its comment is on it
            steps += _commented(table, name, True, comment)
        try:
            with conn.transaction():
                conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
                _ddl(conn, table, steps)
        except psycopg.errors.UniqueViolation:
            return


def unique_back(conn: psycopg.Connection, spec: Spec, target: str | None = None) -> int:
    """Build the unique keys set aside (of one table, or all) again; returns how many.

    In the caller's transaction, which must commit: a guard's commit would end its locks.
    Each index is built by one sort under a ``SHARE`` lock (the application reads on, its
    writes wait), unless ``build_unique_indexes`` did; the constraint is then attached to
    it, which takes an instant. Raises ``DuplicateKeysError`` if rows share a value
    (``pipeline`` undoes the load then).
    """
    rows = _recorded(conn, spec, target, unique=True)
    for table, name, definition, kind, model, comment in rows:
        steps: list[sql.Composable] = []
        if not _index_exists(conn, table, name):
            steps.append(sql.SQL(definition))  # type: ignore[arg-type]
        if kind in _UNIQUE_KINDS and not _key_exists(conn, table, name):
            attach = sql.SQL("ALTER TABLE {t} ADD CONSTRAINT {n} {k} USING INDEX {n}")
            steps.append(
                attach.format(
                    t=sql.Identifier(*table.split(".")),
                    n=sql.Identifier(name),
                    k=_UNIQUE_KINDS[kind],
                )
            )
        if steps:
            steps += _commented(table, name, kind not in _UNIQUE_KINDS, comment)
            conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
            try:
                _ddl(conn, table, steps)
            except psycopg.errors.UniqueViolation:
                raise DuplicateKeysError(table, name, model) from None
        _forget(conn, spec, table, name)
    return len(rows)


def restore(
    conn: psycopg.Connection, spec: Spec, target: str | None = None,
    keys_back: Callable[[], None] | None = None, unique: bool = True,
) -> int:  # fmt: skip
    """Add back what was suspended (for one table, or all); returns how many.

    Foreign keys first: every one comes back ``NOT VALID`` in one transaction, enforced for
    new rows from its commit on, which also ends a guard's locks (``keys_back`` is told
    then). From there on nothing holds a lock that keeps another load from setting its own
    keys aside (``VALIDATE`` takes ``ROW SHARE`` on the parent), so the scheduler lets the
    next loads start while the rest is built: the unique keys (``unique_back``; without
    ``unique`` they are left for the caller), a key that points at its own table's key
    (which cannot come back before that), the indexes, and each key's validation.
    """
    rows = [(r[0], r[1], r[2], r[5]) for r in _recorded(conn, spec, target, unique=False)]
    keys = [r for r in rows if not _is_index(r[2])]
    indexes = [r for r in rows if _is_index(r[2])]
    later = [r for r in keys if not _add_key(conn, *r, quiet=True)]
    conn.commit()
    if keys_back:
        keys_back()
    uniques = 0
    if not unique:
        keys = [r for r in keys if r not in later]
    else:
        uniques = unique_back(conn, spec, target)
        for key in later:
            _add_key(conn, *key)
        conn.commit()
    for table, name, definition, comment in indexes:
        with conn.transaction():
            if not _index_exists(conn, table, name):
                conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
                create = sql.SQL(definition)  # type: ignore[arg-type]
                _ddl(conn, table, [create, *_commented(table, name, True, comment)])
            _forget(conn, spec, table, name)
        conn.commit()
    for table, name, _, _ in keys:
        try:
            with conn.transaction():
                validate = sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                    sql.Identifier(*table.split(".")), sql.Identifier(name)
                )
                _ddl(conn, table, [validate])
                _forget(conn, spec, table, name)
        except psycopg.errors.ForeignKeyViolation:
            raise FerryError(
                f"{table}: foreign key {name} is back but some existing rows break it "
                "(rows the application wrote while it was set aside); it is enforced for new "
                "rows, and ferry verify names the rows"
            ) from None
        conn.commit()
    # The table is whole again (unless its unique keys are the caller's): it may be vacuumed.
    vacuum = _autovacuum_back(conn, spec, target) if unique else 0
    return uniques + len(rows) + vacuum


def _add_key(
    conn: psycopg.Connection, table: str, name: str, definition: str, comment: str | None,
    quiet: bool = False,
) -> bool:  # fmt: skip
    """The foreign key back, ``NOT VALID``; False, with ``quiet``, if the key it references
    is not there (yet): its own table's primary key, set aside with it."""
    if _key_exists(conn, table, name):
        return True
    add = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
        sql.Identifier(*table.split(".")),
        sql.Identifier(name),
        sql.SQL(definition),  # type: ignore[arg-type]
    )
    try:
        _ddl(conn, table, [add, *_commented(table, name, False, comment)])
    except psycopg.errors.InvalidForeignKey:
        if not quiet:
            raise
        return False
    return True
