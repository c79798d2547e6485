"""Continuous sync (``ferry sync --every 60s``) with Prometheus metrics.

Why: until cutover the target must follow the legacy database within minutes, unattended,
and whoever runs it needs to know when it stops doing so. One process syncs at a fixed
interval; a failed sync (the legacy server restarting, the run lock held by a manual run) is
logged and retried at the next tick, backing off exponentially up to ``max_backoff`` so a
long outage does not hammer either database. SIGTERM or SIGINT lets the sync in progress
finish (it is short and chunked; every chunk is its own transaction anyway) and then ends
the loop with exit code 0, so a service manager can stop it at any moment. A second signal
during that sync interrupts it outright (a chunk's transaction is then rolled back).

Metrics are served by ``prometheus_client`` on ``127.0.0.1:<port>/metrics`` (loopback
only: nothing here needs to be public), so the exposition format, the escaping of label
values and the HTTP server are the library's, not ours. They are refreshed after each sync,
so a scrape never queries the database.

Health data: logs carry table names, counts and error conditions only; a database error's
quoted values and its DETAIL (which may quote a row) are never logged.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg import sql

from ferry import catalog, ledger
from ferry.conninfo import connect
from ferry.errors import FerryError, WatchError, describe
from ferry.spec import Spec

log = logging.getLogger(__name__)


class Metrics:
    """The gauges and counters a scrape returns; updated by the loop, read by the server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ledger_rows: dict[str, int] = {}
        self.conflicts = 0
        self.last_sync_timestamp: float | None = None
        self.last_sync_duration: float | None = None
        self.last_sync_ok: bool | None = None
        self.syncs_total = 0
        self.failures_total = 0
        # A registry of its own, not the process-wide default: two loops in one process
        # (the tests) must not collide over metric names.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def update(self, **values: Any) -> None:
        with self._lock:
            for k, v in values.items():
                setattr(self, k, v)

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4, as a scrape receives it."""
        return generate_latest(self.registry).decode()


class _Collector(Collector):
    """Reads the loop's values at scrape time: the loop keeps plain numbers (tests read
    them), the library turns them into families."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        with m._lock:  # one consistent snapshot, taken before the scrape is written
            rows = GaugeMetricFamily(
                "ferry_ledger_rows", "Ledger rows by status.", labels=["status"]
            )
            for status, n in sorted(m.ledger_rows.items()):
                rows.add_metric([status], n)
            families: list[Metric] = [rows]
            ok = None if m.last_sync_ok is None else float(m.last_sync_ok)
            for name, text, value in (
                ("ferry_last_sync_timestamp_seconds",
                 "Unix time the last successful sync finished.", m.last_sync_timestamp),
                ("ferry_last_sync_duration_seconds",
                 "Duration of the last sync, successful or not.", m.last_sync_duration),
                ("ferry_last_sync_success", "1 if the last sync succeeded, else 0.", ok),
                ("ferry_conflicts",
                 "Ledger rows in conflict (edited in the target since ferry wrote them).",
                 float(m.conflicts)),
            ):  # fmt: skip
                families.append(GaugeMetricFamily(name, text, value=value))
            # The family's name has no _total: the library adds it to the sample.
            families.append(
                CounterMetricFamily(
                    "ferry_sync_failures", "Syncs that failed since start.", value=m.failures_total
                )
            )
            families.append(
                CounterMetricFamily(
                    "ferry_syncs", "Syncs attempted since start.", value=m.syncs_total
                )
            )
        return iter(families)


def serve_metrics(metrics: Metrics, port: int) -> Any:
    """Serve the metrics on 127.0.0.1:``port`` from prometheus_client's daemon thread; the
    caller ends it with ``shutdown()`` and ``server_close()``."""
    try:
        server, _ = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    except OSError as exc:
        raise WatchError(f"cannot serve metrics on 127.0.0.1:{port}: {exc.strerror}") from None
    return server


