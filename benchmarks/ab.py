"""Two revisions of ferry migrating the demo world at the same time: which one does less work.

    .venv/bin/python benchmarks/ab.py --base REV [--rounds 3] [--scale 1] [--seed 1]
        [--jobs 2] [--workdir DIR] [--json OUT]

Why: this project's machine drifts by a third within minutes, so two revisions measured one
after the other (``run.py`` twice) cannot be told apart by less than that. Run at once, on
one cluster, they share the drift: each migrates its own copy of one target from one legacy
database, both start together (which one a moment first alternates by round), and the one
with less work finishes first. Each has about one core instead of two, so the seconds are
not ``run.py``'s; read the difference and its sign.

``--base`` is exported with ``git archive`` into the work directory; the other side is this
checkout's ``src``. Both run ``run.py``'s child (the public API, one JSON line of figures:
no row contents, no connection strings).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench

from ferry.demo import world
from ferry.demo.run import MIGRATOR, spec_path
from ferry.embedded import LocalCluster, running

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("base", "this")


def export(rev: str, into: Path) -> Path:
    """The ``src`` tree of ``rev``, as committed; returns it."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise SystemExit(f"git archive {rev} failed: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def fresh_target(cluster: LocalCluster, name: str) -> str:
    """A copy of the untouched target, for the migrator; its conninfo."""
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE ab_template").format(sql.Identifier(name))
        )
        conn.execute(
            sql.SQL("GRANT CREATE, CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(name), sql.Identifier(MIGRATOR)
            )
        )
    return cluster.conninfo(name, user=MIGRATOR)


def one_round(
    cluster: LocalCluster, srcs: dict[str, Path], data_dir: Path, jobs: int, first: str,
    logs: Path,
) -> dict[str, float]:  # fmt: skip
    """Both migrates at once; seconds of each, as measured by its own process."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    files = {}
    jobs_in = {
        side: {
            "step": "migrate",
            "spec": str(spec_path()),
            "source": cluster.conninfo("legacy"),
            "target": fresh_target(cluster, f"ab_{side}"),
            "data_dir": str(data_dir),
            "jobs": jobs,
            "defer": True,
        }
        for side in SIDES
    }
    bench.settle(cluster)
    for side in (first, *(s for s in SIDES if s != first)):
        env = {**os.environ, "PYTHONPATH": str(srcs[side])}
        files[side] = (logs / f"{side}.log").open("ab")
        procs[side] = subprocess.Popen(
            [sys.executable, "-c", bench._CHILD], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=files[side], env=env,
        )  # fmt: skip
        assert procs[side].stdin is not None
        procs[side].stdin.write(json.dumps(jobs_in[side]).encode())
        procs[side].stdin.close()
    seconds: dict[str, float] = {}
    for side, proc in procs.items():
        out = proc.stdout.read() if proc.stdout else b""
        if proc.wait() != 0:
            raise SystemExit(f"the {side} migrate exited {proc.returncode}; see {logs}")
        files[side].close()
        seconds[side] = float(json.loads(out.decode().strip().splitlines()[-1])["seconds"])
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare this checkout with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    world.plan(args.scale, args.seed)
    rows: list[dict[str, Any]] = []
    with bench.work_directory(args.workdir) as workdir:
        srcs = {"base": export(args.base, workdir / "base"), "this": ROOT / "src"}
        logs = workdir / "logs"
        logs.mkdir(exist_ok=True)
        with running(workdir / "cluster") as cluster:
            bench.new_world(cluster, workdir / "world", args.scale, args.seed)
            with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as conn:
                conn.execute("DROP DATABASE IF EXISTS ab_template")
                conn.execute("CREATE DATABASE ab_template TEMPLATE target")
            for i in range(args.rounds):
                first = SIDES[i % 2]
                started = time.strftime("%H:%M:%S")
                got = one_round(cluster, srcs, workdir / "world", args.jobs, first, logs)
                rows.append({"round": i + 1, "at": started, "first": first, **got})
                bench.console.print(
                    f"  round {i + 1}: base {got['base']:.1f} s, this {got['this']:.1f} s"
                )
    table = Table(title=f"ferry migrate at once, SF={args.scale:g}: {args.base} (base) and this")
    for col in ("round", "at", "started first", "base s", "this s", "this - base"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["round"]), r["at"], r["first"], f"{r['base']:.2f}", f"{r['this']:.2f}",
            f"{r['this'] - r['base']:+.2f}",
        )  # fmt: skip
    bench.console.print(table)
    ahead = sum(r["this"] < r["base"] for r in rows)
    mean = sum(r["this"] - r["base"] for r in rows) / len(rows) if rows else 0.0
    bench.console.print(
        f"this finished first in {ahead} of {len(rows)} rounds; mean difference {mean:+.2f} s"
    )
    if args.json:
        doc = {"base": args.base, "scale": args.scale, "jobs": args.jobs, "rounds": rows}
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
