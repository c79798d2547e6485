"""The ledger: one row per (model, source key) saying what became of that source row.

It lives in the target database, next to what it describes, so that a chunk's target rows and
their ledger rows commit in one transaction: a crash cannot leave one without the other.
ferry changes or deletes only target rows whose ledger row says ferry wrote them.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ferry import catalog
from ferry.engine import keyarray, keys
from ferry.engine.stage import recorded_rows, unique_key
from ferry.errors import FerryError, InvariantError, describe
from ferry.spec import Source, Spec

STATUSES = ("migrated", "merged", "quarantined", "excluded", "deleted")
# Roles that Supabase hands to every API caller: ferry's schemas must stay closed to them.
API_ROLES = ("anon", "authenticated")

_DDL = """
CREATE SCHEMA IF NOT EXISTS {schema};
REVOKE ALL ON SCHEMA {schema} FROM PUBLIC;
CREATE TABLE IF NOT EXISTS {schema}.runs (
    run_id      bigserial PRIMARY KEY,
    kind        text NOT NULL,
    spec        text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    status      text NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'ok', 'failed')),
    counts      jsonb NOT NULL DEFAULT '{{}}',
    error       text
);
CREATE TABLE IF NOT EXISTS {schema}.ledger (
    model        text NOT NULL,
    source_key   text NOT NULL,
    source_table text NOT NULL,
    accounts     boolean NOT NULL,
    status       text NOT NULL
                 CHECK (status IN ('migrated', 'merged', 'quarantined', 'excluded', 'deleted')),
    reason       text,
    repairs      text[] NOT NULL DEFAULT '{{}}',
    sqlstate     text,
    message      text,
    target_table text NOT NULL,
    target_uuid  uuid,
    row_hash     text,
    conflict     boolean NOT NULL DEFAULT false,
    decided_by   text,
    decision     text,
    decided_at   timestamptz,
    run_id       bigint NOT NULL,
    first_run_id bigint NOT NULL,
    first_seen   timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    tries        integer NOT NULL DEFAULT 1,
    -- Source key first: in a partition the model is one value, and the sort that builds a
    -- partition's key (ledger.attach) took 1.9 s for 2M rows comparing it first, 0.75 s so.
    PRIMARY KEY (source_key, model)
) PARTITION BY LIST (model);
CREATE TABLE IF NOT EXISTS {schema}.history (
    run_id        bigint NOT NULL,
    model         text NOT NULL,
    source_key    text NOT NULL,
    ledger_before jsonb NOT NULL,
    target_before jsonb,
    PRIMARY KEY (run_id, model, source_key)
);
CREATE INDEX IF NOT EXISTS ledger_quarantined_idx ON {schema}.ledger (model)
    WHERE status = 'quarantined';
-- A sync counts the conflicts before and after: a scan of every ledger row without it.
CREATE INDEX IF NOT EXISTS ledger_conflict_idx ON {schema}.ledger (model) WHERE conflict;
CREATE TABLE IF NOT EXISTS {schema}.pending_deletes (
    target_table text NOT NULL,
    target_uuid  uuid NOT NULL,
    model        text NOT NULL,
    source_key   text NOT NULL,
    row_hash     text,
    run_id       bigint NOT NULL,
    PRIMARY KEY (target_table, target_uuid)
);
CREATE TABLE IF NOT EXISTS {schema}.suspended_constraints (
    target_table text NOT NULL,
    name         text NOT NULL,
    definition   text NOT NULL,
    run_id       bigint NOT NULL,
    suspended_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind         text,
    model        text,
    comment      text,
    PRIMARY KEY (target_table, name)
);
ALTER TABLE {schema}.suspended_constraints ADD COLUMN IF NOT EXISTS kind text,
    ADD COLUMN IF NOT EXISTS model text, ADD COLUMN IF NOT EXISTS comment text;