def refresh(metrics: Metrics, target: str, spec: Spec) -> None:
    """Ledger counts into the metrics; a database that is down keeps the old values."""
    led = ledger.table(spec, "ledger")
    try:
        with connect(target, app="ferry-metrics") as conn:
            if not catalog.exists(conn, led):
                return
            rows = conn.execute(
                sql.SQL(
                    "SELECT status, count(*), count(*) FILTER (WHERE conflict) FROM {} GROUP BY 1"
                ).format(ledger.with_aside(conn, spec, ["status", "conflict"]))
            ).fetchall()
            last = conn.execute(
                sql.SQL(
                    "SELECT extract(epoch FROM finished_at)::float8, "
                    "extract(epoch FROM finished_at - started_at)::float8 FROM {} "
                    "WHERE kind = 'sync' AND status = 'ok' ORDER BY run_id DESC LIMIT 1"
                ).format(ledger.table(spec, "runs"))
            ).fetchone()
    except (FerryError, psycopg.Error):
        return
    values: dict[str, Any] = {
        "ledger_rows": {status: int(n) for status, n, _ in rows},
        "conflicts": sum(int(c) for _, _, c in rows),
    }
    if last is not None and metrics.last_sync_timestamp is None:
        values["last_sync_timestamp"] = float(last[0])
        values["last_sync_duration"] = float(last[1])
    metrics.update(**values)


def next_delay(every: float, failures: int, max_backoff: float) -> float:
    """After ``failures`` failures in a row: the interval, doubled per failure beyond the
    first, capped at ``max_backoff`` (never below the interval itself)."""
    if failures <= 0:
        return every
    return min(every * 2 ** (failures - 1), max(max_backoff, every))


def watch(
    source: str, target: str, spec: Spec, *, every: float, max_backoff: float = 600.0,
    data_dir: Path | None = None, jobs: int = 2, metrics_port: int | None = None,
    on_result: Callable[[Any], None] | None = None, say: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> Metrics:  # fmt: skip
    """Sync every ``every`` seconds until SIGTERM/SIGINT (or ``stop`` is set).

    Returns the final metrics. Signal handlers are installed only when called from the main
    thread (tests may drive the loop from another thread with ``stop``).
    """
    from ferry.sync.loop import sync

    if every <= 0:
        raise WatchError("the sync interval must be positive")
    say = say or log.info
    stop = stop or threading.Event()
    metrics = Metrics()
    refresh(metrics, target, spec)
    server = serve_metrics(metrics, metrics_port) if metrics_port is not None else None
    previous: dict[int, Any] = {}
    received: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only a flag: printing from a signal handler could interleave with a print.
        received.append(signal.Signals(signum).name)
        stop.set()
        # A second signal interrupts the sync in progress instead of waiting for it.
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, on_signal)
    failures = 0
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                result = sync(source, target, spec, data_dir=data_dir, jobs=jobs)
            except Exception as exc:
                failures += 1
                delay = next_delay(every, failures, max_backoff)
                metrics.update(
                    syncs_total=metrics.syncs_total + 1,
                    failures_total=metrics.failures_total + 1,
                    last_sync_ok=False,
                    last_sync_duration=time.perf_counter() - t0,
                )
                say(
                    f"sync failed ({failures} in a row): {describe(exc, 'sync')}; "
                    f"next try in {delay:g} s"
                )
            else:
                failures = 0
                delay = every
                metrics.update(
                    syncs_total=metrics.syncs_total + 1,
                    last_sync_ok=True,
                    last_sync_timestamp=time.time(),
                    last_sync_duration=result.seconds,
                )
                if on_result is not None:
                    on_result(result)
            refresh(metrics, target, spec)
            # Wait for the next tick; a signal (or ``stop``) ends the wait at once.
            stop.wait(max(0.0, delay - (time.perf_counter() - t0)) if failures == 0 else delay)
    finally:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is on_signal:
                signal.signal(sig, handler)
        if server is not None:
            server.shutdown()
            server.server_close()
    why = f"{received[0]} received: " if received else ""
    say(f"{why}stopped after {metrics.syncs_total} syncs ({metrics.failures_total} failed)")
    return metrics
