"""Histories the generative convergence test (tests/test_convergence.py) found breaking the
principle of DESIGN.md's "Convergence", each shrunk to a plain, deterministic test on the
world of ``tests/specs/convergence``.

The principle: after any history of runs, crashes, source changes, retries and rollbacks,
the ledger and ferry's rows equal what one fresh migrate of the current source gives; the
invariant holds and ``verify`` is content.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ferry import ledger
from ferry.embedded import LocalCluster
from ferry.engine.pipeline import migrate
from ferry.ops import quarantine, rollback
from ferry.ops.verify import verify
from ferry.spec import Spec, load_spec
from ferry.sync.loop import sync
from tests.helpers import fresh_db
from tests.test_convergence import (
    OWNER,
    SPEC_DIR,
    Convergence,
    InjectedCrash,
    dying_after,
    fresh_differences,
    kept_for_history,
    structural_problems,
    write_csv,
)


class World:
    """The convergence world with explicit rows: source, target, spec, data directory."""

    def __init__(self, cluster: LocalCluster, tmp: Path) -> None:
        for name in ("groups.sql", "items.sql", "spec.toml"):
            (tmp / name).write_text((SPEC_DIR / name).read_text())
        self.cluster, self.data_dir = cluster, tmp
        self.spec: Spec = load_spec(tmp / "spec.toml")
        self.source = fresh_db(cluster, "conv_case_src", SPEC_DIR / "source.sql")
        fresh_db(cluster, "conv_case_tgt", SPEC_DIR / "target.sql", owner=OWNER)
        self.target = cluster.conninfo("conv_case_tgt", user=OWNER)
        write_csv(tmp / "tags.csv", {})

    def src(self, *statements: str) -> None:
        with psycopg.connect(self.source, autocommit=True) as conn:
            for s in statements:
                conn.execute(s)  # type: ignore[arg-type]

    def migrate(self) -> None:
        migrate(self.source, self.target, self.spec, data_dir=self.data_dir)

    def sync(self) -> None:
        sync(self.source, self.target, self.spec, data_dir=self.data_dir)

    def crash(self) -> None:
        """What crash recovery does to the unlogged stage: empties it."""
        with psycopg.connect(self.target, autocommit=True) as conn:
            for (t,) in conn.execute(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                "WHERE schemaname = 'ferry_stage'"
            ).fetchall():
                conn.execute(f"TRUNCATE {t}")

    def fate(self, model: str, key: str) -> tuple | None:
        with psycopg.connect(self.target) as conn:
            return conn.execute(
                "SELECT status, reason FROM ferry.ledger WHERE model = %s AND source_key = %s",
                [model, key],
            ).fetchone()

    def assert_converged(self) -> None:
        with psycopg.connect(self.target) as conn:
            ledger.check_invariant(conn, self.spec)
            problems = structural_problems(conn, self.spec, settled=True)
        assert not problems, problems
        report = verify(self.target, self.spec)
        assert report.ok, report.summary()
        diffs = fresh_differences(
            self.cluster, self.source, self.target, self.spec, self.data_dir, {}, "conv_case_fresh"
        )
        assert not diffs, diffs


@pytest.fixture()
def world(cluster: LocalCluster, tmp_path: Path) -> World:
    return World(cluster, tmp_path)


def test_verify_accepts_a_row_quarantined_for_a_failed_cast(world: World) -> None:
    """History: one item whose qty ('x') does not cast to the target's integer; migrate.

    The row is quarantined (invalid_text_representation), as it should be; but verify,
    recomputing the model, runs into the same cast and gives up on the whole model
    ("model items: invalid input syntax for type integer"). Violates: verify is content
    after a migrate that finished (it must expect what the ledger says of that row)."""
    world.src("INSERT INTO src_item VALUES (1, NULL, 's1', 'x', 'ok'), (2, NULL, 's2', '1', 'ok')")
    world.migrate()
    assert world.fate("items", "1") == ("quarantined", "invalid_text_representation")
    world.assert_converged()


def test_a_merge_survivor_refused_by_the_target_takes_its_merged_rows_along(
    world: World,
) -> None:
    """History: groups 1 'long1' and 6 'LONG1' (one group by lower(name); 1 survives); the
    target's CHECK (length(name) <= 4), which no rule predicts, refuses the survivor; migrate.

    Group 1 is quarantined (check_violation) but group 6 stays 'merged' into group 1's
    UUID, which no row has: a fate pointing nowhere (a child of group 6 would get a foreign
    key that cannot be written). Violates: every merged row points at a migrated row, and
    a fate that depends on another row follows that row's fate."""
    world.src("INSERT INTO src_group VALUES (1, 'long1'), (6, 'LONG1')")
    world.migrate()
    assert world.fate("groups", "1") == ("quarantined", "check_violation")
    world.assert_converged()


