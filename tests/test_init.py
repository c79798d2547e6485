"""``ferry init`` (issue 22, item 1): a first spec from the two catalogs, which loads and
migrates as written, on the dispatch demo's databases and on the library and shop worlds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from ferry import key_uuid, ledger, load_spec, migrate
from ferry.cli import app
from ferry.demo import world
from ferry.embedded import LocalCluster
from ferry.errors import InitError
from ferry.ops.check import check
from ferry.ops.scaffold import scaffold
from tests.helpers import fresh_db

SPECS = Path(__file__).parent / "specs"
LIB = SPECS / "library"
# The library world's planted defects, with what an initial spec (no business rule) makes of
# them: free-text countries fail the target's CHECK on country_code, their books follow.
LIBRARY_FATES = {
    ("authors", "1"): ("migrated", None),
    # 'france' and 'Atlantis' are too long for char(2), as an INSERT says before the CHECK
    # (ferry's cast cut them to 'fr' and 'At' once, which the CHECK refused by chance).
    ("authors", "2"): ("quarantined", "string_data_right_truncation"),
    ("authors", "3"): ("migrated", None),  # the duplicate: merging it is a business rule
    ("authors", "4"): ("quarantined", "string_data_right_truncation"),
    ("authors", "5"): ("quarantined", "check_violation"),  # 'uk'
    ("books", "10"): ("migrated", None),
    ("books", "11"): ("migrated", None),
    ("books", "12"): ("quarantined", "parent_quarantined"),
    ("books", "13"): ("quarantined", "parent_quarantined"),
    ("books", "14"): ("quarantined", "orphan_author"),
    ("books", "15"): ("quarantined", "parent_quarantined"),
    ("books", "16"): ("quarantined", "parent_quarantined"),
    ("books", "17"): ("quarantined", "parent_quarantined"),
}
# The same world with its defects repaired at the source: every row must migrate.
CLEAN = """
UPDATE lib_author SET country = CASE upper(country) WHEN 'UK' THEN 'GB' WHEN 'FRANCE' THEN 'FR'
                                ELSE 'NZ' END;
