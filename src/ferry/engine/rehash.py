"""Bring a model's ledger row hashes to the form ``query.Plan.target_hash`` has now.

A row hash only tells that a row changed. When its form changes (``query.HASH_FORM``), a
ledger written before would take every row for changed, and write it again; and, holding
hashes that could not tell some values apart, it would keep missing those changes. So each
model's rows are rehashed once, from the target's row, where that row is still the one ferry
wrote (its hash in an earlier form holds). A row the application edited keeps its hash: it
is not ferry's row, and ``Plan.hash_differs`` still knows the form.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from ferry import ledger
from ferry.engine import query
from ferry.spec import Spec


def rehash(conn: psycopg.Connection, spec: Spec, plan: query.Plan) -> int:
    """Rehash ``plan``'s model once per form; the number of ledger rows rewritten."""
    forms = ledger.table(spec, "hash_forms")
    model = plan.model
    row = conn.execute(
        sql.SQL("SELECT form FROM {} WHERE model = %s").format(forms), [model.name]
    ).fetchone()
    if row is not None and row[0] >= plan.form:
        conn.commit()
        return 0
    done = 0
    if plan.columns and not ledger.first_load(conn, spec, model.name):
        done = as_stored(conn, plan, plan.own_led, plan.holds_hash("t", sql.SQL("l.row_hash")))
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (model, form) VALUES (%s, %s) "
            "ON CONFLICT (model) DO UPDATE SET form = EXCLUDED.form"
        ).format(forms),
        [model.name, plan.form],
    )
    conn.commit()
    return done


def as_stored(
    conn: psycopg.Connection, plan: query.Plan, led: sql.Composable, scope: sql.Composable,
    joined: sql.Composable = sql.SQL(""),
) -> int:  # fmt: skip
    """The ledger rows (``l`` in ``led``) of ``plan``'s model in ``scope`` take the hash of
    their target row (``t``) as it is stored; ``joined``: more tables for ``scope`` (``,
    name alias``). The number of rows whose hash changed.

    Used where ferry's own hash of a row is not the one its target row has: a hash of an
    earlier form (``rehash``), and a row a trigger of the target's changed as it was written
    (``chunk.Runner``) or as a rollback put it back (``rollback``)."""
    return max(
        conn.execute(
            sql.SQL(
                "UPDATE {led} l SET row_hash = {now} FROM {t} t{joined} WHERE l.model = {m} "
                "AND l.target_uuid = t.{key} AND l.status IN ('migrated', 'deleted') "
                "AND l.row_hash IS DISTINCT FROM {now} AND {scope}"
            ).format(
                led=led,
                now=plan.target_hash("t"),
                t=plan.target,
                joined=joined,
                m=sql.Literal(plan.model.name),
                key=sql.Identifier(plan.model.key_column),
                scope=scope,
            )
        ).rowcount,
        0,
    )


def note_run(
    conn: psycopg.Connection, spec: Spec, plan: query.Plan, run_id: int, whole: bool
) -> None:
    """``plan``'s model ran under its target's rules as they are now: every row of it they
    refused for its own values was tried under them (``settle``'s stale refusals); and,
    ``whole``, every row of it under the spec's definition of it (``Spec.definition``)."""
    conn.execute(
        sql.SQL(
            "UPDATE {} SET rules = %(rules)s, definition = CASE WHEN %(whole)s "
            "THEN %(definition)s ELSE definition END, defined_in = CASE WHEN %(whole)s "
            "THEN %(run)s ELSE defined_in END WHERE model = %(model)s"
        ).format(ledger.table(spec, "hash_forms")),
        {
            "rules": plan.refusals.digest, "whole": whole, "model": plan.model.name,
            "definition": spec.definition(plan.model) if whole else None, "run": run_id,
        },
    )  # fmt: skip


def forget_runs(conn: psycopg.Connection, spec: Spec, models: list[str], since: int) -> None:
    """Runs from ``since`` on were rolled back: the rows of ``models`` are as runs before
    them left them, under rules and a definition not recorded. Their own refusals are tried
    again, and a model a rolled-back run computed whole is computed whole again."""
    conn.execute(
        sql.SQL(
            "UPDATE {} SET rules = NULL, definition = CASE WHEN defined_in >= %(since)s "
            "THEN '' ELSE definition END WHERE model = ANY(%(models)s)"
        ).format(ledger.table(spec, "hash_forms")),
        {"since": since, "models": models},
    )
