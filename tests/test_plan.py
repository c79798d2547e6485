"""``ferry plan``: the fates a migrate gives, computed before it, with the target's tables
unchanged to the byte and no scratch schema left behind."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ferry.demo import world
from ferry.demo.run import MIGRATOR, dispatch_spec
from ferry.embedded import LocalCluster
from ferry.engine.pipeline import migrate
from ferry.errors import FerryError, SpecError
from ferry.ops import report
from ferry.ops.plan import plan, render
from ferry.spec import load_spec
from tests.helpers import fresh_db

LIB = Path(__file__).parent / "specs" / "library"
OWNER = "plan_owner"
FATES = ("staged", "migrated", "merged", "quarantined", "excluded", "repaired", "deleted")
TARGETS = ("target_table", "rows", "written_by_ferry", "kept", "target_only", "models")


def _state(dsn: str) -> dict[str, Any]:
    """Every table's rows (md5 of their text, in order) and sequence positions outside the
    system catalogs, and the schemas there are."""
    with psycopg.connect(dsn) as conn:
        rels = conn.execute(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'S') "
            "AND n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> 'information_schema' ORDER BY 1, 2"
        ).fetchall()
        out: dict[str, Any] = {
            "schemas": [
                r[0]
                for r in conn.execute(
                    "SELECT nspname::text FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%%' "
                    "ORDER BY 1"
                )
            ]
        }
        for schema, name, kind in rels:
            rel = f'"{schema}"."{name}"'
            query = (
                f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {rel} t"
                if kind == "r"
                else f"SELECT last_value, is_called FROM {rel}"
            )
            out[f"{schema}.{name}"] = conn.execute(query).fetchone()  # type: ignore[call-overload]
    return out


def _fates(data: dict[str, Any], fates: tuple[str, ...] = FATES) -> tuple[list[Any], list[Any]]:
    return (
        [(s["source_table"], *(s[k] for k in fates)) for s in data["sources"]],
        [tuple(t[k] for k in TARGETS) for t in data["targets"]],
    )


def test_the_plan_of_the_demo_is_what_its_migrate_gives(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    source = cluster.create_database("plan_legacy", drop=True)
    admin = cluster.create_database("plan_target", drop=True)
    world.generate(source, admin, tmp_path, scale=0.01, seed=5)
    target = cluster.conninfo("plan_target", user=MIGRATOR)
    spec = dispatch_spec()
    before = _state(admin)
    planned = plan(source, target, spec, data_dir=tmp_path)
    assert _state(admin) == before  # every table to the byte; no schema made or left
    migrate(source, target, spec, data_dir=tmp_path)
    assert _fates(planned.data) == _fates(report.collect(target, spec))
    # What the target refuses, under the real constraint's name; the report's shape.
    assert {
        (r["model"], r["reason"], r["message"].rsplit(" ", 1)[-1])
        for r in planned.data["plan"]["refusals"]
    } == {("profiles", "unique_violation", '"profiles_email_lower_key"')}
    assert planned.data["totals"]["adds_up"]
    text = render(planned.data, "md")
    assert text.startswith("# Migration plan: dispatch-to-supabase")
    assert "profiles_email_lower_key" in text


@pytest.fixture
def library(cluster: LocalCluster, tmp_path: Path) -> tuple[str, str, str, Path]:
    source = fresh_db(cluster, "plan_lib_src", LIB / "source.sql")
    admin = fresh_db(cluster, "plan_lib_tgt", LIB / "target.sql", owner=OWNER)
    for f in ("spec.toml", "books.sql", "loans.csv"):
        shutil.copy(LIB / f, tmp_path / f)
    return source, cluster.conninfo("plan_lib_tgt", user=OWNER), admin, tmp_path


def test_a_plan_after_a_migrate_and_sequences_left_alone(
    library: tuple[str, str, str, Path],
) -> None:
    """Where ferry has run, the plan is the fresh migrate the next run converges to; the
    real sequences of the target do not move, nor does ferry's ledger."""
    source, target, admin, data = library
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.loans ADD COLUMN n serial")
        conn.execute("ALTER TABLE public.books ADD COLUMN m bigint GENERATED ALWAYS AS IDENTITY")
        conn.execute("SELECT nextval('public.loans_n_seq')")
    spec = load_spec(data / "spec.toml")
    migrate(source, target, spec)
    with psycopg.connect(source, autocommit=True) as conn:  # the source moved on since
        conn.execute("UPDATE lib_book SET price = 4 WHERE id = 16")  # no longer negative
        conn.execute("DELETE FROM lib_author WHERE id = 5")  # books 15 becomes an orphan
    before = _state(admin)
    planned = plan(source, target, spec, sample=None)
    assert _state(admin) == before
    migrate(source, target, spec)
    # The plan's fates are those of the rows the source holds: the ledger's rows of rows
    # gone from it (deleted) are the one thing it does not count.
    now = FATES[:-1]
    assert _fates(planned.data, now) == _fates(report.collect(target, spec), now)
    assert report.collect(target, spec)["sources"][0]["deleted"] == 1


def test_a_sample_a_failure_and_a_schema_not_its_own(
    library: tuple[str, str, str, Path],
) -> None:
    source, target, admin, data = library
    spec = load_spec(data / "spec.toml")
    before = _state(admin)
    planned = plan(source, target, spec, sample=2)
    assert {s["source_table"]: s["staged"] for s in planned.data["sources"]} == {
        "lib_author": 2, "lib_book": 2, "loans.csv": 2,
    }  # fmt: skip
    assert planned.data["plan"]["sample"] == 2
    assert "at most 2 rows of each source" in render(planned.data, "md")
    assert _state(admin) == before
    # A run that fails leaves nothing behind either.
    (data / "books.sql").write_text((data / "books.sql").read_text().replace("b.title", "b.x"))
    with pytest.raises(SpecError, match="model books: its SQL does not run"):
        plan(source, target, load_spec(data / "spec.toml"))
    assert _state(admin) == before
    # A schema of that name that the plan did not make is neither used nor dropped.
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA ferry_plan__public AUTHORIZATION plan_owner")
    with pytest.raises(FerryError, match="ferry_plan__public exists and is not a plan's"):
        plan(source, target, spec)
    with psycopg.connect(admin) as conn:
        assert conn.execute("SELECT to_regnamespace('ferry_plan__public')").fetchone() != (None,)
