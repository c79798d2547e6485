"""The dispatch world of DOMAIN.md: a legacy database, a Supabase-style target, two CSV exports
and the ground truth of every planted defect.

Why it exists: ferry claims to account for every source row, and a claim like that needs a world
whose right answer is known row by row. The generator plants each defect of DOMAIN.md at its
stated rate and writes down the expected fate of each planted row (``ground_truth.csv``); the
verify step and the tests compare ferry's ledger with it.

Why it is SQL: SF=1 is about 2.6M legacy rows and must build in well under a minute on two cores,
so rows are made by set-based ``INSERT ... SELECT`` on the server (the scripts in ``dispatch/``),
never one by one in Python. Every choice is a pure integer hash of (seed, tag, row number), so the
same seed and scale give byte-identical tables anywhere.

The scripts, in the order they run:
  ``legacy.sql``  (tables) the legacy schema, Django style;
  ``generate.sql`` the clean world;  ``legacy.sql`` (constraints) keys and indexes;
  ``plant.sql``   the defects, recorded in ``ferry_demo.planted``;
  ``truth.sql``   the expected fates (orphans and cascades computed from the data);
  ``target.sql`` + ``target_only.sql`` the target schema and the rows the new app made;
  ``delta.sql``   one day of the legacy app, on demand.

Health data rule: nothing here prints or logs row contents -- only table names, keys and counts.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import time
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ferry.conninfo import apply
from ferry.errors import DemoError

log = logging.getLogger(__name__)

#: Orphans point at ids from here on (one range per kind, see plant.sql): no sequence reaches
#: them, so no row inserted later adopts an orphan by accident.
DANGLING_BASE = 1_000_000_000

#: The legacy tables, parents first.
LEGACY_TABLES: tuple[str, ...] = (
    "auth_group",
    "auth_user",
    "auth_user_groups",
    "dispatch_office",
    "dispatch_office_members",
    "dispatch_patient",
    "dispatch_instance",
    "dispatch_instruction",
    "dispatch_jaw",
    "dispatch_file",
    "dispatch_record",
    "dispatch_state",
    "dispatch_template",
    "dispatch_notification",
    "dispatch_payment",
    "dispatch_agent",
    "dispatch_operation",
)
CSV_FILES: tuple[str, ...] = ("purchases.csv", "record_attachments.csv")
TRUTH_FILE = "ground_truth.csv"
TRUTH_HEADER = ("source_table", "source_key", "status", "reason")

# DOMAIN.md's sizes at SF=1 (the keys are the columns of ferry_demo.params).
_ROWS_SF1: dict[str, int] = {
    "n_doc": 1332,  # auth_user in group doctor
    "n_tech": 85,  # auth_user in group technician = dispatch_agent
    "n_pat": 8456,  # auth_user in group patient = dispatch_patient
    "n_admin": 17,
    "n_office": 894,
    "n_member": 1400,
    "n_case": 8419,
    "n_instr": 25012,
    "n_jaw": 43458,
    "n_file": 325652,
    "n_record": 70742,
    "n_state": 5547,
    "n_template": 169,
    "n_notif": 2039588,
    "n_payment": 17235,
    "n_operation": 3720,
    "n_purchase": 3701,
    "n_attach": 8703,
}

#: Planted defects: reason -> (source table, rows at SF=1). Each scales linearly, at least 1
#: (at least 2 for the orphans the delta resolves, so that one kind survives it).
DEFECTS: dict[str, tuple[str, int]] = {
    "unique_violation": ("auth_user", 10),
    "duplicate_office": ("dispatch_office", 371),
    "unknown_country": ("dispatch_office", 3),
    "office_from_doctor": ("dispatch_patient", 2800),
    "suffix_normalized": ("dispatch_patient", 1000),
    "suffix_invalid": ("dispatch_patient", 5),
    "abandoned": ("dispatch_instance", 150),
    "doctor_from_case": ("dispatch_instruction", 300),
    "missing_doctor": ("dispatch_instruction", 16),
    "jaw_type": ("dispatch_jaw", 2000),
    "jaw_type_unknown": ("dispatch_jaw", 363),
    "orphan_order": ("dispatch_file", 100),
    "draft": ("dispatch_record", 3000),
    "orphan_treatment_plan": ("dispatch_record", 500),
    "missing_case": ("dispatch_state", 222),
    "method_inferred": ("dispatch_payment", 500),
    "payment_method_unknown": ("dispatch_payment", 6),
    "invalid_json": ("dispatch_notification", 40),
    "orphan_office": ("purchases.csv", 4),
    "orphan_record": ("record_attachments.csv", 3),
    "orphan_file": ("record_attachments.csv", 3),
}
_AT_LEAST_TWO = frozenset({"orphan_order", "orphan_treatment_plan", "orphan_office"})

#: Every reason of the ground truth and the status it comes with.
REASONS: dict[str, str] = {
    "abandoned": "excluded",
    "draft": "excluded",
    "parent_excluded": "excluded",
    "duplicate_office": "merged",
    "invalid_json": "quarantined",
    "jaw_type_unknown": "quarantined",
    "missing_doctor": "quarantined",
    "payment_method_unknown": "quarantined",
    "unknown_country": "quarantined",
    "unique_violation": "quarantined",
    "missing_case": "quarantined",
    "orphan_treatment_plan": "quarantined",
    "orphan_order": "quarantined",
    "orphan_office": "quarantined",
    "orphan_record": "quarantined",
    "orphan_file": "quarantined",
    "parent_quarantined": "quarantined",
    "jaw_type": "migrated",
    "doctor_from_case": "migrated",
    "method_inferred": "migrated",
    "suffix_normalized": "migrated",
    "suffix_invalid": "migrated",
    "office_from_doctor": "migrated",
}

#: Every spelling of dispatch_office.country the generator writes, normalized with
#: ``lower(btrim(country))``, and its ISO code. Anything else ("narnia", "europe", "n/a") is
#: unknown_country.
COUNTRY_CODES: dict[str, str] = {
    "united states": "US", "usa": "US", "u.s.a.": "US", "us": "US",
    "japan": "JP", "jp": "JP",
    "thailand": "TH", "th": "TH",
    "india": "IN", "in": "IN",
    "australia": "AU", "au": "AU",
}  # fmt: skip

#: Every spelling of dispatch_jaw.jaw that means an arch, normalized with ``lower(btrim(jaw))``.
#: Exactly 'upper' or 'lower' is clean; another spelling is the jaw_type repair; anything else
#: ('', NULL, 'both', '?') is jaw_type_unknown.
JAW_TYPES: dict[str, str] = {
    "upper": "upper", "u": "upper", "upper jaw": "upper", "maxillary": "upper",
    "lower": "lower", "l": "lower", "lower jaw": "lower", "mandibular": "lower",
}  # fmt: skip

#: Reference prefixes that reveal a payment method (case-sensitive, as the processors write them).
PAYMENT_PREFIXES: dict[str, str] = {
    "ch_": "card", "pi_": "card", "WIRE-": "bank_transfer", "CHK": "check",
}  # fmt: skip

#: Rows the new application created in the target before the migration (fixed, any scale).
TARGET_ONLY: dict[str, int] = {
    "auth.users": 52,
    "profiles": 52,
    "offices": 1,
    "doctors": 2,
    "doctor_offices": 2,
    "patients": 50,
    "cases": 50,
    "orders": 50,
    "case_messages": 100,
}

MAX_SCALE = 100.0
_SEED_LIMIT = 2**31


def _scaled(count: int, scale: float, minimum: int = 1) -> int:
    """Round half up (not to even: 0.5 must give 1) and never below ``minimum``."""
    return max(minimum, math.floor(count * scale + 0.5))


def plan(scale: float, seed: int) -> dict[str, int]:
    """Every count the SQL needs for ``scale``: rows per table, defects, delta; plus the seed.

    Why clamps: at a tiny scale, rounding could leave a defect without a host (no admin to be
    the duplicate user, one clinic for two memberships); each clamp keeps the world coherent.
    """
    if not (isinstance(scale, int | float) and math.isfinite(scale) and 0 < scale <= MAX_SCALE):
        raise DemoError(f"scale must be > 0 and <= {MAX_SCALE:g}, got {scale!r}")
    if not (isinstance(seed, int) and 0 <= seed < _SEED_LIMIT):
        raise DemoError(f"seed must be an integer in [0, 2**31), got {seed!r}")

    p: dict[str, int] = {"seed": seed}
    p |= {key: _scaled(n, scale) for key, n in _ROWS_SF1.items()}
    d = {
        reason: _scaled(n, scale, 2 if reason in _AT_LEAST_TWO else 1)
        for reason, (_table, n) in DEFECTS.items()
    }
    p["n_dup_user"] = min(d.pop("unique_violation"), p["n_doc"])
    p["n_admin"] = max(p["n_admin"], p["n_dup_user"])
    p["n_user"] = p["n_doc"] + p["n_tech"] + p["n_pat"] + p["n_admin"]
    p["n_office_dup"] = d.pop("duplicate_office")
    p["n_office_unknown"] = d.pop("unknown_country")
    p["n_office"] = max(p["n_office"], p["n_office_dup"] + p["n_office_unknown"] + 2)
    p["n_clinic"] = p["n_office"] - p["n_office_dup"]
    p["n_good_clinic"] = p["n_clinic"] - p["n_office_unknown"]
    p["n_member"] = min(max(p["n_member"], p["n_doc"]), 2 * p["n_doc"])
    if p["n_good_clinic"] < 2:
        p["n_member"] = p["n_doc"]
    p["n_case"] = min(p["n_case"], p["n_pat"])
    p["n_instr"] = max(p["n_instr"], p["n_case"])
    p["n_jaw"] = min(max(p["n_jaw"], p["n_instr"]), 2 * p["n_instr"])
    p["n_file"] = max(p["n_file"], p["n_instr"])
    p["n_record"] = max(p["n_record"], 2 * p["n_case"])
    p |= {f"d_{reason}": n for reason, n in d.items()}
    p["k_dangling_instr"] = min(max(2, _scaled(20, scale)), p["d_orphan_order"])
    p["k_dangling_office"] = min(2, p["d_orphan_office"])
    # The delta (DOMAIN.md: 673 inserts, ~200 updates, ~25 deletes at SF=1).
    p["x_notif_dirty"] = _scaled(2, scale)
    p["x_notif"] = max(_scaled(520, scale), p["x_notif_dirty"] + 1)
    p["x_record"] = _scaled(70, scale, 2)
    p["x_file"] = _scaled(60, scale, 2)
    p["x_state"] = _scaled(20, scale, 2)
    p["x_read"] = _scaled(150, scale)
    p["x_instr"] = _scaled(40, scale)
    p["x_pay_inferred"] = min(_scaled(9, scale), p["d_method_inferred"])
    p["x_pay_unknown"] = 1 if p["d_payment_method_unknown"] >= 2 else 0
    p["x_del_record"] = _scaled(12, scale)
    p["x_del_file"] = _scaled(13, scale)
    return p


def expected_counts(scale: float) -> dict[str, int]:
    """Rows per legacy table and CSV file that ``generate`` makes at ``scale``."""
    p = plan(scale, 0)
    return {
        "auth_group": 4,
        "auth_user": p["n_user"],
        "auth_user_groups": p["n_user"],
        "dispatch_office": p["n_office"],
        "dispatch_office_members": p["n_member"],
        "dispatch_patient": p["n_pat"],
        "dispatch_instance": p["n_case"],
        "dispatch_instruction": p["n_instr"],
        "dispatch_jaw": p["n_jaw"],
        "dispatch_file": p["n_file"],
        "dispatch_record": p["n_record"],
        "dispatch_state": p["n_state"],
        "dispatch_template": p["n_template"],
        "dispatch_notification": p["n_notif"],
        "dispatch_payment": p["n_payment"],
        "dispatch_agent": p["n_tech"],
        "dispatch_operation": p["n_operation"],
        "purchases.csv": p["n_purchase"],
        "record_attachments.csv": p["n_attach"],
    }


def planted_counts(scale: float) -> dict[str, int]:
    """Rows planted per reason at ``scale`` (the defects' own rows, not their cascades)."""
    p = plan(scale, 0)
    renamed = {
        "unique_violation": "n_dup_user",
        "duplicate_office": "n_office_dup",
        "unknown_country": "n_office_unknown",
    }
    return {reason: p[renamed.get(reason, f"d_{reason}")] for reason in DEFECTS}


# --- running the scripts -------------------------------------------------------------------

_STEP = re.compile(r"^-- @step (\S+)[ \t]*$", re.MULTILINE)

# Byte-identical output needs fixed formatting (text ordering uses COLLATE "C" explicitly), and
# no parallel plans.
_SESSION_SETTINGS: dict[str, str] = {
    "DateStyle": "ISO, YMD",
    "TimeZone": "UTC",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "search_path": "public",
    "max_parallel_workers_per_gather": "0",
    "statement_timeout": "0",
    "work_mem": "256MB",
    "client_min_messages": "warning",
}


def _script(name: str) -> str:
    return resources.files("ferry.demo.dispatch").joinpath(name).read_text(encoding="utf-8")


def _steps(name: str) -> list[tuple[str, str]]:
    """A script split on its ``-- @step`` lines; a script without them is one step."""
    parts = _STEP.split(_script(name))
    if len(parts) == 1:
        return [(name, parts[0])]
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]


