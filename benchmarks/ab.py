"""Two revisions of ferry migrating the demo world: which one does less work.

    .venv/bin/python benchmarks/ab.py --base REV [--rounds 3] [--scale 1] [--seed 1]
        [--jobs 2] [--in-turn] [--workdir DIR] [--json OUT]

Why: this project's machine drifts by a third within minutes, so two revisions measured one
after the other (``run.py`` twice) cannot be told apart by less than that. Run at once, on
one cluster, they share the drift: each migrates its own copy of one target from one legacy
database, both start together (which one a moment first alternates by round), and the one
with less work finishes first. Each has about one core instead of two, so the seconds are
not ``run.py``'s; read the difference and its sign.

The difference understates a saving made where a run keeps both cores busy: once the side
that saved finishes that part, it goes on with fewer busy processes than the other side,
which the kernel then gives more of the machine. (A change that took 14% of the CPU work
off showed a mean of -0.4 s at once.) ``--in-turn`` runs the two one after the other
instead, in alternating order, each alone as ``run.py`` runs it, and also reports the CPU
seconds the whole machine spent on each (``/proc/stat``): wall time drifts between the two
runs of a round, the work done much less.

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

import baselines
import run as bench

from ferry.demo import world
from ferry.demo.run import MIGRATOR, spec_path
from ferry.embedded import LocalCluster, running

ROOT = Path(__file__).resolve().parents[1]


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


def drop_target(cluster: LocalCluster, name: str) -> None:
    """In turn, a side's target goes as soon as it is measured: autovacuum would otherwise
    work through its millions of new rows during the other side's run (in the first rounds
    measured, whichever side ran second was slower in 4 of 4)."""
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))


def fresh_target(cluster: LocalCluster, name: str) -> str:
    """A copy of the untouched target, for the migrator; its conninfo."""
    drop_target(cluster, name)
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE ab_template").format(sql.Identifier(name))
        )
        conn.execute(
            sql.SQL("GRANT CREATE, CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(name), sql.Identifier(MIGRATOR)
            )
        )
    return cluster.conninfo(name, user=MIGRATOR)


def _spec_of(src: Path) -> Path:
    """The dispatch spec in a side's source tree (``src``), else this checkout's."""
    own = src / "ferry" / "demo" / "dispatch" / "spec.toml"
    return own if own.exists() else spec_path()


def one_round(
    cluster: LocalCluster, srcs: dict[str, Path], data_dir: Path, jobs: int,
    order: tuple[str, ...], logs: Path,
) -> dict[str, float]:  # fmt: skip
    """The sides' migrates at once, started in ``order`` (one side: alone); seconds of each,
    as measured by its own process."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    files = {}
    jobs_in = {
        side: {
            "step": "migrate",
            # Each side's own spec: a revision reads the spec format of its day.
            "spec": str(_spec_of(srcs[side])),
            "source": cluster.conninfo("legacy"),
            "target": fresh_target(cluster, f"ab_{side}"),
            "data_dir": str(data_dir),
            "jobs": jobs,
            "defer": True,
        }
        for side in order
    }
    bench.settle(cluster)
    for side in order:
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
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="REV",
        help="another revision measured in turn with the two (to bisect a range in one run)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--in-turn", action="store_true", help="one after the other, with CPU seconds of each"
    )
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    world.plan(args.scale, args.seed)
    rows: list[dict[str, Any]] = []
    with bench.work_directory(args.workdir) as workdir:
        srcs = {"base": export(args.base, workdir / "base")}
        for rev in args.also:
            srcs[rev] = export(rev, workdir / f"also-{rev}")
        srcs["this"] = ROOT / "src"
        sides = tuple(srcs)
        if args.also and not args.in_turn:
            raise SystemExit("--also needs --in-turn")
        logs = workdir / "logs"
        logs.mkdir(exist_ok=True)
        world_dir = workdir / "world"
        with running(workdir / "cluster") as cluster:
            bench.new_world(cluster, world_dir, args.scale, args.seed)
            with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as conn:
                conn.execute("DROP DATABASE IF EXISTS ab_template")
                conn.execute("CREATE DATABASE ab_template TEMPLATE target")
            for i in range(args.rounds):
                order = sides if i % 2 == 0 else sides[::-1]
                started = time.strftime("%H:%M:%S")
                got: dict[str, Any] = {}
                if args.in_turn:
                    for side in order:
                        before = baselines.busy_cpu_seconds()
                        got |= one_round(cluster, srcs, world_dir, args.jobs, (side,), logs)
                        got[f"{side}_cpu"] = baselines.cpu_since(before)
                        drop_target(cluster, f"ab_{side}")
                else:
                    got = one_round(cluster, srcs, world_dir, args.jobs, order, logs)
                rows.append({"round": i + 1, "at": started, "first": order[0], **got})
                bench.console.print(
                    f"  round {i + 1}: "
                    + ", ".join(f"{side} {got[side]:.1f} s" for side in sides)
                    + (
                        " | cpu " + ", ".join(f"{side} {got[side + '_cpu']:.1f}" for side in sides)
                        if args.in_turn
                        else ""
                    )
                )
    how = "in turn" if args.in_turn else "at once"
    table = Table(title=f"ferry migrate {how}, SF={args.scale:g}: {args.base} (base) and this")
    cols = ["round", "at", "first", "base s", "this s", "this - base"]
    if args.in_turn:
        cols += ["base cpu s", "this cpu s", "cpu this - base"]
    for col in cols:
        table.add_column(col, justify="right")
    for r in rows:
        cells = [
            str(r["round"]), r["at"], r["first"], f"{r['base']:.2f}", f"{r['this']:.2f}",
            f"{r['this'] - r['base']:+.2f}",
        ]  # fmt: skip
        if args.in_turn:
            cells += [
                _cpu(r["base_cpu"]), _cpu(r["this_cpu"]), _cpu_diff(r["this_cpu"], r["base_cpu"])
            ]  # fmt: skip
        table.add_row(*cells)
    bench.console.print(table)
    for rev in args.also:
        wall = sum(r[rev] - r["base"] for r in rows) / len(rows)
        cpu = [r[f"{rev}_cpu"] - r["base_cpu"] for r in rows if r.get(f"{rev}_cpu") is not None]
        bench.console.print(
            f"{rev} - base: mean {wall:+.2f} s"
            + (f", {sum(cpu) / len(cpu):+.1f} CPU-s" if cpu else "")
        )
    ahead = sum(r["this"] < r["base"] for r in rows)
    mean = sum(r["this"] - r["base"] for r in rows) / len(rows) if rows else 0.0
    bench.console.print(
        f"this finished first in {ahead} of {len(rows)} rounds; mean difference {mean:+.2f} s"
    )
    if args.json:
        doc = {
            "base": args.base, "scale": args.scale, "jobs": args.jobs, "in_turn": args.in_turn,
            "rounds": rows,
        }  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _cpu_diff(this: float | None, base: float | None) -> str:
    return "-" if this is None or base is None else f"{this - base:+.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