def test_a_row_deleted_between_two_migrates(world: World) -> None:
    """History: group 1; migrate; group 1 deleted from the source; migrate again.

    The second migrate re-stages without group 1, but its ledger row stays 'migrated' (no
    migrate marks a vanished key deleted): the invariant fails ("fates of keys not staged")
    and keeps failing on every migrate after. Violates: a migrate after any history gives
    what a fresh migrate of the current source gives (there: no fate for key 1)."""
    world.src("INSERT INTO src_group VALUES (1, 'a'), (2, 'b')")
    world.migrate()
    world.src("DELETE FROM src_group WHERE id = 1")
    world.migrate()
    world.migrate()
    world.assert_converged()


def test_a_merged_row_follows_its_survivor_when_the_survivor_goes(world: World) -> None:
    """History: groups 1 'a' and 2 'A' (2 merges into 1, the lowest id of lower(name));
    migrate; group 1 deleted from the source; sync.

    Group 2's own source row did not change, only the window over the other rows that picks
    its survivor; the sync looks at changed keys only and leaves group 2 'merged' into the
    UUID of a group that is gone, where a fresh migrate has it migrated as its own survivor.
    Violates: a fate that depends on another row is re-decided when that row changes."""
    world.src("INSERT INTO src_group VALUES (1, 'a'), (2, 'A')")
    world.migrate()
    assert world.fate("groups", "2") == ("merged", "duplicate_group")
    world.src("DELETE FROM src_group WHERE id = 1")
    world.sync()
    world.assert_converged()


def test_a_merged_row_follows_its_survivor_when_the_survivor_is_excluded(world: World) -> None:
    """History: groups 1 'a' and 2 'A'; migrate; group 1 renamed 'zz1' (an exclude rule);
    sync. As above, with the survivor excluded rather than deleted: group 2 stays merged
    into a row that is not in the target."""
    world.src("INSERT INTO src_group VALUES (1, 'a'), (2, 'A')")
    world.migrate()
    world.src("UPDATE src_group SET name = 'zz1' WHERE id = 1")
    world.sync()
    world.assert_converged()


def test_a_sync_after_the_stage_was_emptied(world: World) -> None:
    """History: group 1, item 1 in it; migrate; the server crashes (crash recovery empties
    the unlogged stage); sync.

    The sync finds every source row new against the empty stage and re-stages it; then the
    invariant fails. Violates: a crash is part of any history; the sync after it must end
    where a fresh migrate does."""
    world.src(
        "INSERT INTO src_group VALUES (1, 'a')",
        "INSERT INTO src_item VALUES (1, 1, 's1', '1', 'ok')",
    )
    world.migrate()
    world.crash()
    world.sync()
    world.assert_converged()


def test_a_crash_empties_a_stage_whose_source_was_emptied_too(world: World) -> None:
    """History (found by the long profile, shrunk by hand): group 1, item 1, two tags;
    migrate; the tags file and the groups table emptied; the server crashes (the stage
    empties); sync.

    The sync copied the emptied stages again and found them alike their sources (empty
    both), so it left their staging records as they were: two tags, one group. Verify then
    took the empty stage for one a crash had emptied and checked none of its models."""
    world.src(
        "INSERT INTO src_group VALUES (1, 'a')",
        "INSERT INTO src_item VALUES (1, NULL, 's1', '1', 'ok')",
    )
    write_csv(world.data_dir / "tags.csv", {"T1": (1, "x"), "T2": (1, "y")})
    world.migrate()
    write_csv(world.data_dir / "tags.csv", {})
    world.src("DELETE FROM src_group")
    world.crash()
    world.sync()
    with psycopg.connect(world.target) as conn:
        records = dict(conn.execute("SELECT source, rows FROM ferry.staged").fetchall())
    assert (records["tags.csv"], records["src_group"], records["src_item"]) == (0, 0, 1)
    world.assert_converged()


