"""The command line: what an operator sees carries no row contents and no password."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg

from ferry.cli import doc as clidoc
from ferry.embedded import LocalCluster
from tests.helpers import fresh_db

LIB = Path(__file__).parent / "specs" / "library"
MARKER = "PHI-SECRET-4417"
CLI_MD = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
REGENERATE = "run: .venv/bin/python -m ferry.cli.doc > docs/cli.md"


def undocumented(doc: str) -> list[str]:
    """Every command, argument and option of the app (as click knows them, not as the
    generator writes them) that ``doc`` does not show in the command's own section."""
    missing = []
    for name, command in clidoc.commands():
        head = f"## `{name}`\n"
        if head not in doc:
            missing.append(name)
            continue
        section = doc.split(head, 1)[1].split("\n## ", 1)[0]
        # The first cell of the section's table rows, where --help puts the names.
        cells = " ".join(
            line.split("|")[1] for line in section.splitlines() if line.startswith("| `")
        )
        for param in command.params:
            if param.param_type_name == "argument":
                names = [param.name]
            else:
                names = [*param.opts, *param.secondary_opts]
            missing += [
                f"{name} {n}"
                for n in names
                if n != "--help" and not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", cells)
            ]
    return missing


def test_cli_reference_documents_every_command_and_option() -> None:
    doc = CLI_MD.read_text()
    assert undocumented(doc) == [], REGENERATE
    assert doc == clidoc.render(), f"docs/cli.md differs from --help; {REGENERATE}"
    # The check sees a missing option or command.
    without = "\n".join(line for line in doc.splitlines() if "`--every" not in line)
    assert undocumented(without) == ["ferry sync --every"]
    assert "ferry quarantine undo" in undocumented(doc.replace("## `ferry quarantine undo`", ""))


def test_migrate_output_has_no_row_contents_nor_password(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    source = fresh_db(cluster, "cli_src", LIB / "source.sql")
    fresh_db(cluster, "cli_tgt", LIB / "target.sql", owner="lib_owner")
    for name in ("spec.toml", "books.sql"):
        (tmp_path / name).write_text((LIB / name).read_text())
    # A loan whose book id is text: the model's cast fails on it, with the value in the
    # database's message.
    (tmp_path / "loans.csv").write_text((LIB / "loans.csv").read_text() + f"L-9,{MARKER},m9\n")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("UPDATE lib_book SET title = %s WHERE id = 16", [MARKER])
    target = cluster.conninfo("cli_tgt", user="lib_owner")
    done = subprocess.run(
        [sys.executable, "-m", "ferry.cli", "migrate", "--spec", str(tmp_path / "spec.toml"),
         "--source", source + " password=hunter2-secret", "--target", target],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-2000:]
    assert MARKER not in output
    assert "hunter2-secret" not in output
    assert "password=***" in output
    with psycopg.connect(target) as conn:
        row = conn.execute(
            "SELECT status, reason, sqlstate, message FROM ferry.ledger "
            "WHERE model = 'loans' AND source_key = 'L-9'"
        ).fetchone()
    assert row is not None
    assert row[:3] == ("quarantined", "invalid_text_representation", "22P02")
    assert MARKER not in row[3]


def test_piped_output_is_plain_complete_and_split(cluster: LocalCluster, tmp_path: Path) -> None:
    """Piped, as cron and CI see it: the results (the closing table whole, its words uncut,
    whatever COLUMNS says) on stdout, the progress as plain lines on stderr."""
    source = fresh_db(cluster, "cli_src", LIB / "source.sql")
    fresh_db(cluster, "cli_tgt", LIB / "target.sql", owner="lib_owner")
    for name in ("spec.toml", "books.sql", "loans.csv"):
        (tmp_path / name).write_text((LIB / name).read_text())
    target = cluster.conninfo("cli_tgt", user="lib_owner")
    done = subprocess.run(
        [sys.executable, "-m", "ferry.cli", "migrate", "--spec", str(tmp_path / "spec.toml"),
         "--source", source, "--target", target],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "COLUMNS": "40", "TERM": "xterm-256color"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out, err = done.stdout, done.stderr
    assert "ferry: fate of every source row" in out
    header = next(line for line in out.splitlines() if "source" in line and "staged" in line)
    for column in ("migrated", "repaired", "merged", "quarantined", "excluded", "adds up"):
        assert column in header
    book = next(line for line in out.splitlines() if "lib_book" in line)
    assert "yes" in book and "check_violation 1" in book and "draft 1" in book
    for reason in ("orphan_author 1", "parent_quarantined 1", "unique_violation 1"):
        assert reason in out
    assert "…" not in out and "\x1b[" not in out + err  # nothing cut, no colour codes
    assert all(line == line.rstrip() for line in out.splitlines())
    assert "rows/s" in out.splitlines()[-1]
    # Progress and logs: plain lines on stderr, none of the results.
    assert "staged lib_book: 8 rows" in err and "model books: 8 rows" in err
    assert "ferry migrate library:" in err
    assert "fate of every source row" not in err and "━" not in err


def test_unreachable_database_error_hides_password(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ferry.cli", "migrate", "--spec", str(LIB / "spec.toml"),
         "--source", "host=127.0.0.1 port=1 user=x password=topsecret-99 dbname=x",
         "--target", "host=127.0.0.1 port=1 user=x password=topsecret-99 dbname=y"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "topsecret-99" not in done.stdout + done.stderr
    assert "cannot connect" in done.stdout + done.stderr


def test_readme_demo_command_end_to_end(cluster_dir: Path) -> None:
    """The Quick start's demo, as a user runs it (relative work directory), then --delta."""
    for extra in ([], ["--delta"]):
        done = subprocess.run(
            [sys.executable, "-m", "ferry.cli", "demo", "--scale", "0.01", *extra],
            capture_output=True, text=True, timeout=300, cwd=cluster_dir, check=False,
        )  # fmt: skip
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-3000:]
        assert "verify ok" in done.stdout and "report: " in done.stdout  # results on stdout
        assert "fate of every source row" in done.stdout
        assert "verify ok" not in done.stderr and "model " in done.stderr  # progress on stderr
    for name in ("report.md", "report.html", "report.json", "ground_truth.csv"):
        assert (cluster_dir / ".ferry" / "demo" / name).exists()
