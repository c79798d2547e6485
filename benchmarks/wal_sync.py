"""Sync timings with changes from the WAL against the checksum diff, on the demo world.

    .venv/bin/python benchmarks/wal_sync.py --scale 0.1

For each change source, on one embedded cluster started with ``wal_level = logical``: build
the world, migrate, sync until nothing changes, time three no-op syncs, apply DOMAIN.md's
day of changes, time that sync, then one more no-op. The first syncs after a migrate are
shown apart: until a running-transactions record is decoded past the migrate, the slot
re-reads the WAL written since it was made (here, by the migrate into the target on the same
cluster too). Prints figures only; the fates of both targets are compared at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import psycopg

from ferry.demo import world
from ferry.demo.run import MIGRATOR, dispatch_spec
from ferry.embedded import running
from ferry.engine.pipeline import migrate
from ferry.sync.loop import sync

FATES = (
    "SELECT md5(string_agg(concat_ws(',', model, source_key, status, reason, target_uuid), '|'"
    " ORDER BY model, source_key)) FROM ferry.ledger"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--settle", type=float, default=16.0, help="seconds to wait after migrate")
    parser.add_argument("--modes", default="wal,checksum", help="change sources to time")
    parser.add_argument("--profile", action="store_true", help="where a no-op sync's time goes")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="ferry-wal-") as tmp,
        running(Path(tmp) / "cluster", logical=True) as cluster,
    ):
        fates = {}
        for mode in args.modes.split(","):
            work = Path(tmp) / mode
            work.mkdir()
            source = cluster.create_database(f"legacy_{mode}", drop=True)
            admin = cluster.create_database(f"target_{mode}", drop=True)
            world.generate(source, admin, work, scale=args.scale, seed=args.seed)
            target = cluster.conninfo(f"target_{mode}", user=MIGRATOR)
            spec = dispatch_spec()
            t0 = time.perf_counter()
            migrate(source, target, spec, data_dir=work, changes="wal" if mode == "wal" else None)
            print(f"{mode}: migrate {time.perf_counter() - t0:.2f} s")
            first = sync(source, target, spec, data_dir=work)
            print(f"{mode}: first sync after migrate {first.seconds:.2f} s")
            time.sleep(args.settle)  # a running-xacts record (every 15 s) lets the slot move
            sync(source, target, spec, data_dir=work)
            noops = [sync(source, target, spec, data_dir=work) for _ in range(3)]
            assert not any(r.changed for r in noops)
            print(f"{mode}: no-op sync " + ", ".join(f"{r.seconds:.3f}" for r in noops) + " s")
            if args.profile:
                profiler = cProfile.Profile()
                profiler.runcall(sync, source, target, spec, data_dir=work)
                stats = pstats.Stats(profiler).sort_stats("cumulative")
                stats.print_stats(r"ferry/", 60)
            world.apply_delta(source, work, scale=args.scale, seed=args.seed)
            profiler = cProfile.Profile()
            delta = profiler.runcall(sync, source, target, spec, data_dir=work)
            c = delta.counts
            print(
                f"{mode}: DOMAIN delta sync {delta.seconds:.3f} s, {c['bytes_from_source']:,} "
                f"bytes from source, source +{c['source_inserted']} ~{c['source_updated']} "
                f"-{c['source_deleted']}"
                + (f", {c['wal']['changes']} changes read" if "wal" in c else "")
            )
            if args.profile:
                stats = pstats.Stats(profiler).sort_stats("cumulative")
                stats.print_stats(r"ferry/", 60)
            after = sync(source, target, spec, data_dir=work)
            print(f"{mode}: no-op sync after the delta {after.seconds:.3f} s")
            with psycopg.connect(target) as conn:
                row = conn.execute(FATES).fetchone()
            fates[mode] = row[0] if row else None
        if len(fates) == 2:
            print("same fates from both change sources:", fates["wal"] == fates["checksum"])


if __name__ == "__main__":
    main()
