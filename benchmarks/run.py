"""Benchmarks side by side with the peers: ferry's migrate and sync next to plain copies.

    .venv/bin/python benchmarks/run.py [--scale 1] [--json OUT] [--workdir DIR] [--seed 1]
        [--jobs 2] [--skip-baselines] [--scaling 0.1,0.3,1] [--large] [--changes checksum,wal]
        [--quick] [--runner api|cli] [--results FILE | --no-results]

Why: a migration tool is judged against the alternatives on the same data and the same
machine. One run builds the demo world of DOMAIN.md on the embedded PostgreSQL and measures,
on that one legacy database:

* ferry: a full ``migrate`` (the non-superuser ``migrator`` role as target, ``--jobs``
  sessions); ``verify`` of it against the world's ground truth; then ``sync`` with nothing
  changed, after DOMAIN.md's delta, and after deltas 10x and 100x as large (same mix: ~75%
  inserts, ~22% updates, ~3% deletes). Every ferry step runs in its own process, so its peak
  RSS is ferry's and not this driver's.
* baselines: a raw binary COPY pipe (no transformation, no indexes: the physical limit),
  ``pgcopydb clone`` and ``pgloader`` (Debian's packages, installed with apt-get when missing
  and allowed). A tool that is missing or cannot run here is recorded as null, with the reason.
* a scaling series: migrate time against rows at several scale factors, and at each a
  no-op sync and a sync of DOMAIN.md's delta, for each change source (``--changes``: the
  checksum diff, and with ``wal`` a logical replication slot, on a cluster restarted with
  ``wal_level = logical`` for those points), with every step's peak RSS. ``--large`` adds
  SF 3 and 5 (about 8M and 13M legacy rows).

The machine is shared (2 cores here, other people's tests running): the load average is
recorded at the start, after every step and at the end, so a noisy figure can be recognised.
Nothing printed or written carries row contents or passwords (the local cluster trusts).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines

from ferry.demo import world
from ferry.demo.run import MIGRATOR, spec_path
from ferry.embedded import LocalCluster, running

DELTA_MULTIPLES: tuple[int, ...] = (1, 10, 100)
#: Where a sync learns what changed (``ferry migrate --changes``), measured in the scaling
#: series: the default, and every one ``--changes`` may name.
CHANGE_SOURCES: tuple[str, ...] = ("checksum",)
KNOWN_CHANGE_SOURCES: tuple[str, ...] = ("checksum", "wal")
#: What ``--large`` adds to the scaling series (SF 5: about 13M legacy rows).
LARGE_SCALES: tuple[float, ...] = (3.0, 5.0)
#: After a migrate with a slot, how long to wait before the timed syncs: until a
#: running-transactions record (every 15 s) is decoded past the migrate, a sync re-reads the
#: WAL written since the slot was made (``benchmarks/wal_sync.py``).
WAL_SETTLE_S = 16.0
#: Above this much memory the default scaling series also runs SF=3 (~8M legacy rows).
BIG_SCALE_MIN_MEMORY_GB = 16.0
QUICK_SCALE = 0.05
#: Exit codes of the child runner (see _CHILD).
CHILD_UNAVAILABLE = 3

# Piped (tests, CI logs), rich would wrap the tables at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 120)

# The ferry side of every measurement: a fresh interpreter that imports only what ferry itself
# needs, runs one step through the public API and prints one JSON line (figures only: no row
# contents, no connection strings). The job arrives on stdin, so no conninfo shows in ps.
_CHILD = r"""
import json, resource, sys
from pathlib import Path

job = json.load(sys.stdin)
from ferry.spec import load_spec

spec = load_spec(Path(job["spec"]))
data_dir = Path(job["data_dir"])
if job["step"] == "migrate":
    from ferry import migrate

    extra = {"changes": job["changes"]} if job.get("changes") else {}
    r = migrate(job["source"], job["target"], spec, data_dir=data_dir, jobs=job["jobs"],
                defer_constraints=job["defer"], **extra)
    out = {"seconds": r.seconds, "rows": sum(s.rows for s in r.staged),
           "bytes": sum(s.bytes for s in r.staged), "written": sum(m.written for m in r.models)}
elif job["step"] == "verify":
    from ferry.ops.verify import verify

    truth = Path(job["truth"]) if job.get("truth") else None
    r = verify(job["target"], spec, truth=truth, jobs=job["jobs"])
    out = {"seconds": r.seconds, "rows": r.checked.get("rows"), "ok": r.ok,
           "problems": len(r.problems)}
else:
    try:
        try:
            from ferry.sync.loop import sync
        except ModuleNotFoundError:  # a revision before ferry's packages (2026-12-06)
            from ferry.sync import sync
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name not in ("ferry.sync", None):
            raise
        print(json.dumps({"unavailable": "ferry.sync.loop.sync is not importable yet"}))
        sys.exit(3)
    try:
        r = sync(job["source"], job["target"], spec, data_dir=data_dir, jobs=job["jobs"])
    except NotImplementedError:
        print(json.dumps({"unavailable": "ferry.sync.loop.sync raised NotImplementedError"}))
        sys.exit(3)

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, (int, float, str, bool)) or value is None:
            return value
        if hasattr(value, "__dict__"):
            return plain(vars(value))
        return str(value)

    out = {"seconds": r.seconds, "bytes": r.bytes_from_source, "counts": plain(r.counts)}
