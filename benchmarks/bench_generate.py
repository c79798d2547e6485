"""Benchmark the demo world generator: rows, seconds, rows/s and peak memory.

Why: the demo must build DOMAIN.md's SF=1 world (about 2.6M legacy rows) in well under a minute
on two cores, or nobody runs it; and the generator must stay set-based, which shows as a flat
Python RSS whatever the scale.

    .venv/bin/python benchmarks/bench_generate.py --scale 1.0 [--seed 1] [--delta]

Runs on a throwaway embedded cluster in a temporary directory. Server memory is sampled from
/proc (Linux only; psutil is not a dependency): the peak resident set (VmHWM) of the busiest
server process, and the peak of the sum over all server processes. Both include the pages of
shared_buffers a process touched, so they overstate private memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

from ferry.demo import world
from ferry.embedded import LocalCluster, running


class ServerMemory(threading.Thread):
    """Samples the resident memory of a cluster's postmaster and its children every 100 ms."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.peak_process_kb = 0
        self.peak_total_kb = 0
        self._stop_event = threading.Event()

    def _server_pids(self) -> list[int]:
        try:
            postmaster = int((self.cluster.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        pids = [postmaster]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # Field 4 is the parent pid; the command name before it may contain spaces.
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == postmaster:
                pids.append(int(stat.parent.name))
        return pids

    @staticmethod
    def _status_kb(pid: int, field: str) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def run(self) -> None:
        while not self._stop_event.wait(0.1):
            pids = self._server_pids()
            hwm = max((self._status_kb(pid, "VmHWM") for pid in pids), default=0)
            total = sum(self._status_kb(pid, "VmRSS") for pid in pids)
            self.peak_process_kb = max(self.peak_process_kb, hwm)
            self.peak_total_kb = max(self.peak_total_kb, total)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _python_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="scale factor (1.0 = DOMAIN.md)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--delta", action="store_true", help="also time the delta")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ferry-bench-") as tmp, running(Path(tmp)) as cluster:
        source = cluster.create_database("legacy", drop=True)
        target = cluster.create_database("target", drop=True)
        sampler = ServerMemory(cluster)
        sampler.start()
        started = time.perf_counter()
        counts = world.generate(source, target, Path(tmp) / "out", scale=args.scale, seed=args.seed)
        elapsed = time.perf_counter() - started
        delta_elapsed = None
        if args.delta:
            started = time.perf_counter()
            changes = world.apply_delta(source, Path(tmp) / "out", scale=args.scale, seed=args.seed)
            delta_elapsed = time.perf_counter() - started
        sampler.stop()

    rows = sum(counts.values())
    print(f"scale {args.scale:g}, seed {args.seed}")
    print(f"rows generated        {rows:>12,}  (legacy tables + CSV exports)")
    print(f"seconds               {elapsed:>12.1f}")
    print(f"rows/s                {rows / elapsed:>12,.0f}")
    print(f"peak RSS python       {_python_peak_mb():>12.0f} MB")
    print(f"peak RSS server proc  {sampler.peak_process_kb / 1024:>12.0f} MB  (sampled, VmHWM)")
    print(f"peak RSS server total {sampler.peak_total_kb / 1024:>12.0f} MB  (sampled, all procs)")
    if delta_elapsed is not None:
        print(f"delta                 {delta_elapsed:>12.1f} s  {changes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