CREATE TABLE IF NOT EXISTS {schema}.resync (
    model      text NOT NULL,
    source_key text NOT NULL,
    run_id     bigint NOT NULL,
    PRIMARY KEY (model, source_key)
);
CREATE TABLE IF NOT EXISTS {schema}.staged (
    source     text PRIMARY KEY,
    rows       bigint NOT NULL,
    bytes      bigint NOT NULL,
    seconds    double precision NOT NULL,
    run_id     bigint NOT NULL,
    staged_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
ALTER TABLE {schema}.staged ADD COLUMN IF NOT EXISTS digest text;
-- The source table as staged: its columns (``stage.columns_digest``) and its definition
-- (``catalog.table_shapes``).
ALTER TABLE {schema}.staged ADD COLUMN IF NOT EXISTS columns text,
    ADD COLUMN IF NOT EXISTS shape text;
-- The spec's definition of the source it was staged under (``Source.definition``).
ALTER TABLE {schema}.staged ADD COLUMN IF NOT EXISTS definition text;
CREATE TABLE IF NOT EXISTS {schema}.loads_aside (
    model  text PRIMARY KEY,
    run_id bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.changes (
    slot        text PRIMARY KEY,
    run_id      bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    lsn         pg_lsn,
    advanced_at timestamptz
);
CREATE TABLE IF NOT EXISTS {schema}.model_runs (
    run_id  bigint NOT NULL,
    model   text NOT NULL,
    rows    bigint NOT NULL,
    written bigint NOT NULL,
    seconds double precision NOT NULL,
    PRIMARY KEY (run_id, model)
);
CREATE TABLE IF NOT EXISTS {schema}.session_settings (
    name  text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.hash_forms (
    model text PRIMARY KEY,
    form  integer NOT NULL
);
-- The digest of the target's rules (``predict.RULES_DIGEST``) the model last ran under: rows
-- refused for their own values are tried again when it changes; the spec's definition of
-- the model (``Spec.definition``) it last ran whole under: computed whole when it changes
-- (``settle``), and the run that did.
ALTER TABLE {schema}.hash_forms ADD COLUMN IF NOT EXISTS rules text,
    ADD COLUMN IF NOT EXISTS definition text, ADD COLUMN IF NOT EXISTS defined_in bigint;
"""


# Helpers that specs may call in their rules (PostgreSQL 15 has no pg_input_is_valid).
# PARALLEL UNSAFE: the exception block opens a subtransaction, which parallel workers cannot.
_IS_JSON = """
CREATE OR REPLACE FUNCTION {schema}.is_json(value text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL UNSAFE AS $$
BEGIN
    PERFORM value::jsonb;
    RETURN true;
EXCEPTION WHEN others THEN
    RETURN false;
END
$$"""


# The tables of the ledger schema (``_DDL``): every module names them through ``table``.
TABLES = (
    "runs", "ledger", "history", "pending_deletes", "suspended_constraints", "resync", "staged",
    "loads_aside", "changes", "model_runs", "meta", "session_settings", "hash_forms",
)  # fmt: skip

# The settings that decide how a value reads as text (a timestamptz or date key, and so its
# UUID; a row hashed as text, ``query.hash_kinds``: a float, an interval, money) and how text
# parses (a CSV's dates), which the environment of whoever runs ferry sets too (PGTZ,
# PGDATESTYLE, ALTER ROLE ... SET). A ledger keeps those its first run had, and every later
# run's sessions take them (``session_settings``).
IDENTITY_SETTINGS = (
    "DateStyle", "IntervalStyle", "TimeZone", "bytea_output", "extra_float_digits", "lc_monetary",
)  # fmt: skip


# Keys passed in one array parameter at most, where a long list is sent in batches.
KEYS_PER_STATEMENT = 20_000


def table(spec: Spec, name: str) -> sql.Identifier:
    """One of the ledger schema's tables, by its name in ``TABLES``."""
    if name not in TABLES:
        raise ValueError(f"the ledger schema has no table {name!r}")
    return sql.Identifier(spec.ledger_schema, name)


def session_settings(
    conn: psycopg.Connection, spec: Spec, record: bool = True
) -> list[tuple[str, str]]:
    """The ``IDENTITY_SETTINGS`` this ledger's runs use: those recorded, else this session's
    (recorded with ``record``: a new ledger, or one made before they were kept, whose keys
    were read with the settings of the sessions that wrote them). Dates print as ISO
    whatever the session's ``DateStyle`` (only its order of fields, for input, is kept):
    psycopg reads no other, and a ledger made with another could never be read again."""
    kept = table(spec, "session_settings")
    found: list[tuple[str, str]] = []
    exists = catalog.exists(conn, kept)
    if exists:
        found = conn.execute(
            sql.SQL("SELECT name, value FROM {} ORDER BY name").format(kept)
        ).fetchall()
    missing = [n for n in IDENTITY_SETTINGS if n not in {f[0] for f in found}]
    if missing:  # a new ledger, or a setting kept since (lc_monetary)
        now = conn.execute(
            "SELECT n, CASE n WHEN 'DateStyle' THEN 'ISO, ' || "
            "coalesce(nullif(btrim(split_part(current_setting(n), ',', 2)), ''), 'MDY') "
            "ELSE current_setting(n) END FROM unnest(%s::text[]) n ORDER BY n",
            [missing],
        ).fetchall()
        if record and exists:
            with conn.cursor() as cur:
                cur.executemany(
                    sql.SQL(
                        "INSERT INTO {} (name, value) VALUES (%s, %s) ON CONFLICT DO NOTHING"
                    ).format(kept),
                    now,
                )
        found = sorted([*found, *now])
    conn.commit()
    return [(str(n), str(v)) for n, v in found]


def helpers(schema: str) -> list[sql.Composed]:
    """The engine's SQL helpers that model SQL and rules may call (``key_uuid``,
    ``is_json``), made in ``schema``: ``pg_temp`` for ``ferry check``, which runs a spec's
    SQL before any ledger exists."""
    return [keys.function_ddl(schema), sql.SQL(_IS_JSON).format(schema=sql.Identifier(schema))]


# Bumped whenever the DDL above changes; ensure_schema skips its work when it matches.
SCHEMA_VERSION = 13


def ensure_schema(conn: psycopg.Connection, spec: Spec) -> None:
    """Create ferry's schemas and key function; idempotent, and closed to the API roles."""
    encoding = conn.execute("SHOW server_encoding").fetchone()
    if encoding is None or encoding[0] != "UTF8":
        raise InvariantError("the target database must use UTF8 (ferry's keys hash UTF-8 text)")
    ident = sql.Identifier(spec.ledger_schema)
    meta = table(spec, "meta")
    if catalog.exists(conn, meta):
        version = conn.execute(sql.SQL("SELECT max(version) FROM {}").format(meta)).fetchone()
        if version and version[0] == SCHEMA_VERSION:
            conn.commit()
            return
    kind = conn.execute(
        "SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
        [table(spec, "ledger").as_string(conn)],
    ).fetchone()
    in_one_table = kind is not None and kind[0] == "r"  # a ledger from before schema 5
    if in_one_table:
        conn.execute(sql.SQL("ALTER TABLE {}.ledger RENAME TO ledger_unpartitioned").format(ident))
        conn.execute(
            sql.SQL(
                "ALTER TABLE {}.ledger_unpartitioned RENAME CONSTRAINT ledger_pkey "
                "TO ledger_unpartitioned_pkey"
            ).format(ident)
        )
        conn.execute(
            sql.SQL(
                "ALTER INDEX IF EXISTS {}.ledger_quarantined_idx "
                "RENAME TO ledger_unpartitioned_quarantined_idx"
            ).format(ident)
        )
    for statement in _DDL.split(";\n"):
        if statement.strip():
            conn.execute(sql.SQL(statement).format(schema=ident))
    if in_one_table:
        old = sql.Identifier(spec.ledger_schema, "ledger_unpartitioned")
        cols = sql.SQL(", ").join(
            sql.Identifier(r[0])
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                [table(spec, "ledger").as_string(conn)],
            )
        )
        models = conn.execute(sql.SQL("SELECT DISTINCT model FROM {}").format(old)).fetchall()
        for (model,) in models:
            part = partition(conn, spec, model, aside=True)
            conn.execute(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE model = %s").format(
                    part, cols, cols, old
                ),
                [model],
            )
            attach(conn, spec, model)
        conn.execute(sql.SQL("DROP TABLE {}").format(old))
    conn.execute(keys.function_ddl(spec.ledger_schema))
    conn.execute(sql.SQL(_IS_JSON).format(schema=ident))
    conn.execute(
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(spec.stage_schema))
    )
    conn.execute(
        sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(sql.Identifier(spec.stage_schema))
    )
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (version integer NOT NULL)").format(meta))
    conn.execute(sql.SQL("DELETE FROM {}").format(meta))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(meta), [SCHEMA_VERSION])
    for role in _api_roles(conn):
        for schema in (spec.ledger_schema, spec.stage_schema):
            conn.execute(
                sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(
                    sql.Identifier(schema), sql.Identifier(role)
                )
            )
    conn.commit()