out["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# This process's own peak: ru_maxrss (and wait4's) keeps the driver's RSS from before exec.
try:
    with open("/proc/self/status") as status:
        out["vmhwm_kb"] = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
except (OSError, StopIteration, ValueError):
    pass
print(json.dumps(out))
"""


@dataclass
class Step:
    """One ferry step as measured from outside: wall time of its process and its peak RSS.

    ``status`` is ``ok``, ``not_available`` (sync not written yet: figures null, not faked) or
    ``failed``; ``note`` says why when it is not ``ok``.
    """

    name: str
    status: str = "ok"
    seconds: float | None = None
    internal_seconds: float | None = None
    rows: int | None = None
    bytes_from_source: int | None = None
    peak_rss_mb: float | None = None
    counts: dict[str, Any] | None = None
    note: str | None = None
    machine_cpu_s: float | None = None
    machine_system_s: float | None = None  # of machine_cpu_s, the kernel's
    load1: float = field(default_factory=lambda: round(os.getloadavg()[0], 2))
    problems: int | None = None  # verify: the problems it found (0: the target checks out)


@dataclass
class Ferry:
    """How this run drives ferry: the cluster, the work directory and the runner style."""

    cluster: LocalCluster
    workdir: Path
    data_dir: Path
    jobs: int
    runner: str  # "api": python -c over ferry's API; "cli": python -m ferry.cli
    defer_constraints: bool = True

    def _conninfos(self) -> tuple[str, str]:
        return self.cluster.conninfo("legacy"), self.cluster.conninfo("target", user=MIGRATOR)

    def _cli(self, command: str) -> list[str]:
        src, tgt = self._conninfos()
        return [
            sys.executable,
            "-m",
            "ferry.cli",
            command,
            "--spec",
            str(spec_path()),
            "--source",
            src,
            "--target",
            tgt,
            "--data-dir",
            str(self.data_dir),
        ]

    def run(self, step: str, name: str, changes: str | None = None) -> Step:
        """Run ``migrate``, ``verify`` or ``sync`` in a child process and measure it.

        ``changes``: a migrate's change source (``--changes``); None for the default (a
        fresh target: the checksum diff). ``verify`` checks against the world's truth."""
        log = self.workdir / "logs" / f"{name}.log"
        if self.runner == "cli":
            return self._run_cli(step, name, log, changes)
        src, tgt = self._conninfos()
        job = {
            "step": step,
            "spec": str(spec_path()),
            "source": src,
            "target": tgt,
            "data_dir": str(self.data_dir),
            "jobs": self.jobs,
            "defer": self.defer_constraints,
            "changes": changes,
            "truth": str(self.truth),
        }
        done = baselines.run_measured(
            [sys.executable, "-c", _CHILD], log=log, stdin=json.dumps(job).encode(), capture=True
        )
        lines = done.stdout.decode(errors="replace").strip().splitlines()
        try:
            out = json.loads(lines[-1]) if lines else {}
        except json.JSONDecodeError:
            out = {}
        if done.returncode == CHILD_UNAVAILABLE and "unavailable" in out:
            return Step(name, "not_available", note=str(out["unavailable"]))
        if done.returncode != 0 or "seconds" not in out:
            return Step(
                name,
                "failed",
                peak_rss_mb=done.peak_rss_mb,
                note=f"ferry {step} exited {done.returncode}; see {log}",
            )
        # The child's own high-water mark where it could read it: the kernel's maxrss of a
        # child starts at its parent's RSS (the fork), so wait4 never reports below this
        # driver's size (~58 MB), however little ferry used.
        hwm = out.get("vmhwm_kb")
        return Step(
            name,
            seconds=done.seconds,
            internal_seconds=float(out["seconds"]),
            rows=out.get("rows"),
            bytes_from_source=out.get("bytes"),
            peak_rss_mb=hwm / 1024 if hwm else done.peak_rss_mb,
            counts=out.get("counts"),
            machine_cpu_s=done.machine_cpu_s,
            machine_system_s=done.machine_system_s,
            problems=out.get("problems"),
        )

    @property
    def truth(self) -> Path:
        """The world's ground truth (``world.generate`` and ``apply_delta`` write it)."""
        return self.data_dir / "ground_truth.csv"

    def _run_cli(self, step: str, name: str, log: Path, changes: str | None = None) -> Step:
        """The ``ferry migrate|sync --spec --source --target --data-dir`` shape, and
        ``ferry verify --spec --target --truth``.

        The CLI prints no machine-readable figures, so rows and bytes stay null here (and
        a verify's problems are only known as its exit status).
        """
        if step == "sync":
            probe = subprocess.run(
                [sys.executable, "-m", "ferry.cli", "sync", "--help"],
                capture_output=True,
                check=False,
            )
            if probe.returncode != 0:
                return Step(name, "not_available", note="the CLI has no 'sync' command yet")
        if step == "verify":
            _, tgt = self._conninfos()
            cmd = [sys.executable, "-m", "ferry.cli", "verify", "--spec", str(spec_path()),
                   "--target", tgt, "--truth", str(self.truth)]  # fmt: skip
        else:
            cmd = [*self._cli(step), "--jobs", str(self.jobs)]
        if step == "migrate" and not self.defer_constraints:
            cmd.append("--keep-constraints")
        if step == "migrate" and changes:
            cmd += ["--changes", changes]
        done = baselines.run_measured(cmd, log=log)
        if done.returncode != 0:
            return Step(
                name,
                "failed",
                peak_rss_mb=done.peak_rss_mb,
                note=f"ferry {step} exited {done.returncode}; see {log}",
            )
        return Step(
            name,
            seconds=done.seconds,
            peak_rss_mb=done.peak_rss_mb,
            machine_cpu_s=done.machine_cpu_s,
            machine_system_s=done.machine_system_s,
        )


# --- deltas larger than DOMAIN.md's -------------------------------------------------------

# Rows the bulk delta may touch: those the ground truth does not name (no planted defect, no
# cascade), so that a bigger delta adds load, not new kinds of defect.
_CLEAN = (
    "NOT EXISTS (SELECT 1 FROM ferry_demo.truth t WHERE t.source_table = '{table}'"
    " AND t.source_key = {alias}.id::text)"
)
_SETUP = [
    f"CREATE TEMP TABLE b_{name} ON COMMIT DROP AS SELECT row_number() OVER (ORDER BY x.id) AS n,"
    f" x.id{extra} FROM {table} x WHERE x.id < 1000000000 AND "
    + _CLEAN.format(table=table, alias="x")
    for name, table, extra in (
        ("case", "dispatch_instance", ", x.doctor_id"),
        ("instr", "dispatch_instruction", ""),
        ("user", "auth_user", ""),
        ("template", "dispatch_template", ""),
    )
]
_MAX = "(SELECT coalesce(max(id), 0) AS mx FROM {table} WHERE id < 1000000000) m"
_PICK = "JOIN {pool} p ON p.n = 1 + ferry_demo.h(%(seed)s, %(tag)s + {salt}, k) %% {count}"

