"""Benchmark of the range-checksum diff on a 2M-row notification table.

    .venv/bin/python benchmarks/bench_diff.py [--rows 2000000] [--workdir DIR]

Builds a throwaway local cluster with a source database and a stage database, fills the
source with notification-like rows, stages them by binary COPY, and measures:

* baselines on the source: ``SELECT count(*)`` and ``md5(t::text)`` of every row, one side
  and both sides at once (the cost of the naive "hash everything" comparison);
* the no-op diff (nothing changed);
* diff + apply (:func:`ferry.sync.diff.sync_stage_table`) after 700, 7,000 and 70,000 changed
  rows (a third updates at random, a third deletes at random, a third inserts appended);
  each run is checked by a following diff, which must be empty.

Source and stage are two databases of one cluster, so both sides share this machine's cores
(in real life they are two servers).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ferry.embedded import running
from ferry.sync.diff import TableDiff, diff_table, sync_stage_table

TABLE = sql.Identifier("public", "notification")
COLUMNS = [
    "id",
    "recipient_id",
    "actor_id",
    "verb",
    "template_id",
    "template_context",
    "read",
    "created",
]
DDL = """CREATE TABLE public.notification (
    id integer PRIMARY KEY,
    recipient_id integer NOT NULL,
    actor_id integer,
    verb text NOT NULL,
    template_id integer,
    template_context text,
    read boolean NOT NULL DEFAULT false,
    created timestamp NOT NULL)"""
# ~150 characters of JSON per row, as the legacy notification table holds.
FILL = """INSERT INTO public.notification
SELECT g,
       (g::int8 * 7919) %% 50000,
       CASE WHEN g %% 13 = 0 THEN NULL ELSE ((g::int8 * 104729) %% 30000)::int END,
       (ARRAY['commented', 'assigned', 'approved', 'shipped', 'created'])[1 + g %% 5],
       g %% 40,
       json_build_object('case', g, 'patient', 'P' || (g::int8 * 31) %% 99991,
                         'office', 'Office ' || (g %% 977), 'note', md5(g::text),
                         'link', '/cases/' || g || '/steps/' || (g %% 9))::text,
       g %% 3 = 0,
       timestamp '2019-01-01' + g * interval '47 seconds'