DELETE FROM lib_book WHERE author_id NOT IN (SELECT id FROM lib_author);
UPDATE lib_book SET price = abs(price), isbn = 'isbn-' || id;
"""


def _fates(target: str) -> dict[tuple[str, str], tuple[str, str | None]]:
    with psycopg.connect(target) as conn:
        rows = conn.execute("SELECT model, source_key, status, reason FROM ferry.ledger")
        return {(m, k): (s, r) for m, k, s, r in rows}


def _library(cluster: LocalCluster, name: str, fix: str | None = None) -> tuple[str, str]:
    source = fresh_db(cluster, f"{name}_src", LIB / "source.sql")
    if fix:
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(fix)
    fresh_db(cluster, f"{name}_tgt", LIB / "target.sql", owner="lib_owner")
    return source, cluster.conninfo(f"{name}_tgt", user="lib_owner")


def _accounts_for_every_row(target: str, spec_path: Path) -> dict[str, ledger.SourceCounts]:
    """Every staged row of every accounted source has exactly one fate (key by key)."""
    spec = load_spec(spec_path)
    with psycopg.connect(target) as conn:
        counts = ledger.check_invariant(conn, spec)
        for name, c in counts.items():
            fates = c.migrated + c.merged + sum(c.quarantined.values()) + sum(c.excluded.values())
            assert c.staged == fates, name
            # Independently of ferry's own counting: each staged key, one live fate.
            src = spec.source(name)
            models = [m.name for m in spec.models if m.accounts and m.source == name]
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*), count(l.source_key), count(DISTINCT s.{k}::text) "
                    "FROM ferry_stage.{t} s LEFT JOIN ferry.ledger l ON l.source_key = s.{k}::text "
                    "AND l.model = ANY(%s) AND l.status <> 'deleted'"
                ).format(k=sql.Identifier(src.stage_key), t=sql.Identifier(src.stage_table)),
                [models],
            ).fetchone()
            assert row == (c.staged, c.staged, c.staged), name
    return counts


def test_demo_spec_loads_and_migrates_without_edits(cluster: LocalCluster, tmp_path: Path) -> None:
    src = cluster.create_database("init_demo_src", drop=True)
    admin = cluster.create_database("init_demo_tgt", drop=True)
    sizes = world.generate(src, admin, tmp_path / "world", scale=0.02, seed=7)
    target = cluster.conninfo("init_demo_tgt", user="migrator")
    out = tmp_path / "spec"
    result = scaffold(src, target, out)
    spec = load_spec(out / "spec.toml")
    models = {m.name: m for m in spec.models}
    # The CSV-fed targets have no legacy table: listed, no model, no file.
    assert {t for t, _ in result.unmatched} == {"public.message_attachments", "public.purchases"}
    assert not (out / "purchases.sql").exists() and "purchases" not in models
    assert len(models) == 20 and all((out / f"{n}.sql").exists() for n in models)
    # Matches by legacy column, the second model of a source derived from its rows.
    assert {n: (m.source, m.accounts) for n, m in models.items() if n in (
        "profiles", "doctors", "cases", "orders", "system_messages", "case_files"
    )} == {
        "profiles": ("auth_user", True), "doctors": ("auth_user", False),
        "cases": ("dispatch_instance", True), "orders": ("dispatch_instruction", True),
        "system_messages": ("dispatch_notification", True), "case_files": ("dispatch_file", True),
    }  # fmt: skip
    assert {s.name for s in spec.sources if s.lookup} == {"auth_group", "auth_user_groups"}
    assert models["cases"].legacy_column == "legacy_instance_id"
    # Parents from the target's foreign keys, through the legacy columns.
    assert {(p.model, p.key, p.column) for p in models["orders"].parents} == {
        ("cases", "_instance_id", "case_id"), ("doctors", "_doctor_id", "doctor_id"),
    }  # fmt: skip
    assert {(p.model, p.key, p.column) for p in models["doctors"].parents} == {
        ("profiles", "_id", "profile_id")
    }
    # What needs a rule is flagged, the stub commented out.
    jaws = (out / "jaws.sql").read_text()
    assert "-- TODO jaw_type: free text into the enum" in jaws
    text = (out / "spec.toml").read_text()
    assert '#   { reject = "context_not_jsonb"' in text
    assert "\nrules" not in text  # no rule is active
    # ferry check accepts it as written: no error against both databases.
    checked = check(out / "spec.toml", src, target)
    assert checked.ok, [str(f) for f in checked.findings if f.level == "error"]

    run = migrate(src, target, spec, jobs=2)
    counts = _accounts_for_every_row(target, out / "spec.toml")
    accounted = {m.source for m in spec.models if m.accounts}
    assert {n: c.staged for n, c in counts.items()} == {n: sizes[n] for n in accounted}
    assert run.counts["dispatch_notification"].migrated > 0.99 * sizes["dispatch_notification"]
    with psycopg.connect(target) as conn:
        # A row ferry wrote: its UUID from _key, its legacy key, its parent's UUID.
        row = conn.execute(
            "SELECT o.id, o.legacy_instruction_id, o.case_id, c.legacy_instance_id "
            "FROM orders o JOIN cases c ON c.id = o.case_id ORDER BY 2 LIMIT 1"
        ).fetchone()
        assert row is not None
        assert row[0] == key_uuid(spec.namespace, "dispatch_instruction", row[1])
        assert row[2] == key_uuid(spec.namespace, "dispatch_instance", row[3])
        stamps = conn.execute(
            "SELECT count(*) FROM profiles p WHERE p.legacy_user_id IS NOT NULL"
        ).fetchone()
    assert stamps == (counts["auth_user"].migrated,)


def test_library_world_every_row_has_its_fate(cluster: LocalCluster, tmp_path: Path) -> None:
    source, target = _library(cluster, "init_lib")
    result = scaffold(source, target, tmp_path)
    assert (
        result.unmatched == [("public.loans", result.unmatched[0][1])]
        and "no legacy column" in result.unmatched[0][1]
    )
    assert not (tmp_path / "loans.sql").exists()
    spec = load_spec(tmp_path / "spec.toml")
    assert [m.name for m in spec.models] == ["authors", "books"]
    books = spec.model("books")
    assert [(p.model, p.key, p.column, p.missing) for p in books.parents] == [
        ("authors", "_author_id", "author_id", "orphan_author")
    ]
    migrate(source, target, spec)
    _accounts_for_every_row(target, tmp_path / "spec.toml")
    assert _fates(target) == LIBRARY_FATES


def test_clean_library_world_migrates_every_row(cluster: LocalCluster, tmp_path: Path) -> None:
    source, target = _library(cluster, "init_clean", CLEAN)
    scaffold(source, target, tmp_path)
    spec = load_spec(tmp_path / "spec.toml")
    migrate(source, target, spec)
    counts = _accounts_for_every_row(target, tmp_path / "spec.toml")
    assert {n: (c.staged, c.migrated) for n, c in counts.items()} == {
        "lib_author": (5, 5), "lib_book": (7, 7),
    }  # fmt: skip
    assert Counter(s for s, _ in _fates(target).values()) == {"migrated": 12}
    with psycopg.connect(target) as conn:
        book = conn.execute(
            "SELECT id, author_id, price::text, published_at AT TIME ZONE 'UTC' "
            "FROM books WHERE legacy_book_id = 10"
        ).fetchone()
    assert book is not None
    assert book[:3] == (
        key_uuid(spec.namespace, "lib_book", 10), key_uuid(spec.namespace, "lib_author", 1),
        "10.50",
    )  # fmt: skip
    assert str(book[3]) == "2020-01-02 03:04:05"


def test_composite_keys_of_the_shop_world(cluster: LocalCluster, tmp_path: Path) -> None:
    source = fresh_db(cluster, "init_shop_src", SPECS / "shop" / "source.sql")
    fresh_db(cluster, "init_shop_tgt", SPECS / "shop" / "target.sql", owner="lib_owner")
    target = cluster.conninfo("init_shop_tgt", user="lib_owner")
    scaffold(source, target, tmp_path)
    spec = load_spec(tmp_path / "spec.toml")
    assert spec.source("line_note").key == ["order_id", "line_no", "tag"]
    assert [(p.model, p.key) for p in spec.model("notes").parents] == [
        ("lines", ["_order_id", "_line_no"])
    ]
    migrate(source, target, spec)
    _accounts_for_every_row(target, tmp_path / "spec.toml")
    fates = _fates(target)
    assert fates[("lines", "(3,1)")] == ("quarantined", "orphan_order")
    assert fates[("notes", '(1,1,"a b")')] == ("migrated", None)
    assert fates[("notes", "(9,9,z)")] == ("quarantined", "orphan_line")


def test_refuses_to_overwrite_and_lists_what_has_no_match(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    source, target = _library(cluster, "init_cli")
    out = tmp_path / "first"
    runner = CliRunner()
    done = runner.invoke(app, ["init", "--source", source, "--target", target, "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "public.loans" in done.output and "no model" in done.output
    assert sorted(p.name for p in out.iterdir()) == ["authors.sql", "books.sql", "spec.toml"]
    before = {p.name: p.read_text() for p in out.iterdir()}
    again = runner.invoke(app, ["init", "--source", source, "--target", target, "--out", str(out)])
    assert again.exit_code != 0
    assert "writes no file that exists" in again.output and "spec.toml" in again.output
    assert {p.name: p.read_text() for p in out.iterdir()} == before
    # One file in the way is enough: nothing is written, not even the others.
    other = tmp_path / "second"
    other.mkdir()
    (other / "books.sql").write_text("-- mine\n")
    with pytest.raises(InitError, match=r"books\.sql"):
        scaffold(source, target, other)
    assert [p.name for p in other.iterdir()] == ["books.sql"]
    assert (other / "books.sql").read_text() == "-- mine\n"
