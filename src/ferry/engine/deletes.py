"""Take ferry's rows out of the target: the run's queued deletions, and a first load undone."""

from __future__ import annotations

import psycopg
from psycopg import sql

from ferry import catalog, ledger
from ferry.engine.query import Plan, use_stage
from ferry.spec import Model, Spec


def undo_first_load(conn: psycopg.Connection, plan: Plan) -> int:
    """Take out a first load whose unique keys could not come back; returns the rows deleted.

    Its target rows are found by UUID and by hash, one row per ledger row: a row the
    application wrote with the same UUID, or changed since, is not ferry's to delete. The
    model's ledger rows all come from that load (it was a first load), so they all go.
    Only for a table without its unique keys: with them, the load would not need undoing.
    """
    key = sql.Identifier(plan.model.key_column)
    model = sql.Literal(plan.model.name)
    led = ledger.table_of(conn, plan.spec, plan.model.name)
    with conn.transaction():
        deleted = conn.execute(
            sql.SQL(
                "DELETE FROM {t} t USING (SELECT DISTINCT ON (l.source_key) x.ctid AS tid "
                "FROM {led} l JOIN {t} x ON x.{key} = l.target_uuid WHERE l.model = {model} "
                "AND l.status = 'migrated' AND {h} ORDER BY l.source_key, x.ctid) d "
                "WHERE t.ctid = d.tid"
            ).format(
                t=plan.target,
                led=led,
                key=key,
                model=model,
                h=plan.holds_hash("x", sql.SQL("l.row_hash")),
            )
        ).rowcount
        conn.execute(sql.SQL("DELETE FROM {} WHERE model = {}").format(led, model))
    conn.commit()
    return max(deleted, 0)


def apply_pending_deletes(conn: psycopg.Connection, spec: Spec, run_id: int) -> int:
    """Delete the queued target rows, children's tables first; return how many went.

    A queued row is deleted only if it is still what ferry wrote (its hash matches) and no row
    references it any more: the application's own rows are never touched, not even through an
    ON DELETE CASCADE. A row edited is the application's now: kept, its ledger row flagged
    as a conflict. A row referenced by rows ferry does not own is flagged too, and stays
    queued: it goes (and its flag) at the first run after they no longer reference it, as it
    would not be there in a migrate of the current source. One referenced only by a row of
    ferry's that a later pass of the run rewrites (a row blocked on a unique value) stays
    queued for that pass.
    """
    pend = ledger.table(spec, "pending_deletes")
    led = ledger.table(spec, "ledger")
    deleted = 0
    use_stage(conn, spec.stage_schema, writes=True)
    # The models with rows queued, asked once: a pass deletes rows of its model only.
    queued = {r[0] for r in conn.execute(sql.SQL("SELECT DISTINCT model FROM {}").format(pend))}
    for model in reversed(spec.order()):
        if model.name not in queued:
            continue
        plan = Plan(conn, spec, model)
        key = sql.Identifier(model.key_column)
        holds = plan.holds_hash("t", sql.SQL("p.row_hash"))
        guarded: list[sql.Composable] = [holds]
        plan.lock(
            conn,
            sql.SQL(
                "FROM {t} t JOIN {pend} p ON t.{key} = p.target_uuid WHERE p.model = %s"
            ).format(t=plan.target, pend=pend, key=key),
            [model.name],
            delete=True,
        )
        protected, held = _referenced(conn, spec, model)
        if protected | held:
            guarded.append(
                sql.SQL("NOT t.{} = ANY({}::uuid[])").format(
                    key, sql.Literal(sorted(protected | held))
                )
            )
        later = sql.SQL("NOT p.target_uuid = ANY({}::uuid[])").format(sql.Literal(sorted(held)))
        waits = sql.SQL(
            "p.target_uuid = ANY({}::uuid[]) AND EXISTS (SELECT FROM {t} t "
            "WHERE t.{key} = p.target_uuid AND {holds})"
        ).format(sql.Literal(sorted(protected)), t=plan.target, key=key, holds=holds)
        with conn.transaction():
            gone = conn.execute(
                sql.SQL(
                    "DELETE FROM {t} t USING {pend} p WHERE p.model = %s "
                    "AND t.{key} = p.target_uuid AND {ok} RETURNING p.source_key, p.target_uuid"
                ).format(t=plan.target, pend=pend, key=key, ok=sql.SQL(" AND ").join(guarded)),
                [model.name],
            ).fetchall()
            deleted += len(gone)
            # A flag a row kept for its references raised goes with the row.
            conn.execute(
                sql.SQL(
                    "UPDATE {led} l SET conflict = false, updated_at = clock_timestamp() "
                    "FROM unnest(%s::text[], %s::uuid[]) g(k, u) WHERE l.model = %s "
                    "AND l.source_key = g.k AND l.conflict "
                    "AND (l.target_uuid IS NULL OR l.target_uuid = g.u)"
                ).format(led=led),
                [[g[0] for g in gone], [g[1] for g in gone], model.name],
            )
            # Whatever is left was edited or is referenced by the application: keep it, say so.
            conn.execute(
                sql.SQL(
                    "UPDATE {led} l SET conflict = true, updated_at = clock_timestamp() "
                    "FROM {pend} p, {t} t WHERE p.model = %s AND l.model = p.model "
                    "AND l.source_key = p.source_key AND t.{key} = p.target_uuid AND {later} "
                    "AND NOT l.conflict"
                ).format(led=led, pend=pend, t=plan.target, key=key, later=later),
                [model.name],
            )
            conn.execute(
                sql.SQL("DELETE FROM {} p WHERE p.model = %s AND {} AND NOT ({})").format(
                    pend, later, waits
                ),
                [model.name],
            )
    conn.commit()
    return deleted