FROM generate_series(%s::int, %s::int) g"""


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def on_both(src: psycopg.Connection[Any], stg: psycopg.Connection[Any], query: str) -> None:
    """Run one query on both databases at once, as the diff does."""
    errors: list[BaseException] = []

    def run(conn: psycopg.Connection[Any]) -> None:
        try:
            conn.execute(query).fetchall()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in (src, stg)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


def build(src: psycopg.Connection[Any], stg: psycopg.Connection[Any], rows: int) -> float:
    started = time.perf_counter()
    for conn in (src, stg):
        conn.execute("DROP TABLE IF EXISTS public.notification")
        conn.execute(DDL)
    src.execute(FILL, [1, rows])
    with (
        src.cursor().copy(sql.SQL("COPY {} TO STDOUT (FORMAT BINARY)").format(TABLE)) as out,
        stg.cursor().copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(TABLE)) as inp,
    ):
        for data in out:
            inp.write(data)
    for conn in (src, stg):
        conn.execute("VACUUM ANALYZE public.notification")
        conn.execute("SELECT count(*) FROM public.notification").fetchone()  # warm the cache
    return time.perf_counter() - started


def change(src: psycopg.Connection[Any], n: int, rng: random.Random) -> None:
    """n changed rows: n/3 updates and n/3 deletes at random, the rest new rows at the end."""
    top = src.execute("SELECT max(id) FROM public.notification").fetchone()[0]
    ids = src.execute("SELECT array_agg(id) FROM public.notification").fetchone()[0]
    picked = rng.sample(ids, 2 * (n // 3))
    updates, deletes = picked[: n // 3], picked[n // 3 :]
    inserts = n - len(updates) - len(deletes)
    src.execute(
        "UPDATE public.notification SET read = NOT read, template_context = template_context"
        " || ' ' WHERE id = ANY(%s)",
        [updates],
    )
    src.execute("DELETE FROM public.notification WHERE id = ANY(%s)", [deletes])
    src.execute(FILL, [top + 1, top + inserts])
    src.execute("ANALYZE public.notification")


def size(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute("SELECT pg_total_relation_size('public.notification')").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--changes", type=str, default="700,7000,70000")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="ferry-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        with running(workdir) as cluster:
            src_info = cluster.create_database("bench_source", drop=True)
            stg_info = cluster.create_database("bench_stage", drop=True)
            with (
                psycopg.connect(src_info, autocommit=True) as src,
                psycopg.connect(stg_info, autocommit=True) as stg,
            ):
                run(src, stg, args.rows, [int(x) for x in args.changes.split(",")], rng)


def run(
    src: psycopg.Connection[Any],
    stg: psycopg.Connection[Any],
    rows: int,
    changes: list[int],
    rng: random.Random,
) -> None:
    print(f"cores: {os.cpu_count()}, rows: {rows:,}")
    build_s = build(src, stg, rows)
    table_bytes = size(src)
    print(f"built and staged in {build_s:.1f} s; table + index: {table_bytes / 1e6:.0f} MB")

    results: list[tuple[str, float, int | None, str]] = []

    def best(fn: Callable[[], Any], times: int = 3) -> tuple[float, Any]:
        runs = [timed(fn) for _ in range(times)]
        return min(runs, key=lambda r: r[0])

    settings = "SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; SET extra_float_digits = 1"
    for conn in (src, stg):
        conn.execute(settings)
    count_s, _ = best(lambda: src.execute("SELECT count(*) FROM public.notification").fetchone())
    results.append(("baseline: count(*) scan, one side", count_s, None, ""))
    md5_q = "SELECT count(md5(t::text)) FROM public.notification t"
    md5_s, _ = best(lambda: src.execute(md5_q).fetchone(), 2)
    results.append(("baseline: md5(t::text) every row, one side", md5_s, None, ""))
    md5_both_s, _ = best(lambda: on_both(src, stg, md5_q), 2)
    results.append(("baseline: md5(t::text) every row, both sides", md5_both_s, None, ""))
    for conn in (src, stg):
        conn.execute("RESET ALL")

    def diff() -> TableDiff:
        return diff_table(src, TABLE, stg, TABLE, COLUMNS[:1], COLUMNS)

    noop_s, noop = best(diff)
    assert not noop.changed
    results.append(
        (
            "no-op diff",
            noop_s,
            noop.bytes_from_source,
            f"{noop.buckets_compared} buckets, {noop.levels} level",
        )
    )
    for n in changes:
        change(src, n, rng)
        synced = sync_stage_table(src, TABLE, stg, TABLE, COLUMNS[:1], COLUMNS)
        applied = synced.applied
        assert applied is not None
        diff_s = synced.seconds - applied.seconds
        results.append(
            (
                f"diff + apply, {n:,} changed",
                synced.seconds,
                synced.bytes_from_source,
                f"diff {diff_s:.2f} s ({synced.levels} levels, {synced.buckets_compared:,} "
                f"buckets, {synced.rows_compared:,} rows hashed), apply {applied.seconds:.2f} s"
                f" ({applied.rows_copied:,} rows copied, +{len(synced.inserted):,} "
                f"~{len(synced.updated):,} -{len(synced.deleted):,})",
            )
        )
        check_s, check = timed(diff)
        assert not check.changed, check.summary()
        results.append((f"  no-op diff after {n:,}", check_s, check.bytes_from_source, ""))

    total_rows = rows
    print()
    header = f"{'measure':46s} {'seconds':>8s} {'rows/s':>12s} {'x no-op':>8s} {'MB src':>8s}"
    print(header)
    print("-" * len(header))
    for name, seconds, sent, note in results:
        rate = total_rows / seconds if seconds else float("inf")
        mb = f"{sent / 1e6:8.2f}" if sent is not None else f"{'':8s}"
        print(f"{name:46s} {seconds:8.3f} {rate:12,.0f} {seconds / noop_s:8.2f} {mb}")
        if note:
            print(f"    {note}")
    print()
    print(
        f"table {table_bytes / 1e6:.0f} MB; no-op diff {noop_s:.2f} s = "
        f"{noop_s / md5_both_s:.2f} x md5 of every row on both sides, "
        f"{noop_s / count_s:.1f} x a count(*) scan"
    )


if __name__ == "__main__":
    main()
