"""The ``ferry`` command line. Each command is a thin shell over the public API."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ferry.errors import FerryError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Move a live legacy PostgreSQL database into a new schema and account for every row.",
)
console = Console(stderr=True)


def fail(exc: FerryError) -> typer.Exit:
    console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=2)


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
    except FerryError as exc:
        raise fail(exc) from None


if __name__ == "__main__":
    app()