def test_a_row_a_kept_note_holds_keeps_its_value_from_a_lower_key(world: World) -> None:
    """History (found by the long profile, shrunk by hand): items 2 (retired) and 4 (qty 2),
    note 1 of item 4; migrate; note 1 gone from the source (notes are flagged: its row
    stays), item 2 back with qty 2, which the exclusion constraint lets one row hold; sync.

    Item 2, the lower key, takes qty 2 as a migrate would give it: item 4 gives it up,
    but its row cannot go, since the kept note references it. The row stays, ferry's no
    longer, and keeps the value: item 2 is refused, and item 4, its UUID taken by its old
    row, too. A fact of the target's history, which the convergence test gives the fresh
    target as it gives it the application's rows (``fresh_differences``)."""
    world.src(
        "INSERT INTO src_item VALUES (2, NULL, NULL, '1', 'retired'), (4, NULL, NULL, '2', 'ok')",
        "INSERT INTO src_note VALUES (1, 4, 'hi')",
    )
    world.migrate()
    world.src(
        "DELETE FROM src_note WHERE id = 1",
        "UPDATE src_item SET qty = '2', state = 'ok' WHERE id = 2",
    )
    world.sync()
    assert world.fate("items", "2") == ("quarantined", "exclusion_violation")
    assert world.fate("items", "4") == ("quarantined", "unique_violation")
    with psycopg.connect(world.target) as conn:
        assert kept_for_history(conn) == {("items", "4")}
        ledger.check_invariant(conn, world.spec)
    report = verify(world.target, world.spec)
    assert [(p.kind, p.keys) for p in report.problems] == [("conflict", ["4"])]
    diffs = fresh_differences(
        world.cluster, world.source, world.target, world.spec, world.data_dir, {},
        "conv_case_fresh",
    )  # fmt: skip
    assert not diffs, diffs


def test_a_value_a_lower_key_wanted_and_did_not_get_goes_to_the_next(world: World) -> None:
    """History (found by the long profile, shrunk by hand): items 2 (qty 2), 3 (sku ' s1',
    repaired to 's1') and 8 (sku 'S1'); migrate (8 refused: 3 holds 's1'); item 3's qty set
    to 2, which the exclusion constraint lets only item 2 hold; sync.

    In the chunk of keys 3 and 8, the prediction gave 's1' to 3, the lower key, and refused
    8; then the database refused 3 for its qty, which no prediction sees, and 's1' stayed
    free with 8 refused. Where a migrate's chunks put 3 and 8 apart, 8 was written: its
    fate depended on where chunks fall. Rows refused for a unique value now run again, in a
    later pass, after a row of their chunk is refused unpredicted."""
    world.src(
        "INSERT INTO src_item VALUES (2, NULL, NULL, '2', 'ok'), (3, NULL, ' s1', '1', 'ok'), "
        "(8, NULL, 'S1', '1', 'ok')",
    )
    world.migrate()
    assert world.fate("items", "8") == ("quarantined", "unique_violation")
    world.src("UPDATE src_item SET qty = '2' WHERE id = 3")
    world.sync()
    assert world.fate("items", "3") == ("quarantined", "exclusion_violation")
    assert world.fate("items", "8") == ("migrated", None)
    world.assert_converged()


def test_a_retry_after_the_stage_was_emptied(world: World) -> None:
    """History: item 1 with qty '-1' (quarantined by the reject rule negative_qty), item 2
    fine; migrate; the server crashes (the unlogged stage is emptied); quarantine retry.

    The retry recomputed item 1 from the empty stage, found no row for it, and its own
    invariant check then failed ("src_item: staged 0 but accounted 1"); once the invariant
    settled such keys, it marked every row of the emptied stage deleted (an operator's
    decision on one of them was then never taken back). It must refuse, naming the emptied
    stage, until a sync has copied it again. Violates: the runs after a crash end where a
    fresh migrate does."""
    world.src("INSERT INTO src_item VALUES (1, NULL, 's1', '-1', 'ok'), (2, NULL, 's2', '1', 'ok')")
    world.migrate()
    world.crash()
    with pytest.raises(quarantine.QuarantineError, match=r"stage copy of .*src_item.* is empty"):
        quarantine.retry(world.target, world.spec)
    assert world.fate("items", "2") == ("migrated", None)
    world.sync()
    world.assert_converged()