def _referenced(conn: psycopg.Connection, spec: Spec, model: Model) -> tuple[set[str], set[str]]:
    """Queued rows of ``model`` still referenced: by a row ferry did not write (kept, a
    conflict), or only by rows of ferry's not queued themselves (kept for a later pass).

    Two steps so that the ledger (millions of rows, no index on target_uuid) is read at most
    once, and only when queued rows are referenced at all: children are deleted first, so
    usually nothing references them by now.
    """
    pend = ledger.table(spec, "pending_deletes")
    refs: dict[str, set[str]] = {}
    for ref_schema, ref_name, ref_col, ref_pk in referencing(conn, model.target):
        # A referencing row queued for deletion too (a child in the same table) goes first.
        rows = conn.execute(
            sql.SQL(
                "SELECT p.target_uuid::text, {pk} FROM {pend} p "
                "JOIN {rt} r ON r.{rc} = p.target_uuid WHERE p.model = %s "
                "AND NOT EXISTS (SELECT FROM {pend} q WHERE q.target_table = {rtt} "
                "AND q.target_uuid = {rpk})"
            ).format(
                rtt=sql.Literal(f"{ref_schema}.{ref_name}"),
                rpk=sql.SQL("r.{}").format(sql.Identifier(ref_pk)) if ref_pk else sql.SQL("NULL"),
                pk=sql.SQL("r.{}::text").format(sql.Identifier(ref_pk))
                if ref_pk
                else sql.SQL("NULL"),
                pend=pend,
                rt=sql.Identifier(ref_schema, ref_name),
                rc=sql.Identifier(ref_col),
            ),
            [model.name],
        ).fetchall()
        for parent, child in rows:
            refs.setdefault(parent, set()).add(child)
    if not refs:
        return set(), set()
    children = sorted({c for cs in refs.values() for c in cs if c is not None})
    ours = {
        r[0]
        for r in conn.execute(
            sql.SQL(
                "SELECT target_uuid::text FROM {} WHERE status = 'migrated' "
                "AND target_uuid = ANY(%s::uuid[])"
            ).format(ledger.table(spec, "ledger")),
            [children],
        )
    }
    protected = {p for p, cs in refs.items() if any(c is None or c not in ours for c in cs)}
    return protected, set(refs) - protected


def referencing(conn: psycopg.Connection, target: str) -> list[tuple[str, str, str, str | None]]:
    """Single-column foreign keys pointing at ``target``: (schema, table, column, the table's
    uuid primary key).

    Without a single-column UUID primary key the referencing rows cannot be ferry's, so any
    reference at all protects the row.
    """
    rows = conn.execute(
        "SELECT n.nspname::text, r.relname::text, a.attname, "
        "(SELECT pa.attname FROM pg_constraint pk JOIN pg_attribute pa "
        " ON pa.attrelid = pk.conrelid AND pa.attnum = pk.conkey[1] "
        " WHERE pk.conrelid = c.conrelid AND pk.contype = 'p' AND cardinality(pk.conkey) = 1 "
        " AND pa.atttypid = 'uuid'::regtype) "
        "FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid "
        "JOIN pg_namespace n ON n.oid = r.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
        "WHERE c.contype = 'f' AND c.confrelid = to_regclass(%s) AND cardinality(c.conkey) = 1",
        [catalog.regclass(target)],
    ).fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]
