"""The ``ferry`` command line. Each command is a thin shell over the public API."""

from __future__ import annotations

from pathlib import Path

import psycopg
import typer
from rich.console import Console

from ferry import conninfo
from ferry.errors import FerryError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Move a live legacy PostgreSQL database into a new schema and account for every row.",
)
console = Console(stderr=True)

SPEC = typer.Option(..., "--spec", help="The migration spec (TOML).", exists=True, dir_okay=False)
SOURCE = typer.Option(
    None, "--source", help=f"Legacy database conninfo (or ${conninfo.SOURCE_ENV})."
)
TARGET = typer.Option(
    None, "--target", help=f"Target database conninfo (or ${conninfo.TARGET_ENV})."
)
JOBS = typer.Option(2, "--jobs", min=1, help="Parallel sessions (stay below the pool size).")


def _fail(exc: Exception) -> typer.Exit:
    """The error for the operator, without row contents: a database error shows its
    condition, SQLSTATE and message with any quoted value cut out."""
    if isinstance(exc, psycopg.Error):
        from ferry.transform import condition_name, safe_message

        text = f"{condition_name(exc)} ({exc.sqlstate}): {safe_message(exc)}"
        console.print(f"[bold red]database error:[/] {text}")
    else:
        console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=2)


@app.command()
def migrate(
    spec: Path = SPEC,
    source: str | None = SOURCE,
    target: str | None = TARGET,
    data_dir: Path | None = typer.Option(
        None, help="Where CSV sources are (default: the spec's folder)."
    ),
    jobs: int = JOBS,
    defer_constraints: bool = typer.Option(
        False,
        "--defer-constraints",
        help="First loads of big tables: drop the target's foreign keys and add them back "
        "after (much faster; the application could write dangling rows meanwhile).",
    ),
) -> None:
    """Stage every source, run every model, and prove every source row has a fate."""
    from ferry.pipeline import migrate as run
    from ferry.progress import RichProgress, summary
    from ferry.spec import load_spec

    try:
        loaded = load_spec(spec)
        src = conninfo.resolve(source, conninfo.SOURCE_ENV, "source")
        tgt = conninfo.resolve(target, conninfo.TARGET_ENV, "target")
        console.print(
            f"ferry migrate [bold]{loaded.name}[/]: {conninfo.redact(src)} → {conninfo.redact(tgt)}"
        )
        with RichProgress(console) as progress:
            result = run(
                src, tgt, loaded, data_dir=data_dir, jobs=jobs, progress=progress,
                defer_constraints=defer_constraints,
            )  # fmt: skip
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    console.print(summary(result.counts, result.seconds))


@app.command()
def sync(
    spec: Path = SPEC,
    source: str | None = SOURCE,
    target: str | None = TARGET,
    data_dir: Path | None = typer.Option(
        None, help="Where CSV sources are (default: the spec's folder)."
    ),
    jobs: int = JOBS,
) -> None:
    """Bring the target in step with the legacy database: only what changed moves."""
    from ferry.progress import RichProgress
    from ferry.spec import load_spec
    from ferry.sync import sync as run

    try:
        loaded = load_spec(spec)
        src = conninfo.resolve(source, conninfo.SOURCE_ENV, "source")
        tgt = conninfo.resolve(target, conninfo.TARGET_ENV, "target")
        with RichProgress(console) as progress:
            result = run(src, tgt, loaded, data_dir=data_dir, jobs=jobs, progress=progress)
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    _print_sync(result)


def _print_sync(result: object) -> None:
    from ferry.sync import SyncResult

    assert isinstance(result, SyncResult)
    c = result.counts
    if not result.changed and not any(c.get(k) for k in ("fixed_on_retry", "newly_quarantined")):
        console.print(f"sync: nothing changed ({result.seconds:.2f} s)")
        return
    console.print(
        f"sync run {result.run_id} in {result.seconds:.2f} s, {c['bytes_from_source']:,} bytes "
        f"from source: source +{c['source_inserted']:,} ~{c['source_updated']:,} "
        f"-{c['source_deleted']:,}; target inserted {c['inserted']:,}, updated {c['updated']:,}, "
        f"deleted {c['deleted']:,}; fixed on retry {c['fixed_on_retry']:,}, newly quarantined "
        f"{c['newly_quarantined']:,}, newly excluded {c['newly_excluded']:,}; "
        f"conflicts {c['conflicts']:,}"
    )