def record_history(
    conn: psycopg.Connection,
    spec: Spec,
    run_id: int,
    model: str,
    target: str,
    key_column: str,
    keys: list[str],
) -> None:
    """Keep the before-image of ledger rows (and of the target rows they wrote) that a run is
    about to change, so that a rollback can restore them. The first image in a run wins."""
    if not keys:
        return
    conn.execute(
        sql.SQL(
            "INSERT INTO {hist} (run_id, model, source_key, ledger_before, target_before) "
            "SELECT %s, l.model, l.source_key, to_jsonb(l.*), to_jsonb(t.*) FROM {led} l "
            "LEFT JOIN {t} t ON t.{k} = l.target_uuid AND l.status IN ('migrated', 'deleted') "
            "WHERE l.model = %s AND l.source_key = ANY(%s) ON CONFLICT DO NOTHING"
        ).format(
            hist=table(spec, "history"),
            led=table(spec, "ledger"),
            t=sql.Identifier(*target.split(".")),
            k=sql.Identifier(key_column),
        ),
        [run_id, model, keys],
    )


@contextmanager
def recorded(
    conn: psycopg.Connection, spec: Spec, kind: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """A run row for the block: closed as ``ok`` with the counts the block fills in, or as
    ``failed`` with what ``errors.describe`` lets be shown (never a row's values).
    Call it holding the run lock."""
    run_id = start_run(conn, spec, kind)
    counts: dict[str, Any] = {}
    try:
        yield run_id, counts
    except BaseException as exc:
        finish_run(conn, spec, run_id, {}, describe(exc, kind))
        raise
    finish_run(conn, spec, run_id, counts, None)


def start_run(conn: psycopg.Connection, spec: Spec, kind: str) -> int:
    """Record a new run; call it holding the run lock, so any run still 'running' is dead."""
    conn.execute(
        sql.SQL(
            "UPDATE {}.runs SET status = 'failed', error = 'interrupted: the process ended "
            "before recording its end' WHERE status = 'running'"
        ).format(sql.Identifier(spec.ledger_schema))
    )
    row = conn.execute(
        sql.SQL("INSERT INTO {}.runs (kind, spec) VALUES (%s, %s) RETURNING run_id").format(
            sql.Identifier(spec.ledger_schema)
        ),
        [kind, spec.name],
    ).fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])


def finish_run(
    conn: psycopg.Connection, spec: Spec, run_id: int, counts: dict[str, Any], error: str | None
) -> None:
    conn.rollback()
    conn.execute(
        sql.SQL(
            "UPDATE {}.runs SET finished_at = clock_timestamp(), status = %s, counts = %s, "
            "error = %s WHERE run_id = %s"
        ).format(sql.Identifier(spec.ledger_schema)),
        ["failed" if error else "ok", Jsonb(counts), error, run_id],
    )
    conn.commit()


@dataclass
class SourceCounts:
    """The fates of one source table's rows; ``check_invariant`` proves they add up.

    ``staged_keys`` and ``fate_keys`` fingerprint which keys were staged and which have a
    live fate (``fingerprint``); ``None`` where they were not taken.
    """

    source: str
    staged: int = 0
    migrated: int = 0
    merged: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    excluded: Counter[str] = field(default_factory=Counter)
    repaired: Counter[str] = field(default_factory=Counter)
    deleted: int = 0
    staged_keys: int | None = None
    fate_keys: int | None = None

    @property
    def accounted(self) -> int:
        return (
            self.migrated + self.merged + sum(self.quarantined.values())
            + sum(self.excluded.values())
        )  # fmt: skip


def fingerprint(key: sql.Composable) -> sql.Composed:
    """The sum of a 64-bit hash of each key: equal on two sides holding the same keys.

    Set beside equal counts, two different sets of keys agree only if the hashes of the keys
    one side lacks add up to those of the keys it has instead: for one lost key and one
    invented, a chance of 1 in 2^64. The sum is ``numeric``: it does not wrap (NULL for no
    keys).
    """
    return sql.SQL('sum(hashtextextended({} COLLATE "C", 0))').format(key)


def source_counts(
    conn: psycopg.Connection, spec: Spec, only: Collection[str] | None = None,
    totals: bool = False,
) -> dict[str, SourceCounts]:  # fmt: skip
    """Per accounted source (or only those named): staged rows and their fates, straight
    from stage and ledger, with the fingerprints of their keys. ``totals``: the live fates
    counted as migrated, without the breakdown by status, reason and repairs, whose grouping
    cost more than the scan (2M rows: 0.38 s against 0.15 s).

    One scan of the stage table and one of the source's models' ledger partitions: against
    an anti-join of the two, 0.45 + 0.95 s instead of 2.65 + 0.9 s for the demo's 2M-row
    source. Each partition is read by its own name (``table_of``): read through the ledger,
    which has no statistics, the groups were estimated at a tenth of the rows, and past what
    ``work_mem`` holds the planner sorted every row instead of hashing (the demo at SF=3:
    6.1M rows sorted on disk, 6.2 CPU-s against 2.9).
    """
    out: dict[str, SourceCounts] = {}
    modelled = {m.source for m in spec.models if m.accounts}
    # Read through the ledger, which has no statistics of its own, the planner guessed a
    # group per ten rows and would rather count millions on one core than gather that many
    # partial counts (1.48 s against 0.98 s on 2.4M rows).
    conn.execute("SET parallel_tuple_cost = 0")  # undone with the transaction if it fails
    for src in spec.sources:
        if src.lookup or src.name not in modelled or (only is not None and src.name not in only):
            continue
        c = out[src.name] = SourceCounts(src.name)
        c.staged, c.staged_keys = staged_keys(conn, spec, src)
        query = (
            "SELECT 'migrated', '', '{{}}'::text[], count(*), {print} FROM {led} "
            "WHERE model = %s AND accounts AND status <> 'deleted'"
            if totals
            else "SELECT status, coalesce(reason, ''), repairs, count(*), {print} "
            "FILTER (WHERE status <> 'deleted') FROM {led} "
            "WHERE model = %s AND accounts GROUP BY 1, 2, 3"
        )
        rows = [
            row
            for model in models_of(spec, src.name)
            for row in conn.execute(
                sql.SQL(query).format(
                    print=fingerprint(sql.SQL("source_key")),
                    led=table_of(conn, spec, model),
                ),
                [model],
            ).fetchall()
        ]
        c.fate_keys = sum(int(r[4] or 0) for r in rows)
        for status, reason, repairs, n, _ in rows:
            if status == "migrated":
                c.migrated += n
                for rule in repairs:
                    c.repaired[rule] += n
            elif status == "merged":
                c.merged += n
            elif status == "quarantined":
                c.quarantined[reason] += n
            elif status == "excluded":
                c.excluded[reason] += n
            elif status == "deleted":
                c.deleted += n
    conn.execute("RESET parallel_tuple_cost")
    return out


