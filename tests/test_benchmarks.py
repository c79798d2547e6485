"""The benchmark suite runs end to end at SF=0.05 and writes every figure it promises.

Why a test for a benchmark: a benchmark nobody runs rots, and a figure that silently turns
into null (a tool that stopped working, sync quietly skipped) is worse than none. So the
suite runs here as a user would run it, in a subprocess with the project's interpreter, and
the JSON must hold a number for every key -- null only where a tool is not installed or sync
is not available, and then with the reason written next to it. No timing is asserted: the
machine is shared.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.demo import world
from tests.helpers import outside_pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run.py"
SCALE = 0.05
AB_SCALE = 0.01  # ab.py's runs: its rounds and order are checked, not its figures
#: A second point of the scaling series: a world of its own, migrated and synced.
SMALL = 0.02
MULTIPLES = ("1", "10", "100")


def _python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


@pytest.fixture(scope="module")
def bench() -> Iterator[tuple[dict[str, Any], str]]:
    """One quick run of the suite, shared by the checks below (it takes ~25-90 s)."""
    with outside_pytest("ferry-test-bench-") as name:
        tmp = Path(name)
        out = tmp / "bench.json"
        done = subprocess.run(
            [_python(), str(SCRIPT), "--scale", str(SCALE), "--quick", "--json", str(out),
             "--workdir", str(tmp / "work"), "--scaling", str(SMALL)],
            capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield json.loads(out.read_text()), done.stdout + done.stderr


def test_ferry_migrate_figures(bench: tuple[dict[str, Any], str]) -> None:
    doc, _ = bench
    f = doc["ferry"]
    assert _is_number(f["migrate_s"]) and f["migrate_s"] > 0
    assert _is_number(f["peak_rss_mb"]) and f["peak_rss_mb"] > 0
    # The machine's CPU while each step ran: at least that of ferry's own process.
    cpu = f["machine_cpu_s_by_step"]
    assert set(cpu) >= {"migrate", "verify", "sync_noop"}
    assert all(_is_number(x) and x > 0 for x in cpu.values()), cpu
    # Of it, the kernel's: part of it, never more.
    kernel = f["machine_system_s_by_step"]
    assert set(kernel) == set(cpu)
    assert all(_is_number(kernel[k]) and 0 <= kernel[k] <= cpu[k] for k in cpu), kernel
    # Every legacy row and CSV row the generator made is staged by the migrate.
    expected = sum(world.expected_counts(SCALE).values())
    assert doc["world"]["rows"] == expected
    assert f["migrate_rows"] == expected


def test_verify_of_the_migrate_is_timed_and_finds_nothing(
    bench: tuple[dict[str, Any], str],
) -> None:
    f = bench[0]["ferry"]
    assert f["verify_status"] == "ok"
    assert _is_number(f["verify_s"]) and f["verify_s"] > 0
    assert 0 < f["verify_internal_s"] <= f["verify_s"]
    assert f["verify_problems"] == 0
    # The ferry process's own peak (VmHWM), not the driver's RSS it was forked from.
    assert 0 < f["peak_rss_mb_by_step"]["verify"] < 1024


def test_sync_figures_are_numbers_or_said_to_be_missing(
    bench: tuple[dict[str, Any], str],
) -> None:
    doc, output = bench
    f = doc["ferry"]
    assert set(f["sync_delta_s"]) == set(MULTIPLES)
    assert set(f["sync_delta_bytes"]) == set(MULTIPLES)
    figures = [f["sync_noop_s"], *f["sync_delta_s"].values(), *f["sync_delta_bytes"].values()]
    if f["sync_status"] == "ok":
        assert all(_is_number(x) for x in figures), figures
    else:
        # Only "not written yet" excuses a null, and the run must say so out loud.
        assert f["sync_status"] == "not_available", f["sync_note"]
        assert all(x is None for x in figures)
        assert f["sync_note"]
        assert "sync was NOT measured" in output
    # The deltas were applied either way, 10x and 100x the first one.
    changes = f["sync_delta_changes"]
    first = sum(changes["1"].values())
    assert first > 0
    for multiple in MULTIPLES[1:]:
        assert sum(changes[multiple].values()) == pytest.approx(int(multiple) * first, rel=0.05)
        # The bulk deltas never touch a row they insert, so a sync sees exactly what they did
        # (checked when the sync reports what it found in the source).
        seen = (f["sync_counts"].get(multiple) or {}) if f["sync_status"] == "ok" else {}
        for op, n in changes[multiple].items():
            if f"source_{op}" in seen:
                assert seen[f"source_{op}"] == n, (multiple, op)


def test_baselines_present_or_explained(bench: tuple[dict[str, Any], str]) -> None:
    doc, _ = bench
    b = doc["baselines"]
    table_rows = sum(world.expected_counts(SCALE)[t] for t in world.LEGACY_TABLES)
    assert _is_number(b["copy_pipe_s"])
    assert b["copy_pipe_rows"] == table_rows
    assert _is_number(b["copy_pipe_machine_cpu_s"])
    for tool in ("pgcopydb", "pgloader"):
        if shutil.which(tool) is None:
            assert b[f"{tool}_s"] is None
            assert "not installed" in b[f"{tool}_note"]
        else:
            assert _is_number(b[f"{tool}_s"]), b[f"{tool}_note"]
            assert b[f"{tool}_rows"] == table_rows
            assert _is_number(b[f"{tool}_machine_cpu_s"]) and b[f"{tool}_machine_cpu_s"] > 0


def test_scaling_machine_and_when(bench: tuple[dict[str, Any], str]) -> None:
    doc, output = bench
    # --quick: the main scale, and here the one --scaling adds.
    assert [p["scale"] for p in doc["scaling"]] == [SMALL, SCALE]
    point = doc["scaling"][1]
    assert point["rows"] == doc["ferry"]["migrate_rows"]
    assert _is_number(point["migrate_s"])
    m = doc["machine"]
    assert isinstance(m["cpu_count"], int) and m["cpu_count"] >= 1
    assert m["cpu_model"] and m["postgres_version"]
    assert _is_number(m["memory_gb"])
    # Every ferry process timed ran from bytecode, as an installed package does.
    assert m["bytecode_compiled"] is True
    assert len(m["load_average"]) == 3 and all(_is_number(x) for x in m["load_average"])
    assert dt.datetime.fromisoformat(doc["when"]).tzinfo is not None
    assert doc["failed"] == []
    assert "password" not in output.lower()


def test_every_scale_has_its_syncs_and_peak_memory(bench: tuple[dict[str, Any], str]) -> None:
    """A no-op sync and DOMAIN.md's delta at every point of the series, per change source;
    the main scale's are the main run's own."""
    doc, _ = bench
    f = doc["ferry"]
    assert doc["changes"] == ["checksum"]
    small, main = doc["scaling"]
    assert small["rows"] == sum(world.expected_counts(SMALL).values())
    assert main["sync_noop_s"] == f["sync_noop_s"]
    assert main["sync_delta_x1_s"] == f["sync_delta_s"]["1"]
    for point in (small, main):
        figures = point["sync"]["checksum"]
        if f["sync_status"] != "ok":
            assert figures["status"] == "not_available"
            continue
        assert figures["status"] == "ok", figures["note"]
        assert figures["migrate_s"] == point["migrate_s"]
        assert 0 <= figures["migrate_system_s"] <= figures["migrate_cpu_s"]
        for key in ("noop_s", "delta_x1_s", "noop_peak_rss_mb", "delta_x1_peak_rss_mb"):
            assert _is_number(figures[key]) and figures[key] > 0, key
        assert point["sync_noop_s"] == figures["noop_s"]
        assert point["peak_rss_mb_max"] >= max(point["peak_rss_mb"], figures["noop_peak_rss_mb"])
    if f["sync_status"] == "ok":
        # The main scale's delta, on the other scale's database too: same changes, other size.
        assert _is_number(small["sync"]["checksum"]["delta_same_s"])
        assert main["sync"]["checksum"]["delta_same_s"] is None


def test_bad_change_source_is_refused_before_anything_starts() -> None:
    done = subprocess.run(
        [_python(), str(SCRIPT), "--changes", "checksum,binlog", "--quick"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "change source must be one of checksum, wal" in done.stderr


def test_bad_scaling_is_refused_before_anything_starts() -> None:
    done = subprocess.run(
        [_python(), str(SCRIPT), "--scaling", "0,1", "--quick"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "scale must be" in done.stderr


def test_two_revisions_migrate_at_once(cluster_dir: Path) -> None:
    """ab.py exports the base revision, runs it beside this checkout, and reports each round."""
    out, work = cluster_dir / "ab.json", cluster_dir / "work"
    done = subprocess.run(
        [_python(), str(ROOT / "benchmarks" / "ab.py"), "--base", "HEAD", "--rounds", "2",
         "--scale", str(AB_SCALE), "--json", str(out), "--workdir", str(work)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["base"] == "HEAD" and doc["scale"] == AB_SCALE
    assert [r["first"] for r in doc["rounds"]] == ["base", "this"]
    assert all(_is_number(r["base"]) and _is_number(r["this"]) for r in doc["rounds"])
    assert (work / "base" / "src" / "ferry" / "__init__.py").is_file()
    assert "finished first in" in done.stdout


def test_two_revisions_migrate_in_turn_with_the_cpu_each_spent(cluster_dir: Path) -> None:
    """--in-turn runs each side alone, in alternating order, and counts the CPU it cost."""
    out = cluster_dir / "ab.json"
    done = subprocess.run(
        [_python(), str(ROOT / "benchmarks" / "ab.py"), "--base", "HEAD", "--rounds", "2",
         "--scale", str(AB_SCALE), "--in-turn", "--json", str(out), "--workdir", str(cluster_dir)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["in_turn"] is True
    assert [r["first"] for r in doc["rounds"]] == ["base", "this"]
    for r in doc["rounds"]:
        assert _is_number(r["base"]) and _is_number(r["this"])
        # The machine was busy for each run: at least the CPU of its own process.
        assert r["base_cpu"] > 0 and r["this_cpu"] > 0