#: (op, table, statement): each returns the number of rows it changed. Parameters: n (rows),
#: seed, tag (distinct per delta multiple, so successive deltas touch different rows).
_BULK: list[tuple[str, str, str]] = [
    # Updates and deletes first: they then cannot land on rows this same delta inserts
    # (an insert then update, or insert then delete, is one change or none to a sync).
    # Read flags flipped on clean notifications spread over the whole id range, as a day of
    # users reading old and new messages would: the worst case for a range diff.
    (
        "updated",
        "dispatch_notification",
        f"""
WITH cand AS (
  SELECT DISTINCT ON (id) g, id FROM (
    SELECT g, 1 + ((g - 1) * m.mx) / (2 * %(n)s)
              + ferry_demo.h(%(seed)s, %(tag)s + 7, g) %% greatest(m.mx / (2 * %(n)s), 1) AS id
    FROM {_MAX.format(table="dispatch_notification")}
    CROSS JOIN generate_series(1, 2 * %(n)s) g) s
  ORDER BY id, g
), pick AS (
  SELECT c.id FROM cand c JOIN dispatch_notification x ON x.id = c.id
  WHERE {_CLEAN.format(table="dispatch_notification", alias="c")}
  ORDER BY ferry_demo.h(%(seed)s, %(tag)s + 8, c.g), c.g
  LIMIT %(n)s
), u AS (
  UPDATE dispatch_notification x SET read = NOT x.read FROM pick WHERE x.id = pick.id
  RETURNING 1)
SELECT count(*) FROM u""",
    ),
    (
        "updated",
        "dispatch_instruction",
        """
WITH pick AS (
  SELECT id FROM b_instr ORDER BY ferry_demo.h(%(seed)s, %(tag)s + 9, id), id LIMIT %(n)s
), u AS (
  UPDATE dispatch_instruction i
  SET notes = i.notes || ' (revised)', updated_at = i.updated_at + interval '1 day'
  FROM pick WHERE i.id = pick.id
  RETURNING 1)
SELECT count(*) FROM u""",
    ),
    # Deletes: clean leaves nothing refers to (no attachment names them; comments and system
    # messages are never treatment plans).
    (
        "deleted",
        "dispatch_record",
        f"""
WITH pick AS (
  SELECT r.id FROM dispatch_record r
  WHERE r.kind IN ('comment', 'system') AND r.id < 1000000000
    AND NOT EXISTS (SELECT 1 FROM ferry_demo.record_attachments_csv a WHERE a.record_id = r.id)
    AND {_CLEAN.format(table="dispatch_record", alias="r")}
  ORDER BY ferry_demo.h(%(seed)s, %(tag)s + 10, r.id), r.id
  LIMIT %(n)s
), u AS (DELETE FROM dispatch_record r USING pick WHERE r.id = pick.id RETURNING 1)
SELECT count(*) FROM u""",
    ),
    (
        "deleted",
        "dispatch_file",
        f"""
WITH pick AS (
  SELECT f.id FROM dispatch_file f
  WHERE f.id < 1000000000
    AND NOT EXISTS (SELECT 1 FROM ferry_demo.record_attachments_csv a WHERE a.file_id = f.id)
    AND {_CLEAN.format(table="dispatch_file", alias="f")}
  ORDER BY ferry_demo.h(%(seed)s, %(tag)s + 11, f.id), f.id
  LIMIT %(n)s
), u AS (DELETE FROM dispatch_file f USING pick WHERE f.id = pick.id RETURNING 1)
SELECT count(*) FROM u""",
    ),
    (
        "inserted",
        "dispatch_notification",
        f"""
WITH u AS (
  INSERT INTO dispatch_notification (id, recipient_id, actor_id, verb, template_id,
                                     template_context, read, created)
  SELECT m.mx + k, p.id, NULL, 'commented', t.id,
         '{{"case_id": ' || k || ', "verb": "commented", "seen_by": 0}}', false,
         timestamp '2025-10-20 00:00:00' + k * interval '1 second'
  FROM {_MAX.format(table="dispatch_notification")}
  CROSS JOIN generate_series(1, %(n)s) k
  {_PICK.format(pool="b_user", salt=1, count="(SELECT count(*) FROM b_user)")}
  JOIN b_template t
    ON t.n = 1 + ferry_demo.h(%(seed)s, %(tag)s + 2, k) %% (SELECT count(*) FROM b_template)
  RETURNING 1)
SELECT count(*) FROM u""",
    ),
    (
        "inserted",
        "dispatch_record",
        f"""
WITH u AS (
  INSERT INTO dispatch_record (id, instance_id, instruction_id, author_id, kind, text,
                               treatment_plan_id, created_at, updated_at)
  SELECT m.mx + k, p.id, NULL, CASE WHEN k %% 3 = 0 THEN NULL ELSE p.doctor_id END,
         CASE WHEN k %% 3 = 0 THEN 'system' ELSE 'comment' END,
         CASE WHEN k %% 3 = 0 THEN 'Files received.' ELSE 'Follow-up after review.' END, NULL,
         timestamp '2025-10-20 00:00:00' + k * interval '1 second',
         timestamp '2025-10-20 00:00:00' + k * interval '1 second'
  FROM {_MAX.format(table="dispatch_record")}
  CROSS JOIN generate_series(1, %(n)s) k
  {_PICK.format(pool="b_case", salt=3, count="(SELECT count(*) FROM b_case)")}
  RETURNING 1)
SELECT count(*) FROM u""",
    ),
    (
        "inserted",
        "dispatch_file",
        f"""
WITH u AS (
  INSERT INTO dispatch_file (id, instruction_id, name, path, content_type, size, created_at)
  SELECT m.mx + k, p.id, 'scan_bulk_' || k || '.stl', 'uploads/bulk/' || (m.mx + k) || '.stl',
         'model/stl', 100000 + ferry_demo.h(%(seed)s, %(tag)s + 4, k) %% 10000000,
         timestamp '2025-10-20 00:00:00' + k * interval '1 second'
  FROM {_MAX.format(table="dispatch_file")}
  CROSS JOIN generate_series(1, %(n)s) k
  {_PICK.format(pool="b_instr", salt=5, count="(SELECT count(*) FROM b_instr)")}
  RETURNING 1)
SELECT count(*) FROM u""",
    ),
    (
        "inserted",
        "dispatch_state",
        f"""
WITH u AS (
  INSERT INTO dispatch_state (id, instance_id, instruction_id, status, note, created_at)
  SELECT m.mx + k, p.id, NULL, 'active', 'automatic',
         timestamp '2025-10-20 00:00:00' + k * interval '1 second'
  FROM {_MAX.format(table="dispatch_state")}
  CROSS JOIN generate_series(1, %(n)s) k
  {_PICK.format(pool="b_case", salt=6, count="(SELECT count(*) FROM b_case)")}
  RETURNING 1)
SELECT count(*) FROM u""",
    ),
]