def staged_keys(
    conn: psycopg.Connection, spec: Spec, src: Source, where: sql.Composable = sql.SQL("true"),
    keyprint: bool = True,
) -> tuple[int, int | None]:  # fmt: skip
    """Keys in the stage table of ``src`` (``m0`` in ``where``): its rows, but once for the
    rows that repeat a key; with ``keyprint``, the fingerprint of the keys, as the ledger's
    ``source_key`` holds them (0 for none)."""
    stage = sql.Identifier(spec.stage_schema, src.stage_table)
    if not catalog.exists(conn, stage):
        return 0, 0 if keyprint else None
    key = sql.SQL("m0.{}::text").format(sql.Identifier(src.stage_key))
    rows: sql.Composable = stage
    if not unique_key(conn, spec, src):
        # rows that repeat a key have one fate between them (duplicate_key): keys count
        rows = sql.SQL("(SELECT DISTINCT m0.{k} FROM {s} m0 WHERE {w})").format(
            k=sql.Identifier(src.stage_key), s=stage, w=where
        )
    row = conn.execute(
        sql.SQL("SELECT count(*), {} FROM {} m0 WHERE {}").format(
            fingerprint(key) if keyprint else sql.SQL("NULL"), rows, where
        )
    ).fetchone()
    if row is None:
        return 0, 0 if keyprint else None
    return int(row[0]), int(row[1] or 0) if keyprint else None


def partition_name(model: str) -> str:
    """The ledger's partition of one model: ``ledger_<model>``, shortened with a digest of
    the name where PostgreSQL's 63 bytes would cut it."""
    name = f"ledger_{model}"
    if len(name.encode()) <= 63:
        return name
    head = model.encode()[:40].decode(errors="ignore")
    return f"ledger_{head}_{hashlib.md5(model.encode()).hexdigest()[:10]}"


def partition(
    conn: psycopg.Connection, spec: Spec, model: str, *, aside: bool = False, run_id: int = 0
) -> sql.Identifier:
    """The ledger partition of ``model``, created if missing. Every model has its own: a first
    load can then write its ledger rows ``aside``, into a table with no primary key, and have
    the key built by one sort when it is attached (``attach``). Kept up row by row, the key
    cost 2.7 µs a row of a 50,000-row ``system_messages`` chunk (0.69 s against 0.55 s without
    it, medians of five), the largest single cost of a big first load; built after, 0.5 µs
    (2M rows: 1.0 s).

    The partition's CHECK constraint spares ``ATTACH`` the scan that proves its rows belong.
    Created ``aside``, it is recorded in ``loads_aside`` in the same transaction, so that a
    crash before ``attach`` leaves it to ``attach_leftovers``, never lost.
    """
    part = sql.Identifier(spec.ledger_schema, partition_name(model))
    if partition_state(conn, spec, model) is not None:
        return part
    # Aside, out of autovacuum's way until attached: its VACUUM of the rows just loaded held
    # the lock that building the key and ATTACH need.
    conn.execute(
        sql.SQL(
            "CREATE TABLE {part} (LIKE {led} INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
            "CONSTRAINT ledger_model CHECK (model = {model})){options}"
        ).format(
            part=part,
            led=table(spec, "ledger"),
            model=sql.Literal(model),
            options=sql.SQL(" WITH (autovacuum_enabled = false)" if aside else ""),
        )
    )
    for role in _api_roles(conn):
        conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(part, sql.Identifier(role)))
    # As privileges.close would at the end of the run, but now: then its lock waited for
    # the autovacuum that a load of millions of rows wakes on the partition.
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(part))
    if aside:
        # The quarantine index takes only quarantined rows: kept up as they come, it costs
        # a test per row, against a scan of the whole partition if ATTACH built it after.
        conn.execute(
            sql.SQL("CREATE INDEX ON {} (model) WHERE status = 'quarantined'").format(part)
        )
        conn.execute(sql.SQL("CREATE INDEX ON {} (model) WHERE conflict").format(part))
        conn.execute(
            sql.SQL("INSERT INTO {} (model, run_id) VALUES (%s, %s)").format(
                table(spec, "loads_aside")
            ),
            [model, run_id],
        )
    else:
        attach(conn, spec, model)
    return part


def with_aside(conn: psycopg.Connection, spec: Spec, columns: Sequence[str]) -> sql.Composable:
    """``columns`` of the ledger and of the first loads still written aside, as a subquery
    (``l``): what status and metrics count, so that a big first load shows as it goes and not
    only once attached. Keep the transaction open until the query has run.

    Each partition aside is locked first (ACCESS SHARE, NOWAIT), so that it cannot be
    attached before the query has read it: attached, it would be read through the ledger
    too. One being attached (its key being built) is left out rather than waited for: its
    rows show a moment later, never twice. So is one the role may not read (a monitoring
    role granted the ledger only): as before, its rows show once attached.
    """
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    led = table(spec, "ledger")
    parts: list[sql.Composable] = [sql.SQL("SELECT {} FROM {}").format(cols, led)]
    aside = table(spec, "loads_aside")
    models: list[tuple[str]] = []
    if catalog.exists(conn, aside):  # a ledger older than schema 5 has none until its next run
        models = conn.execute(sql.SQL("SELECT model FROM {}").format(aside)).fetchall()
    for (model,) in models:
        part = sql.Identifier(spec.ledger_schema, partition_name(model))
        try:
            with conn.transaction():  # a savepoint: the lock outlives it, a refusal does not
                conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE NOWAIT").format(part))
        except (
            psycopg.errors.LockNotAvailable,
            psycopg.errors.UndefinedTable,
            psycopg.errors.InsufficientPrivilege,
        ):
            continue
        if partition_state(conn, spec, model) == "aside":
            parts.append(sql.SQL("SELECT {} FROM {}").format(cols, part))
    return sql.SQL("({}) l").format(sql.SQL(" UNION ALL ").join(parts))


