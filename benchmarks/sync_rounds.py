"""Sync by checksums, measured in rounds: no-op, DOMAIN.md's delta (x1) and 100 times it.

    .venv/bin/python benchmarks/sync_rounds.py setup --workdir DIR [--scale 1]
    .venv/bin/python benchmarks/sync_rounds.py rounds --workdir DIR --code A=SRC --code B=SRC
        [--rounds 3] [--log-statements] [--pyspy PY_SPY]

Why: ``run.py`` builds and migrates a world for one set of figures; comparing two revisions
of sync on a shared machine needs the same world synced by both, in turn, several times.
``setup`` builds the world once, migrates it and keeps both databases as templates; each
round copies them back and runs, for each code tree in turn (alternating who goes first),
a no-op sync, the x1 delta's sync and the x100 delta's sync (``run.bulk_delta``, as
``run.py`` does, without its x10 step). Each sync runs in its own process, as in ``run.py``;
per step: wall time, the process's peak RSS and CPU seconds (``wait4``), bytes from the
source as sync counts them, and the source server's own counts (rows returned and fetched,
buffers read or hit, from ``pg_stat_database``). ``--log-statements``: the server logs every
statement with its duration (``log_min_duration_statement = 0``) into ``DIR/statements``.
Figures only: no row contents, no connection strings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import bulk_delta, new_world

from ferry.demo import world
from ferry.demo.run import MIGRATOR, spec_path
from ferry.embedded import LocalCluster, running

_CHILD = r"""
import json, sys, time
from pathlib import Path

job = json.load(sys.stdin)
from ferry.spec import load_spec

spec = load_spec(Path(job["spec"]))
if job["step"] == "migrate":
    from ferry.engine.pipeline import migrate

    r = migrate(job["source"], job["target"], spec, data_dir=Path(job["data_dir"]), jobs=2,
                defer_constraints=True)
    print(json.dumps({"seconds": r.seconds}))
else:
    from ferry.sync.loop import sync

    r = sync(job["source"], job["target"], spec, data_dir=Path(job["data_dir"]), jobs=2)
    keep = ("source_inserted", "source_updated", "source_deleted", "inserted", "updated",
            "deleted", "newly_quarantined", "conflicts")
    print(json.dumps({"seconds": r.seconds, "bytes": r.bytes_from_source,
                      "counts": {k: r.counts.get(k) for k in keep}}))