#: How DOMAIN.md's delta splits each kind of change over the tables (673 inserts: 520
#: notifications, 70 records, 60 files, 20 states (+3 parents); ~200 updates: 150 notifications
#: read, the rest instructions and payments; ~25 deletes: records and files).
_SHARES: dict[tuple[str, str], float] = {
    ("inserted", "dispatch_notification"): 0.77,
    ("inserted", "dispatch_record"): 0.11,
    ("inserted", "dispatch_file"): 0.09,
    ("inserted", "dispatch_state"): 0.03,
    ("updated", "dispatch_notification"): 0.75,
    ("updated", "dispatch_instruction"): 0.25,
    ("deleted", "dispatch_record"): 0.5,
    ("deleted", "dispatch_file"): 0.5,
}


def bulk_delta(source: str, base: dict[str, int], multiple: int, seed: int) -> dict[str, int]:
    """Apply ``multiple`` times the changes of DOMAIN.md's delta (``base``) to the legacy db.

    Why not ``apply_delta`` again: it refuses a second application (its ground truth would
    no longer hold). This one keeps the same mix and the same kinds of change, set-based, on
    clean rows only, and leaves the ground truth alone (the benchmark does not verify).
    Returns the rows changed per op.
    """
    done = {"inserted": 0, "updated": 0, "deleted": 0}
    with psycopg.connect(source) as conn, conn.transaction():
        conn.execute("SET LOCAL work_mem = '256MB'")
        for statement in _SETUP:
            conn.execute(statement)  # type: ignore[arg-type]
        for i, (op, table, statement) in enumerate(_BULK):
            n = round(base.get(op, 0) * multiple * _SHARES[(op, table)])
            if n <= 0:
                continue
            params = {"n": n, "seed": seed, "tag": 3000 + 100 * multiple + 10 * i}
            row = conn.execute(statement, params).fetchone()  # type: ignore[arg-type]
            done[op] += int(row[0]) if row else 0
        for table in (
            "dispatch_notification",
            "dispatch_record",
            "dispatch_file",
            "dispatch_state",
        ):
            conn.execute(
                sql.SQL(
                    "SELECT setval(pg_get_serial_sequence(%s, 'id'),"
                    " (SELECT coalesce(max(id), 1) FROM {} WHERE id < 1000000000))"
                ).format(sql.Identifier(table)),
                [table],
            )
    with psycopg.connect(source, autocommit=True) as conn:
        for table in (
            "dispatch_notification",
            "dispatch_record",
            "dispatch_file",
            "dispatch_state",
            "dispatch_instruction",
        ):
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    return done