def table_of(conn: psycopg.Connection, spec: Spec, model: str) -> sql.Identifier:
    """Where to read one model's ledger rows: its partition, or the ledger if it has none.

    A query on the partitioned ledger is estimated with the ledger's own statistics even when
    it names one model, and the ledger has none (ANALYZE of it would sample every partition
    again): a sync's join of 70,000 changed keys to 2M rows of ``system_messages`` was
    estimated at 2M rows and hashed the whole target table, 4.5 s instead of 1.6.
    """
    if partition_state(conn, spec, model) is None:
        return table(spec, "ledger")
    return sql.Identifier(spec.ledger_schema, partition_name(model))


def partition_state(conn: psycopg.Connection, spec: Spec, model: str) -> str | None:
    """``None`` (no partition yet), ``'attached'`` or ``'aside'``."""
    row = conn.execute(
        "SELECT c.relispartition FROM pg_class c WHERE c.oid = to_regclass(%s)",
        [sql.Identifier(spec.ledger_schema, partition_name(model)).as_string(conn)],
    ).fetchone()
    return None if row is None else "attached" if row[0] else "aside"


def attach(conn: psycopg.Connection, spec: Spec, model: str) -> None:
    """Make a partition part of the ledger, its primary key built first if it has none.

    Built by ATTACH, the key would be sorted under ATTACH's lock on the whole ledger, which
    no other ATTACH can share: another model's partition waited 2.2 s for the 2M rows of
    ``system_messages``. Built on the partition alone, it locks nothing else, and ATTACH
    adopts it. ATTACH's lock (SHARE UPDATE EXCLUSIVE) lets every other model go on reading
    and writing its own rows.
    """
    led = table(spec, "ledger")
    part = sql.Identifier(spec.ledger_schema, partition_name(model))
    try:
        with conn.transaction():
            key = conn.execute(
                "SELECT pg_get_constraintdef(p.oid), NOT EXISTS (SELECT FROM pg_constraint c "
                "WHERE c.conrelid = to_regclass(%s) AND c.contype = 'p') FROM pg_constraint p "
                "WHERE p.conrelid = to_regclass(%s) AND p.contype = 'p'",
                [part.as_string(conn), led.as_string(conn)],
            ).fetchone()
            if key and key[1]:
                conn.execute(sql.SQL("ALTER TABLE {} ADD {}").format(part, sql.SQL(key[0])))
            conn.execute(
                sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ({})").format(
                    led, part, sql.Literal(model)
                )
            )
            conn.execute(sql.SQL("ALTER TABLE {} RESET (autovacuum_enabled)").format(part))
    except psycopg.errors.UniqueViolation:
        raise FerryError(
            f"model {model}: its ledger rows written aside name a source key twice, so they "
            f"cannot become part of the ledger; they stay in {part.as_string(conn)}"
        ) from None
    conn.execute(
        sql.SQL("DELETE FROM {} WHERE model = %s").format(table(spec, "loads_aside")),
        [model],
    )


def attach_leftovers(conn: psycopg.Connection, spec: Spec) -> None:
    """Attach what a run that ended before attaching left aside: its rows are whole chunks,
    each committed with its target rows."""
    for (model,) in conn.execute(
        sql.SQL("SELECT model FROM {} ORDER BY model").format(table(spec, "loads_aside"))
    ).fetchall():
        attach(conn, spec, model)
    conn.commit()


def drop_empty_partitions(conn: psycopg.Connection, spec: Spec) -> None:
    """Drop the partitions a rollback left empty, so that the model's next first load is
    written aside again. Dropping one locks the whole ledger: call it holding the run lock."""
    for (name,) in conn.execute(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(%s)",
        [table(spec, "ledger").as_string(conn)],
    ).fetchall():
        part = sql.Identifier(spec.ledger_schema, name)
        empty = conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(part))
        if (row := empty.fetchone()) and row[0]:
            conn.execute(sql.SQL("DROP TABLE {}").format(part))


def _api_roles(conn: psycopg.Connection) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [list(API_ROLES)]
        )
    ]


def first_load(conn: psycopg.Connection, spec: Spec, model: str) -> bool:
    """No ledger row of ``model`` yet: nothing ferry wrote for it to compare with."""
    row = conn.execute(
        sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {} WHERE model = %s)").format(
            table(spec, "ledger")
        ),
        [model],
    ).fetchone()
    return bool(row and row[0])


def stage_rows(conn: psycopg.Connection, spec: Spec, source: str, limit: int | None = None) -> int:
    """Rows in the stage table of ``source`` (the rows that share a key its source repeats
    once: they have one fate); with ``limit``, counted only up to it (a threshold test need
    not scan 2M rows)."""
    stage = _stage_table(spec, source)
    if not catalog.exists(conn, stage):
        return 0
    if limit is None and not unique_key(conn, spec, spec.source(source)):
        return staged_keys(conn, spec, spec.source(source), keyprint=False)[0]
    query = (
        sql.SQL("SELECT count(*) FROM {}").format(stage)
        if limit is None
        else sql.SQL("SELECT count(*) FROM (SELECT FROM {} LIMIT {}) s").format(
            stage, sql.Literal(limit)
        )
    )
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def staged_among(
    conn: psycopg.Connection, spec: Spec, source: str, keys: Collection[str]
) -> set[str] | None:
    """Which of ``keys`` the stage of ``source`` holds (None: it was never staged). The keys
    are cast to the stage key's type, so that its primary key index finds them."""
    src = spec.source(source)
    stage = sql.Identifier(spec.stage_schema, src.stage_table)
    typ = stage_key_type(conn, spec, src)
    if typ is None:
        return None
    return {
        r[0]
        for r in conn.execute(
            sql.SQL("SELECT {k}::text FROM {s} WHERE {k} = ANY(%s::{t}[])").format(
                k=sql.Identifier(src.stage_key), s=stage, t=sql.SQL(typ)
            ),
            [sorted(keys)],
        )
    }


def stage_key_type(conn: psycopg.Connection, spec: Spec, src: Source) -> str | None:
    """The type of the stage's key column (None: not staged): key lists cast to it are
    found by the stage's primary key index, where ``key::text = ANY(...)`` scans it whole."""
    row = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attname = %s",
        [sql.Identifier(spec.stage_schema, src.stage_table).as_string(conn), src.stage_key],
    ).fetchone()
    return str(row[0]) if row else None


