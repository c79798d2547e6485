"""The command-line reference, ``docs/cli.md``, written from the commands' own ``--help``.

    python -m ferry.cli.doc > docs/cli.md

Why generated: a reference typed by hand drifts from the options it describes. This walks
the click commands typer builds from ``ferry.cli.app`` and writes, for each command, the
text and option lines its ``--help`` shows; ``tests/test_cli.py`` fails when docs/cli.md
differs from it or misses a command or option.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from ferry.cli import app

# typer builds click commands (its own copy of click, not a public module): they are handled
# here by what --help uses of them (params, help records, usage), a group by list_commands.
Command = Any

HEADER = """\
# ferry command line

Generated from the commands' `--help` by `python -m ferry.cli.doc > docs/cli.md` (the tests
fail when it is out of date). Every command also takes `--help`. Results (tables, report
paths, verdicts) go to stdout; progress, logs and errors go to stderr. Output that is not a
terminal is plain text, its tables as wide as their content. Connection strings may also
come from `$FERRY_SOURCE` and `$FERRY_TARGET`; passwords are never printed.
"""


def commands() -> list[tuple[str, Command]]:
    """Every command as ``(full name, command)``, groups before their subcommands, in the
    order ``ferry --help`` lists them."""
    root = typer.main.get_command(app)
    found: list[tuple[str, Command]] = []

    def walk(name: str, command: Command) -> None:
        found.append((name, command))
        if hasattr(command, "list_commands"):
            with typer.Context(command, info_name=name) as ctx:
                for sub in command.list_commands(ctx):
                    child = command.get_command(ctx, sub)
                    assert child is not None
                    walk(f"{name} {sub}", child)

    walk("ferry", root)
    return found


def options(command: Command, name: str) -> list[tuple[str, str]]:
    """The ``(names, help)`` lines of ``--help``, arguments first, ``--help`` itself aside."""
    with typer.Context(command, info_name=name) as ctx:
        params = command.get_params(ctx)
        records = [p.get_help_record(ctx) for p in params if p.param_type_name == "argument"]
        records += [p.get_help_record(ctx) for p in params if p.param_type_name == "option"]
    # Every command takes --help; the page says so once.
    return [r for r in records if r is not None and r[0] != "--help"]


def usage(command: Command, name: str) -> str:
    with typer.Context(command, info_name=name) as ctx:
        return f"{name} {' '.join(command.collect_usage_pieces(ctx))}".strip()


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    """docs/cli.md's text."""
    out = [HEADER]
    for name, command in commands():
        out.append(f"## `{name}`\n")
        if command.help:
            out.append(command.help.strip() + "\n")
        out.append(f"```\n{usage(command, name)}\n```\n")
        rows = options(command, name)
        if rows:
            out.append("| argument or option | |\n|---|---|")
            out.extend(f"| `{_cell(n)}` | {_cell(h)} |" for n, h in rows)
            out.append("")
        if hasattr(command, "list_commands"):
            with typer.Context(command, info_name=name) as ctx:
                subs = command.list_commands(ctx)
            listed = [(s, command.get_command(ctx, s)) for s in subs]
            out.append("| command | |\n|---|---|")
            out.extend(
                f"| [`{name} {s}`](#{_anchor(f'{name} {s}')}) | "
                f"{_cell(c.get_short_help_str(limit=200)) if c else ''} |"
                for s, c in listed
            )
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading ``## `ferry demo-data` ``."""
    return title.lower().replace(" ", "-")


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
