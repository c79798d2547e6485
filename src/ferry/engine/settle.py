"""Settle: run keys through the models again until every fate that depends on another row
has followed it.

A row's fate is a function of the current stage, the spec and the target's constraints,
never of the history of runs. Migrate, sync and quarantine retry each know some keys that
changed (a diff, a retry's selection, a key left with a stale fate); ``settle`` runs them
through the models in dependency order, with every row whose fate depends on theirs: the
children of a parent whose fate or UUID changed, the rows merging into a survivor whose
fate changed (``pipeline.run_model``), and the whole of a model whose rows depend on rows
they do not come from (another source its SQL reads, or its own source read across rows:
a window function choosing a survivor). ``run`` then proves the invariant and, where it
does not hold (a source row deleted between two migrates, a stage emptied by a crash, a
row that moved to another model), settles the keys it names and checks again.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, defaultdict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from ferry import catalog, ledger
from ferry.engine import chunk, deletes, dependencies, keyarray, predict, query, stage
from ferry.engine.execute import Progress, run_model
from ferry.errors import InvariantError
from ferry.spec import Model, Spec

# Rounds of "check the invariant, settle the keys it names" before giving up.
ROUNDS = 3
UNIQUE_VIOLATION = "23505"
# Passes over rows blocked on a unique value within one run (each frees values by deleting).
BLOCKED_PASSES = 10
# Refusals that other rows decide: a unique value, a foreign key.
EXCLUSION_VIOLATION = "23P01"
OTHER_ROWS = (UNIQUE_VIOLATION, "23503", EXCLUSION_VIOLATION)


@dataclass
class Work:
    """What a run knows changed. Sources and models are named; keys are text."""

    changed: dict[str, set[str]] = field(default_factory=dict)  # source -> staged keys
    deleted: dict[str, set[str]] = field(default_factory=dict)  # source -> keys not staged
    keys: dict[str, set[str]] = field(default_factory=dict)  # model -> keys to look at
    whole: set[str] = field(default_factory=set)  # models to compute whole
    # Quarantined rows to try again: "all", "refused" (the database's refusals only: the
    # rules' verdicts cannot change when no stage row did) or None.
    quarantined: str | None = None
    # Keys handed on by a run that died: their fates may have changed already, so their
    # children are looked at whatever this run finds.
    resumed: bool = False
    # model -> keys whose fate changed outside the models (an operator's decision): the
    # rows that depend on them are looked at.
    outcome: dict[str, set[str]] = field(default_factory=dict)
    # Send rows the database refused to it again though nothing about them changed.
    retry: bool = False

    def moved(self) -> set[str]:
        return {s for s in {*self.changed, *self.deleted} if self.changed.get(s) or
                self.deleted.get(s)}  # fmt: skip


@dataclass
class Settled:
    models: list[chunk.ModelResult] = field(default_factory=list)
    transitions: Counter[tuple[str | None, str]] = field(default_factory=Counter)
    deleted_rows: int = 0
    counts: dict[str, ledger.SourceCounts] = field(default_factory=dict)
    # Rounds in which the invariant named keys to settle (``run``).
    reconciled: int = 0
    # Models whose ledger rows the run may have flagged as conflicts or cleared: those it
    # ran, and those whose queued deletions it carried out (``deletes``). Only their
    # conflicts need counting again after it.
    written: set[str] = field(default_factory=set)
    # Sources a model of which ran whole: what it wrote is not all among the keys it asked.
    whole: set[str] = field(default_factory=set)
    # Read once per run: what each model reads, and each model's plan's facts (neither
    # changes while the run holds the run lock).
    reads: dict[str, dependencies.Reads] = field(default_factory=dict)
    shapes: dict[str, query.Shape] = field(default_factory=dict)
    # Models computed whole because the spec's definition of them changed (``_redefined``).
    redefined: set[str] = field(default_factory=set)


def run(
    conn: psycopg.Connection, target: str, spec: Spec, run_id: int, progress: Progress,
    jobs: int, work: Work, checked: Collection[str] | None = None, proven: bool = False,
) -> Settled:  # fmt: skip
    """``settle`` the work, then prove the invariant for what it touched (and for the
    sources in ``checked``, whole); keys that do not add up are settled in turn.
    ``proven``: the last run proved the invariant and ended well, so a source whose models
    ran only for keys is proven key by key (``ledger.discrepancies``' ``counted``)."""
    out = Settled()
    for _ in range(ROUNDS):
        touched = settle(conn, target, spec, run_id, progress, jobs, work, out)
        scope: dict[str, Collection[str] | None] = {s: keys for s, keys in touched.items()}
        for name in checked or ():
            scope[name] = None
        counts, bad = ledger.discrepancies(conn, spec, scope, counted=out.whole if proven else None)
        out.counts.update(counts)
        if not bad:
            return out
        out.reconciled += 1
        work, checked = discrepant(conn, spec, bad), set(bad)
    raise InvariantError(ledger.invariant_message(bad))


def discrepant(conn: psycopg.Connection, spec: Spec, bad: dict[str, ledger.Discrepancy]) -> Work:
    """The work that settles keys the invariant named: a fate of a key no longer staged
    follows the model's ``on_delete``; a key with no fate, or two, is run through its
    source's models again (one that no longer yields it lets it go). A model that yields a
    key its source does not hold is wrong, not stale: that fails the run."""
    for name, d in bad.items():
        for model in ledger.models_of(spec, name):
            if _yielded(conn, spec, spec.model(model), set(d.stale)):
                raise InvariantError(ledger.invariant_message(bad))
    return Work(
        deleted={s: set(d.stale) for s, d in bad.items()},
        keys={
            m: set(d.unclaimed) | set(d.twice)
            for s, d in bad.items()
            for m in ledger.models_of(spec, s)
        },
    )


def settle(
    conn: psycopg.Connection, target: str, spec: Spec, run_id: int, progress: Progress,
    jobs: int, work: Work, out: Settled, depth: int = 0,
) -> dict[str, list[str]]:  # fmt: skip
    """One pass over the models in dependency order; returns the keys it touched per source
    (for the invariant; sorted), and adds its results to ``out``. ``depth``: passes of rows blocked
    on a unique value so far (bounded: what is left waits for the next run)."""
    first = len(out.models)
    moved = work.moved()
    outcome: dict[str, set[str]] = defaultdict(set, {m: set(k) for m, k in work.outcome.items()})
    # Models some of whose keys got their first ledger row: an orphan may have been waiting.
    arrived: set[str] = set()
    # The sets of keys touched per source, united once the models ran: each union of a
    # sync's keys is a table of 4 MB per 90,000 keys, and these are the keys it already holds.
    touched: dict[str, list[Collection[str]]] = defaultdict(list)
    for name in moved:
        touched[name] += [work.changed.get(name, set()), work.deleted.get(name, set())]
    if moved:
        asking = [m for m in spec.order() if m.name not in work.whole | out.reads.keys()]
        out.reads.update(dependencies.reads_of(conn, spec, asking) if asking else {})
    # Asked of every model at once: a model's run changes its own ledger rows only.
    retried = _quarantined(conn, spec, spec.models, work.quarantined)
    redefined = _redefined(conn, spec) if depth == 0 else set()
    out.redefined |= redefined
    for model in spec.order():
        src_changed = work.changed.get(model.source, set())
        src_deleted = work.deleted.get(model.source, set())
        # Rows computed from rows they do not come from: which of them a change reaches is
        # not known here, so the model is computed whole, writing only the rows that differ.
        whole = model.name in work.whole | redefined
        reached: set[str] = set()  # rows a change in a source it declares it reads reaches
        if not whole and moved:
            reads = out.reads[model.name]
            declared = {r.source: r.keys for r in model.reads}
            others = (moved - {model.source}) & reads.sources
            whole = bool(others - declared.keys()) or (
                model.source in moved and not reads.row_local
            )
            for other in others & declared.keys():
                touched_keys = work.changed.get(other, set()) | work.deleted.get(other, set())
                reached |= dependencies.dependents(
                    conn, spec, model, declared[other], touched_keys, reads.types
                )
        parents_moved = any(outcome[p.model] for p in model.parents)
        keys: list[str] | None  # sorted
        if model.accounts:
            outcome[model.name] |= _mark_deleted(conn, spec, model, src_deleted, run_id)
            if work.resumed:
                outcome[model.name] |= src_deleted
            if whole:
                keys = None
            else:
                extra = work.keys.get(model.name, set()) | reached
                extra |= retried.get(model.name, set())
                types = out.reads[model.name].types if model.name in out.reads else None
                for p in {p.model for p in model.parents}:
                    extra |= dependencies.dependents(conn, spec, model, _parent_key(model, p),
                                                  outcome[p], types)  # fmt: skip
                for parent in model.parents:
                    if parent.model in arrived:
                        extra |= _orphans(conn, spec, model, parent.missing or
                                          f"orphan_{parent.model}")  # fmt: skip
                if model.merge_into:  # merging into a row whose fate changed beforehand
                    extra |= dependencies.dependents(
                        conn, spec, model, [model.merge_into], outcome[model.name], types
                    )
                keys = _merged(src_changed, extra, src_deleted)
        else:
            # Derived rows (a list split into rows): small, recomputed whole when touched.
            whole = whole or bool(src_changed or src_deleted or parents_moved or reached)
            whole = whole or bool(work.keys.get(model.name))
            keys = None if whole else sorted(retried.get(model.name, ()))
        conn.commit()
        if keys is not None and not keys:
            continue
        before = _ledger_keys(conn, spec, model) if keys is None else set()
        conn.commit()
        result = run_model(
            target, spec, model.name, run_id, progress, jobs=jobs,
            keys=keys, retry=work.retry, conn=conn, shapes=out.shapes,
        )  # fmt: skip
        out.models.append(result)
        out.written.add(model.name)
        if keys is None and model.accounts:
            out.whole.add(model.source)
        out.transitions.update(result.transitions)
        outcome[model.name] |= result.changed_keys
        if result.new_keys:
            arrived.add(model.name)
        asked: Collection[str] = before if keys is None else keys
        if work.resumed:
            outcome[model.name].update(asked)
        # Keys the model was asked about but no longer yields leave it; those no longer
        # staged (a stage a crash emptied does not show them as deleted) are deleted.
        gone = _not_yielded(conn, spec, model, asked, out.shapes)
        if model.accounts and gone:
            unstaged = gone - (ledger.staged_among(conn, spec, model.source, gone) or set())
            outcome[model.name] |= _mark_deleted(conn, spec, model, unstaged, run_id)
            gone -= unstaged
        outcome[model.name] |= _release(conn, spec, model, gone, run_id)
        if model.accounts:
            touched[model.source] += [result.changed_keys, keys or ()]
    out.written |= _pending_models(conn, spec)
    deleted, freed = delete_pending(conn, spec, run_id)
    out.deleted_rows += deleted
    # Rows refused for a value that a row of ferry's with a later key gave up, and rows
    # refused for a unique value in a table rows just left: written now that the deletions
    # are done, as a migrate of the current source would (each pass that frees values).
    blocked = _blocked(out.models[first:])
    for name, refused in freed.items():
        blocked[name] = blocked.get(name, set()) | refused
    blocked = {m: ks for m, ks in blocked.items() if ks}
    if blocked and depth < BLOCKED_PASSES:
        again = settle(
            conn, target, spec, run_id, progress, jobs, Work(keys=blocked), out, depth + 1
        )
        for name, again_keys in again.items():
            touched[name].append(again_keys)
    return {name: _united(parts) for name, parts in touched.items()}


def _united(parts: list[Collection[str]]) -> list[str]:
    """The keys of ``parts``, sorted, each once: merged from each part sorted, where a set
    of a sync's 90,000 keys is a table of 5 MB and a list of them 0.7 MB."""
    out: list[str] = []
    for key in heapq.merge(*map(sorted, parts)):
        if not out or out[-1] != key:
            out.append(key)
    return out


def _merged(changed: set[str], extra: set[str], deleted: set[str]) -> list[str]:
    """``changed | extra`` less ``deleted``, sorted: a list, where one more set of a sync's
    keys is a table of 4 MB per 90,000 keys."""
    return sorted(
        itertools.chain(
            (k for k in changed if k not in deleted),
            (k for k in extra if k not in changed and k not in deleted),
        )
    )


def delete_pending(
    conn: psycopg.Connection, spec: Spec, run_id: int
) -> tuple[int, dict[str, set[str]]]:
    """Delete the target rows queued for deletion (``deletes.apply_pending_deletes``);
    returns how many went and, per model, the rows refused for a unique value in a table
    rows just left: their value may be free now, as in a migrate of the current source,
    which never saw the rows. A migrate and a sync's settle both end their passes here."""
    freed = _pending_tables(conn, spec)
    deleted = deletes.apply_pending_deletes(conn, spec, run_id)
    if not deleted:
        return 0, {}
    return deleted, _quarantined(
        conn, spec, [m for m in spec.models if m.target in freed], "refused",
        (UNIQUE_VIOLATION, EXCLUSION_VIOLATION),
    )  # fmt: skip


def _blocked(results: list[chunk.ModelResult]) -> dict[str, set[str]]:
    blocked: dict[str, set[str]] = defaultdict(set)
    for r in results:
        blocked[r.model] |= r.blocked
    return dict(blocked)


def _parent_key(model: Model, parent: str) -> list[str]:
    return next(p.keys for p in model.parents if p.model == parent)


def _mark_deleted(
    conn: psycopg.Connection, spec: Spec, model: Model, keys: Collection[str], run_id: int
) -> set[str]:
    """Source rows that are gone: their ledger rows say so, and their target rows follow the
    model's ``on_delete`` (deleted after every model ran, children first). Returns the keys
    whose ledger row changed."""
    if not keys:
        return set()
    ordered = sorted(keys)
    led = ledger.table(spec, "ledger")
    reason = {"delete": "source_deleted", "keep": "kept", "flag": "flagged"}[model.on_delete]
    with conn.transaction():
        ledger.record_history(
            conn, spec, run_id, model.name, model.target, model.key_column, ordered
        )
        if model.on_delete == "delete":
            ledger.queue_deletes(conn, spec, model.name, ordered, run_id)
        rows = conn.execute(
            sql.SQL(
                # An operator's decision was about the row that went: it goes with it.
                "UPDATE {led} SET status = 'deleted', reason = %s, run_id = %s, "
                "target_uuid = CASE WHEN %s THEN NULL ELSE target_uuid END, "
                "decided_by = NULL, decision = NULL, decided_at = NULL, "
                "updated_at = clock_timestamp() "
                "WHERE model = %s AND source_key = ANY(%s) AND status <> 'deleted' "
                "RETURNING source_key"
            ).format(led=led),
            [reason, run_id, model.on_delete == "delete", model.name, ordered],
        ).fetchall()
    return {r[0] for r in rows}


def _redefined(conn: psycopg.Connection, spec: Spec) -> set[str]:
    """Models whose definition in the spec (``Spec.definition``) changed since they last ran
    whole, and models with no ledger row yet (added to the spec since): a migrate with this
    spec would compute them so. A ledger kept from before definitions were recorded takes
    the spec's as they are now."""
    forms = ledger.table(spec, "hash_forms")
    kept = dict(conn.execute(sql.SQL("SELECT model, definition FROM {}").format(forms)))
    now = {m.name: spec.definition(m) for m in spec.models}
    unknown = [m for m in now if kept.get(m, "") is None]
    if unknown:
        conn.execute(
            sql.SQL(
                "UPDATE {} f SET definition = x.d FROM unnest(%s::text[], %s::text[]) x(m, d) "
                "WHERE f.model = x.m AND f.definition IS NULL"
            ).format(forms),
            [unknown, [now[m] for m in unknown]],
        )
    out = {m for m, d in now.items() if kept.get(m, d) not in (None, d)}
    out |= {m for m in now if m not in kept and ledger.first_load(conn, spec, m)}
    conn.commit()
    return out


def _quarantined(
    conn: psycopg.Connection, spec: Spec, models: Sequence[Model], which: str | None,
    sqlstates: Sequence[str] | None = None,
) -> dict[str, set[str]]:  # fmt: skip
    """Quarantined keys to try again (``Work.quarantined``), per model of ``models``: by a
    rule, whose verdict can change with any row ("all"), and those the database refused for
    a unique or exclusion constraint or a foreign key, which other rows decide ("all" and
    "refused"); or only those refused with one of ``sqlstates``. A row refused for its own
    values (a cast, a CHECK) is tried again when its own row changes, on ``quarantine
    retry`` (each try of an unpredicted one is logged), and when its model runs whole
    because its target's rules changed (``rules_changed``)."""
    if which is None or not models:
        return {}
    return ledger.refused_keys(
        conn, spec, [m.name for m in models], sqlstates or OTHER_ROWS,
        by_rule=which == "all" and sqlstates is None,
    )  # fmt: skip


def rules_changed(conn: psycopg.Connection, spec: Spec) -> set[str]:
    """Models whose target's rules (``predict.RULES_DIGEST``) changed since they last ran
    (``rehash.note_run``): a migrate now would hold every row of theirs to the rules as
    they are, the rows they refused and, under a CHECK added NOT VALID, the rows it took
    before: a sync computes them whole (``Work.whole``). Their refused rows are then sent
    again (their hash holds the digest), and their rows the rules ferry reads now refuse
    leave the target. What a trigger added since refuses, only a row written again shows
    (docs/spec.md)."""
    catalog.print_qualified(conn)
    rows = conn.execute(
        sql.SQL(
            "SELECT m.model FROM unnest(%s::text[], %s::text[]) m(model, tbl) "
            "LEFT JOIN {} f USING (model), LATERAL (SELECT to_regclass(m.tbl) AS oid) t "
            "WHERE f.rules IS DISTINCT FROM {}"
        ).format(ledger.table(spec, "hash_forms"), sql.SQL(predict.RULES_DIGEST)),
        [[m.name for m in spec.models], [catalog.regclass(m.target) for m in spec.models]],
    ).fetchall()
    conn.commit()
    return {r[0] for r in rows}


def _orphans(conn: psycopg.Connection, spec: Spec, model: Model, reason: str) -> set[str]:
    """Keys of ``model`` quarantined for a missing parent (``reason``): few, and each may be
    waiting for a parent that arrived."""
    rows = conn.execute(
        sql.SQL(
            "SELECT source_key FROM {} WHERE model = %s AND status = 'quarantined' "
            "AND reason = %s AND decided_by IS NULL"
        ).format(ledger.table(spec, "ledger")),
        [model.name, reason],
    ).fetchall()
    conn.commit()
    return {r[0] for r in rows}


def _pending_tables(conn: psycopg.Connection, spec: Spec) -> set[str]:
    """The target tables that rows queued for deletion are about to leave."""
    rows = conn.execute(
        sql.SQL("SELECT DISTINCT target_table FROM {}").format(
            ledger.table(spec, "pending_deletes")
        )
    ).fetchall()
    conn.commit()
    return {r[0] for r in rows}


def _pending_models(conn: psycopg.Connection, spec: Spec) -> set[str]:
    """The models whose rows queued for deletion are about to go (or be flagged)."""
    rows = conn.execute(
        sql.SQL("SELECT DISTINCT model FROM {}").format(ledger.table(spec, "pending_deletes"))
    ).fetchall()
    conn.commit()
    return {r[0] for r in rows}


def _release(
    conn: psycopg.Connection, spec: Spec, model: Model, keys: set[str], run_id: int
) -> set[str]:
    """Ledger rows of ``model`` whose staged source row the model no longer yields (a record
    that changed kind now belongs to another model; a role removed from a list): their
    target rows are queued for deletion and their ledger rows removed."""
    if not keys:
        return set()
    led = ledger.table(spec, "ledger")
    gone = sorted(keys)
    if not gone:
        conn.commit()
        return set()
    with conn.transaction():
        ledger.record_history(conn, spec, run_id, model.name, model.target, model.key_column, gone)
        ledger.queue_deletes(conn, spec, model.name, gone, run_id)
        rows = conn.execute(
            sql.SQL(
                "DELETE FROM {} WHERE model = %s AND source_key = ANY(%s) RETURNING source_key"
            ).format(led),
            [model.name, gone],
        ).fetchall()
    return {r[0] for r in rows}


def _yielded(conn: psycopg.Connection, spec: Spec, model: Model, keys: set[str]) -> set[str]:
    """Which of ``keys`` the model's SQL yields now."""
    found: set[str] = set()
    for statement in _asked(conn, spec, model, keys, yielded=True, shapes={}):
        found.update(r[0] for r in conn.execute(statement))
    return found


def _not_yielded(
    conn: psycopg.Connection, spec: Spec, model: Model, keys: Collection[str],
    shapes: dict[str, query.Shape],
) -> set[str]:  # fmt: skip
    """Which of ``keys`` the model's SQL no longer yields, told by the server: the keys a
    sync asks about are mostly yielded, and 67,000 of them sent back as text took 9 MB."""
    gone: set[str] = set()
    for statement in _asked(conn, spec, model, keys, yielded=False, shapes=shapes):
        gone.update(r[0] for r in conn.execute(statement))
    return gone


def _asked(
    conn: psycopg.Connection, spec: Spec, model: Model, keys: Collection[str], yielded: bool,
    shapes: dict[str, query.Shape],
) -> Iterator[sql.Composed]:  # fmt: skip
    """The statements that ask which of ``keys`` the model's SQL yields now (or, not
    ``yielded``, which it does not): ``ledger.KEYS_PER_STATEMENT`` keys at a time, as a
    sync's keys are run in chunks, so that the literal of 90,000 keys (11 MB to compose at
    once) is never held whole."""
    if not keys:
        return
    body = sql.SQL(spec.model_sql(model))  # type: ignore[arg-type]
    # Typed like the stage key, so that the stage's primary key index finds them; the stage
    # key's type read alone, not a whole plan of the model.
    src = spec.source(model.source) if model.accounts else None
    # A key its source repeats is yielded by the first model that has a row of it.
    taken = query.taken_earlier(spec, model, sql.SQL("m0._key"))
    if src is not None and taken is not None and not stage.unique_key(conn, spec, src):
        dup = query.repeated(
            sql.Identifier(spec.stage_schema, src.stage_table), sql.Identifier(src.stage_key),
            sql.SQL("m0._key"),
        )  # fmt: skip
        body = sql.SQL("SELECT m0.* FROM ({}) m0 WHERE NOT ({} AND ({}))").format(body, dup, taken)
    key_type = sql.SQL(
        (ledger.stage_key_type(conn, spec, src) if src else None)
        or query.Plan(conn, spec, model, shapes.get(model.name)).key_type
    )
    found = sql.SQL("SELECT m0._key::text FROM ({}) m0 WHERE m0._key = ANY({}::{}[])")
    ordered = sorted(keys)
    for start in range(0, len(ordered), ledger.KEYS_PER_STATEMENT):
        batch = keyarray.literal(ordered[start : start + ledger.KEYS_PER_STATEMENT])
        query_ = found.format(body, batch, key_type)
        if not yielded:
            # the keys' text as asked, less the text of the keys yielded: as a set in Python
            query_ = sql.SQL("SELECT unnest({}::text[]) EXCEPT {}").format(batch, query_)
        yield query_


def _ledger_keys(conn: psycopg.Connection, spec: Spec, model: Model) -> set[str]:
    rows = conn.execute(
        sql.SQL("SELECT source_key FROM {} WHERE model = %s AND status <> 'deleted'").format(
            ledger.table(spec, "ledger")
        ),
        [model.name],
    ).fetchall()
    return {r[0] for r in rows}