def emptied_of(conn: psycopg.Connection, spec: Spec, sources: Sequence[str]) -> set[str]:
    """Those of ``sources`` whose stage copy is empty though the ledger holds fates of their
    rows, or the last record of their staging (a logged table) counted rows: a server crash
    (or a restart after a failover) empties ferry's unlogged stage. By fates alone, a
    source none of whose rows had a fate (a rollback had undone the run that wrote them,
    or a lookup table, which has none) went unnoticed: a WAL sync, which reads only
    changes, left it empty and its rows without fates. The stages are asked at once: most
    hold rows."""
    holding = staged_sources(conn, spec, sources)
    if holding:
        rows = conn.execute(
            sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {} WHERE EXISTS (SELECT FROM {})").format(
                    sql.Literal(name), _stage_table(spec, name)
                )
                for name in sorted(holding)
            )
        ).fetchall()
        holding = {r[0] for r in rows}
    return {
        s
        for s in sources
        if s not in holding
        and (
            bool(recorded_rows(conn, spec, s))
            or (not spec.source(s).lookup and has_fates(conn, spec, s))
        )
    }


def staged_sources(conn: psycopg.Connection, spec: Spec, sources: Sequence[str]) -> set[str]:
    """Those of ``sources`` that have a stage table (a migrate staged them once)."""
    names = list(sources)
    rows = conn.execute(
        "SELECT n FROM unnest(%s::text[], %s::text[]) v(n, r) WHERE to_regclass(r) IS NOT NULL",
        [names, [_stage_table(spec, n).as_string(conn) for n in names]],
    ).fetchall()
    return {r[0] for r in rows}


def _stage_table(spec: Spec, source: str) -> sql.Identifier:
    return sql.Identifier(spec.stage_schema, spec.source(source).stage_table)


def has_fates(conn: psycopg.Connection, spec: Spec, source: str) -> bool:
    """Whether any source row of ``source`` has a live fate in the ledger."""
    row = conn.execute(
        sql.SQL(
            "SELECT EXISTS (SELECT FROM {} WHERE model = ANY(%s) AND status <> 'deleted')"
        ).format(table(spec, "ledger")),
        [models_of(spec, source)],
    ).fetchone()
    return bool(row and row[0])


@dataclass
class Discrepancy:
    """Where a source's fates do not add up: which keys have no fate, a fate though not
    staged, or two fates (samples of at most ``SAMPLE`` keys are what messages show)."""

    staged: int
    accounted: int
    unclaimed: list[str]
    stale: list[str]
    twice: list[str]


def check_invariant(
    conn: psycopg.Connection, spec: Spec, touched: dict[str, set[str]] | None = None,
    counts: dict[str, SourceCounts] | None = None,
) -> dict[str, SourceCounts]:  # fmt: skip
    """``discrepancies``, raising ``InvariantError`` when there are any."""
    scope = None if touched is None else dict(touched.items())
    counts, bad = discrepancies(conn, spec, scope, counts)  # type: ignore[arg-type]
    if bad:
        raise InvariantError(invariant_message(bad))
    return counts


def discrepancies(
    conn: psycopg.Connection, spec: Spec,
    touched: dict[str, Collection[str] | None] | None = None,
    counts: dict[str, SourceCounts] | None = None, counted: Collection[str] | None = None,
) -> tuple[dict[str, SourceCounts], dict[str, Discrepancy]]:  # fmt: skip
    """``staged = migrated + merged + quarantined + excluded`` for every source, key by key.

    Counting alone could balance a missing row against a duplicate; so the check also
    compares which keys were staged with which have a fate: their fingerprints, or for a
    sync's ``touched`` keys (source -> keys it changed; None: the whole source), each key.
    The sources a sync did not touch held the invariant after the previous run and still
    do, so only the touched ones are checked: a sync's cost stays proportional to its
    changes. A migrate may pass the ``counts`` it took after the last fate of each source
    was written. When anything disagrees, the keys are compared one by one, to name them.

    ``counted``: of the sources given with keys, those whose totals are counted too (None:
    all). The others are checked key by key alone, each touched key staged with exactly one
    live fate or not staged with none: where every stage and ledger row the run changed is
    one of its keys', the keys it did not touch hold as the last run proved them, as the
    sources it did not touch do, and the check costs what the run changed (the totals are
    two scans of the source's stage and ledger, 2M rows each for the demo's largest).
    """
    if counts is None:
        if touched is None:
            counts = source_counts(conn, spec)
        else:  # the equation needs totals only: no breakdown by reason over millions of rows
            whole = [n for n, ks in touched.items() if ks is None and _accounted(spec, n)]
            counts = source_counts(conn, spec, whole) if whole else {}
            for n, ks in touched.items():
                if ks is not None and _accounted(spec, n) and (counted is None or n in counted):
                    counts[n] = _totals(conn, spec, n)
    bad: dict[str, Discrepancy] = {}
    for name, some in (touched or {}).items():
        if some is None or name in counts or not _accounted(spec, name):
            continue
        src, keys = spec.source(name), sorted(some)
        if _keys_hold(conn, spec, src, keys):
            continue
        unclaimed, stale, twice = _diagnose(conn, spec, src, keys)
        if unclaimed or stale or twice:
            c = _totals(conn, spec, name)
            bad[name] = Discrepancy(c.staged, c.accounted, unclaimed, stale, twice)
    for name, c in counts.items():
        src = spec.source(name)
        some = None if touched is None else touched.get(name)
        keys = None if some is None else sorted(some)
        if c.staged == c.accounted and (
            c.staged_keys is not None and c.fate_keys == c.staged_keys
            if keys is None
            else _all_claimed(conn, spec, src, keys)
        ):
            # N staged keys, each with a fate, and N fates in all: exactly one fate per key,
            # and none for a key that is not staged.
            continue
        unclaimed, stale, twice = _diagnose(conn, spec, src, keys)
        if c.staged != c.accounted or unclaimed or stale or twice:
            bad[name] = Discrepancy(c.staged, c.accounted, unclaimed, stale, twice)
    return counts, bad


def invariant_message(bad: dict[str, Discrepancy]) -> str:
    """What ``InvariantError`` says: per source, the counts and up to ten keys of each kind."""
    problems = []
    for name, d in bad.items():
        detail = [f"staged {d.staged} but accounted {d.accounted}"]
        for what, named in (
            ("keys without a fate", d.unclaimed),
            ("fates of keys not staged", d.stale),
            ("keys with two fates", d.twice),
        ):
            if named:
                detail.append(f"{len(named)} {what}: " + ", ".join(named[:10]))
        problems.append(f"{name}: " + "; ".join(detail))
    return "the ledger does not add up: " + " | ".join(problems)