"""

SEED = 1
STEPS = ("noop", "x1", "x100")


def _admin(cluster: LocalCluster) -> psycopg.Connection:
    return psycopg.connect(cluster.conninfo("postgres"), autocommit=True)


def _copy_db(cluster: LocalCluster, src: str, dst: str) -> None:
    with _admin(cluster) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dst)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(dst), sql.Identifier(src)
            )
        )


def _child(
    cluster: LocalCluster, workdir: Path, step: str, code: str | None, pyspy: str | None,
    label: str, memray: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    job = {
        "step": step,
        "spec": str(spec_path()),
        "source": cluster.conninfo("legacy"),
        "target": cluster.conninfo("target", user=MIGRATOR),
        "data_dir": str(workdir / "world"),
    }
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = code
    cmd = [sys.executable, "-c", _CHILD]
    if pyspy:
        out = workdir / "profiles" / f"{label}.txt"
        out.parent.mkdir(exist_ok=True)
        cmd = [pyspy, "record", "-r", "200", "-f", "raw", "-o", str(out), "--", *cmd]
    if memray:  # a python with memray installed; ferry's dependencies from this venv
        out = workdir / "profiles" / f"{label}.bin"
        out.parent.mkdir(exist_ok=True)
        out.unlink(missing_ok=True)
        site = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [code, str(site)]))
        cmd = [memray, "-m", "memray", "run", "-q", "--trace-python-allocators", "-o", str(out)]
        cmd += ["-c", _CHILD]
    (workdir / "logs").mkdir(exist_ok=True)
    log = (workdir / "logs" / f"{label}.log").open("ab")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(job).encode())
    proc.stdin.close()
    text = proc.stdout.read().decode()
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{label}: exited {proc.returncode}, see {log.name}")
    out = json.loads(lines[-1])
    out.update(
        wall_s=round(seconds, 3),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
        peak_rss_mb=round(usage.ru_maxrss / 1024, 1),
    )
    return out


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _db_stats(cluster: LocalCluster, dbname: str) -> dict[str, int]:
    with _admin(cluster) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback, tup_returned, tup_fetched, blks_hit + blks_read"
            " FROM pg_stat_database WHERE datname = %s",
            [dbname],
        ).fetchone()
    assert row is not None
    return dict(zip(("xacts", "tup_returned", "tup_fetched", "blocks"), map(int, row), strict=True))


def setup(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir).resolve()
    with running(workdir / "cluster") as cluster:
        counts, gen_s = new_world(cluster, workdir / "world", args.scale, SEED)
        print(f"world SF={args.scale:g}: {sum(counts.values()):,} rows in {gen_s:.0f} s")
        m = _child(cluster, workdir, "migrate", None, None, "migrate")
        print(f"migrate: {m['wall_s']} s")
        for db in ("legacy", "target"):
            _copy_db(cluster, db, f"{db}_base")
    (workdir / "scale").write_text(str(args.scale))


def rounds(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir).resolve()
    scale = float((workdir / "scale").read_text())
    codes = [tuple(c.split("=", 1)) for c in args.code]
    out = (workdir / "rounds.jsonl").open("a")
    with running(workdir / "cluster") as cluster:
        if args.log_statements:
            with _admin(cluster) as conn:
                conn.execute("ALTER SYSTEM SET log_line_prefix = '%m [%p] %d %a '")
                conn.execute("SELECT pg_reload_conf()")
        for r in range(args.rounds):
            order = codes if r % 2 == 0 else codes[::-1]
            for name, code in order:
                for db in ("legacy", "target"):
                    _copy_db(cluster, f"{db}_base", db)
                if args.log_statements:
                    with _admin(cluster) as conn:
                        for db in ("legacy", "target"):
                            conn.execute(
                                sql.SQL(
                                    "ALTER DATABASE {} SET log_min_duration_statement = 0"
                                ).format(sql.Identifier(db))
                            )
                with _admin(cluster) as conn:
                    conn.execute("CHECKPOINT")
                os.sync()
                base: dict[str, int] = {}
                for step in STEPS:
                    if step == "x1":
                        base = world.apply_delta(
                            cluster.conninfo("legacy"), workdir / "world", scale=scale, seed=SEED
                        )
                    elif step == "x100":
                        bulk_delta(cluster.conninfo("legacy"), base, 100, SEED)
                    before = _db_stats(cluster, "legacy")
                    load = os.getloadavg()[0]
                    t0 = _now()
                    label = f"r{r}-{name}-{step}"
                    res = _child(cluster, workdir, step, code, args.pyspy, label, args.memray)
                    time.sleep(0.5)
                    after = _db_stats(cluster, "legacy")
                    res["source"] = {k: after[k] - before[k] for k in after}
                    res.update(round=r, code=name, step=step, load1=round(load, 2))
                    res.update(started=t0, ended=_now())  # UTC, as the server's log
                    print(json.dumps(res), flush=True)
                    out.write(json.dumps(res) + "\n")
                    out.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup")
    p.add_argument("--workdir", required=True)
    p.add_argument("--scale", type=float, default=1.0)
    p = sub.add_parser("rounds")
    p.add_argument("--workdir", required=True)
    p.add_argument("--code", action="append", required=True, help="NAME=SRC_DIR (PYTHONPATH)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--log-statements", action="store_true")
    p.add_argument("--pyspy", help="path of py-spy: record each sync (raw stacks)")
    p.add_argument("--memray", help="path of a python with memray: trace each sync's memory")
    args = parser.parse_args()
    setup(args) if args.command == "setup" else rounds(args)


if __name__ == "__main__":
    main()