def test_a_retry_after_a_migrate_that_died(world: World) -> None:
    """History: item 1, tags T1 and T2 in the CSV (T2's label empty: NOT NULL refuses it,
    so it is quarantined); migrate; T4 added to the CSV; a migrate killed before its third
    chunk (the stage has T4, the ledger not yet); quarantine retry.

    The retry, which (unlike a sync) does not refuse to follow a migrate that did not
    finish, checks the invariant over the source of the keys it retried and dies with
    "tags.csv: staged 3 but accounted 2".
    Violates: retry is part of any history; it must refuse (as sync does) or finish."""
    from tests.test_convergence import InjectedCrash, dying_after

    world.src("INSERT INTO src_item VALUES (1, NULL, 's1', '1', 'ok')")
    write_csv(world.data_dir / "tags.csv", {"T1": (1, "x"), "T2": (1, "")})
    world.migrate()
    write_csv(world.data_dir / "tags.csv", {"T1": (1, "x"), "T2": (1, ""), "T4": (1, "y")})
    with pytest.raises(InjectedCrash), dying_after(2):
        migrate(world.source, world.target, world.spec, data_dir=world.data_dir, jobs=1)
    quarantine.retry(world.target, world.spec)
    world.migrate()
    world.assert_converged()


def test_verify_after_the_operator_excludes_a_row_whose_cast_fails(world: World) -> None:
    """History: item 5 with qty 'x' (the integer cast fails: quarantined
    invalid_text_representation), note 1 under it, item 2 fine; migrate; the operator
    excludes item 5 (quarantine exclude).

    The ledger is right (item 5 excluded by the operator, note 1 parent_excluded), but
    verify, recomputing items, runs into the cast of the now operator-excluded row and
    gives up on the model ("model items: invalid input syntax for type integer"), then
    expects note 1 orphaned. Violates: verify is content after any history; a row an
    operator decided on is recomputed like a quarantined one."""
    world.src(
        "INSERT INTO src_item VALUES (5, NULL, 's1', 'x', 'ok'), (2, NULL, 's2', '1', 'ok')",
        "INSERT INTO src_note VALUES (1, 5, 'ok')",
    )
    world.migrate()
    quarantine.exclude(world.target, world.spec, "items", "5", "left behind", by="test")
    assert world.fate("items", "5") == ("excluded", "operator")
    world.assert_converged()


def test_a_row_kept_after_its_source_row_went_is_taken_back_when_it_returns(
    world: World,
) -> None:
    """History: note 1 (on_delete = flag: its target row stays when its source row goes);
    migrate; note 1 deleted from the source; sync; note 1 back in the source; sync.

    The row ferry kept in the target has the UUID the returning row wants: an INSERT of it
    was refused as a unique violation, and the note stayed quarantined where a fresh migrate
    writes it. Violates: fates are a function of the current source."""
    world.src(
        "INSERT INTO src_group VALUES (1, 'g')",
        "INSERT INTO src_item VALUES (1, 1, 's1', '1', 'ok')",
        "INSERT INTO src_note VALUES (1, 1, 'hello')",
    )
    world.migrate()
    world.src("DELETE FROM src_note WHERE id = 1")
    world.sync()
    assert world.fate("notes", "1") == ("deleted", "flagged")
    world.src("INSERT INTO src_note VALUES (1, 1, 'hello again')")
    world.sync()
    assert world.fate("notes", "1") == ("migrated", None)
    world.assert_converged()


def test_a_lower_key_that_arrives_later_takes_the_unique_value(world: World) -> None:
    """History: item 5 (sku 's1') with a note under it; migrate; item 3 (sku 'S1': the same
    value of the unique index on lower(sku)) inserted; sync.

    A fresh migrate writes items in key order, so item 3 holds the value and item 5 is
    refused; the sync refused item 3, which arrived second. Violates: a fate is a function
    of the current source, not of the order in which its rows arrived."""
    world.src(
        "INSERT INTO src_group VALUES (1, 'g')",
        "INSERT INTO src_item VALUES (5, 1, 's1', '1', 'ok')",
        "INSERT INTO src_note VALUES (1, 5, 'hello')",
    )
    world.migrate()
    world.src("INSERT INTO src_item VALUES (3, 1, 'S1', '2', 'ok')")
    world.sync()
    assert world.fate("items", "3") == ("migrated", None)
    assert world.fate("items", "5") == ("quarantined", "unique_violation")
    assert world.fate("notes", "1") == ("quarantined", "parent_quarantined")
    world.assert_converged()
    world.src("DELETE FROM src_item WHERE id = 3")  # and back: item 5 takes it again
    world.sync()
    assert world.fate("items", "5") == ("migrated", None)
    world.assert_converged()