def _accounted(spec: Spec, source: str) -> bool:
    return any(m.accounts and m.source == source for m in spec.models)


def _totals(conn: psycopg.Connection, spec: Spec, source: str) -> SourceCounts:
    """Staged rows and live fates of one source, as two counts (fates all called migrated)."""
    row = conn.execute(
        sql.SQL(
            "SELECT count(*) FROM {} WHERE model = ANY(%s) AND accounts AND status <> 'deleted'"
        ).format(table(spec, "ledger")),
        [models_of(spec, source)],
    ).fetchone()
    staged = staged_keys(conn, spec, spec.source(source), keyprint=False)[0]
    return SourceCounts(source, staged=staged, migrated=int(row[0]))


def models_of(spec: Spec, source: str) -> list[str]:
    """The models whose rows are the fates of ``source``'s rows."""
    return [m.name for m in spec.models if m.accounts and m.source == source]


def _all_claimed(conn: psycopg.Connection, spec: Spec, src: Source, keys: list[str]) -> bool:
    """No key of ``keys`` staged without a live ledger row."""
    found = _any_key(conn, spec, src, keys, "s.staged AND f.n = 0")
    return not found  # not staged (None): no staged key lacks a fate


def _keys_hold(conn: psycopg.Connection, spec: Spec, src: Source, keys: list[str]) -> bool:
    """Each of ``keys`` staged with exactly one live fate, or not staged with none."""
    return _any_key(conn, spec, src, keys, "f.n > 1 OR (f.n = 1) <> s.staged") is False


def _any_key(
    conn: psycopg.Connection, spec: Spec, src: Source, keys: list[str], condition: str
) -> bool | None:
    """Whether a key of ``keys`` meets ``condition`` over ``s.staged`` (the stage holds it)
    and ``f.n`` (its live fates); None if the source was never staged. Index lookups on the
    stage's and the ledger's primary keys: keys are the key's text (as ``source_key``), so
    each is the text form of a value of the key's type; cast to it, they find their rows by
    index, and the text comparison kept beside keeps the test exact."""
    typ = stage_key_type(conn, spec, src)
    if typ is None:
        return None
    query = sql.SQL(
        "SELECT 1 FROM unnest(%s::text[]) k(t), LATERAL (SELECT count(*) FROM {led} l "
        "WHERE l.model = ANY(%s) AND l.source_key = k.t AND l.status <> 'deleted') f(n), "
        "LATERAL (SELECT EXISTS (SELECT FROM {stage} x WHERE x.{key} = k.t::{typ} "
        "AND x.{key}::text = k.t)) s(staged) WHERE {condition} LIMIT 1"
    ).format(
        key=sql.Identifier(src.stage_key),
        stage=sql.Identifier(spec.stage_schema, src.stage_table),
        led=table(spec, "ledger"),
        typ=sql.SQL(typ),  # type: ignore[arg-type]
        condition=sql.SQL(condition),  # type: ignore[arg-type]
    )
    # A batch at a time: an array parameter of 90,000 keys took 17 MB to compose.
    models = models_of(spec, src.name)
    for start in range(0, len(keys), KEYS_PER_STATEMENT):
        batch = keys[start : start + KEYS_PER_STATEMENT]
        if conn.execute(query, [keyarray.text(batch), models]).fetchone() is not None:
            return True
    return False


def _diagnose(
    conn: psycopg.Connection, spec: Spec, src: Source, keys: list[str] | None
) -> tuple[list[str], list[str], list[str]]:
    """Only when the counts disagree: which keys have no fate, a stale fate, or two."""
    some = keys is not None
    rows = conn.execute(
        sql.SQL(
            "SELECT coalesce(s.k, l.k), s.k IS NULL, l.k IS NULL, coalesce(l.n, 0) > 1 "
            "FROM (SELECT DISTINCT {key}::text AS k FROM {stage} "
            "WHERE NOT %s OR {key}::text = ANY(%s)) s "
            "FULL JOIN (SELECT source_key AS k, count(*) AS n FROM {led} WHERE accounts "
            "AND source_table = %s AND status <> 'deleted' "
            "AND (NOT %s OR source_key = ANY(%s)) GROUP BY 1) l ON l.k = s.k "
            "WHERE s.k IS NULL OR l.k IS NULL OR l.n > 1"
        ).format(
            key=sql.Identifier(src.stage_key),
            stage=sql.Identifier(spec.stage_schema, src.stage_table),
            led=table(spec, "ledger"),
        ),
        [some, keys or [], src.name, some, keys or []],
    ).fetchall()
    unclaimed = sorted(r[0] for r in rows if r[2])
    stale = sorted(r[0] for r in rows if r[1])
    twice = sorted(r[0] for r in rows if r[3])
    return unclaimed, stale, twice


def hand_on(
    conn: psycopg.Connection, spec: Spec, models: list[str], keys: list[str], run_id: int
) -> None:
    """Hand keys of these models on to the next sync (``<ledger>.resync``): the stage is
    ahead of the ledger for them (a rollback, or a sync that re-staged them and may die),
    so a diff of source and stage alone would never bring them back. Taken by
    ``pending_resync``, cleared by ``clear_resync`` when a sync ends well."""
    if not keys or not models:
        return
    for start in range(0, len(keys), KEYS_PER_STATEMENT):  # (see ``_all_claimed``)
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (model, source_key, run_id) SELECT m, k, %s "
                "FROM unnest(%s::text[]) m, unnest(%s::text[]) k "
                "ON CONFLICT (model, source_key) DO UPDATE SET run_id = EXCLUDED.run_id"
            ).format(table(spec, "resync")),
            [run_id, models, keyarray.text(keys[start : start + KEYS_PER_STATEMENT])],
        )