@app.command()
def verify(
    spec: Path = SPEC,
    target: str | None = TARGET,
    truth: Path | None = typer.Option(
        None, "--truth", help="Ground truth CSV to compare fates with."
    ),
) -> None:
    """Check the target independently: recomputed models, ledger, foreign keys, truth."""
    from ferry.spec import load_spec
    from ferry.verify import verify as run

    try:
        result = run(
            conninfo.resolve(target, conninfo.TARGET_ENV, "target"), load_spec(spec), truth
        )
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    console.print(result.summary())
    if not result.ok:
        raise typer.Exit(code=1)


@app.command()
def report(
    spec: Path = SPEC,
    target: str | None = TARGET,
    fmt: str = typer.Option("md", "--format", help="md, html or json."),
    out: Path | None = typer.Option(None, "--out", help="File to write (default: stdout)."),
) -> None:
    """Per source and target table: every count, computed from the ledger and the databases."""
    from ferry import report as reporting
    from ferry.spec import load_spec

    if fmt not in ("md", "html", "json"):
        raise typer.BadParameter("choose md, html or json", param_hint="--format")
    try:
        data = reporting.collect(
            conninfo.resolve(target, conninfo.TARGET_ENV, "target"), load_spec(spec)
        )
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    text = reporting.render(data, fmt)  # type: ignore[arg-type]
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text)
        console.print(f"wrote {out}")


@app.command()
def demo(
    workdir: Path = typer.Option(Path(".ferry/demo"), help="Cluster, exports, truth and reports."),
    scale: float = typer.Option(0.1, "--scale", help="Scale factor: 1.0 is DOMAIN.md's size."),
    seed: int = typer.Option(1, "--seed", help="Same seed and scale give identical data."),
    delta: bool = typer.Option(
        False, "--delta", help="Apply a day of legacy changes to an existing demo, then sync."
    ),
    jobs: int = JOBS,
) -> None:
    """Generate the dispatch world, migrate it, report, and check every planted row's fate.

    With --delta: apply the day of changes of DOMAIN.md to the demo in WORKDIR, sync, and
    check the updated ground truth. Exits non-zero on any difference.
    """
    from ferry.demo.run import run_delta, run_demo
    from ferry.progress import RichProgress, summary

    if delta:
        try:
            with RichProgress(console) as progress:
                done = run_delta(workdir, jobs=jobs, console=console, progress=progress)
        except (FerryError, psycopg.Error) as exc:
            raise _fail(exc) from None
        _print_sync(done.sync)
        console.print(summary(done.sync.source_counts))
        for path in done.reports:
            console.print(f"report: {path}")
        console.print(done.verify.summary())
        if not done.verify.ok:
            raise typer.Exit(code=1)
        return
    try:
        with RichProgress(console) as progress:
            result = run_demo(
                workdir, scale=scale, seed=seed, jobs=jobs, console=console, progress=progress
            )
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    console.print(summary(result.run.counts, result.run.seconds))
    for path in result.reports:
        console.print(f"report: {path}")
    console.print(result.verify.summary())
    if not result.verify.ok:
        raise typer.Exit(code=1)


@app.command("demo-data")
def demo_data(
    workdir: Path = typer.Option(Path(".ferry/demo"), help="Where the cluster and files live."),
    scale: float = typer.Option(0.1, "--scale", help="Scale factor: 1.0 is DOMAIN.md's size."),
    seed: int = typer.Option(1, "--seed", help="Same seed and scale give identical data."),
    delta: bool = typer.Option(False, "--delta", help="Apply one day of changes instead."),
) -> None:
    """Build the demo's legacy and target databases on the embedded PostgreSQL."""
    from ferry.demo import world

    try:
        world.cli_generate(workdir, scale=scale, seed=seed, delta=delta, console=console)
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None


if __name__ == "__main__":
    app()