def test_a_decided_row_that_went_and_came_back(world: World) -> None:
    """History (found by the long profile, shrunk by hand): tag T3 with an empty label (NOT
    NULL refuses it: quarantined); migrate; the operator excludes it; T3 gone from the CSV;
    sync; T3 back; sync.

    The deleted row kept its decision, and the candidates skip decided rows: T3 stayed
    deleted though staged ("tags.csv: staged 1 but accounted 0; 1 keys without a fate").
    A decision is about the row the operator saw; it goes with the row."""
    world.src(
        "INSERT INTO src_group VALUES (1, 'g')",
        "INSERT INTO src_item VALUES (1, 1, 's1', '1', 'ok')",
    )
    write_csv(world.data_dir / "tags.csv", {"T3": (1, "")})
    world.migrate()
    assert world.fate("tags", "T3") == ("quarantined", "not_null_violation")
    quarantine.exclude(world.target, world.spec, "tags.csv", "T3", "left behind", by="test")
    write_csv(world.data_dir / "tags.csv", {})
    world.sync()
    write_csv(world.data_dir / "tags.csv", {"T3": (1, "back")})
    world.sync()
    assert world.fate("tags", "T3") == ("migrated", None)
    world.assert_converged()


def test_a_row_whose_cast_failed_is_tried_again_once_fixed(world: World) -> None:
    """History: item 1 with qty 'x' (the cast to integer fails while computing the chunk:
    quarantined with no row to keep a hash of); migrate; qty fixed to '3'; sync.

    The rule that keeps a refused row from being sent again as it was compared a NULL
    hash, and so dropped the row for good (found by the any-schema tests)."""
    world.src("INSERT INTO src_item VALUES (1, NULL, 's1', 'x', 'ok')")
    world.migrate()
    assert world.fate("items", "1") == ("quarantined", "invalid_text_representation")
    world.src("UPDATE src_item SET qty = '3' WHERE id = 1")
    world.sync()
    assert world.fate("items", "1") == ("migrated", None)
    world.assert_converged()


def test_a_parent_still_referenced_by_a_row_that_waits_for_a_unique_value(world: World) -> None:
    """History (found by the long profile): item 8 holds sku 's1'; item 4 sits under group
    2; migrate; group 2 deleted, and item 4 moves out of it and takes sku 's1'; sync.

    Item 4, a lower key, waits for item 8 to give 's1' up, so its old row still points at
    group 2 when the deletions run: deleting group 2 failed the sync on the foreign key.
    The group's row now stays queued until the pass that rewrites item 4."""
    world.src(
        "INSERT INTO src_group VALUES (2, 'g')",
        "INSERT INTO src_item VALUES (8, NULL, 's1', '1', 'ok'), (4, 2, NULL, '1', 'ok')",
    )
    world.migrate()
    world.src(
        "DELETE FROM src_group WHERE id = 2",
        "UPDATE src_item SET group_id = NULL, sku = 's1' WHERE id = 4",
    )
    world.sync()
    assert world.fate("items", "4") == ("migrated", None)
    assert world.fate("items", "8") == ("quarantined", "unique_violation")
    world.assert_converged()


def test_an_orphan_whose_parent_arrives_in_a_later_pass(world: World) -> None:
    """History (found by the long profile, shrunk by hand): item 8 holds sku 's1', note 8
    names item 4; migrate; item 8 re-keyed to 4 (so the note's parent arrives, and takes
    's1' that 8 held); migrate.

    Item 4 waits for 8's row to go and is written in a later pass of the run, after the
    notes ran: note 8 stayed an orphan though its parent was there. A parent that arrives
    now brings its waiting orphans along."""
    world.src(
        "INSERT INTO src_item VALUES (8, NULL, 's1', '1', 'ok')",
        "INSERT INTO src_note VALUES (8, 4, 'hi')",
    )
    world.migrate()
    assert world.fate("notes", "8") == ("quarantined", "orphan_item")
    world.src("UPDATE src_item SET id = 4 WHERE id = 8")
    world.migrate()
    assert world.fate("notes", "8") == ("migrated", None)
    world.assert_converged()


def test_a_row_refused_for_its_own_values_is_not_sent_again_as_it_was(world: World) -> None:
    """A cast that fails is logged by the server with the value: the row is tried again
    when its own row changes (or on quarantine retry), not on every sync that finds some
    other change."""
    marker = "PHI-CAST-7731"
    world.src(
        f"INSERT INTO src_item VALUES (1, NULL, 's1', '{marker}', 'ok'), (2, NULL, 's2', '1', 'ok')"
    )
    world.migrate()
    assert world.fate("items", "1") == ("quarantined", "invalid_text_representation")
    start = world.cluster.logfile.stat().st_size
    world.src("UPDATE src_item SET qty = '2' WHERE id = 2")
    world.sync()
    world.sync()
    with world.cluster.logfile.open("rb") as log:
        log.seek(start)
        assert marker.encode() not in log.read()
    world.src("UPDATE src_item SET qty = '3' WHERE id = 1")
    world.sync()
    assert world.fate("items", "1") == ("migrated", None)
    world.assert_converged()