def pending_resync(
    conn: psycopg.Connection, spec: Spec, run_id: int
) -> tuple[dict[str, set[str]], dict[str, set[str]], set[str]]:
    """The keys a rollback or an earlier sync (one that died) handed on, for the sync
    ``run_id``: (staged keys per source, to transform again; keys per source no longer
    staged, to mark deleted; derived models to recompute).

    A rollback leaves the stage ahead of the ledger for these keys, and so does a sync that
    re-staged them and died, so a diff of source and stage alone would never bring them back
    (see the module docstring). The keys that sync ``run_id`` handed on itself are its diff's.
    """
    tbl = table(spec, "resync")
    changed: dict[str, set[str]] = defaultdict(set)
    deleted: dict[str, set[str]] = defaultdict(set)
    derived: set[str] = set()
    if not catalog.exists(conn, tbl):
        conn.commit()
        return changed, deleted, derived
    by_model: dict[str, list[str]] = defaultdict(list)
    rows = conn.execute(
        sql.SQL("SELECT model, source_key FROM {} WHERE run_id <> %s").format(tbl), [run_id]
    )
    for model, key in rows:
        by_model[model].append(key)
    names = {m.name for m in spec.models}
    for name, handed in by_model.items():
        if name not in names:
            continue
        model = spec.model(name)
        if not model.accounts:
            derived.add(name)
            continue
        staged = staged_among(conn, spec, model.source, handed)
        if staged is None:  # not staged at all: the diff will insert everything anyway
            continue
        changed[model.source] |= staged
        deleted[model.source] |= set(handed) - staged
    conn.commit()
    return changed, deleted, derived


def clear_resync(conn: psycopg.Connection, spec: Spec) -> None:
    """Called by a sync that took the handed-back keys, in its last transaction."""
    tbl = table(spec, "resync")
    if catalog.exists(conn, tbl):
        conn.execute(sql.SQL("DELETE FROM {}").format(tbl))


def refused_keys(
    conn: psycopg.Connection, spec: Spec, models: Sequence[str], sqlstates: Sequence[str],
    *, by_rule: bool = False,
) -> dict[str, set[str]]:  # fmt: skip
    """Keys of ``models`` the database refused with one of ``sqlstates`` (and, ``by_rule``,
    those a rule quarantined), per model, less those an operator decided: rows to try again
    once what refused them may have changed. Commits."""
    rows = conn.execute(
        sql.SQL(
            "SELECT model, source_key FROM {} WHERE model = ANY(%(models)s) "
            "AND status = 'quarantined' AND decided_by IS NULL "
            "AND ((%(by_rule)s AND sqlstate IS NULL) OR sqlstate = ANY(%(states)s))"
        ).format(table(spec, "ledger")),
        {"models": list(models), "by_rule": by_rule, "states": list(sqlstates)},
    ).fetchall()
    conn.commit()
    found: dict[str, set[str]] = defaultdict(set)
    for model, key in rows:
        found[model].add(key)
    return dict(found)


def queue_deletes(
    conn: psycopg.Connection, spec: Spec, model: str, keys: list[str], run_id: int
) -> None:
    """Queue the target rows ferry wrote for these keys of ``model``: deleted once every
    model has run, children's tables first (``deletes.apply_pending_deletes``)."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {pend} (target_table, target_uuid, model, source_key, row_hash, "
            "run_id) SELECT target_table, target_uuid, model, source_key, row_hash, %s "
            "FROM {led} WHERE model = %s AND source_key = ANY(%s) AND status = 'migrated' "
            "AND target_uuid IS NOT NULL ON CONFLICT DO NOTHING"
        ).format(
            pend=table(spec, "pending_deletes"),
            led=table(spec, "ledger"),
        ),
        [run_id, model, keys],
    )


@dataclass
class ChangeSlot:
    """The replication slot on the source that names changed keys (``wal.py``): recorded
    before it is created, so that no slot of ferry's can exist that its ledger forgets."""

    slot: str
    run_id: int
    created_at: Any
    lsn: str | None  # where ferry last advanced it to, after a sync committed
    advanced_at: Any


def change_slot(conn: psycopg.Connection, spec: Spec) -> ChangeSlot | None:
    """The slot this target's syncs read changes from; None: they diff by checksums."""
    tbl = table(spec, "changes")
    if not catalog.exists(conn, tbl):
        return None
    row = conn.execute(
        sql.SQL("SELECT slot, run_id, created_at, lsn::text, advanced_at FROM {} LIMIT 1").format(
            tbl
        )
    ).fetchone()
    return ChangeSlot(*row) if row else None


def record_slot(conn: psycopg.Connection, spec: Spec, slot: str, run_id: int) -> None:
    """The slot ``slot`` is about to be made (again): the only one, not yet advanced."""
    tbl = table(spec, "changes")
    conn.execute(sql.SQL("DELETE FROM {} WHERE slot <> %s").format(tbl), [slot])
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (slot, run_id) VALUES (%s, %s) ON CONFLICT (slot) DO UPDATE SET "
            "run_id = EXCLUDED.run_id, created_at = clock_timestamp(), lsn = NULL, "
            "advanced_at = NULL"
        ).format(tbl),
        [slot, run_id],
    )


def slot_advanced(conn: psycopg.Connection, spec: Spec, slot: str, lsn: str) -> None:
    conn.execute(
        sql.SQL(
            "UPDATE {} SET lsn = %s::pg_lsn, advanced_at = clock_timestamp() WHERE slot = %s"
        ).format(table(spec, "changes")),
        [lsn, slot],
    )


def forget_slot(conn: psycopg.Connection, spec: Spec, slot: str) -> None:
    """Called once the slot is dropped on the source (or found gone there)."""
    tbl = table(spec, "changes")
    if catalog.exists(conn, tbl):
        conn.execute(sql.SQL("DELETE FROM {} WHERE slot = %s").format(tbl), [slot])


@dataclass
class RunSummary:
    run_id: int
    kind: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    seconds: float | None  # duration
    age: float  # seconds since it finished (or started, while running)
    error: str | None
    rolled_back_by: int | None = None

    def as_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["started_at"] = self.started_at.isoformat()
        out["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        return out


_RUN = (
    "SELECT run_id, kind, status, started_at, finished_at, "
    "extract(epoch FROM finished_at - started_at)::float8, "
    "extract(epoch FROM clock_timestamp() - coalesce(finished_at, started_at))::float8, error "
    "FROM {runs} WHERE {where} ORDER BY run_id DESC LIMIT 1"
)


def last_run(
    conn: psycopg.Connection, spec: Spec, where: str, params: list[Any]
) -> RunSummary | None:
    """The latest run that ``where`` matches (status, sync and report ask it)."""
    row = conn.execute(
        sql.SQL(_RUN).format(
            runs=table(spec, "runs"),
            where=sql.SQL(where),  # type: ignore[arg-type]
        ),
        params,
    ).fetchone()
    return RunSummary(*row) if row else None
