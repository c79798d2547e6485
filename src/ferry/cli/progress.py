"""Progress bars and the end-of-run summary, rendered with rich.

On a terminal: live bars and coloured tables at the terminal's width. Anywhere else (a pipe,
a file, cron, CI) the output is what a log reader needs: one plain line per staged source and
finished model instead of bars, and (with the consoles of ``ferry.cli.make_console``) no
colour and tables at their natural width, never cut to an assumed 80 columns (``quar…``).

Only names, counts and rates are shown: never row contents.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ferry import ledger
from ferry.engine import chunk, pipeline, stage


class _RowRate(TextColumn):
    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # type: ignore[no-untyped-def]
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "", style="cyan")


class RichProgress(pipeline.Progress):
    """A bar per source while staging and per model while transforming; a plain line per
    source and model as it finishes when the console is not a terminal (bars redrawn in a
    log file are noise, and rich would only draw their last state, cut to its width)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.bars = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RowRate(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        if self.live:
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.bars.stop()

    def stage_started(self, source: str, total_bytes: int | None) -> None:
        self.tasks["s:" + source] = self.bars.add_task(f"stage {source}", total=None)

    def stage_advanced(self, source: str, nbytes: int) -> None:
        pass

    def stage_done(self, result: stage.StageResult) -> None:
        if not self.live:
            self.console.print(
                f"staged {result.source}: {result.rows:,} rows, {result.bytes:,} bytes "
                f"in {result.seconds:.2f} s",
                markup=False,
            )
        task = self.tasks["s:" + result.source]
        self.bars.update(task, total=result.rows, completed=result.rows)

    def model_started(self, model: str, total_rows: int) -> None:
        self.tasks["m:" + model] = self.bars.add_task(f"model {model}", total=total_rows or None)

    def model_advanced(self, model: str, rows: int) -> None:
        self.bars.advance(self.tasks["m:" + model], rows)

    def model_done(self, result: chunk.ModelResult) -> None:
        if not self.live:
            self.console.print(
                f"model {result.model}: {result.rows:,} rows, {result.written:,} written "
                f"in {result.seconds:.2f} s",
                markup=False,
            )
        task = self.tasks["m:" + result.model]
        total = self.bars.tasks[task].total
        self.bars.update(task, total=total or result.rows, completed=total or result.rows)


def _fmt(counter: dict[str, int]) -> str:
    return "\n".join(f"{k} {v:,}" for k, v in sorted(counter.items())) or "-"


def summary(counts: dict[str, ledger.SourceCounts], seconds: float | None = None) -> Table:
    """Per source table: every fate, and a column proving the row adds up."""
    table = Table(
        title="ferry: fate of every source row", title_justify="left", caption_justify="left"
    )
    for col in ("source", "staged", "migrated", "repaired", "merged", "quarantined",
                "excluded", "adds up"):  # fmt: skip
        text = col in ("source", "repaired", "quarantined", "excluded")
        table.add_column(col, justify="left" if text else "right", no_wrap=col == "source",
                         min_width=None if text else len(col))  # fmt: skip
    total = ledger.SourceCounts("total")
    for name, c in sorted(counts.items()):
        ok = c.staged == c.accounted
        table.add_row(
            name, f"{c.staged:,}", f"{c.migrated:,}", _fmt(c.repaired), f"{c.merged:,}",
            _fmt(c.quarantined), _fmt(c.excluded), "[green]yes[/]" if ok else "[red]NO[/]",
        )  # fmt: skip
        total.staged += c.staged
        total.migrated += c.migrated
        total.merged += c.merged
        total.quarantined.update(c.quarantined)
        total.excluded.update(c.excluded)
        total.repaired.update(c.repaired)
    table.add_section()
    table.add_row(
        "total", f"{total.staged:,}", f"{total.migrated:,}", f"{sum(total.repaired.values()):,}",
        f"{total.merged:,}", f"{sum(total.quarantined.values()):,}",
        f"{sum(total.excluded.values()):,}",
        "[green]yes[/]" if total.staged == total.accounted else "[red]NO[/]",
    )  # fmt: skip
    if seconds:
        table.caption = (
            f"{total.staged:,} rows in {seconds:.1f} s ({total.staged / seconds:,.0f} rows/s)"
        )
    return table