def test_rolling_back_a_run_in_which_a_later_key_gave_a_value_up(world: World) -> None:
    """History (found by the long profile): item 8 holds sku 's1'; migrate; item 8 re-keyed
    to 1; migrate (1 takes 's1': 8 is gone from the source, its row deleted); rollback of
    that migrate.

    The rollback put item 8's row back before taking item 1's out, and failed on the unique
    index. The run's own rows now go first when a re-created row takes a value back."""
    world.src("INSERT INTO src_item VALUES (8, NULL, 's1', '1', 'ok')")
    world.migrate()
    world.src("UPDATE src_item SET id = 1 WHERE id = 8")
    world.migrate()
    assert world.fate("items", "1") == ("migrated", None)
    with psycopg.connect(world.target) as conn:
        last = conn.execute("SELECT max(run_id) FROM ferry.runs").fetchone()
    rollback.rollback(world.target, world.spec, run=int(last[0]))
    assert world.fate("items", "8") == ("migrated", None)
    assert world.fate("items", "1") is None
    world.sync()
    world.assert_converged()


def test_rolling_back_a_sync_in_which_a_changed_row_took_a_value(world: World) -> None:
    """History (found by the long profile): item 8 holds sku 's1', item 1 has none;
    migrate; item 1 takes 's1'; sync (8 gives it up); rollback of that sync.

    Re-creating item 8 before item 1 was restored (to no sku) broke the unique index: the
    first order of the rollback's steps that breaks no constraint is kept."""
    world.src("INSERT INTO src_item VALUES (8, NULL, 's1', '1', 'ok'), (1, NULL, NULL, '1', 'ok')")
    world.migrate()
    world.src("UPDATE src_item SET sku = 's1' WHERE id = 1")
    world.sync()
    assert world.fate("items", "1") == ("migrated", None)
    assert world.fate("items", "8") == ("quarantined", "unique_violation")
    with psycopg.connect(world.target) as conn:
        last = conn.execute("SELECT max(run_id) FROM ferry.runs").fetchone()
    rollback.rollback(world.target, world.spec, run=int(last[0]))
    assert world.fate("items", "8") == ("migrated", None)
    world.sync()
    world.assert_converged()


def test_a_value_held_by_a_row_whose_deletion_a_killed_run_left_queued(world: World) -> None:
    """History: item 5 (sku 's1') with a note under it; migrate; item 5 deleted and item 3
    (sku 's1') inserted; a sync killed after the items were written and before the run's
    deletions; sync.

    The killed sync marked item 5 deleted and queued its target row's deletion, and left
    item 3 refused for the value that row still holds. The next sync must free the value
    first and write item 3, as a fresh migrate does (a long Hypothesis run found histories
    ending with item 3 refused after such a kill)."""
    world.src(
        "INSERT INTO src_group VALUES (1, 'g')",
        "INSERT INTO src_item VALUES (5, 1, 's1', '1', 'ok')",
        "INSERT INTO src_note VALUES (1, 5, 'hello')",
    )
    world.migrate()
    world.src(
        "DELETE FROM src_item WHERE id = 5", "INSERT INTO src_item VALUES (3, 1, 's1', '2', 'ok')"
    )
    with pytest.raises(InjectedCrash), dying_after(1):
        world.sync()
    world.sync()
    assert world.fate("items", "3") == ("migrated", None)
    world.assert_converged()


def test_an_operator_excludes_a_key_its_source_repeats(world: World) -> None:
    """History (found by the long profile): person 4 twice (both rows quarantined
    duplicate_key); migrate; the operator excludes it; migrate.

    ferry keeps the decision, as it should; the fresh migrate, given the decision as an
    exclude rule, put duplicate_key first (the engine decides it before any rule), and the
    comparison called the decision wrong. A decision is expected to stand there."""
    world.src("INSERT INTO src_person VALUES (4, 's'), (4, 's'), (1, 's')")
    world.migrate()
    assert world.fate("staff", "4") == ("quarantined", "duplicate_key")
    quarantine.exclude(world.target, world.spec, "staff", "4", "left behind", by="test")
    world.migrate()
    assert world.fate("staff", "4") == ("excluded", "operator")
    world.assert_converged()


