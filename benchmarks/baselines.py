"""The yardsticks ferry's migrate is measured against, run on the same legacy database.

Why baselines at all: "ferry migrates SF=1 in N seconds" means nothing on its own. Next to
the physical limit of the machine (a raw binary COPY pipe, no transformation) and next to the
tools people would reach for instead (pgcopydb, pgloader: plain copies, no transformation, no
ledger), it says how much ferry's transformation, bookkeeping and verification cost.

Also here: :func:`run_measured`, which runs any step (ferry's or a tool's) as a child process
and reads that child's own peak RSS from ``wait4`` -- so a figure is the step's process and not
the benchmark driver, which holds the rich tables and the copy pipe.

Health data rule: the tools' output goes to log files in the work directory, never to the
terminal: pgloader, for one, quotes rows in its error messages.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ferry.demo.world import LEGACY_TABLES
from ferry.embedded import SUPERUSER, LocalCluster
from ferry.engine.stage import relay

TOOLS: tuple[str, ...] = ("pgcopydb", "pgloader")
#: A tool that runs longer than this is stopped and recorded as failed, not waited on forever.
TOOL_TIMEOUT_S = 3600.0


def _proc_stat() -> list[int] | None:
    """The machine's CPU ticks since boot, as ``/proc/stat`` counts them; Linux only."""
    try:
        return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    except OSError:
        return None


def busy_cpu_seconds() -> float | None:
    """CPU seconds the machine has spent busy (not idle, waiting or stolen).

    Why the machine's and not the tool's own: most of a copy's work is done by the server's
    processes on its behalf, and the server serves only the step being measured.
    """
    ticks = _proc_stat()
    if ticks is None:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = ticks
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def system_cpu_seconds() -> float | None:
    """Of ``busy_cpu_seconds``, the kernel's (``system``). Why apart: on this machine (a VM
    whose host takes back the memory the guest frees) the same migrate spent 32 to 122 s
    there while its user time stayed the same (docs/performance.md)."""
    ticks = _proc_stat()
    return None if ticks is None else ticks[2] / os.sysconf("SC_CLK_TCK")


def cpu_since(
    before: float | None, now: Callable[[], float | None] = busy_cpu_seconds
) -> float | None:
    """``now()`` (``busy_cpu_seconds`` or ``system_cpu_seconds``) less ``before``."""
    after = now()
    return None if before is None or after is None else after - before


@dataclass
class Measured:
    """One child process: how it ended, how long it took, its peak RSS, what it printed, and
    the CPU seconds the machine spent meanwhile."""

    returncode: int
    seconds: float
    peak_rss_mb: float
    stdout: bytes
    timed_out: bool = False
    machine_cpu_s: float | None = None
    machine_system_s: float | None = None


