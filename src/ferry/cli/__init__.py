"""The ``ferry`` command line. Each command is a thin shell over the public API.

Results (tables, report paths, verdicts) go to stdout and progress and logs to stderr, as
Unix tools do, so that ``ferry demo > out.txt`` keeps the results and a terminal still shows
the progress. Output that is not a terminal is plain text at any width (see make_console).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import IO, Any

import psycopg
import typer
from rich.console import Console
from rich.markup import escape

from ferry import conninfo
from ferry.errors import FerryError, describe, lost

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Move a live legacy PostgreSQL database into a new schema and account for every row.",
)
#: Width of a console that is not a terminal: wide enough that no table or line is ever cut
#: or wrapped (a table is as wide as its content, a line as long as its text).
PLAIN_WIDTH = 100_000


def make_console(stderr: bool = False) -> Console:
    """Rich on a terminal; elsewhere (a pipe, a file, cron, CI) plain text: no colour, no
    cursor movement, and no table cut to an assumed 80 columns (``quar…``) or line wrapped,
    because a log is read at whatever width its reader has."""
    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return probe
    return Console(
        file=_PlainStream(stderr), width=PLAIN_WIDTH, no_color=True, highlight=False, emoji=False
    )


class _PlainStream:
    """sys.stdout or sys.stderr as they are at each write (a test runner swaps them), with
    the spaces rich pads a line with to its table's width taken off its end."""

    def __init__(self, stderr: bool) -> None:
        self.stderr = stderr

    def _stream(self) -> IO[str]:
        return sys.stderr if self.stderr else sys.stdout

    def write(self, text: str) -> int:
        return self._stream().write(re.sub(r" +(?=\n)", "", text))

    def flush(self) -> None:
        self._stream().flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream(), name)


console = make_console(stderr=True)  # progress, logs, errors
stdout = make_console()  # results: tables, report paths, verdicts


@app.callback()
def _streams() -> None:
    # The consoles are made again for each command, when its streams are known (a test
    # runner swaps them after import).
    global console, stdout
    console, stdout = make_console(stderr=True), make_console()


SPEC = typer.Option(..., "--spec", help="The migration spec (TOML).", exists=True, dir_okay=False)
SOURCE = typer.Option(
    None, "--source", help=f"Legacy database conninfo (or ${conninfo.SOURCE_ENV})."
)
# The servers the running command resolved (``_resolve``), by role, for ``_fail``.
_SERVERS: dict[str, str] = {}


def _resolve(value: str | None, env: str, what: str) -> str:
    dsn = conninfo.resolve(value, env, what)
    _SERVERS[what] = dsn
    return dsn


def _answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


TARGET = typer.Option(
    None, "--target", help=f"Target database conninfo (or ${conninfo.TARGET_ENV})."
)
DATA_DIR = typer.Option(None, help="Where CSV sources are (default: the spec's folder).")
JOBS = typer.Option(2, "--jobs", min=1, help="Parallel sessions (stay below the pool size).")


def _fail(exc: Exception) -> typer.Exit:
    """The error for the operator, without row contents (``errors.describe``), naming the
    command that was running (its words before the first option) and, for a lost
    connection, the servers that do not answer now."""
    words = [w for w in sys.argv[1:3] if not w.startswith("-")]
    text = describe(exc, " ".join(["ferry", *words[: 2 if words[:1] == ["quarantine"] else 1]]))
    if lost(exc):
        down = [name for name, dsn in _SERVERS.items() if not _answers(dsn)]
        text += (
            f"; not answering now: the {' and the '.join(down)} server"
            if down
            else "; both servers answer again"
        )
    kind = "database error" if isinstance(exc, psycopg.Error) else "error"
    console.print(f"[bold red]{kind}:[/] {escape(text)}")
    return typer.Exit(code=2)