def test_a_decided_row_whose_computation_fails_keeps_its_decision(world: World) -> None:
    """History (found by the long profile, shrunk by hand): item 3 whose qty does not cast
    to the target's integer (quarantined invalid_text_representation); migrate; the
    operator excludes it; migrate again.

    The second migrate computes item 3's chunk whole; the cast fails for item 3, bisection
    narrows the failure down to it and quarantined it again over the operator's decision
    (decided_by kept, status quarantined). A decision stands until the operator undoes it."""
    world.src("INSERT INTO src_item VALUES (3, NULL, NULL, 'x', 'ok'), (2, NULL, 's2', '1', 'ok')")
    world.migrate()
    assert world.fate("items", "3") == ("quarantined", "invalid_text_representation")
    quarantine.exclude(world.target, world.spec, "items", "3", "left behind", by="test")
    world.src("INSERT INTO src_item VALUES (4, NULL, 's4', '1', 'ok')")
    world.migrate()
    assert world.fate("items", "3") == ("excluded", "operator")
    world.assert_converged()


def test_a_value_freed_in_a_migrate_goes_to_the_row_refused_for_it(world: World) -> None:
    """History (found by the long profile, shrunk by hand): items 4 and 7 with sku S1
    (item 7 refused: unique_violation); migrate; item 4's qty no longer casts; migrate.

    The second migrate quarantined item 4 and deleted its target row after every model ran,
    but nothing sent item 7 to the target again: S1 free, item 7 still refused, where a
    fresh migrate writes it. Rows refused for a value a deleted row held are run again."""
    world.src("INSERT INTO src_item VALUES (4, NULL, 'S1', '1', 'ok'), (7, NULL, 'S1', '1', 'ok')")
    world.migrate()
    assert world.fate("items", "7") == ("quarantined", "unique_violation")
    world.src("UPDATE src_item SET qty = 'x' WHERE id = 4")
    world.migrate()
    assert world.fate("items", "4") == ("quarantined", "invalid_text_representation")
    assert world.fate("items", "7") == ("migrated", None)
    world.assert_converged()


def test_two_rows_swapping_unique_values(world: World) -> None:
    """History (found beside tests/test_predict.py): items 1 and 2 swap their skus (values
    of a unique index); sync.

    Each waited for the other's value in every pass: the passes ran out and the sync ended
    well, the ledger saying both were migrated while the target held the old values. A
    later key holding a value an earlier one wants gives it up unless the chunk writes it,
    as a migrate writing in key order gives it to the earlier key."""
    world.src(
        "INSERT INTO src_group VALUES (1, 'g')",
        "INSERT INTO src_item VALUES (1, 1, 's1', '1', 'ok'), (2, 1, 's2', '1', 'ok')",
        "INSERT INTO src_note VALUES (1, 2, 'hello')",
    )
    world.migrate()
    world.src("UPDATE src_item SET sku = CASE id WHEN 1 THEN 's2' ELSE 's1' END")
    world.sync()
    assert world.fate("items", "1") == ("migrated", None)
    assert world.fate("items", "2") == ("migrated", None)
    assert world.fate("notes", "1") == ("migrated", None)
    with psycopg.connect(world.target) as conn:
        skus = conn.execute("SELECT legacy_item_id, sku FROM items ORDER BY 1").fetchall()
    assert skus == [(1, "s2"), (2, "s1")]
    world.assert_converged()


def test_an_item_a_kept_tag_references_is_kept_with_a_conflict(world: World) -> None:
    """History (found by the long profile, seed 7, shrunk by hand): tag T4 of item 8;
    migrate; item 8 retired (excluded) and T4 gone from the export; sync.

    Tags are kept when their source row goes (``on_delete = "keep"``): T4's row stays,
    ferry's no longer, and references item 8's row, which ferry would now remove. It keeps
    the row and flags the conflict, and verify reports it (it had said the row was edited,
    which it was not). A fresh migrate has no kept tag, so the flag is history: the
    convergence test expects it exactly where a row ferry no longer owns references the
    item (``kept_for_history``)."""
    _retire_item_8_as_its_tag_goes(world, "(8, 1, NULL, '1', 'ok')")
    assert world.fate("items", "8") == ("excluded", "retired")
    assert world.fate("tags", "T4") == ("deleted", "kept")
    with psycopg.connect(world.target) as conn:
        assert kept_for_history(conn) == {("items", "8")}
        flagged = conn.execute(
            "SELECT source_key FROM ferry.ledger WHERE conflict AND status <> 'deleted'"
        ).fetchall()
        kept = conn.execute("SELECT count(*) FROM items WHERE legacy_item_id = 8").fetchone()
    assert flagged == [("8",)] and kept == (1,)
    report = verify(world.target, world.spec)
    assert [(p.kind, p.table, p.keys) for p in report.problems] == [
        ("conflict", "public.items", ["8"])
    ]
    assert "referenced by rows ferry does not own" in report.problems[0].detail
    diffs = fresh_differences(
        world.cluster, world.source, world.target, world.spec, world.data_dir, {},
        "conv_case_fresh",
    )  # fmt: skip
    assert not diffs, diffs