def run_measured(
    cmd: Sequence[str],
    *,
    log: Path,
    stdin: bytes | None = None,
    capture: bool = False,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> Measured:
    """Run ``cmd`` and return its wall time and its peak RSS as the kernel accounted it.

    Why ``os.wait4`` and not ``getrusage(RUSAGE_CHILDREN)``: the latter is the maximum over
    every child the driver ever waited for (pgloader's would mask ferry's); ``wait4`` gives
    this child's own figure (for a tool that forks, the largest of its processes).
    stderr (and stdout unless ``capture``) go to ``log``.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as logf:
        started, cpu, kernel = time.perf_counter(), busy_cpu_seconds(), system_cpu_seconds()
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else logf,
            stderr=logf,
            env=env,
            cwd=cwd,
        )
        timed_out = threading.Event()

        def _kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout, _kill) if timeout else None
        if timer:
            timer.start()
        try:
            if stdin is not None and proc.stdin is not None:
                proc.stdin.write(stdin)
                proc.stdin.close()
            out = proc.stdout.read() if capture and proc.stdout is not None else b""
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            if timer:
                timer.cancel()
        seconds, machine_cpu_s = time.perf_counter() - started, cpu_since(cpu)
        machine_system_s = cpu_since(kernel, system_cpu_seconds)
        # Reaped here, so Popen must not wait for it again.
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.stdout is not None:
            proc.stdout.close()
    return Measured(
        proc.returncode, seconds, usage.ru_maxrss / 1024, out, timed_out.is_set(), machine_cpu_s,
        machine_system_s,
    )  # fmt: skip


# --- tools ---------------------------------------------------------------------------------


def tool_versions() -> dict[str, str | None]:
    """The first line each tool prints for --version (None when it is not installed)."""
    out: dict[str, str | None] = {}
    for tool in TOOLS:
        path = shutil.which(tool)
        if path is None:
            out[tool] = None
            continue
        done = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
        text = (done.stdout or done.stderr).strip().splitlines()
        out[tool] = text[0] if text else "unknown version"
    return out


def ensure_tools(install: bool, log: Path) -> dict[str, str]:
    """Install the missing tools from Debian's packages when allowed; return tool -> why missing.

    Why apt and not a download: the brief wants the versions a Debian machine would have, and
    nothing fetched from elsewhere. Installing needs root and apt-get; otherwise the tool is
    reported missing and its figures are null.
    """
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not missing:
        return {}
    if not install:
        return {t: f"{t} is not installed (--quick does not install it)" for t in missing}
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        why = "no apt-get on this machine" if apt is None else "not root, cannot apt-get install"
        return {t: f"{t} is not installed and {why}" for t in missing}
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as logf:
        subprocess.run([apt, "update", "-qq"], stdout=logf, stderr=logf, env=env, check=False)
        subprocess.run(
            [apt, "install", "-y", "-qq", *missing], stdout=logf, stderr=logf, env=env, check=False
        )
    return {
        t: f"{t} is missing: apt-get install failed (see {log})"
        for t in missing
        if shutil.which(t) is None
    }


# --- shared helpers ------------------------------------------------------------------------


@dataclass
class BaselineResult:
    """One baseline's figures; ``seconds`` None means it did not run, and ``note`` says why."""

    name: str
    seconds: float | None = None
    rows: int | None = None
    peak_rss_mb: float | None = None
    note: str | None = None
    machine_cpu_s: float | None = None


def uri(cluster: LocalCluster, dbname: str) -> str:
    """A URI for the tools (they take URIs); the local cluster trusts, so no password in it."""
    return f"postgresql://{SUPERUSER}@127.0.0.1:{cluster.port}/{dbname}"


def count_rows(conninfo: str, tables: Sequence[str] = LEGACY_TABLES) -> int:
    """Exact rows in ``tables`` of schema public: what a copy actually delivered."""
    total = 0
    with psycopg.connect(conninfo) as conn:
        for table in tables:
            exists = conn.execute("SELECT to_regclass(%s)", [f"public.{table}"]).fetchone()
            if not exists or exists[0] is None:
                continue
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))
            ).fetchone()
            total += int(row[0]) if row else 0
    return total


def legacy_table_ddl() -> str:
    """The legacy tables exactly as the generator declares them, without keys or indexes.

    Why the generator's own script: a binary COPY needs identical column types on both ends,
    and the "tables" step of legacy.sql is that definition, with the constraints in a later
    step that the physical-limit baseline must leave out.
    """
    text = resources.files("ferry.demo.dispatch").joinpath("legacy.sql").read_text("utf-8")
    match = re.search(r"^-- @step tables\s*$(.*?)^-- @step constraints", text, re.M | re.S)
    if match is None:
        raise RuntimeError("legacy.sql has no 'tables' step before 'constraints'")
    return match.group(1)


def _table_sizes(conninfo: str) -> list[str]:
    """Legacy tables, largest first, so that two streams finish close together."""
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT t, pg_total_relation_size(format('public.%%I', t)::regclass)"
            " FROM unnest(%s::text[]) t",
            [list(LEGACY_TABLES)],
        ).fetchall()
    return [t for t, _size in sorted(rows, key=lambda r: -int(r[1]))]


