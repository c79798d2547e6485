"""A spec edited between runs: a model's SQL or rules fixed mid-migration, a model added.

A sync after the edit must leave the target and the ledger as a fresh migrate with the
edited spec would, not only for the rows the source changed since.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ferry import QuarantineError, load_spec, migrate
from ferry.embedded import LocalCluster
from ferry.ops import quarantine
from ferry.ops.verify import verify
from ferry.sync.loop import sync
from tests.helpers import fresh_db, one_table_spec

SOURCE = (
    "CREATE TABLE src (id int PRIMARY KEY, name text, n int, code text UNIQUE); "
    "INSERT INTO src SELECT i, 'Name' || i, i * 10, 'c' || i FROM generate_series(1, 20) i; "
    "CREATE TABLE src2 (id int PRIMARY KEY, name text, n int, code text); "
    "INSERT INTO src2 SELECT i, 'Other' || i, i * 7, 'c' || i FROM generate_series(5, 30) i; "
    "CREATE TABLE note (id int PRIMARY KEY, src_id int, body text); "
    "INSERT INTO note SELECT i, i, 'note ' || i FROM generate_series(1, 20) i;"
)
TARGET = (
    "CREATE TABLE dst (id uuid PRIMARY KEY, legacy_id text UNIQUE, name text, n int); "
    "CREATE TABLE dst_note (id uuid PRIMARY KEY, legacy_id text UNIQUE, "
    "dst_id uuid REFERENCES dst (id), body text);"
)
MODEL = "SELECT s.id AS _key, s.id::text AS legacy_id, s.name, s.n FROM src s"
NOTE_SOURCE = '\n[[sources]]\nname = "note"\ntable = "public.note"\nkey = "id"\n'
NOTES = NOTE_SOURCE + (
    '\n[[models]]\nname = "notes"\ntarget = "public.dst_note"\nsource = "note"\n'
    'legacy_column = "legacy_id"\n'
    "sql = 'SELECT n.id AS _key, n.id::text AS legacy_id, n.src_id AS _src_id, n.body "
    "FROM note n'\n"
    '[[models.parents]]\nmodel = "rows"\nkey = "_src_id"\ncolumn = "dst_id"\n'
)
RULE = '[[models.rules]]\nexclude = "big"\nwhen = "n > 150"\n'

# (the spec's text before, after): every model's text but the edit is the same.
EDITS = {
    "sql": (one_table_spec(MODEL, "legacy_id", 5) + NOTES,
            one_table_spec(MODEL.replace("s.name", "upper(s.name) AS name"), "legacy_id", 5)
            + NOTES),
    "rule_added": (one_table_spec(MODEL, "legacy_id", 5) + NOTES,
                   one_table_spec(MODEL, "legacy_id", 5) + RULE + NOTES),
    "rule_dropped": (one_table_spec(MODEL, "legacy_id", 5) + RULE + NOTES,
                     one_table_spec(MODEL, "legacy_id", 5) + NOTES),
    "model_added": (one_table_spec(MODEL, "legacy_id", 5) + NOTE_SOURCE,
                    one_table_spec(MODEL, "legacy_id", 5) + NOTES),
    # A source's own definition: its stage is no longer what a migrate would stage.
    "source_key": (one_table_spec(MODEL, "legacy_id", 5) + NOTES,
                   one_table_spec(MODEL.replace("s.id AS _key", "s.code AS _key"), "legacy_id", 5)
                   .replace('key = "id"', 'key = "code"', 1)
                   + NOTES.replace("n.src_id AS _src_id", "chr(99) || n.src_id AS _src_id")),
    "source_composite_key": (
        one_table_spec(MODEL, "legacy_id", 5) + NOTES,
        one_table_spec(MODEL.replace("s.id AS _key", "s._ferry_key AS _key"), "legacy_id", 5)
        .replace('key = "id"', 'key = ["id", "code"]', 1)
        + NOTES.replace("n.src_id AS _src_id", "n.src_id AS _src_id, chr(99) || n.src_id AS _c")
        .replace('key = "_src_id"', 'key = ["_src_id", "_c"]')),
    "source_table": (one_table_spec(MODEL, "legacy_id", 5) + NOTES,
                     one_table_spec(MODEL, "legacy_id", 5).replace("public.src", "public.src2")
                     + NOTES),
}  # fmt: skip


def _sql(conninfo: str, text: str) -> list[tuple]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cur = conn.execute(text)
        return cur.fetchall() if cur.description else []


def _state(target: str) -> tuple[set[tuple], set[tuple]]:
    """The ledger's fates and ferry's rows in the target, as a fresh migrate would give."""
    fates = set(
        _sql(
            target,
            "SELECT model, source_key, status, reason, target_uuid::text FROM ferry.ledger "
            "WHERE status <> 'deleted'",
        )
    )
    rows = set(_sql(target, "SELECT legacy_id, name, n FROM dst")) | set(
        _sql(target, "SELECT legacy_id, dst_id::text, body, NULL::int FROM dst_note")
    )
    return fates, rows


@pytest.mark.parametrize("capture", [None, "wal"], ids=["diff", "wal"])
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_sync_after_the_spec_changed_leaves_what_a_fresh_migrate_would(
    cluster: LocalCluster, tmp_path: Path, edit: str, capture: str | None
) -> None:
    """Before, a sync ran the edited model only for the keys the source changed: the
    other rows kept the old SQL's output and the old rules' fates, and a model added to
    the spec got only those keys."""
    name = f"edit_{edit}_{capture or 'diff'}"
    source = fresh_db(cluster, f"{name}_src")
    _sql(source, SOURCE)
    (tmp_path / "target.sql").write_text(TARGET)
    target = fresh_db(cluster, f"{name}_tgt", tmp_path / "target.sql")
    before, after = EDITS[edit]
    (tmp_path / "spec.toml").write_text(before)
    migrate(source, target, load_spec(tmp_path / "spec.toml"), changes=capture)
    _sql(source, "UPDATE src SET n = n + 1 WHERE id = 3")
    (tmp_path / "spec.toml").write_text(after)
    spec = load_spec(tmp_path / "spec.toml")
    if edit.startswith("source_"):  # said once, not as every key of its models changed
        found = [(p.kind, p.table) for p in verify(target, spec).problems]
        assert ("stage", "src") in found
        assert not [t for _, t in found if t in ("rows", "public.dst")], found
        # A retry would settle fates from the old stage.
        with pytest.raises(QuarantineError, match="src: the spec defines the source otherwise"):
            quarantine.retry(target, spec)
    result = sync(source, target, spec)
    fresh = fresh_db(cluster, f"{name}_fresh", tmp_path / "target.sql")
    migrate(source, fresh, spec)
    assert _state(target) == _state(fresh)
    assert result.counts["redefined"]
    assert ("restaged" in result.counts) == edit.startswith("source_")
    report = verify(target, spec)
    assert report.ok, report.summary()
    # Recorded: the next sync computes nothing whole.
    assert "redefined" not in sync(source, target, spec).counts


def test_how_a_model_is_chunked_is_not_its_definition(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    source = fresh_db(cluster, "chunked_src")
    _sql(source, SOURCE)
    (tmp_path / "target.sql").write_text(TARGET)
    target = fresh_db(cluster, "chunked_tgt", tmp_path / "target.sql")
    (tmp_path / "spec.toml").write_text(one_table_spec(MODEL, "legacy_id", 5))
    migrate(source, target, load_spec(tmp_path / "spec.toml"))
    (tmp_path / "spec.toml").write_text(one_table_spec(MODEL, "legacy_id", 7))
    assert "redefined" not in sync(source, target, load_spec(tmp_path / "spec.toml")).counts


def test_a_ledger_from_before_definitions_were_kept_takes_the_spec_as_it_is(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A ledger upgraded from a ferry that kept no definitions computes and stages nothing
    whole for it, then follows edits made after."""
    source = fresh_db(cluster, "upgraded_src")
    _sql(source, SOURCE)
    (tmp_path / "target.sql").write_text(TARGET)
    target = fresh_db(cluster, "upgraded_tgt", tmp_path / "target.sql")
    before, after = EDITS["rule_added"]
    (tmp_path / "spec.toml").write_text(before)
    spec = load_spec(tmp_path / "spec.toml")
    migrate(source, target, spec)
    _sql(target, "UPDATE ferry.hash_forms SET definition = NULL, rules = NULL")
    _sql(target, "UPDATE ferry.staged SET definition = NULL")
    counts = sync(source, target, spec).counts
    assert "redefined" not in counts and "restaged" not in counts
    assert _sql(target, "SELECT count(*) FROM ferry.hash_forms WHERE definition IS NULL") == [(0,)]
    assert _sql(target, "SELECT count(*) FROM ferry.staged WHERE definition IS NULL") == [(0,)]
    (tmp_path / "spec.toml").write_text(after)
    assert sync(source, target, load_spec(tmp_path / "spec.toml")).counts["redefined"] == ["rows"]