def test_an_item_kept_for_a_tag_goes_when_the_tag_no_longer_references_it(world: World) -> None:
    """History (found by the long profile, shrunk by hand): as above, item 8's row stays for
    the kept tag T4; then T4 comes back to the export, for item 3.

    T4's row is ferry's again and references item 3 now. Nothing references item 8's row
    any more, and a migrate of the current source has no such row, but it stayed, flagged,
    for good: the deletion it was queued for had been given up. It now stays queued while
    it is referenced, and goes (its flag with it) at the first run after."""
    _retire_item_8_as_its_tag_goes(world, "(3, 1, NULL, '1', 'ok'), (8, 1, NULL, '2', 'ok')")
    with psycopg.connect(world.target) as conn:
        assert kept_for_history(conn) == {("items", "8")}
    write_csv(world.data_dir / "tags.csv", {"T4": (3, "x")})
    world.sync()
    assert world.fate("tags", "T4") == ("migrated", None)
    with psycopg.connect(world.target) as conn:
        left = conn.execute("SELECT count(*) FROM items WHERE legacy_item_id = 8").fetchone()
        flagged = conn.execute("SELECT count(*) FROM ferry.ledger WHERE conflict").fetchone()
    assert left == (0,) and flagged == (0,)
    assert verify(world.target, world.spec).ok
    world.assert_converged()
    diffs = fresh_differences(
        world.cluster, world.source, world.target, world.spec, world.data_dir, {},
        "conv_case_fresh",
    )  # fmt: skip
    assert not diffs, diffs


def _retire_item_8_as_its_tag_goes(world: World, items: str) -> None:
    """Items (item 8 among them) and tag T4 of item 8; migrate; item 8 retired and T4 gone
    from the export; sync."""
    world.src("INSERT INTO src_group VALUES (1, 'a')", f"INSERT INTO src_item VALUES {items}")
    write_csv(world.data_dir / "tags.csv", {"T4": (8, "x")})
    world.migrate()
    world.src("UPDATE src_item SET state = 'retired' WHERE id = 8")
    write_csv(world.data_dir / "tags.csv", {})
    world.sync()


def test_a_crash_empties_a_stage_whose_rows_a_rollback_left_without_fates(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """History (found by the long profile, seed 7, shrunk by hand), with changes from the
    WAL: a migrate killed before its first chunk; migrate again; roll that run back (its
    rows leave the ledger, the stage keeps them); the server crashes (the stage empties);
    sync.

    An emptied stage was told by the fates its source's rows had: here none, so the sync
    took the empty stage for the source and read only the WAL's changes (none). Item 7, its
    note and a person stayed without a fate or a row, and every check passed. The staging
    record (a logged table) now tells too (``ledger.emptied_of``)."""
    for name in ("groups.sql", "items.sql", "spec.toml"):
        (tmp_path / name).write_text((SPEC_DIR / name).read_text())
    Convergence.ctx = {
        "cluster": cluster, "data_dir": tmp_path, "spec": load_spec(tmp_path / "spec.toml"),
    }  # fmt: skip
    machine = Convergence()
    machine.world(
        groups=[], changes="wal", tags={}, notes=[(1, 7, "hi")], logs=[],
        items=[(7, None, None, "1", "ok")], people=[(1, "s")],
    )  # fmt: skip
    machine.run_killed(chunks=0, kind="migrate")
    machine.run_migrate()
    machine.rollback_last()
    machine.server_crash()
    machine.run_sync()  # checks the invariant, verify and a fresh migrate
    assert world_fate(machine.target, "items", "7") == ("migrated", None)
    assert world_fate(machine.target, "notes", "1") == ("migrated", None)


def world_fate(target: str, model: str, key: str) -> tuple | None:
    with psycopg.connect(target) as conn:
        return conn.execute(
            "SELECT status, reason FROM ferry.ledger WHERE model = %s AND source_key = %s",
            [model, key],
        ).fetchone()