# --- (1) the raw binary COPY pipe ----------------------------------------------------------


def copy_pipe(cluster: LocalCluster, source: str, dbname: str, jobs: int = 2) -> BaselineResult:
    """COPY every legacy table out in binary and straight into a bare copy: the physical limit.

    No transformation, no keys, no indexes, ``jobs`` tables in flight at a time; bytes pass
    through Python untouched, a megabyte at a time, by the relay ferry's stage uses.
    """
    target = cluster.create_database(dbname, drop=True)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(legacy_table_ddl().encode())  # type: ignore[call-overload]
    tables = _table_sizes(source)

    def one(table: str) -> None:
        name = sql.Identifier("public", table)
        with psycopg.connect(source) as s, psycopg.connect(target) as t:
            with (
                s.cursor().copy(
                    sql.SQL("COPY (SELECT * FROM {}) TO STDOUT (FORMAT BINARY)").format(name)
                ) as out,
                t.cursor() as tcur,
                tcur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(name)) as into,
            ):
                relay(out, into)
            t.commit()

    started, cpu = time.perf_counter(), busy_cpu_seconds()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, tables))
    seconds, machine_cpu_s = time.perf_counter() - started, cpu_since(cpu)
    note = "runs inside the benchmark driver (threads), so it has no peak RSS of its own"
    return BaselineResult("copy_pipe", seconds, count_rows(target), None, note, machine_cpu_s)


# --- (2) pgcopydb clone --------------------------------------------------------------------


def _log_reason(log: Path, patterns: dict[str, str]) -> str | None:
    """A known cause found in a tool's log, in our own words (the log itself may quote rows)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    for pattern, reason in patterns.items():
        if re.search(pattern, text, re.I):
            return reason
    return None


def _failure(what: str, done: Measured, why: str, log: Path) -> str:
    """Why a tool's figures are null, for the JSON and the terminal (no log lines quoted)."""
    timed_out = f", stopped after {TOOL_TIMEOUT_S:.0f} s" if done.timed_out else ""
    return f"{what} failed (exit {done.returncode}{timed_out}): {why}; log: {log}"


_PGCOPYDB_CAUSES = {
    r"wal_level": "pgcopydb wants wal_level=logical on the source (the bench cluster is minimal)",
    r"pg_dump.*not found|could not find .*pg_dump": "pgcopydb cannot find pg_dump/pg_restore",
    r"permission denied": "pgcopydb hit a permission error",
    r"version": "pgcopydb does not support this PostgreSQL version",
}


def pgcopydb(
    cluster: LocalCluster, source_db: str, dbname: str, workdir: Path, jobs: int = 2
) -> BaselineResult:
    """``pgcopydb clone`` of the legacy tables into a fresh database (keys and indexes too).

    Flags, and why: ``--no-owner --no-acl`` (the copy is owned by the superuser; roles are not
    the point), ``--skip-extensions`` (the legacy db has none worth copying), a filter that
    keeps only the legacy tables (the generator's ``ferry_demo`` schema is not legacy data),
    ``--table-jobs/--index-jobs`` = ``jobs`` like ferry; no ``--follow``, so no logical
    decoding and no wal_level=logical.
    """
    exe = shutil.which("pgcopydb")
    if exe is None:
        return BaselineResult("pgcopydb", note="pgcopydb is not installed")
    cluster.create_database(dbname, drop=True)
    work = workdir / "pgcopydb"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    filters = workdir / "pgcopydb-filters.ini"
    filters.write_text("[include-only-table]\n" + "".join(f"public.{t}\n" for t in LEGACY_TABLES))
    log = workdir / "pgcopydb.log"
    bindir = str(cluster.bindir)
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
        "PGCOPYDB_PG_BIN": bindir,
    }
    cmd = [
        exe,
        "clone",
        "--source",
        uri(cluster, source_db),
        "--target",
        uri(cluster, dbname),
        "--dir",
        str(work / "run"),
        "--table-jobs",
        str(jobs),
        "--index-jobs",
        str(jobs),
        "--no-owner",
        "--no-acl",
        "--skip-extensions",
        "--filters",
        str(filters),
    ]
    done = run_measured(cmd, log=log, env=env, timeout=TOOL_TIMEOUT_S)
    if done.returncode != 0:
        why = _log_reason(log, _PGCOPYDB_CAUSES) or "unrecognised error"
        return BaselineResult(
            "pgcopydb",
            None,
            None,
            done.peak_rss_mb,
            _failure("pgcopydb clone", done, why, log),
        )
    rows = count_rows(cluster.conninfo(dbname))
    return BaselineResult(
        "pgcopydb",
        done.seconds,
        rows,
        done.peak_rss_mb,
        "includes its primary keys, indexes and VACUUM ANALYZE",
        done.machine_cpu_s,
    )