# --- the machine --------------------------------------------------------------------------


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def memory_gb() -> float | None:
    """Total memory, from /proc/meminfo (Linux); None elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def compile_bytecode() -> bool:
    """Compile ferry's modules to bytecode, as pip does when it installs a package. Where
    ``PYTHONDONTWRITEBYTECODE`` is set (on the project's machine it is), an editable install
    never gets any, and every ferry process compiled its modules from source again: 60 ms of
    each sync's process, which a user's installed ferry does not spend."""
    import compileall

    import ferry

    return bool(compileall.compile_dir(Path(ferry.__file__).parent, quiet=1))


def machine_info(cluster: LocalCluster) -> dict[str, Any]:
    """What a reader needs to compare this run with another one."""
    with psycopg.connect(cluster.conninfo("postgres")) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": memory_gb(),
        "postgres_version": row[0] if row else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": _load(),
        "tools": baselines.tool_versions(),
    }


# --- the run -------------------------------------------------------------------------------


def parse_scales(text: str) -> list[float]:
    """``"0.1,0.3,1"`` -> ``[0.1, 0.3, 1.0]``; refuses anything the generator would refuse."""
    scales = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        value = float(part)
        world.plan(value, 0)  # raises DemoError on a bad scale
        scales.append(value)
    return scales


def default_scales(scale: float, quick: bool) -> list[float]:
    """0.1, 0.3, 1 (+3 with enough memory for it), or just the main scale for --quick."""
    if quick:
        return [scale]
    scales = [0.1, 0.3, 1.0]
    mem = memory_gb() or 0.0
    if mem >= BIG_SCALE_MIN_MEMORY_GB and scale >= 1:
        scales.append(3.0)
    return scales


@contextmanager
def work_directory(path: Path | None) -> Iterator[Path]:
    """The given directory (kept afterwards, for inspection) or a temporary one (removed)."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="ferry-bench-") as tmp:
        yield Path(tmp)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def new_world(
    cluster: LocalCluster, data_dir: Path, scale: float, seed: int
) -> tuple[dict[str, int], float]:
    """A fresh legacy database and target schema at ``scale``; rows per source and seconds."""
    _drop_slots(cluster)
    source = cluster.create_database("legacy", drop=True)
    target_admin = cluster.create_database("target", drop=True)
    started = time.perf_counter()
    counts = world.generate(source, target_admin, data_dir, scale=scale, seed=seed)
    seconds = time.perf_counter() - started
    settle(cluster)
    return counts, seconds


def settle(cluster: LocalCluster) -> None:
    """Flush the dirty pages the step before left, untimed, to the server's files and from
    the kernel's cache to disk: the next step timed would otherwise pay for writing them
    (the world generator vacuums the legacy database itself). With ``fsync = off`` a
    checkpoint leaves them to the kernel, which writes them back while the next tool runs."""
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    os.sync()


def say(step: Step) -> None:
    """One line per ferry step as it finishes, so a long run shows where it is."""
    if step.status == "ok":
        console.print(
            f"  {step.name}: {step.seconds:.1f} s, peak RSS {step.peak_rss_mb:.0f} MB,"
            f" machine CPU {_fmt(step.machine_cpu_s, '.1f')} s (kernel"
            f" {_fmt(step.machine_system_s, '.1f')}, load {step.load1:.2f})"
        )
    else:
        colour = "yellow" if step.status == "not_available" else "red"
        console.print(f"  [{colour}]{step.name}: {step.status}[/] -- {step.note}")


def _drop_slots(cluster: LocalCluster) -> None:
    """Drop the replication slots a migrate with ``--changes wal`` made: a database that has
    one cannot be dropped, nor the cluster started again without logical decoding."""
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")


def _wal_level(cluster: LocalCluster, logical: bool) -> None:
    """Restart the cluster with logical decoding (for ``--changes wal``) or without (every
    other step: at ``wal_level = minimal`` the stage's first COPY writes no WAL)."""
    if cluster.logical == logical:
        return
    if not logical:
        _drop_slots(cluster)
    cluster.logical = logical
    cluster.start()  # stops the running server first; keeps the port
    settle(cluster)


def sync_series(
    ferry: Ferry, cluster: LocalCluster, data_dir: Path, scale: float, seed: int, source: str,
    tag: str, same: dict[str, int] | None = None,
) -> tuple[Step, dict[str, Step]]:  # fmt: skip
    """Migrate the world just built with changes from ``source``, then time a sync with
    nothing changed (``noop``) and one after DOMAIN.md's delta (``delta_x1``), which the
    world scales with it; with ``same`` (the main scale's delta), one more after that many
    changes (``delta_same``): the same day's work on a larger or smaller database.

    With a slot, two syncs first, untimed, ``WAL_SETTLE_S`` apart: the timed no-op is then
    that of a slot past the migrate, as it is minutes after one."""
    m = ferry.run("migrate", f"migrate_{tag}", changes=None if source == "checksum" else source)
    say(m)
    if m.status != "ok":
        return m, {}
    if source == "wal":
        ferry.run("sync", f"sync_settle_{tag}")
        time.sleep(WAL_SETTLE_S)
        ferry.run("sync", f"sync_settled_{tag}")
    noop = ferry.run("sync", f"sync_noop_{tag}")
    say(noop)
    series = {"noop": noop}
    if noop.status == "not_available":
        return m, series
    changed = world.apply_delta(cluster.conninfo("legacy"), data_dir, scale=scale, seed=seed)
    delta = ferry.run("sync", f"sync_delta_x1_{tag}")
    delta.rows = sum(changed.values())
    say(delta)
    series["delta_x1"] = delta
    if same and delta.status == "ok":
        changed = bulk_delta(cluster.conninfo("legacy"), same, 1, seed)
        step = ferry.run("sync", f"sync_delta_same_{tag}")
        step.rows = sum(changed.values())
        say(step)
        series["delta_same"] = step
    return m, series


# A point's timed syncs: nothing changed, its own scale's delta, the main scale's delta.
SERIES_STEPS = ("noop", "delta_x1", "delta_same")


def _series_of(sync_steps: dict[str, Step]) -> dict[str, Step]:
    """The main run's no-op and x1 syncs, as a point of the scaling series."""
    return {k: sync_steps[s] for k, s in (("noop", "noop"), ("delta_x1", "1")) if s in sync_steps}


def _series_status(migrate: Step, series: dict[str, Step]) -> str:
    """``ok``, or the worst of its steps' statuses (``failed`` over ``not_available``)."""
    statuses = {migrate.status, *(x.status for x in series.values())}
    for status in ("failed", "not_available"):
        if status in statuses:
            return status
    return "ok"


def parse_changes(text: str) -> list[str]:
    """``"checksum,wal"`` -> ``["checksum", "wal"]``; refuses a source ferry does not know."""
    sources = [part.strip() for part in text.split(",") if part.strip()]
    for source in sources:
        if source not in KNOWN_CHANGE_SOURCES:
            raise world.DemoError(
                f"change source must be one of {', '.join(KNOWN_CHANGE_SOURCES)}, got {source!r}"
            )
    if not sources:
        raise world.DemoError("--changes names no change source")
    return list(dict.fromkeys(sources))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the JSON document (also printed as tables by main)."""
    scale: float = args.scale if args.scale is not None else (QUICK_SCALE if args.quick else 1.0)
    world.plan(scale, args.seed)
    scales = parse_scales(args.scaling) if args.scaling else default_scales(scale, args.quick)
    if getattr(args, "large", False):
        scales += LARGE_SCALES
    if scale not in scales:
        scales.append(scale)
    scales = sorted(set(scales))
    changes = parse_changes(args.changes) if getattr(args, "changes", None) else CHANGE_SOURCES
    notes: list[str] = []
    started_at = dt.datetime.now(dt.UTC)

    with work_directory(args.workdir) as workdir:
        data_dir = workdir / "world"
        missing: dict[str, str] = {}
        if not args.skip_baselines:
            missing = baselines.ensure_tools(not args.quick, workdir / "logs" / "apt.log")
            for why in missing.values():
                console.print(f"[yellow]baseline skipped:[/] {why}")
                notes.append(why)
        with running(workdir / "cluster") as cluster:
            machine = machine_info(cluster)
            machine["bytecode_compiled"] = compile_bytecode()
            console.print(
                f"machine: {machine['cpu_count']} x {machine['cpu_model']}, "
                f"{machine['memory_gb']} GB, PostgreSQL {machine['postgres_version']}, "
                f"load {machine['load_average']}"
            )
            counts, gen_s = new_world(cluster, data_dir, scale, args.seed)
            world_rows = sum(counts.values())
            table_rows = sum(counts[t] for t in world.LEGACY_TABLES)
            console.print(
                f"world SF={scale:g}: {world_rows:,} rows ({table_rows:,} in "
                f"{len(world.LEGACY_TABLES)} tables) built in {gen_s:.1f} s"
            )
            ferry = Ferry(
                cluster, workdir, data_dir, args.jobs, args.runner, not args.keep_constraints
            )

            # Baselines first: they only read the legacy database, ferry's sync changes it.
            base_results: list[baselines.BaselineResult] = []
            copy_pipe_by_scale: dict[float, float] = {}
            if args.skip_baselines:
                notes.append("baselines skipped (--skip-baselines)")
            else:
                console.print("baselines:")
                r = baselines.copy_pipe(cluster, cluster.conninfo("legacy"), "copy_pipe", args.jobs)
                # Each copy goes once measured: left in place, autovacuum would work through
                # its millions of new rows while the next tool runs (between ab.py's runs in
                # turn, it slowed whichever ran second).
                _drop(cluster, "copy_pipe")
                copy_pipe_by_scale[scale] = r.seconds or 0.0
                base_results.append(r)
                for name, fn in (
                    ("pgcopydb", baselines.pgcopydb),
                    ("pgloader", baselines.pgloader),
                ):
                    if name in missing:
                        base_results.append(baselines.BaselineResult(name, note=missing[name]))
                        continue
                    base_results.append(fn(cluster, "legacy", f"{name}_copy", workdir, args.jobs))
                    _drop(cluster, f"{name}_copy")
                for r in base_results:
                    if r.seconds is None:
                        console.print(f"  [yellow]{r.name}: not measured[/] -- {r.note}")
                    else:
                        console.print(
                            f"  {r.name}: {r.seconds:.1f} s, {r.rows:,} rows, machine CPU"
                            f" {_fmt(r.machine_cpu_s, '.1f')} s (load {os.getloadavg()[0]:.2f})"
                        )

            console.print("ferry:")
            migrate = ferry.run("migrate", "migrate")
            say(migrate)
            steps: list[Step] = [migrate]
            delta_changes: dict[str, dict[str, int]] = {}
            sync_steps: dict[str, Step] = {}
            verify = Step("verify", "failed", note="not run: the migrate failed")
            if migrate.status == "ok":
                # Read-only: the syncs after it find the same target.
                verify = ferry.run("verify", "verify")
                say(verify)
                if verify.status == "ok" and verify.problems:
                    notes.append(f"verify found {verify.problems} problem(s); see logs/verify.log")
                steps.append(verify)
                noop = ferry.run("sync", "sync_noop")
                say(noop)
                steps.append(noop)
                sync_ready = noop.status != "not_available"
                if not sync_ready:
                    console.print(
                        f"[bold yellow]sync was NOT measured:[/] {noop.note}; its figures are null"
                    )
                    notes.append(f"sync not measured: {noop.note}")
                legacy = cluster.conninfo("legacy")
                base: dict[str, int] = {}
                for multiple in DELTA_MULTIPLES:
                    if multiple == 1:
                        changed = world.apply_delta(legacy, data_dir, scale=scale, seed=args.seed)
                        base = changed
                    else:
                        changed = bulk_delta(legacy, base, multiple, args.seed)
                    delta_changes[str(multiple)] = changed
                    label = f"sync_delta_x{multiple}"
                    if sync_ready:
                        step = ferry.run("sync", label)
                        step.rows = sum(changed.values())
                        say(step)
                    else:
                        step = Step(
                            label, "not_available", rows=sum(changed.values()), note=noop.note
                        )
                    sync_steps[str(multiple)] = step
                    steps.append(step)
                sync_steps["noop"] = noop
            else:
                notes.append(f"migrate failed: {migrate.note}")

            # The scaling series: the main scale's migrate (and its syncs, for the checksum
            # diff) is one of its points; every other point is a world of its own, migrated,
            # synced with nothing changed and after DOMAIN.md's delta, per change source.
            scaling: list[dict[str, Any]] = []
            for s in scales:
                point: dict[str, Any] = {"scale": s, "sync": {}}
                for source in changes:
                    main = s == scale and source == "checksum"
                    if main:
                        m, series = migrate, _series_of(sync_steps)
                        rows, pipe_s = migrate.rows or world_rows, copy_pipe_by_scale.get(s)
                    else:
                        console.print(f"scaling: SF={s:g}, changes from {source}")
                        _wal_level(cluster, source == "wal")
                        s_counts, _ = new_world(cluster, data_dir, s, args.seed)
                        pipe_s = None
                        if not args.skip_baselines and "copy_pipe_s" not in point:
                            pipe = baselines.copy_pipe(
                                cluster, cluster.conninfo("legacy"), "copy_pipe", args.jobs
                            )
                            _drop(cluster, "copy_pipe")
                            pipe_s = pipe.seconds
                        tag = f"sf{s:g}" + ("" if source == "checksum" else f"_{source}")
                        same = delta_changes.get("1") if s != scale else None
                        m, series = sync_series(
                            ferry, cluster, data_dir, s, args.seed, source, tag, same
                        )
                        rows = m.rows or sum(s_counts.values())
                        if m.status != "ok":
                            notes.append(f"scaling SF={s:g} ({source}): {m.note}")
                        for step in series.values():
                            if step.status == "failed":
                                notes.append(f"scaling SF={s:g} ({source}): {step.note}")
                    point["sync"][source] = {
                        "migrate_s": _round(m.seconds),
                        "migrate_cpu_s": _round(m.machine_cpu_s, 1),
                        "migrate_system_s": _round(m.machine_system_s, 1),
                        "migrate_peak_rss_mb": _round(m.peak_rss_mb, 1),
                        **{
                            f"{k}_s": _round(series[k].seconds) if k in series else None
                            for k in SERIES_STEPS
                        },
                        # the sync's own figure (its run record): the process less start-up
                        **{
                            f"{k}_internal_s": _round(series[k].internal_seconds)
                            if k in series
                            else None
                            for k in SERIES_STEPS
                        },
                        **{
                            f"{k}_peak_rss_mb": _round(series[k].peak_rss_mb, 1)
                            if k in series
                            else None
                            for k in SERIES_STEPS
                        },
                        "status": _series_status(m, series),
                        "note": next(
                            (x.note for x in (m, *series.values()) if x.status != "ok"), None
                        ),
                    }
                    if "migrate_s" not in point:
                        # The point's migrate is the first change source's (as before: the
                        # checksum diff's, unless --changes leaves it out).
                        point |= {
                            "rows": rows,
                            "migrate_s": _round(m.seconds),
                            "peak_rss_mb": _round(m.peak_rss_mb, 1),
                            "copy_pipe_s": _round(pipe_s),
                            "load1": m.load1,
                        }
                default = point["sync"].get(CHANGE_SOURCES[0], {})
                point["sync_noop_s"] = default.get("noop_s")
                point["sync_delta_x1_s"] = default.get("delta_x1_s")
                # The ferry process's peak RSS at this point, whatever the step.
                point["peak_rss_mb_max"] = max(
                    (
                        v
                        for figures in point["sync"].values()
                        for k, v in figures.items()
                        if k.endswith("peak_rss_mb") and v is not None
                    ),
                    default=None,
                )
                scaling.append(point)
            _wal_level(cluster, False)
        machine["load_average_end"] = _load()

    ok_ferry = [s for s in steps if s.status == "ok"]
    failed = [s.name for s in steps if s.status == "failed"]
    failed += [f"scaling SF={p['scale']:g}" for p in scaling if p["migrate_s"] is None]
    failed += [
        f"scaling SF={p['scale']:g} sync ({source})"
        for p in scaling
        for source, figures in p["sync"].items()
        if figures["status"] == "failed" and p["migrate_s"] is not None
    ]
    if verify.problems:
        failed.append(f"verify ({verify.problems} problems)")
    doc: dict[str, Any] = {
        "when": started_at.isoformat(timespec="seconds"),
        "scale": scale,
        "seed": args.seed,
        "jobs": args.jobs,
        "defer_constraints": not args.keep_constraints,
        "quick": args.quick,
        "runner": args.runner,
        "machine": machine,
        "world": {
            "rows": world_rows,
            "table_rows": table_rows,
            "csv_rows": world_rows - table_rows,
            "generate_s": round(gen_s, 3),
            "per_source": counts,
        },
        "ferry": {
            "migrate_s": _round(migrate.seconds),
            "migrate_internal_s": _round(migrate.internal_seconds),
            "migrate_rows": migrate.rows
            if migrate.rows is not None
            else (world_rows if migrate.status == "ok" else None),
            "migrate_bytes_from_source": migrate.bytes_from_source,
            # verify of the migrate against the world's ground truth: its time, its own
            # figure, and the problems it found (0 expected; null with the CLI runner)
            "verify_s": _round(verify.seconds),
            "verify_internal_s": _round(verify.internal_seconds),
            "verify_status": verify.status,
            "verify_problems": verify.problems,
            "peak_rss_mb": _round(
                max((s.peak_rss_mb for s in ok_ferry if s.peak_rss_mb is not None), default=None), 1
            ),
            "peak_rss_mb_by_step": {s.name: _round(s.peak_rss_mb, 1) for s in steps},
            "machine_cpu_s_by_step": {s.name: _round(s.machine_cpu_s, 1) for s in steps},
            "machine_system_s_by_step": {s.name: _round(s.machine_system_s, 1) for s in steps},
            "sync_status": sync_steps["noop"].status if "noop" in sync_steps else "not_run",
            "sync_note": sync_steps["noop"].note if "noop" in sync_steps else migrate.note,
            "sync_noop_s": _round(sync_steps["noop"].seconds) if "noop" in sync_steps else None,
            "sync_noop_bytes": sync_steps["noop"].bytes_from_source
            if "noop" in sync_steps
            else None,
            "sync_delta_s": {
                k: _round(sync_steps[k].seconds) if k in sync_steps else None
                for k in map(str, DELTA_MULTIPLES)
            },
            # the syncs' own figures (their run records): the process less start-up
            "sync_internal_s": {
                k: _round(s.internal_seconds) for k, s in sync_steps.items() if s.status == "ok"
            },
            "sync_delta_bytes": {
                k: sync_steps[k].bytes_from_source if k in sync_steps else None
                for k in map(str, DELTA_MULTIPLES)
            },
            "sync_delta_changes": delta_changes,
            "sync_counts": {k: s.counts for k, s in sync_steps.items()},
            "load1_by_step": {s.name: s.load1 for s in steps},
        },
        "baselines": baselines.summary(base_results)
        if base_results
        else {f"{name}_s": None for name in ("copy_pipe", "pgcopydb", "pgloader")},
        "changes": list(changes),
        "scaling": scaling,
        "notes": notes,
        "failed": failed,
    }
    doc["baselines"].setdefault("copy_pipe_note", None)
    return doc


def _drop(cluster: LocalCluster, dbname: str) -> None:
    """Free a baseline's copy at once (at SF=3 three copies would crowd the disk and cache),
    and settle, so that every tool starts from the state the first one did."""
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
    settle(cluster)


# --- output --------------------------------------------------------------------------------


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(doc: dict[str, Any]) -> None:
    """The figures as rich tables: ferry's steps, the baselines (with ferry ÷ baseline), scaling."""
    f, b, m = doc["ferry"], doc["baselines"], doc["machine"]
    table = Table(
        title=f"ferry benchmarks, SF={doc['scale']:g} (seed {doc['seed']}, "
        f"jobs {doc['jobs']}), {doc['when']}"
    )
    for col, justify in (
        ("step", "left"),
        ("seconds", "right"),
        ("rows", "right"),
        ("rows/s", "right"),
        ("MB from source", "right"),
        ("peak RSS MB", "right"),
        ("machine CPU-s", "right"),
        ("ferry ÷ this", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]

    def add(
        name: str,
        secs: float | None,
        rows: int | None,
        nbytes: int | None = None,
        rss: float | None = None,
        cpu: float | None = None,
        ratio: bool = False,
    ) -> None:
        rate = rows / secs if secs and rows is not None else None
        quotient = f["migrate_s"] / secs if ratio and secs and f["migrate_s"] else None
        table.add_row(
            name,
            _fmt(secs, ".2f"),
            _fmt(rows, ",d"),
            _fmt(rate, ",.0f"),
            _fmt(None if nbytes is None else nbytes / 1e6, ",.1f"),
            _fmt(rss, ".0f"),
            _fmt(cpu, ".1f"),
            _fmt(quotient, ".2f"),
        )

    rss, cpu = f["peak_rss_mb_by_step"], f.get("machine_cpu_s_by_step", {})
    add(
        "ferry migrate",
        f["migrate_s"],
        f["migrate_rows"],
        f["migrate_bytes_from_source"],
        rss.get("migrate"),
        cpu.get("migrate"),
    )
    add(
        "ferry verify (against the truth)",
        f.get("verify_s"),
        None,
        None,
        rss.get("verify"),
        cpu.get("verify"),
    )
    add(
        "ferry sync, no change",
        f["sync_noop_s"],
        0,
        f["sync_noop_bytes"],
        rss.get("sync_noop"),
        cpu.get("sync_noop"),
    )
    for k in map(str, DELTA_MULTIPLES):
        changes = f["sync_delta_changes"].get(k)
        add(
            f"ferry sync, delta x{k}",
            f["sync_delta_s"][k],
            sum(changes.values()) if changes else None,
            f["sync_delta_bytes"][k],
            rss.get(f"sync_delta_x{k}"),
            cpu.get(f"sync_delta_x{k}"),
        )
    for name, label in (
        ("copy_pipe", "binary COPY pipe (no indexes)"),
        ("pgcopydb", "pgcopydb clone"),
        ("pgloader", "pgloader"),
    ):
        add(
            label,
            b.get(f"{name}_s"),
            b.get(f"{name}_rows"),
            None,
            b.get(f"{name}_peak_rss_mb"),
            b.get(f"{name}_machine_cpu_s"),
            ratio=True,
        )
    console.print(table)

    series = Table(title="scaling: ferry migrate, time against rows; syncs at each scale")
    sources = doc.get("changes") or list(CHANGE_SOURCES)
    columns = ["SF", "rows", "migrate s", "rows/s", "peak RSS MB", "copy pipe s", "ferry ÷ pipe"]
    for source in sources:  # the process's seconds (the sync's own, as its run records)
        columns += [
            f"{source}: sync none s (own)",
            f"{source}: sync x1 s (own)",
            f"{source}: sync, main scale's delta s (own)",
        ]
    columns += ["peak RSS MB, any step", "load"]
    for col in columns:
        series.add_column(col, justify="right")
    for p in doc["scaling"]:
        secs, pipe = p["migrate_s"], p["copy_pipe_s"]
        syncs = []
        for source in sources:
            figures = p.get("sync", {}).get(source, {})
            for k in SERIES_STEPS:
                own = _fmt(figures.get(f"{k}_internal_s"), ".2f")
                syncs.append(f"{_fmt(figures.get(f'{k}_s'), '.2f')} ({own})")
        series.add_row(
            f"{p['scale']:g}",
            _fmt(p["rows"], ",d"),
            _fmt(secs, ".2f"),
            _fmt(p["rows"] / secs if secs else None, ",.0f"),
            _fmt(p["peak_rss_mb"], ".0f"),
            _fmt(pipe, ".2f"),
            _fmt(secs / pipe if secs and pipe else None, ".2f"),
            *syncs,
            _fmt(p.get("peak_rss_mb_max"), ".0f"),
            _fmt(p["load1"], ".2f"),
        )
    console.print(series)
    console.print(
        f"machine: {m['cpu_count']} x {m['cpu_model']}, {m['memory_gb']} GB, "
        f"PostgreSQL {m['postgres_version']}; load average at start "
        f"{m['load_average']}, at end {m['load_average_end']}"
    )
    if f["sync_status"] != "ok":
        console.print(
            f"[bold yellow]sync was NOT measured[/] ({f['sync_status']}): {f['sync_note']}"
        )
    for note in doc["notes"]:
        console.print(f"note: {note}")
    console.print(
        "ferry's rows include the two CSV sources; the baselines copy the legacy "
        "tables only. Ratios above 1 mean ferry is slower."
    )


RESULTS = Path(__file__).resolve().parent / "results.md"
RESULTS_HEADER = (
    "| when (UTC) | commit | SF | jobs | CPU | PostgreSQL | ferry migrate s | CPU-s | copy pipe s "
    "| pgcopydb s | pgloader s | CPU-s | ÷ pgloader | sync none s | sync x1 s | x10 s | x100 s "
    "| peak RSS MB | load at start |\n" + "|---" * 19 + "|\n"
)


def append_results(doc: dict[str, Any], path: Path) -> None:
    """One row per run at the end of ``path`` (its table's header first if it is new): the
    history of figures stays beside the code that made them, not in the README."""
    f, b, m = doc["ferry"], doc["baselines"], doc["machine"]
    cpu = f.get("machine_cpu_s_by_step", {})
    pgloader = b.get("pgloader_s")
    ratio = f["migrate_s"] / pgloader if f["migrate_s"] and pgloader else None
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=RESULTS.parent,
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    cells = [
        dt.datetime.fromisoformat(doc["when"]).strftime("%Y-%m-%d %H:%M"),
        f"`{commit}`",
        f"{doc['scale']:g}",
        str(doc["jobs"]),
        f"{m['cpu_count']} x {m['cpu_model']}",
        str(m["postgres_version"]),
        _fmt(f["migrate_s"], ".1f"),
        _fmt(cpu.get("migrate"), ".1f"),
        *(_fmt(b.get(f"{name}_s"), ".1f") for name in ("copy_pipe", "pgcopydb", "pgloader")),
        _fmt(b.get("pgloader_machine_cpu_s"), ".1f"),
        _fmt(ratio, ".2f"),
        _fmt(f["sync_noop_s"], ".1f"),
        *(_fmt(f["sync_delta_s"][k], ".1f") for k in map(str, DELTA_MULTIPLES)),
        _fmt(f["peak_rss_mb"], ".0f"),
        _fmt(m["load_average"][0] if m["load_average"] else None, ".2f"),
    ]
    new = not path.exists()
    with path.open("a") as out:
        if new:
            out.write("# Benchmark results\n\n" + RESULTS_HEADER)
        out.write("| " + " | ".join(c.replace("|", "/") for c in cells) + " |\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help=f"scale factor of the world (default 1; {QUICK_SCALE} with --quick)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="append a row of figures to this Markdown file (default: benchmarks/results.md, "
        "none with --quick)",
    )
    parser.add_argument("--no-results", action="store_true", help="append no row")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="cluster, world and logs (default: a temporary directory, removed)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="parallel sessions, for all")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument(
        "--keep-constraints",
        action="store_true",
        help="migrate with --keep-constraints (foreign keys checked row by row on first loads)",
    )
    parser.add_argument(
        "--scaling",
        default=None,
        help="scale factors of the scaling series, e.g. 0.1,0.3,1 (default: "
        "those, plus 3 with >= 16 GB of memory; only --scale with --quick)",
    )
    parser.add_argument(
        "--large",
        action="store_true",
        help="add SF 3 and 5 to the scaling series (about 8M and 13M legacy rows; at SF 5 "
        "the cluster takes ~17 GB of disk, and the run an hour)",
    )
    parser.add_argument(
        "--changes",
        default=None,
        help="change sources whose syncs the scaling series times, e.g. checksum,wal "
        f"(default: {','.join(CHANGE_SOURCES)}; one of {', '.join(KNOWN_CHANGE_SOURCES)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="for tests: small scale, no scaling series, no tool installs",
    )
    parser.add_argument(
        "--runner",
        choices=("api", "cli"),
        default="api",
        help="run ferry through its Python API (default) or its command line",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    try:
        if args.scaling:
            parse_scales(args.scaling)
        if args.changes:
            parse_changes(args.changes)
        doc = run(args)
    except world.DemoError as exc:
        parser.error(str(exc))
    render(doc)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    results = None if args.no_results else args.results or (None if args.quick else RESULTS)
    if results is not None:
        append_results(doc, results)
        console.print(f"appended a row to {results}")
    if doc["failed"]:
        console.print(f"[bold red]failed:[/] {', '.join(doc['failed'])}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