@app.command()
def init(
    source: str | None = SOURCE,
    target: str | None = TARGET,
    out: Path = typer.Option(
        ..., "--out", help="Folder for spec.toml and the models' SQL; no file is overwritten."
    ),
    views: bool = typer.Option(False, "--views", help="Also offer the legacy views as sources."),
    schema: list[str] = typer.Option(
        ["public"], "--schema", help="Legacy schema to read (repeat for several)."
    ),
    target_schema: list[str] = typer.Option(
        ["public"], "--target-schema", help="Target schema to read (repeat for several)."
    ),
    name: str | None = typer.Option(None, "--name", help="The spec's name (default: db names)."),
) -> None:
    """Write a first spec from both catalogs, and say what it left for you.

    Every legacy table becomes a source (small tables only referred to: lookups), each
    target table it can match a model with its SQL, the match and its evidence in a comment;
    what needs a business rule is flagged in the SQL, with rule stubs commented out in the
    spec, which loads and migrates as written. Refuses to overwrite any file."""
    from ferry.ops.scaffold import scaffold, summary

    try:
        src = _resolve(source, conninfo.SOURCE_ENV, "source")
        tgt = _resolve(target, conninfo.TARGET_ENV, "target")
        console.print(f"ferry init: {conninfo.redact(src)} → {conninfo.redact(tgt)}")
        result = scaffold(
            src, tgt, out, views=views, source_schemas=tuple(schema),
            target_schemas=tuple(target_schema), name=name,
        )  # fmt: skip
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    stdout.print(summary(result))
    stdout.print(f"wrote {len(result.files)} files in {out}", markup=False)


@app.command()
def migrate(
    spec: Path = SPEC,
    source: str | None = SOURCE,
    target: str | None = TARGET,
    data_dir: Path | None = DATA_DIR,
    jobs: int = JOBS,
    defer_constraints: bool = typer.Option(
        True,
        "--defer-constraints/--keep-constraints",
        help="First loads of big tables set the target's foreign keys aside and put them back "
        "validated (about twice as fast); parent tables stay readable, their writes wait.",
    ),
    changes: str | None = typer.Option(
        None,
        "--changes",
        help="How later syncs find changes: wal (a logical replication slot on the source, "
        "made before the stage's snapshot; needs wal_level = logical and a REPLICATION role) "
        "or checksum (the range diff; drops a slot). Default: as the last migrate chose.",
    ),
) -> None:
    """Stage every source, run every model, and prove every source row has a fate."""
    from ferry.cli.progress import RichProgress, summary
    from ferry.engine.pipeline import migrate as run
    from ferry.spec import load_spec

    try:
        loaded = load_spec(spec)
        src = _resolve(source, conninfo.SOURCE_ENV, "source")
        tgt = _resolve(target, conninfo.TARGET_ENV, "target")
        console.print(
            f"ferry migrate [bold]{loaded.name}[/]: {conninfo.redact(src)} → {conninfo.redact(tgt)}"
        )
        with RichProgress(console) as progress:
            result = run(
                src, tgt, loaded, data_dir=data_dir, jobs=jobs, progress=progress,
                defer_constraints=defer_constraints, changes=changes,
            )  # fmt: skip
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    stdout.print(summary(result.counts, result.seconds))