# --- (3) pgloader --------------------------------------------------------------------------

_PGLOADER_CAUSES = {
    r"heap exhausted": "pgloader ran out of its SBCL heap",
    r"SCRAM|authentication": "pgloader could not authenticate",
    r"does not exist": "pgloader queried a catalog object this PostgreSQL does not have",
}


def pgloader(
    cluster: LocalCluster, source_db: str, dbname: str, workdir: Path, jobs: int = 2
) -> BaselineResult:
    """pgloader from the legacy database into a fresh one: its PostgreSQL-to-PostgreSQL path.

    A load file rather than the bare two-URI command line only to keep the copy to the legacy
    tables of schema public (the bare form also drags in ``ferry_demo``) and to give it
    ``jobs`` workers like the others; no casts, no transformation. pgloader creates the
    tables, copies, then builds the indexes and keys.
    """
    exe = shutil.which("pgloader")
    if exe is None:
        return BaselineResult("pgloader", note="pgloader is not installed")
    cluster.create_database(dbname, drop=True)
    names = "|".join(re.escape(t) for t in LEGACY_TABLES)
    load = workdir / "pgloader.load"
    load.write_text(
        "LOAD DATABASE\n"
        f"  FROM {uri(cluster, source_db)}\n"
        f"  INTO {uri(cluster, dbname)}\n"
        f"  WITH include drop, create tables, create indexes, reset sequences,\n"
        f"       workers = {max(2, jobs * 2)}, concurrency = {max(1, jobs)}\n"
        f"  INCLUDING ONLY TABLE NAMES MATCHING ~/^({names})$/ IN SCHEMA 'public'\n"
        ";\n"
    )
    log = workdir / "pgloader.log"
    cmd = [exe, "--no-ssl-cert-verification", "--root-dir", str(workdir / "pgloader"), str(load)]
    done = run_measured(cmd, log=log, timeout=TOOL_TIMEOUT_S)
    if done.returncode != 0:
        why = _log_reason(log, _PGLOADER_CAUSES) or "unrecognised error"
        return BaselineResult(
            "pgloader",
            None,
            None,
            done.peak_rss_mb,
            _failure("pgloader", done, why, log),
        )
    rows = count_rows(cluster.conninfo(dbname))
    return BaselineResult(
        "pgloader",
        done.seconds,
        rows,
        done.peak_rss_mb,
        "includes creating its tables, indexes and keys",
        done.machine_cpu_s,
    )


def summary(results: Sequence[BaselineResult]) -> dict[str, Any]:
    """The baselines' JSON object: ``<name>_s``, ``<name>_rows``, ``<name>_peak_rss_mb``,
    ``<name>_machine_cpu_s``."""
    out: dict[str, Any] = {}
    for r in results:
        out[f"{r.name}_s"] = None if r.seconds is None else round(r.seconds, 3)
        out[f"{r.name}_rows"] = r.rows
        out[f"{r.name}_peak_rss_mb"] = None if r.peak_rss_mb is None else round(r.peak_rss_mb, 1)
        cpu = r.machine_cpu_s
        out[f"{r.name}_machine_cpu_s"] = None if cpu is None else round(cpu, 1)
        out[f"{r.name}_note"] = r.note
    return out
