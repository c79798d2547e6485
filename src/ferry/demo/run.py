"""``ferry demo``: build the dispatch world, migrate it, report, and check every planted fate.

Everything lives in one work directory (cluster, CSV exports, ground truth, reports), so a
demo can be inspected afterwards and continued with ``--delta``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich.console import Console

from ferry import ledger
from ferry.embedded import LocalCluster, running
from ferry.engine.pipeline import Progress, RunResult, migrate
from ferry.ops import report, verify
from ferry.spec import Spec, load_spec
from ferry.sync.loop import SyncResult

MIGRATOR = "migrator"  # the target.sql role: owns the target tables, is not a superuser


def spec_path() -> Path:
    return Path(str(resources.files("ferry.demo.dispatch").joinpath("spec.toml")))


def dispatch_spec() -> Spec:
    return load_spec(spec_path())


@dataclass
class DemoResult:
    run: RunResult
    verify: verify.VerifyReport
    reports: list[Path]


def connections(cluster: LocalCluster) -> tuple[str, str]:
    """Source as the cluster superuser (read only in practice), target as the owner role."""
    return cluster.conninfo("legacy"), cluster.conninfo("target", user=MIGRATOR)


def write_reports(target: str, spec: Spec, workdir: Path) -> list[Path]:
    data = report.collect(target, spec)
    out = []
    for fmt in ("md", "html", "json"):
        path = workdir / f"report.{fmt}"
        path.write_text(report.render(data, fmt))  # type: ignore[arg-type]
        out.append(path)
    return out


def run_demo(
    workdir: Path, *, scale: float, seed: int, jobs: int, console: Console,
    progress: Progress | None = None,
) -> DemoResult:  # fmt: skip
    """Generate the world afresh, migrate it, write the reports, verify against the truth."""
    from ferry.demo import world

    workdir.mkdir(parents=True, exist_ok=True)
    spec = dispatch_spec()
    with running(workdir) as cluster:
        source = cluster.create_database("legacy", drop=True)
        target_admin = cluster.create_database("target", drop=True)
        counts = world.generate(source, target_admin, workdir, scale=scale, seed=seed)
        console.print(
            f"demo world: {sum(counts.values()):,} legacy rows at scale {scale} (seed {seed}) "
            f"in {workdir}"
        )
        src, tgt = connections(cluster)
        result = migrate(src, tgt, spec, data_dir=workdir, jobs=jobs, progress=progress)
        paths = write_reports(tgt, spec, workdir)
        checked = verify.verify(tgt, spec, truth=workdir / "ground_truth.csv")
    return DemoResult(result, checked, paths)


@dataclass
class DeltaResult:
    sync: SyncResult
    applied: dict[str, int]
    verify: verify.VerifyReport
    reports: list[Path]
    counts: dict[str, ledger.SourceCounts]


def run_delta(
    workdir: Path, *, jobs: int, console: Console, progress: Progress | None = None
) -> DeltaResult:
    """Apply one day of the legacy app to the demo's legacy database, sync, report, verify."""
    import psycopg

    from ferry.demo import world
    from ferry.errors import FerryError
    from ferry.sync.loop import sync

    if not (workdir / "pgdata" / "PG_VERSION").exists():
        raise FerryError(f"no demo in {workdir}: run ferry demo --workdir {workdir} first")
    spec = dispatch_spec()
    with running(workdir) as cluster:
        src, tgt = connections(cluster)
        with psycopg.connect(src) as conn:
            row = conn.execute("SELECT seed, scale FROM ferry_demo.params").fetchone()
        assert row is not None
        applied = world.apply_delta(src, workdir, scale=float(row[1]), seed=int(row[0]))
        console.print(
            "delta applied to the legacy database: "
            + ", ".join(f"{k} {v:,}" for k, v in applied.items())
        )
        result = sync(src, tgt, spec, data_dir=workdir, jobs=jobs, progress=progress)
        paths = write_reports(tgt, spec, workdir)
        checked = verify.verify(tgt, spec, truth=workdir / "ground_truth.csv")
        with psycopg.connect(tgt) as conn:
            counts = ledger.source_counts(conn, spec)
    return DeltaResult(result, applied, checked, paths, counts)