@app.command()
def sync(
    spec: Path = SPEC,
    source: str | None = SOURCE,
    target: str | None = TARGET,
    data_dir: Path | None = DATA_DIR,
    jobs: int = JOBS,
    every: str | None = typer.Option(
        None, "--every", help="Sync again at this interval (90s, 15m, 1h) until SIGTERM/SIGINT."
    ),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", help="With --every: Prometheus /metrics on 127.0.0.1:PORT."
    ),
    max_backoff: str = typer.Option(
        "10m", "--max-backoff", help="With --every: longest wait after failed syncs."
    ),
    full: bool = typer.Option(
        False,
        "--full",
        help="An audit: compare every row by checksums even where the WAL names changes, and "
        "count the ledger's invariant whole instead of key by key.",
    ),
) -> None:
    """Bring the target in step with the legacy database: only what changed moves.

    With --every, keep doing so: a failed sync is logged and retried with exponential
    backoff; SIGTERM or SIGINT lets the current sync finish, then exits 0.
    """
    from ferry.cli.progress import RichProgress
    from ferry.spec import load_spec
    from ferry.sync.loop import sync as run

    if metrics_port is not None and every is None:
        raise typer.BadParameter("metrics are served only with --every", param_hint="--every")
    try:
        loaded = load_spec(spec)
        src = _resolve(source, conninfo.SOURCE_ENV, "source")
        tgt = _resolve(target, conninfo.TARGET_ENV, "target")
        if every is not None:
            from ferry.ops.status import parse_duration
            from ferry.sync import watch

            interval, backoff = parse_duration(every), parse_duration(max_backoff)
            console.print(
                f"ferry sync every {every} ({loaded.name}): "
                f"{conninfo.redact(src)} → {conninfo.redact(tgt)}"
                + (f"; metrics on 127.0.0.1:{metrics_port}/metrics" if metrics_port else "")
            )
            try:
                watch.watch(
                    src, tgt, loaded, every=interval, max_backoff=backoff, data_dir=data_dir,
                    jobs=jobs, metrics_port=metrics_port, on_result=_print_sync, say=console.print,
                )  # fmt: skip
            except KeyboardInterrupt:  # a second Ctrl-C cut the sync in progress short
                console.print("interrupted: the chunk in progress was rolled back")
                raise typer.Exit(code=130) from None
            return
        with RichProgress(console) as progress:
            result = run(
                src, tgt, loaded, data_dir=data_dir, jobs=jobs, progress=progress, full=full
            )
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    _print_sync(result)


def _print_sync(result: object) -> None:
    from ferry.sync.loop import SyncResult

    assert isinstance(result, SyncResult)
    for note in result.notes:
        console.print(f"[yellow]warning:[/] {escape(note)}")
    c = result.counts
    if not result.changed and not any(c.get(k) for k in ("fixed_on_retry", "newly_quarantined")):
        stdout.print(f"sync: nothing changed ({result.seconds:.2f} s)")
        return
    stdout.print(
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
    from ferry.ops.verify import verify as run
    from ferry.spec import load_spec

    try:
        result = run(_resolve(target, conninfo.TARGET_ENV, "target"), load_spec(spec), truth)
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    stdout.print(result.summary(), markup=False)
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
    from ferry.ops import report as reporting
    from ferry.spec import load_spec

    if fmt not in ("md", "html", "json"):
        raise typer.BadParameter("choose md, html or json", param_hint="--format")
    try:
        data = reporting.collect(_resolve(target, conninfo.TARGET_ENV, "target"), load_spec(spec))
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    text = reporting.render(data, fmt)  # type: ignore[arg-type]
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text)
        stdout.print(f"wrote {out}", markup=False)


