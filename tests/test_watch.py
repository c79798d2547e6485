"""Continuous sync: ``ferry sync --every`` as a real process on the library world, stopped by
a signal, with its metrics scraped while it runs; and the backoff on failures."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from ferry import ledger
from ferry.embedded import LocalCluster
from ferry.engine.pipeline import migrate
from ferry.ops import status
from ferry.spec import load_spec
from ferry.sync import watch
from tests.helpers import fresh_db

LIB = Path(__file__).parent / "specs" / "library"
MARKER = "PHI-WATCH-5521"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = predicate()
        except (OSError, urllib.error.URLError):
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture()
def lib(cluster: LocalCluster, tmp_path: Path) -> tuple[str, str, Path]:
    source = fresh_db(cluster, "w_lib_src", LIB / "source.sql")
    fresh_db(cluster, "w_lib_tgt", LIB / "target.sql", owner="lib_owner")
    for name in ("spec.toml", "books.sql", "loans.csv"):
        (tmp_path / name).write_text((LIB / name).read_text())
    target = cluster.conninfo("w_lib_tgt", user="lib_owner")
    migrate(source, target, load_spec(tmp_path / "spec.toml"))
    return source, target, tmp_path / "spec.toml"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sync_every_runs_until_signalled(
    lib: tuple[str, str, Path], tmp_path: Path, signum: signal.Signals
) -> None:
    source, target, spec_file = lib
    port = free_port()
    log = (tmp_path / "watch.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferry.cli", "sync", "--every", "1s", "--metrics-port", str(port),
         "--spec", str(spec_file), "--source", source, "--target", target],
        stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        first = wait_for(lambda: scrape(port).get("ferry_syncs_total", 0) >= 1, 30, "a sync")
        assert first
        metrics = scrape(port)
        assert metrics['ferry_ledger_rows{status="migrated"}'] == 8
        assert metrics["ferry_conflicts"] == 0 and metrics["ferry_sync_failures_total"] == 0
        assert metrics["ferry_last_sync_timestamp_seconds"] > time.time() - 60
        assert metrics["ferry_last_sync_duration_seconds"] >= 0
        if signum == signal.SIGTERM:
            # A change in the legacy database arrives with a later tick.
            with psycopg.connect(source, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO lib_book (id, author_id, title, status, price) "
                    "VALUES (18, 1, %s, 'published', 1)",
                    [MARKER],
                )
            wait_for(
                lambda: scrape(port).get('ferry_ledger_rows{status="migrated"}') == 9, 30, "sync"
            )
            wait_for(lambda: scrape(port)["ferry_syncs_total"] >= 3, 30, "three syncs")
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log.seek(0)
    output = log.read()
    assert f"{signum.name} received: stopped after" in output
    assert MARKER not in output
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    spec = load_spec(spec_file)
    with psycopg.connect(target) as conn:
        ledger.check_invariant(conn, spec)
        runs = conn.execute(
            "SELECT status, count(*) FROM ferry.runs WHERE kind = 'sync' GROUP BY 1"
        ).fetchall()
    assert dict(runs)["ok"] >= 1 and set(dict(runs)) == {"ok"}
    assert not status.check(status.collect(target, spec), 60)


def test_failed_syncs_back_off_and_are_logged_without_secrets(
    lib: tuple[str, str, Path],
) -> None:
    _, target, spec_file = lib
    spec = load_spec(spec_file)
    lines: list[str] = []
    stop = threading.Event()
    bad_source = "host=127.0.0.1 port=1 dbname=x user=x password=hunter2-secret"
    done: list[watch.Metrics] = []
    loop = threading.Thread(
        target=lambda: done.append(
            watch.watch(
                bad_source, target, spec, every=0.1, max_backoff=0.4, say=lines.append, stop=stop
            )
        )
    )
    loop.start()
    wait_for(lambda: sum("sync failed" in line for line in lines) >= 4, 30, "four failures")
    stop.set()
    loop.join(timeout=30)
    (metrics,) = done
    assert metrics.failures_total >= 4 and metrics.syncs_total == metrics.failures_total
    assert metrics.last_sync_ok is False
    text = "\n".join(lines)
    assert "hunter2-secret" not in text and "cannot connect" in text
    assert "next try in 0.1 s" in text and "next try in 0.4 s" in text
    assert "ferry_sync_failures_total" in metrics.render()
    # The failed syncs are failed runs: the check says so.
    problems = status.check(status.collect(target, spec), 3600)
    assert any("failed" in p for p in problems)


def test_metrics_text_is_prometheus_clients() -> None:
    """The names stay those dashboards know; a label value is escaped by the library."""
    metrics = watch.Metrics()
    metrics.update(ledger_rows={"migrated": 8, 'odd"status\\': 1}, syncs_total=3, conflicts=2)
    text = metrics.render()
    assert 'ferry_ledger_rows{status="migrated"} 8.0' in text
    assert 'ferry_ledger_rows{status="odd\\"status\\\\"} 1.0' in text
    assert "# TYPE ferry_syncs_total counter\nferry_syncs_total 3.0" in text
    assert "ferry_conflicts 2.0" in text and "ferry_sync_failures_total 0.0" in text
    assert "_created" not in text  # the same samples as before the library
    # No sync yet: the gauge is declared but has no sample (not a misleading 0).
    assert "\nferry_last_sync_success " not in text


def test_metrics_port_taken_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(watch.WatchError, match=r"cannot serve metrics on 127\.0\.0\.1"):
            watch.serve_metrics(watch.Metrics(), busy.getsockname()[1])


def test_next_delay() -> None:
    assert [watch.next_delay(60, n, 600) for n in range(6)] == [60, 60, 120, 240, 480, 600]
    assert watch.next_delay(900, 3, 600) == 900  # never below the interval