def _run(conn: psycopg.Connection[Any], name: str, only: set[str] | None = None) -> None:
    """Run a script's steps (simple query protocol: no parameters, several statements)."""
    for step, body in _steps(name):
        if only is not None and step not in only:
            continue
        started = time.perf_counter()
        conn.execute(body.encode())
        log.debug("%s/%s: %.2f s", name, step, time.perf_counter() - started)


def _connect(conninfo: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(conninfo, autocommit=True)
    try:
        apply(conn, list(_SESSION_SETTINGS.items()))
    except BaseException:
        conn.close()
        raise
    return conn


def _write_params(conn: psycopg.Connection[Any], params: dict[str, int], scale: float) -> None:
    names = list(params)
    conn.execute(
        sql.SQL("CREATE TABLE ferry_demo.params ({}, scale double precision NOT NULL)").format(
            sql.SQL(", ").join(
                sql.SQL("{} bigint NOT NULL").format(sql.Identifier(n)) for n in names
            )
        )
    )
    conn.execute(
        sql.SQL("INSERT INTO ferry_demo.params ({}, scale) VALUES ({}, %s)").format(
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join([sql.Placeholder()] * len(names)),
        ),
        [*params.values(), scale],
    )
    # One row, and the planner must know it: every generator query joins it.
    conn.execute("ANALYZE ferry_demo.params")


def _copy_out(conn: psycopg.Connection[Any], query: sql.Composable, path: Path) -> None:
    """Stream a COPY to a file, replacing it only once complete."""
    tmp = path.with_name(path.name + ".tmp")
    with conn.cursor() as cur, cur.copy(query) as copy, tmp.open("wb") as out:
        for chunk in copy:
            out.write(chunk)
    tmp.replace(path)


def _write_truth(conn: psycopg.Connection[Any], out_dir: Path) -> None:
    _copy_out(
        conn,
        sql.SQL(
            "COPY (SELECT source_table, source_key, status, reason FROM ferry_demo.truth"
            ' ORDER BY source_table COLLATE "C", lpad(source_key, 20, \'0\') COLLATE "C")'
            " TO STDOUT WITH (FORMAT csv, HEADER true)"
        ),
        out_dir / TRUTH_FILE,
    )


def _write_csvs(conn: psycopg.Connection[Any], out_dir: Path) -> None:
    _copy_out(
        conn,
        sql.SQL(
            "COPY (SELECT external_id, office_id, item, quantity, amount,"
            ' to_char(purchased_at, \'YYYY-MM-DD"T"HH24:MI:SS"Z"\') AS purchased_at'
            ' FROM ferry_demo.purchases_csv ORDER BY external_id COLLATE "C")'
            " TO STDOUT WITH (FORMAT csv, HEADER true)"
        ),
        out_dir / "purchases.csv",
    )
    _copy_out(
        conn,
        sql.SQL(
            "COPY (SELECT id, record_id, file_id FROM ferry_demo.record_attachments_csv"
            " ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER true)"
        ),
        out_dir / "record_attachments.csv",
    )
    _write_truth(conn, out_dir)


def legacy_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Rows per legacy table and per CSV export, as the source database holds them now."""
    counts: dict[str, int] = {}
    for table in LEGACY_TABLES:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        counts[table] = int(row.fetchone()[0])  # type: ignore[index]
    for name, table in (("purchases.csv", "purchases_csv"),
                        ("record_attachments.csv", "record_attachments_csv")):  # fmt: skip
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("ferry_demo", table))
        )
        counts[name] = int(row.fetchone()[0])  # type: ignore[index]
    return counts


def _analyze(conn: psycopg.Connection[Any], tables: tuple[str, ...]) -> None:
    for table in tables:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))


def generate(source: str, target: str, out_dir: Path, *, scale: float, seed: int) -> dict[str, int]:
    """Build the legacy world in ``source``, the target schema in ``target``, and the files.

    ``source`` and ``target`` are superuser connection strings to existing databases; whatever a
    previous run left there (legacy tables, ``ferry_demo``, target ``public``/``auth``) is
    replaced. Writes ``purchases.csv``, ``record_attachments.csv`` and ``ground_truth.csv`` into
    ``out_dir``. Returns rows per legacy table and CSV file.
    """
    params = plan(scale, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with _connect(source) as conn:
        with conn.transaction():
            conn.execute("DROP SCHEMA IF EXISTS ferry_demo CASCADE")
            conn.execute("CREATE SCHEMA ferry_demo")
            # Tables created in this transaction skip WAL under wal_level=minimal.
            _run(conn, "legacy.sql", only={"tables"})
            _write_params(conn, params, scale)
            _run(conn, "generate.sql")
            _run(conn, "legacy.sql", only={"constraints"})
            # Statistics before planting: its lookups then use the new primary keys.
            _analyze(conn, LEGACY_TABLES)
            _run(conn, "plant.sql")
            _run(conn, "truth.sql")
        counts = legacy_counts(conn)
        _write_csvs(conn, out_dir)
        # A real legacy database is years old, vacuumed and its rows' hint bits set: without
        # this, whoever reads it first pays for that while autovacuum works through it (a
        # benchmark's migrate took 47 s instead of 38 s).
        for table in LEGACY_TABLES:
            conn.execute(sql.SQL("VACUUM (FREEZE, ANALYZE) {}").format(sql.Identifier(table)))
    build_target(target)
    log.info("demo world at scale %g: %d rows in %.1f s", scale, sum(counts.values()),
             time.perf_counter() - started)  # fmt: skip
    return counts


def build_target(target: str) -> None:
    """The target schema and the rows the new application made, alone: a fresh target to
    migrate into (the tests compare a synced target with a freshly migrated one)."""
    with _connect(target) as conn, conn.transaction():
        _run(conn, "target.sql")
        _run(conn, "target_only.sql")


def apply_delta(source: str, out_dir: Path, *, scale: float, seed: int) -> dict[str, int]:
    """Apply DOMAIN.md's one day of legacy changes to ``source`` and rewrite the ground truth.

    Refused (``DemoError``) if ``source`` holds no generated world, one generated with another
    seed or scale, or one the delta was already applied to. Returns
    ``{"inserted": n, "updated": n, "deleted": n}``.
    """
    plan(scale, seed)  # validates the arguments
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _connect(source) as conn:
        with conn.transaction():
            if conn.execute("SELECT to_regclass('ferry_demo.meta')").fetchone()[0] is None:  # type: ignore[index]
                raise DemoError("the source database holds no demo world: generate it first")
            applied = conn.execute(
                "SELECT delta_applied FROM ferry_demo.meta FOR UPDATE"
            ).fetchone()[0]  # type: ignore[index]
            if applied:
                raise DemoError(
                    "the delta was already applied to this demo world; generate it again first"
                )
            had_seed, had_scale = conn.execute(
                "SELECT seed, scale FROM ferry_demo.params"
            ).fetchone()  # type: ignore[misc]
            if had_seed != seed or not math.isclose(had_scale, scale, rel_tol=1e-9):
                raise DemoError(
                    f"the demo world was generated with seed {had_seed} and scale {had_scale:g},"
                    f" not seed {seed} and scale {scale:g}"
                )
            _run(conn, "delta.sql")
            conn.execute("UPDATE ferry_demo.meta SET delta_applied = true")
            _run(conn, "truth.sql")
            _analyze(conn, ("dispatch_notification", "dispatch_record", "dispatch_file",
                            "dispatch_state", "dispatch_instruction", "dispatch_payment",
                            "dispatch_office"))  # fmt: skip
            rows = conn.execute(
                "SELECT op, sum(n)::bigint FROM ferry_demo.delta_log GROUP BY op"
            ).fetchall()
        _write_truth(conn, out_dir)
    done = {"inserted": 0, "updated": 0, "deleted": 0}
    done |= {op: int(n) for op, n in rows}
    return done


def read_truth(out_dir: Path) -> list[dict[str, str]]:
    """The ground truth as written by ``generate``/``apply_delta``."""
    with (Path(out_dir) / TRUTH_FILE).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def cli_generate(workdir: Path, *, scale: float, seed: int, delta: bool, console: Any) -> None:
    """``ferry demo-data``: run the generator (or the delta) on the embedded cluster.

    The databases ``legacy`` and ``target`` and the files live in ``workdir``; a new world
    replaces the previous one, the delta changes the existing one.
    """
    from rich.table import Table

    from ferry.embedded import running

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with running(workdir) as cluster:
        if delta:
            source = cluster.create_database("legacy")
            changes = apply_delta(source, workdir, scale=scale, seed=seed)
        else:
            source = cluster.create_database("legacy", drop=True)
            target = cluster.create_database("target", drop=True)
            counts = generate(source, target, workdir, scale=scale, seed=seed)
    elapsed = time.perf_counter() - started
    truth = Counter(row["source_table"] for row in read_truth(workdir))

    if delta:
        console.print(f"delta applied to the demo world of scale {scale:g}, seed {seed}")
        table = Table()
        table.add_column("change")
        table.add_column("rows", justify="right")
        for op, n in changes.items():
            table.add_row(op, f"{n:,}")
        console.print(table)
    else:
        table = Table(title=f"demo world (scale {scale:g}, seed {seed})")
        table.add_column("source")
        table.add_column("rows", justify="right")
        table.add_column("planted", justify="right")
        for name, n in counts.items():
            table.add_row(name, f"{n:,}", f"{truth.get(name, 0):,}")
        table.add_row("total", f"{sum(counts.values()):,}", f"{sum(truth.values()):,}",
                      style="bold")  # fmt: skip
        console.print(table)
        console.print(f"target-only rows in target: {sum(TARGET_ONLY.values())}")
    console.print(f"ground truth: {sum(truth.values()):,} rows in {workdir / TRUTH_FILE}")
    console.print(f"done in {elapsed:.1f} s; databases 'legacy' and 'target' in {workdir}")