@app.command()
def check(
    spec: Path = SPEC,
    source: str | None = SOURCE,
    target: str | None = TARGET,
    data_dir: Path | None = DATA_DIR,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Check a spec against both databases without writing anything: tables, columns, each
    model's SQL (run on zero rows), casts to the target's types, cycles, unique keys.

    Each finding names the spec's line, or the model SQL's file, line and column. Exits 1
    on any error.
    """
    import json

    from ferry.ops.check import check as run

    try:
        result = run(
            spec,
            _resolve(source, conninfo.SOURCE_ENV, "source"),
            _resolve(target, conninfo.TARGET_ENV, "target"),
            data_dir,
        )
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(result.as_json(), indent=2))
    else:
        stdout.print(result.render(), markup=False, highlight=False)
    if not result.ok:
        raise typer.Exit(code=1)


@app.command()
def plan(
    spec: Path = SPEC,
    source: str | None = SOURCE,
    target: str | None = TARGET,
    data_dir: Path | None = DATA_DIR,
    sample: int | None = typer.Option(
        None, "--sample", min=1, help="Stage at most N rows of each source (lowest keys)."
    ),
    jobs: int = JOBS,
    fmt: str = typer.Option("md", "--format", help="md, html or json."),
    out: Path | None = typer.Option(None, "--out", help="File to write (default: stdout)."),
) -> None:
    """Every row's fate and what the target would refuse, as a migrate would give them,
    without touching the target's tables: the report of `ferry report`, for a run not made.

    Runs the models into scratch copies of the target tables (their rows included) in the
    target database, and drops them at the end. With --sample, a child whose parent was not
    sampled reads as an orphan.
    """
    from ferry.cli.progress import RichProgress
    from ferry.ops import plan as planning
    from ferry.spec import load_spec

    if fmt not in ("md", "html", "json"):
        raise typer.BadParameter("choose md, html or json", param_hint="--format")
    try:
        loaded = load_spec(spec)
        src = _resolve(source, conninfo.SOURCE_ENV, "source")
        tgt = _resolve(target, conninfo.TARGET_ENV, "target")
        console.print(
            f"ferry plan [bold]{loaded.name}[/]: {conninfo.redact(src)} → {conninfo.redact(tgt)}"
            " (the target's tables are only read)"
        )
        with RichProgress(console) as progress:
            result = planning.plan(
                src, tgt, loaded, data_dir=data_dir, sample=sample, jobs=jobs, progress=progress
            )
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    text = planning.render(result.data, fmt)  # type: ignore[arg-type]
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text)
        stdout.print(f"wrote {out}", markup=False)


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
    from ferry.cli.progress import RichProgress, summary
    from ferry.demo.run import run_delta, run_demo

    if delta:
        try:
            with RichProgress(console) as progress:
                done = run_delta(workdir, jobs=jobs, console=console, progress=progress)
        except (FerryError, psycopg.Error) as exc:
            raise _fail(exc) from None
        _print_sync(done.sync)
        stdout.print(summary(done.counts))
        for path in done.reports:
            stdout.print(f"report: {path}", markup=False)
        stdout.print(done.verify.summary(), markup=False)
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
    stdout.print(summary(result.run.counts, result.run.seconds))
    for path in result.reports:
        stdout.print(f"report: {path}", markup=False)
    stdout.print(result.verify.summary(), markup=False)
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
        world.cli_generate(workdir, scale=scale, seed=seed, delta=delta, console=stdout)
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None


# -- operating a migration until cutover: status, quarantine review, rollback ----------------


@app.command()
def status(
    spec: Path = SPEC,
    target: str | None = TARGET,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    check: bool = typer.Option(
        False, "--check", help="Exit 1 if the last sync failed or is older than --max-age."
    ),
    max_age: str = typer.Option("15m", "--max-age", help="With --check: 90s, 15m, 2h, ..."),
    source: str | None = typer.Option(
        None,
        "--source",
        help=f"Legacy database conninfo (or ${conninfo.SOURCE_ENV}): the replication slot's lag.",
    ),
    max_slot_lag: str = typer.Option(
        "1GB", "--max-slot-lag", help="WAL a replication slot may hold before it is a problem."
    ),
) -> None:
    """Where the migration stands: last runs, fates, conflicts, quarantine by reason.

    Shows the last migrate and sync with outcome and duration and the time since the last
    successful one. With --check, exits 1 when the last sync failed or is older than
    --max-age, or when rolled-back keys await a sync: for cron and alerting.
    """
    import json

    from ferry.ops import status as st
    from ferry.spec import load_spec

    try:
        limit = st.parse_duration(max_age)
    except FerryError as exc:
        raise typer.BadParameter(str(exc), param_hint="--max-age") from None
    try:
        lag = st.parse_size(max_slot_lag)
    except FerryError as exc:
        raise typer.BadParameter(str(exc), param_hint="--max-slot-lag") from None
    try:
        src = _optional_source(source)
        found = st.collect(
            _resolve(target, conninfo.TARGET_ENV, "target"), load_spec(spec), src, lag
        )
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    problems = st.check(found, limit) if check else []
    if as_json:
        data = found.as_json()
        if check:
            data["check"] = {"ok": not problems, "max_age_seconds": limit, "problems": problems}
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        stdout.print(st.render(found))
    if check:
        # On stderr, beside the exit code: stdout holds the status itself (or its JSON).
        for problem in problems:
            console.print(f"[bold red]check failed:[/] {escape(problem)}")
        if problems:
            raise typer.Exit(code=1)
        console.print(f"check ok: last successful sync within {max_age}", markup=False)


@app.command()
def doctor(
    source: str | None = SOURCE,
    target: str | None = TARGET,
    spec: Path | None = typer.Option(
        None, "--spec", help="Also check its source and target tables.", exists=True, dir_okay=False
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Say what would go wrong before a run: roles, RLS, ferry's schemas, poolers, timeouts,
    encodings, access to the source tables, versions. Exits 1 on anything that would break
    a run."""
    import json
    import os

    from ferry.ops.doctor import diagnose
    from ferry.spec import load_spec

    try:
        # Unvalidated: a malformed string is one of the findings, not the end of the check.
        source = source or os.environ.get(conninfo.SOURCE_ENV) or _missing("source")
        target = target or os.environ.get(conninfo.TARGET_ENV) or _missing("target")
        found = diagnose(source, target, load_spec(spec) if spec is not None else None)
    except FerryError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(found.as_json(), indent=2))
    else:
        stdout.print(found.render(), markup=False, highlight=False)
    if not found.ok:
        raise typer.Exit(code=1)


