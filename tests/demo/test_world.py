"""The dispatch world: sizes, planted defects, ground truth, determinism, target schema, delta.

The defect checks re-derive every row's own defect from the data with DOMAIN.md's rules,
independently of the generator's bookkeeping, and compare with the ground truth row by row.
Assertion messages carry table names and keys only, never row contents.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console

from ferry.demo import world
from ferry.embedded import LocalCluster

SCALE = 0.03
SEED = 7

# DOMAIN.md, copied by hand: the generator's own tables must agree with it.
DOMAIN_ROWS = {
    "auth_user": 9890, "dispatch_office": 894, "dispatch_office_members": 1400,
    "dispatch_patient": 8456, "dispatch_instance": 8419, "dispatch_instruction": 25012,
    "dispatch_jaw": 43458, "dispatch_file": 325652, "dispatch_record": 70742,
    "dispatch_state": 5547, "dispatch_notification": 2039588, "dispatch_template": 169,
    "dispatch_payment": 17235, "dispatch_agent": 85, "dispatch_operation": 3720,
    "purchases.csv": 3701, "record_attachments.csv": 8703,
}  # fmt: skip
DOMAIN_DEFECTS = {
    "invalid_json": 40, "jaw_type": 2000, "jaw_type_unknown": 363, "doctor_from_case": 300,
    "missing_doctor": 16, "method_inferred": 500, "payment_method_unknown": 6,
    "missing_case": 222, "orphan_treatment_plan": 500, "draft": 3000, "abandoned": 150,
    "duplicate_office": 371, "unknown_country": 3, "suffix_normalized": 1000,
    "suffix_invalid": 5, "office_from_doctor": 2800, "orphan_order": 100, "unique_violation": 10,
}  # fmt: skip
CASCADES = {"parent_excluded", "parent_quarantined"}

PUBLIC_TABLES = (
    "profiles", "offices", "doctors", "doctor_offices", "patients", "technicians",
    "technician_roles", "cases", "orders", "jaws", "case_files", "case_messages",
    "treatment_discussions", "message_attachments", "system_messages", "templates",
    "template_view_groups", "case_states", "order_states", "payments", "purchases", "operations",
)  # fmt: skip


@dataclass
class World:
    source: str
    target: str
    out: Path


def _generate(cluster: LocalCluster, name: str, out: Path, *, seed: int = SEED) -> World:
    src = cluster.create_database(f"{name}_src", drop=True)
    tgt = cluster.create_database(f"{name}_tgt", drop=True)
    world.generate(src, tgt, out, scale=SCALE, seed=seed)
    return World(src, tgt, out)


def _connect(conninfo: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(conninfo, autocommit=True)
    conn.execute("SET DateStyle = 'ISO, YMD'")
    conn.execute("SET TimeZone = 'UTC'")
    return conn


def _checksums(conninfo: str, schema: str, tables: tuple[str, ...]) -> dict[str, str]:
    out = {}
    with _connect(conninfo) as conn:
        for table in tables:
            q = sql.SQL(
                "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) FROM {} t"
            )
            out[table] = conn.execute(q.format(sql.Identifier(schema, table))).fetchone()[0]
    return out


def _truth(out: Path) -> dict[tuple[str, str], tuple[str, str]]:
    rows = world.read_truth(out)
    truth = {(r["source_table"], r["source_key"]): (r["status"], r["reason"]) for r in rows}
    assert len(truth) == len(rows), "a source row appears twice in the ground truth"
    return truth


@pytest.fixture(scope="module")
def world_a(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> World:
    return _generate(cluster, "world_a", tmp_path_factory.mktemp("world_a"))


# --- sizes ---------------------------------------------------------------------------------


def test_plan_at_sf1_is_domain_md() -> None:
    counts = world.expected_counts(1.0)
    assert {k: counts[k] for k in DOMAIN_ROWS} == DOMAIN_ROWS
    assert counts["auth_user_groups"] == 9890
    planted = world.planted_counts(1.0)
    assert {k: planted[k] for k in DOMAIN_DEFECTS} == DOMAIN_DEFECTS
    p = world.plan(1.0, 1)
    inserts = p["x_notif"] + p["x_record"] + p["x_file"] + p["x_state"] + 3
    updates = p["x_read"] + p["x_instr"] + p["x_pay_inferred"] + p["x_pay_unknown"]
    assert (inserts, updates, p["x_del_record"] + p["x_del_file"]) == (673, 200, 25)


@pytest.mark.parametrize("scale", [0.001, 0.01, 0.05, 0.5])
def test_every_defect_survives_small_scales(scale: float) -> None:
    planted = world.planted_counts(scale)
    assert min(planted.values()) >= 1
    for reason in ("orphan_order", "orphan_treatment_plan", "orphan_office"):
        assert planted[reason] >= 2  # the delta resolves one parent; one kind must remain


def test_bad_arguments_are_refused() -> None:
    for scale in (0, -1.0, float("nan"), 1000.0):
        with pytest.raises(world.DemoError):
            world.plan(scale, 1)
    with pytest.raises(world.DemoError):
        world.plan(1.0, -1)


def test_counts_scale_linearly(world_a: World) -> None:
    with _connect(world_a.source) as conn:
        counts = world.legacy_counts(conn)
    assert counts == world.expected_counts(SCALE)
    for name, n in DOMAIN_ROWS.items():
        assert abs(counts[name] - round(n * SCALE)) <= max(2, n * SCALE * 0.02), name
    for name in world.CSV_FILES:
        lines = (world_a.out / name).read_text().splitlines()
        assert len(lines) - 1 == counts[name], name


# --- defects and ground truth ----------------------------------------------------------------


def _own_defects(conninfo: str, out: Path) -> dict[tuple[str, str], str]:
    """Every row's own defect, derived from the data with DOMAIN.md's rules alone."""
    found: dict[tuple[str, str], str] = {}
    queries = {
        "auth_user": """
            SELECT u.id, 'unique_violation' FROM auth_user u
            WHERE EXISTS (SELECT 1 FROM auth_user e
                          WHERE lower(e.email) = lower(u.email) AND e.id < u.id)""",
        "dispatch_office": """
            SELECT id, CASE WHEN NOT (lower(btrim(country)) = ANY(%(countries)s))
                            THEN 'unknown_country' ELSE 'duplicate_office' END
            FROM (SELECT o.*, min(id) OVER (PARTITION BY
                      lower(regexp_replace(btrim(name), '\\s+', ' ', 'g')),
                      lower(btrim(city))) AS survivor
                  FROM dispatch_office o) x
            WHERE id <> survivor OR NOT (lower(btrim(country)) = ANY(%(countries)s))""",
        "dispatch_patient": """
            SELECT id, CASE WHEN office_id IS NULL THEN 'office_from_doctor'
                            WHEN upper(btrim(suffix)) ~ '^[A-Z0-9]{4}$' THEN 'suffix_normalized'
                            ELSE 'suffix_invalid' END
            FROM dispatch_patient
            WHERE office_id IS NULL OR NOT (suffix ~ '^[A-Z0-9]{4}$')""",
        "dispatch_instance": """
            SELECT id, 'abandoned' FROM dispatch_instance WHERE status = 'abandoned'""",
        "dispatch_instruction": """
            SELECT i.id, CASE WHEN c.doctor_id IS NULL THEN 'missing_doctor'
                              ELSE 'doctor_from_case' END
            FROM dispatch_instruction i JOIN dispatch_instance c ON c.id = i.instance_id
            WHERE i.doctor_id IS NULL OR i.doctor_id NOT IN (
                SELECT ug.user_id FROM auth_user_groups ug JOIN auth_group g ON g.id = ug.group_id
                WHERE g.name = 'doctor')""",
        "dispatch_jaw": """
            SELECT id, CASE WHEN lower(btrim(jaw)) = ANY(%(jaws)s) THEN 'jaw_type'
                            ELSE 'jaw_type_unknown' END
            FROM dispatch_jaw WHERE jaw IS NULL OR jaw NOT IN ('upper', 'lower')""",
        "dispatch_file": """
            SELECT f.id, 'orphan_order' FROM dispatch_file f
            WHERE NOT EXISTS (
                SELECT 1 FROM dispatch_instruction i WHERE i.id = f.instruction_id)""",
        "dispatch_record": """
            SELECT r.id, CASE WHEN r.kind = 'draft' THEN 'draft' ELSE 'orphan_treatment_plan' END
            FROM dispatch_record r
            WHERE r.kind = 'draft' OR (r.treatment_plan_id IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM dispatch_record t
                WHERE t.id = r.treatment_plan_id AND t.kind = 'treatment_plan'))""",
        "dispatch_state": """
            SELECT s.id, 'missing_case' FROM dispatch_state s
            WHERE NOT EXISTS (SELECT 1 FROM dispatch_instruction i WHERE i.id = s.instruction_id)
              AND NOT EXISTS (SELECT 1 FROM dispatch_instance c WHERE c.id = s.instance_id)""",
        "dispatch_payment": """
            SELECT id, CASE WHEN reference LIKE 'ch\\_%%' OR reference LIKE 'pi\\_%%'
                              OR reference LIKE 'WIRE-%%' OR reference LIKE 'CHK%%'
                            THEN 'method_inferred' ELSE 'payment_method_unknown' END
            FROM dispatch_payment WHERE method IS NULL""",
    }
    params = {"countries": list(world.COUNTRY_CODES), "jaws": list(world.JAW_TYPES)}
    with _connect(conninfo) as conn:
        for table, query in queries.items():
            for key, reason in conn.execute(query, params):  # type: ignore[arg-type]
                found[(table, str(key))] = reason
        for key, context in conn.execute("SELECT id, template_context FROM dispatch_notification"):
            try:
                json.loads(context)
            except ValueError:
                found[("dispatch_notification", str(key))] = "invalid_json"
        offices = {r[0] for r in conn.execute("SELECT id FROM dispatch_office")}
        records = {r[0] for r in conn.execute("SELECT id FROM dispatch_record")}
        files = {r[0] for r in conn.execute("SELECT id FROM dispatch_file")}
    for row in _read_csv(out / "purchases.csv"):
        if int(row["office_id"]) not in offices:
            found[("purchases.csv", row["external_id"])] = "orphan_office"
    for row in _read_csv(out / "record_attachments.csv"):
        if int(row["record_id"]) not in records:
            found[("record_attachments.csv", row["id"])] = "orphan_record"
        elif int(row["file_id"]) not in files:
            found[("record_attachments.csv", row["id"])] = "orphan_file"
    return found


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_ground_truth_matches_the_data_row_by_row(world_a: World) -> None:
    truth = _truth(world_a.out)
    own = {key: reason for key, (_s, reason) in truth.items() if reason not in CASCADES}
    derived = _own_defects(world_a.source, world_a.out)
    # Same rows, same reasons: and since derived ignores parents, no planted row sits under a
    # bad parent (it would show up in derived but carry a cascade reason in the truth).
    assert set(derived) - set(own) == set(), "rows with a defect missing from the truth"
    assert set(own) - set(derived) == set(), "truth rows whose data shows no defect"
    assert {k: r for k, r in derived.items() if own[k] != r} == {}
    for status, reason in truth.values():
        assert world.REASONS[reason] == status


def test_every_defect_kind_is_planted_at_its_rate(world_a: World) -> None:
    truth = _truth(world_a.out)
    reasons = Counter(reason for _s, reason in truth.values())
    expected = world.planted_counts(SCALE)
    assert {r: reasons[r] for r in expected} == expected
    assert reasons["parent_excluded"] > 0
    assert reasons["parent_quarantined"] > 0
    tables = {t for (t, _k), (_s, r) in truth.items() if r in CASCADES}
    assert {"dispatch_instruction", "dispatch_file", "dispatch_record",
            "record_attachments.csv"} <= tables  # fmt: skip


def test_cascades_follow_the_parent_links(world_a: World) -> None:
    truth = _truth(world_a.out)

    def keys(table: str, status: str) -> set[int]:
        return {int(k) for (t, k), (s, _r) in truth.items() if t == table and s == status}

    def cascaded(table: str, reason: str) -> set[int]:
        return {int(k) for (t, k), (_s, r) in truth.items() if t == table and r == reason}

    with _connect(world_a.source) as conn:
        for child, fk in (("dispatch_jaw", "instruction_id"), ("dispatch_file", "instruction_id"),
                          ("dispatch_payment", "instruction_id"),
                          ("dispatch_operation", "instruction_id")):  # fmt: skip
            for status, reason in (("excluded", "parent_excluded"),
                                   ("quarantined", "parent_quarantined")):  # fmt: skip
                parents = keys("dispatch_instruction", status)
                q = sql.SQL("SELECT id FROM {} WHERE {} = ANY(%s)").format(
                    sql.Identifier(child), sql.Identifier(fk)
                )
                children = {r[0] for r in conn.execute(q, [list(parents)])}
                assert children == cascaded(child, reason), (child, reason)
        abandoned = keys("dispatch_instance", "excluded")
        instr = {
            r[0]
            for r in conn.execute(
                "SELECT id FROM dispatch_instruction WHERE instance_id = ANY(%s)", [list(abandoned)]
            )
        }
        assert instr == cascaded("dispatch_instruction", "parent_excluded")


def test_target_only_rows_and_ownership(world_a: World) -> None:
    with _connect(world_a.target) as conn:
        for table, n in world.TARGET_ONLY.items():
            schema, name = table.split(".") if "." in table else ("public", table)
            q = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
            assert conn.execute(q).fetchone()[0] == n, table
        for table in PUBLIC_TABLES:
            legacy = conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public'"
                " AND table_name = %s AND column_name LIKE 'legacy\\_%%'",
                [table],
            ).fetchall()
            assert len(legacy) == 1, table
            q = sql.SQL("SELECT count(*) FROM {} WHERE {} IS NOT NULL").format(
                sql.Identifier("public", table), sql.Identifier(legacy[0][0])
            )
            assert conn.execute(q).fetchone()[0] == 0, table
        owners = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        assert owners == [("migrator",)]
        assert conn.execute(
            "SELECT DISTINCT pg_get_userbyid(t.typowner) FROM pg_type t JOIN pg_namespace n"
            " ON n.oid = t.typnamespace WHERE n.nspname = 'public' AND t.typtype = 'e'"
        ).fetchall() == [("migrator",)]
        assert (
            conn.execute(
                "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'"
            ).fetchone()[0]
            == "migrator"
        )
        assert (
            conn.execute(
                "SELECT rolsuper OR rolcreatedb OR rolcreaterole FROM pg_roles"
                " WHERE rolname = 'migrator'"
            ).fetchone()[0]
            is False
        )
        assert sorted(
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ) == sorted(PUBLIC_TABLES)


def test_migrator_can_work_without_superuser(cluster: LocalCluster, world_a: World) -> None:
    dbname = conninfo_to_dict(world_a.target)["dbname"]
    conninfo = cluster.conninfo(str(dbname), user="migrator")
    with (
        psycopg.connect(conninfo, autocommit=True) as conn,
        conn.transaction(force_rollback=True),
    ):
        conn.execute("CREATE SCHEMA ferry_probe")
        conn.execute("CREATE TABLE ferry_probe.t (id int)")
        conn.execute("INSERT INTO public.offices (name, country_code) VALUES ('Probe', 'JP')")
        assert conn.execute("SELECT count(*) FROM public.cases").fetchone()[0] == 50


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        (
            "INSERT INTO orders (case_id, doctor_id) VALUES (%(case)s, NULL)",
            errors.NotNullViolation,
        ),
        (
            "INSERT INTO orders (case_id, doctor_id) VALUES (gen_random_uuid(), %(doctor)s)",
            errors.ForeignKeyViolation,
        ),
        ("UPDATE patients SET suffix = 'A1B' WHERE id = %(patient)s", errors.CheckViolation),
        ("UPDATE patients SET suffix = ' a1b2 ' WHERE id = %(patient)s", errors.CheckViolation),
        (
            "INSERT INTO jaws (order_id, jaw_type) VALUES (%(order)s, 'both')",
            errors.InvalidTextRepresentation,
        ),
        ("INSERT INTO jaws (order_id, jaw_type) VALUES (%(order)s, NULL)", errors.NotNullViolation),
        ("INSERT INTO profiles (email) VALUES ('DR.Mori@NewApp.test')", errors.UniqueViolation),
        (
            "INSERT INTO payments (order_id, amount, currency, method)"
            " VALUES (%(order)s, -0.01, 'USD', 'card')",
            errors.CheckViolation,
        ),
        (
            "INSERT INTO payments (order_id, amount, currency, method)"
            " VALUES (%(order)s, 10, 'USD', NULL)",
            errors.NotNullViolation,
        ),
        (
            "INSERT INTO payments (order_id, amount, currency, method)"
            " VALUES (%(order)s, 10, 'USD', 'cash')",
            errors.InvalidTextRepresentation,
        ),
        ("INSERT INTO offices (name, country_code) VALUES ('X', 'jp')", errors.CheckViolation),
        (
            "INSERT INTO system_messages (recipient_id, verb, context)"
            " VALUES (%(profile)s, 'x', NULL)",
            errors.NotNullViolation,
        ),
    ],
)
def test_target_rejects_what_domain_forbids(
    world_a: World, statement: str, error: type[Exception]
) -> None:
    with _connect(world_a.target) as conn:
        ids = conn.execute(
            "SELECT (SELECT id FROM cases ORDER BY id LIMIT 1),"
            " (SELECT id FROM doctors ORDER BY id LIMIT 1),"
            " (SELECT id FROM patients ORDER BY id LIMIT 1),"
            " (SELECT id FROM orders ORDER BY id LIMIT 1),"
            " (SELECT id FROM profiles ORDER BY id LIMIT 1)"
        ).fetchone()
        args = dict(zip(("case", "doctor", "patient", "order", "profile"), ids, strict=True))
        with pytest.raises(error), conn.transaction():
            conn.execute(statement, args)  # type: ignore[arg-type]


def test_rls_on_every_table_and_anon_reads_nothing(world_a: World) -> None:
    with _connect(world_a.target) as conn:
        no_rls = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity"
        ).fetchall()
        assert no_rls == []
        for role in ("anon", "authenticated"):
            for table in PUBLIC_TABLES:
                q = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))
                try:
                    with conn.transaction(force_rollback=True):
                        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                        assert conn.execute(q).fetchone()[0] == 0, (role, table)
                except errors.InsufficientPrivilege:
                    pass


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_gives_identical_data_and_another_seed_differs(
    cluster: LocalCluster, world_a: World, tmp_path: Path
) -> None:
    legacy = world.LEGACY_TABLES
    expected = _checksums(world_a.source, "public", legacy)
    # First another seed, then the same seed again into the same databases: the re-run must
    # replace the previous world completely.
    other = _generate(cluster, "world_b", tmp_path / "b", seed=SEED + 1)
    differs = _checksums(other.source, "public", legacy)
    changed = {t for t in legacy if differs[t] != expected[t]}
    # Only the structural tables (group names, one group per user) do not depend on the seed.
    assert set(legacy) - changed == {"auth_group", "auth_user_groups"}
    again = _generate(cluster, "world_b", tmp_path / "b", seed=SEED)
    assert _checksums(again.source, "public", legacy) == expected
    for name in (*world.CSV_FILES, world.TRUTH_FILE):
        assert (again.out / name).read_bytes() == (world_a.out / name).read_bytes(), name
    assert _checksums(again.target, "public", PUBLIC_TABLES) == _checksums(
        world_a.target, "public", PUBLIC_TABLES
    )


# --- delta ----------------------------------------------------------------------------------


def test_delta_changes_what_it_says_and_updates_the_truth(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    w = _generate(cluster, "world_d", tmp_path / "d")
    p = world.plan(SCALE, SEED)
    before_truth = _truth(w.out)
    with _connect(w.source) as conn:
        before = world.legacy_counts(conn)
        resolvable = {str(r[0]) for r in conn.execute(
            "SELECT id FROM dispatch_file WHERE instruction_id = %s",
            [world.DANGLING_BASE + 1])}  # fmt: skip

    with pytest.raises(world.DemoError, match="seed"):
        world.apply_delta(w.source, w.out, scale=SCALE, seed=SEED + 1)
    done = world.apply_delta(w.source, w.out, scale=SCALE, seed=SEED)
    assert done == {
        "inserted": p["x_notif"] + p["x_record"] + p["x_file"] + p["x_state"] + 3,
        "updated": p["x_read"] + p["x_instr"] + p["x_pay_inferred"] + p["x_pay_unknown"],
        "deleted": p["x_del_record"] + p["x_del_file"],
    }
    with pytest.raises(world.DemoError, match="already"):
        world.apply_delta(w.source, w.out, scale=SCALE, seed=SEED)

    with _connect(w.source) as conn:
        after = world.legacy_counts(conn)
    grew = {t: after[t] - before[t] for t in after if after[t] != before[t]}
    assert grew == {
        "dispatch_notification": p["x_notif"],
        "dispatch_record": p["x_record"] + 1 - p["x_del_record"],
        "dispatch_file": p["x_file"] - p["x_del_file"],
        "dispatch_state": p["x_state"],
        "dispatch_instruction": 1,
        "dispatch_office": 1,
    }

    truth = _truth(w.out)
    deleted = [k for k, (s, _r) in truth.items() if s == "deleted"]
    assert len(deleted) == done["deleted"]
    assert resolvable and all(("dispatch_file", k) in before_truth for k in resolvable)
    assert not any(("dispatch_file", k) in truth for k in resolvable)
    reasons = Counter(r for _s, r in truth.values())
    old = Counter(r for _s, r in before_truth.values())
    assert reasons["invalid_json"] == old["invalid_json"] + p["x_notif_dirty"]
    assert reasons["orphan_office"] < old["orphan_office"]
    assert reasons["orphan_treatment_plan"] == old["orphan_treatment_plan"] - 1
    assert reasons["missing_case"] == old["missing_case"] + 1
    # The truth after the delta still agrees with the data, row by row.
    derived = _own_defects(w.source, w.out)
    own = {k: r for k, (s, r) in truth.items() if r not in CASCADES and s != "deleted"}
    assert derived == own


# --- the command ------------------------------------------------------------------------------


def test_cli_generate_then_delta(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, width=120)
    world.cli_generate(tmp_path, scale=0.01, seed=3, delta=False, console=console)
    text = out.getvalue()
    assert "dispatch_notification" in text and "ground truth" in text
    reasons = {row["reason"] for row in world.read_truth(tmp_path)}
    assert set(world.DEFECTS) <= reasons
    world.cli_generate(tmp_path, scale=0.01, seed=3, delta=True, console=console)
    assert "inserted" in out.getvalue()
    assert any(row["status"] == "deleted" for row in world.read_truth(tmp_path))