def _missing(what: str) -> str:
    env = conninfo.SOURCE_ENV if what == "source" else conninfo.TARGET_ENV
    return _resolve(None, env, what)  # raises: neither option nor variable is set


quarantine_app = typer.Typer(
    no_args_is_help=True,
    help="Review quarantined rows: list, show one, retry, exclude with a note, undo.",
)
app.add_typer(quarantine_app, name="quarantine")

TABLE_FILTER = typer.Option(None, "--table", help="A source table or a model name.")
REASON_FILTER = typer.Option(None, "--reason", help="Only rows quarantined for this reason.")


@quarantine_app.command("list")
def quarantine_list(
    spec: Path = SPEC,
    target: str | None = TARGET,
    table: str | None = TABLE_FILTER,
    reason: str | None = REASON_FILTER,
    decided: bool = typer.Option(False, "--decided", help="List the operator's decisions instead."),
    limit: int = typer.Option(200, "--limit", min=1, help="Show at most this many rows."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Quarantined rows: keys, reasons, SQLSTATE, first seen, tries (no row contents)."""
    import json

    from rich.table import Table

    from ferry.ops import quarantine as q
    from ferry.spec import load_spec

    try:
        entries, total = q.list_entries(
            _resolve(target, conninfo.TARGET_ENV, "target"), load_spec(spec),
            table=table, reason=reason, decided=decided, limit=limit,
        )  # fmt: skip
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps({"total": total, "rows": [e.as_json() for e in entries]}, indent=2))
        return
    grid = Table(title=f"{total:,} operator decision(s)" if decided else f"{total:,} quarantined")
    cols = ["Model", "Source", "Key", "Reason", "SQLSTATE", "First seen", "Tries"]
    cols += ["Decided by", "Note"] if decided else ["Message"]
    for c in cols:
        grid.add_column(c, justify="right" if c == "Tries" else "left")
    for e in entries:
        row = [e.model, e.source_table, e.source_key, e.reason or "", e.sqlstate or "",
               e.first_seen.strftime("%Y-%m-%d %H:%M"), str(e.tries)]  # fmt: skip
        row += [e.decided_by or "", e.decision or ""] if decided else [e.message or ""]
        grid.add_row(*row)
    stdout.print(grid)
    if total > len(entries):
        console.print(f"... and {total - len(entries):,} more (use --limit, --table, --reason)")


@quarantine_app.command("show")
def quarantine_show(
    table: str = typer.Argument(..., help="A source table or a model name."),
    key: str = typer.Argument(..., help="The source key."),
    spec: Path = SPEC,
    target: str | None = TARGET,
) -> None:
    """Print one staged row and its fates, to this terminal only.

    This is the one command that shows row contents (health data): nothing of it is logged
    or recorded. Do not redirect it into files or tickets.
    """
    from rich.table import Table

    from ferry.ops import quarantine as q
    from ferry.spec import load_spec

    try:
        source, values, fates = q.show_row(
            _resolve(target, conninfo.TARGET_ENV, "target"), load_spec(spec), table, key
        )
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    if values is None:
        console.print(f"source {source} has no staged row with key {key}", markup=False)
    else:
        row = Table(title=f"staged row {source} {key} (health data: do not copy)")
        row.add_column("Column")
        row.add_column("Value")
        for name, value in values.items():
            row.add_row(name, "NULL" if value is None else str(value))
        stdout.print(row)
    for f in fates:
        extra = f", SQLSTATE {f.sqlstate}: {f.message}" if f.sqlstate else ""
        decided = f", decided by {f.decided_by}: {f.decision}" if f.decided_by else ""
        stdout.print(f"{f.model}: {f.status} ({f.reason or '-'}){extra}, tries {f.tries}{decided}")
    if not fates:
        stdout.print("no ledger row for this key")


@quarantine_app.command("retry")
def quarantine_retry(
    spec: Path = SPEC,
    target: str | None = TARGET,
    table: str | None = TABLE_FILTER,
    reason: str | None = REASON_FILTER,
) -> None:
    """Run the models again for matching quarantined keys, in a run of kind 'retry'.

    For after something that held them was fixed outside the stage (a target constraint, a
    trigger). A sync retries every quarantined row anyway.
    """
    from ferry.cli.progress import RichProgress
    from ferry.ops import quarantine as q
    from ferry.spec import load_spec

    try:
        with RichProgress(console) as progress:
            result = q.retry(
                _resolve(target, conninfo.TARGET_ENV, "target"), load_spec(spec),
                table=table, reason=reason, progress=progress,
            )  # fmt: skip
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    if result.run_id is None:
        console.print("nothing in quarantine matches")
        return
    console.print(
        f"retry run {result.run_id}: {result.keys:,} keys retried, {result.fixed:,} left "
        f"quarantine, {result.still_quarantined:,} still quarantined"
    )


@quarantine_app.command("exclude")
def quarantine_exclude(
    table: str = typer.Argument(..., help="A source table or a model name."),
    key: str = typer.Argument(..., help="The source key."),
    note: str = typer.Option(..., "--note", help="Why the row is left behind (shown in reports)."),
    by: str | None = typer.Option(None, "--by", help="Who decides (default: the OS user)."),
    spec: Path = SPEC,
    target: str | None = TARGET,
) -> None:
    """Leave a quarantined row behind on purpose, with a note.

    The row becomes excluded (reason 'operator'), stays so across syncs until undone, and is
    listed with its note in reports.
    """
    from ferry.ops import quarantine as q
    from ferry.spec import load_spec

    try:
        models = q.exclude(
            _resolve(target, conninfo.TARGET_ENV, "target"), load_spec(spec), table,
            key, note, by,
        )  # fmt: skip
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    stdout.print(
        f"excluded {table} key {key} ({', '.join(models)}) by operator decision", markup=False
    )


@quarantine_app.command("undo")
def quarantine_undo(
    table: str = typer.Argument(..., help="A source table or a model name."),
    key: str = typer.Argument(..., help="The source key."),
    spec: Path = SPEC,
    target: str | None = TARGET,
) -> None:
    """Clear an operator's decision: the next sync evaluates the row afresh."""
    from ferry.ops import quarantine as q
    from ferry.spec import load_spec

    try:
        models = q.undo(
            _resolve(target, conninfo.TARGET_ENV, "target"), load_spec(spec), table, key
        )
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    stdout.print(f"decision on {table} key {key} ({', '.join(models)}) undone", markup=False)


@app.command()
def rollback(
    spec: Path = SPEC,
    target: str | None = TARGET,
    run: int | None = typer.Option(
        None, "--run", help="Undo this run and every later one, newest first."
    ),
    everything: bool = typer.Option(False, "--all", help="Undo every run; empties the stage."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    source: str | None = typer.Option(
        None,
        "--source",
        help=f"Legacy database conninfo (or ${conninfo.SOURCE_ENV}): with --all, where the "
        "replication slot is dropped.",
    ),
) -> None:
    """Undo runs: remove the target rows they inserted, restore the rows they changed.

    --run N undoes runs N, N+1, ... up to the latest, newest first: a run cannot be undone
    underneath the runs that came after it. --all undoes every run and empties the stage (the
    next migrate starts afresh). Rows the application wrote are never touched; a row it
    edited since ferry wrote it stops the rollback, which then changes nothing. Keys rolled
    back are taken again by the next sync.
    """
    from ferry.ops import rollback as rb
    from ferry.spec import load_spec

    if (run is None) == (not everything):
        raise typer.BadParameter("give either --run N or --all", param_hint="--run/--all")
    try:
        loaded = load_spec(spec)
        tgt = _resolve(target, conninfo.TARGET_ENV, "target")
        todo = rb.plan(tgt, loaded, run=run, all_=everything)
        listed = ", ".join(f"{r.run_id} ({r.kind}, {r.status})" for r in todo.runs)
        console.print(
            f"rollback on {conninfo.redact(tgt)}: undo run(s) {listed}: {todo.keys:,} ledger "
            "keys" + ("; the ledger ends empty and the stage is emptied" if todo.everything else "")
        )
        if not yes and not typer.confirm("Roll back?", default=False, err=True):
            stdout.print("nothing was changed")
            raise typer.Exit(code=1)
        result = rb.rollback(tgt, loaded, run=run, all_=everything, source=_optional_source(source))
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    c = result.counts
    stdout.print(
        f"rollback run {result.run_id} undid run(s) {', '.join(map(str, result.undone)) or '-'} "
        f"in {result.seconds:.2f} s: target deleted {c['target_deleted']:,}, re-created "
        f"{c['target_recreated']:,}, restored {c['target_restored']:,}; ledger removed "
        f"{c['ledger_removed']:,}, restored {c['ledger_restored']:,}"
        + ("; stage emptied (run migrate next)" if result.stage_cleared
           else f"; {c['keys']:,} keys will be taken again by the next sync")
        + (f"; replication slot {result.slot_dropped} dropped" if result.slot_dropped else "")
    )  # fmt: skip


def _optional_source(value: str | None) -> str | None:
    """A source only some commands need: the option, else the environment, else None."""
    import os

    if value is None and not os.environ.get(conninfo.SOURCE_ENV):
        return None
    return _resolve(value, conninfo.SOURCE_ENV, "source")


@app.command()
def cleanup(
    spec: Path = SPEC,
    source: str | None = SOURCE,
    target: str | None = TARGET,
) -> None:
    """Drop what ferry keeps on the source: the replication slot of --changes wal.

    A slot that no sync advances keeps WAL on the source's disk until it fills: run this
    at cutover, or to go back to the checksum diff (later syncs use it; migrate --changes
    wal makes a slot again). The ledger and the target are not touched.
    """
    from ferry.ledger import runs
    from ferry.spec import load_spec
    from ferry.sync import wal

    try:
        loaded = load_spec(spec)
        src = _resolve(source, conninfo.SOURCE_ENV, "source")
        tgt = _resolve(target, conninfo.TARGET_ENV, "target")
        with runs.opened(tgt, loaded, "ferry-cleanup") as conn:
            dropped = wal.drop_slot(src, conn, loaded)
    except (FerryError, psycopg.Error) as exc:
        raise _fail(exc) from None
    stdout.print(
        f"replication slot {dropped} dropped; syncs compare by checksums now"
        if dropped
        else "nothing to clean up: this target has no replication slot on the source"
    )


if __name__ == "__main__":
    app()
