"""``ferry status``: where a migration stands, at a glance and for alerting.

Why: between the first migrate and cutover, ferry runs unattended (cron, or ``sync
--every``). Someone has to notice when syncs stop succeeding or stop happening at all, and
an operator wants one screen with the last runs, the fates, the open conflicts and what sits
in quarantine. ``check`` turns that into an exit code for cron and monitoring.

Freshness counts migrate runs as well as syncs: a migrate brings the target in step with the
source just as a sync does. Everything is read from the ledger; nothing here is row content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ferry import catalog, ledger
from ferry.conninfo import connect
from ferry.errors import StatusError
from ferry.spec import Spec
from ferry.sync import wal

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``, or plain seconds -> seconds."""
    raw = text.strip().lower().replace(" ", "")
    pos, total, parts = 0, 0.0, []
    for match in _PART.finditer(raw):
        if match.start() != pos:
            break
        parts.append(match.group(2))
        total += float(match.group(1)) * _UNITS[match.group(2) or "s"]
        pos = match.end()
    # A bare number is seconds only on its own: "1h30" is ambiguous.
    if not raw or pos != len(raw) or (len(parts) > 1 and not all(parts)):
        raise StatusError(f"{text!r} is not a duration: write it like 90s, 15m, 2h or 1h30m")
    return total


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


@dataclass
class Status:
    spec: str
    ledger_schema: str
    last_migrate: ledger.RunSummary | None
    last_sync: ledger.RunSummary | None
    last_ok: ledger.RunSummary | None  # the last successful migrate or sync
    last_rollback: ledger.RunSummary | None
    running: ledger.RunSummary | None
    ledger_rows: dict[str, int] = field(default_factory=dict)
    conflicts: int = 0
    quarantined: list[tuple[str, str, int]] = field(default_factory=list)  # model, reason, n
    decisions: int = 0
    resync_pending: int = 0
    slot: SlotStatus | None = None  # change capture from the WAL (``wal.py``)

    @property
    def since_last_ok(self) -> float | None:
        return self.last_ok.age if self.last_ok else None

    def as_json(self) -> dict[str, Any]:
        def run(r: ledger.RunSummary | None) -> dict[str, Any] | None:
            return r.as_json() if r else None

        return {
            "spec": self.spec,
            "ledger_schema": self.ledger_schema,
            "last_migrate": run(self.last_migrate),
            "last_sync": run(self.last_sync),
            "last_successful_sync": run(self.last_ok),
            "seconds_since_last_successful_sync": self.since_last_ok,
            "last_rollback": run(self.last_rollback),
            "running": run(self.running),
            "ledger_rows": self.ledger_rows,
            "conflicts": self.conflicts,
            "quarantined": [{"model": m, "reason": r, "rows": n} for m, r, n in self.quarantined],
            "operator_decisions": self.decisions,
            "resync_pending": self.resync_pending,
            "replication_slot": self.slot.as_json() if self.slot else None,
        }


@dataclass
class SlotStatus:
    """The source's replication slot: how far behind it is, and since when. A slot that is
    not advanced keeps WAL on the source's disk until the disk fills, so it is worth an
    alert. ``lag_bytes`` and the rest are None when the source was not given."""

    slot: str
    created_at: datetime
    advanced_at: datetime | None
    age: float  # seconds since last advanced (or made)
    max_lag: int  # bytes: more is a problem for --check, and shown as a warning
    read: bool = False  # the source was asked
    exists: bool = False
    lag_bytes: int | None = None
    retained_bytes: int | None = None
    safe_wal_size: int | None = None
    wal_status: str | None = None

    @property
    def problem(self) -> str | None:
        if not self.read:
            return None
        if not self.exists or self.wal_status == "lost":
            return (
                f"replication slot {self.slot} is gone from the source (or lost its WAL): the "
                "next sync compares every row by checksums and makes it again"
            )
        held = max(self.lag_bytes or 0, self.retained_bytes or 0)
        if held > self.max_lag:
            return (
                f"replication slot {self.slot} holds {format_bytes(held)} of WAL on the source "
                f"(more than {format_bytes(self.max_lag)}), last advanced "
                f"{format_duration(self.age)} ago: sync, or drop it with ferry cleanup"
            )
        return None

    def as_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["created_at"] = self.created_at.isoformat()
        out["advanced_at"] = self.advanced_at.isoformat() if self.advanced_at else None
        out["problem"] = self.problem
        return out


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.I)


def parse_size(text: str) -> int:
    """``500MB``, ``2GB``, ``1.5G``, or plain bytes -> bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise StatusError(f"{text!r} is not a size: write it like 500MB or 2GB")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("bytes", "kB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:,} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return f"{n:.1f} TB"


def _slot(
    conn: psycopg.Connection, spec: Spec, source: str | None, max_lag: int
) -> SlotStatus | None:
    try:
        found = ledger.change_slot(conn, spec)
    except psycopg.errors.InsufficientPrivilege:  # a monitoring role granted other tables only
        conn.rollback()
        return None
    if found is None:
        return None
    row = conn.execute(
        "SELECT extract(epoch FROM clock_timestamp() - coalesce(%s, %s))::float8",
        [found.advanced_at, found.created_at],
    ).fetchone()
    out = SlotStatus(
        found.slot, found.created_at, found.advanced_at, float(row[0]) if row else 0.0, max_lag
    )
    if source is not None:
        with connect(source, app="ferry-status") as src:
            state = wal.slot_state(src, found.slot)
        out.read, out.exists, out.wal_status = True, state.exists, state.wal_status
        out.lag_bytes, out.retained_bytes = state.lag_bytes, state.retained_bytes
        out.safe_wal_size = state.safe_wal_size
    return out


def _exists(conn: psycopg.Connection, spec: Spec, table: str) -> bool:
    return catalog.exists(conn, ledger.table(spec, table))


def collect(
    target: str, spec: Spec, source: str | None = None, max_slot_lag: int = 1 << 30
) -> Status:
    """Read the run history and the ledger's counts (cheap: one pass over the ledger), the
    first loads still written aside included (``ledger.with_aside``); with ``source``, the
    lag of the replication slot there (``SlotStatus``)."""
    with connect(target, app="ferry-status") as conn:
        if not _exists(conn, spec, "runs"):
            raise StatusError(f"no ledger in schema {spec.ledger_schema}: ferry has not run here")
        done = "status <> 'running' AND kind = %s"
        st = Status(
            spec=spec.name,
            ledger_schema=spec.ledger_schema,
            last_migrate=ledger.last_run(conn, spec, done, ["migrate"]),
            last_sync=ledger.last_run(conn, spec, done, ["sync"]),
            last_ok=ledger.last_run(
                conn, spec, "status = 'ok' AND kind IN ('migrate', 'sync')", []
            ),
            last_rollback=ledger.last_run(conn, spec, "status = 'ok' AND kind = %s", ["rollback"]),
            running=ledger.last_run(conn, spec, "status = 'running'", []),
        )
        # A run a rollback undid says so (the rollback lists them in its counts).
        undone: dict[int, int] = {}
        for rb_id, counts in conn.execute(
            sql.SQL(
                "SELECT run_id, counts FROM {} WHERE kind = 'rollback' AND status = 'ok' "
                "ORDER BY run_id"
            ).format(ledger.table(spec, "runs"))
        ):
            for r in (counts or {}).get("undone_runs", []):
                undone[int(r)] = int(rb_id)
        for r in (st.last_migrate, st.last_sync, st.last_ok):
            if r is not None:
                r.rolled_back_by = undone.get(r.run_id)
        led = ledger.with_aside(conn, spec, ["model", "status", "reason", "conflict", "decided_by"])
        for status, conflicts, decided, n in conn.execute(
            sql.SQL(
                "SELECT status, count(*) FILTER (WHERE conflict), "
                "count(*) FILTER (WHERE decided_by IS NOT NULL), count(*) FROM {} GROUP BY 1 "
                "ORDER BY 1"
            ).format(led)
        ):
            st.ledger_rows[status] = int(n)
            st.conflicts += int(conflicts)
            st.decisions += int(decided)
        st.quarantined = [
            (m, r, int(n))
            for m, r, n in conn.execute(
                sql.SQL(
                    "SELECT model, coalesce(reason, ''), count(*) FROM {} "
                    "WHERE status = 'quarantined' GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"
                ).format(led)
            )
        ]
        if _exists(conn, spec, "resync"):
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(ledger.table(spec, "resync"))
            ).fetchone()
            st.resync_pending = int(row[0]) if row else 0
        st.slot = _slot(conn, spec, source, max_slot_lag)
    return st


def check(st: Status, max_age: float) -> list[str]:
    """Why the target is not known to be in step with the source; empty when it is.

    Fails when the latest migrate or sync failed, when the last successful one is older
    than ``max_age`` seconds (or there is none), and when a rollback since left keys
    waiting for a sync.
    """
    problems: list[str] = []
    latest = max(
        (r for r in (st.last_migrate, st.last_sync) if r is not None),
        key=lambda r: r.run_id,
        default=None,
    )
    if latest is not None and latest.status == "failed":
        problems.append(
            f"the last {latest.kind} (run {latest.run_id}) failed: {latest.error or 'no error'}"
        )
    if st.last_ok is None:
        problems.append("no migrate or sync has succeeded yet")
    elif st.last_ok.age > max_age:
        problems.append(
            f"the last successful {st.last_ok.kind} (run {st.last_ok.run_id}) finished "
            f"{format_duration(st.last_ok.age)} ago, more than {format_duration(max_age)}"
        )
    if st.resync_pending:
        problems.append(f"{st.resync_pending} keys rolled back await the next sync")
    if st.slot is not None and st.slot.problem:
        problems.append(st.slot.problem)
    return problems


def render(st: Status) -> Group:
    """The status as rich tables for a terminal."""
    runs = Table(title=f"ferry status: {st.spec}", title_justify="left")
    for col in ("", "Run", "Outcome", "Started", "Duration", "Ago"):
        runs.add_column(col, justify="right" if col in ("Run", "Duration", "Ago") else "left")
    for label, r in (
        ("last migrate", st.last_migrate),
        ("last sync", st.last_sync),
        ("last successful", st.last_ok),
        ("last rollback", st.last_rollback),
        ("running now", st.running),
    ):
        if r is None:
            if label in ("last migrate", "last sync"):
                runs.add_row(label, "-", "never", "", "", "")
            continue
        outcome = {"ok": "[green]ok[/]", "failed": "[red]failed[/]"}.get(r.status, r.status)
        if r.kind not in label:
            outcome += f" ({r.kind})"
        if r.rolled_back_by:
            outcome += f" [yellow]rolled back by run {r.rolled_back_by}[/]"
        if r.error:
            outcome += f": {r.error}"
        runs.add_row(
            label, str(r.run_id), outcome, r.started_at.strftime("%Y-%m-%d %H:%M:%S %Z"),
            format_duration(r.seconds), format_duration(r.age),
        )  # fmt: skip
    fates = Table(title="Ledger rows", title_justify="left")
    fates.add_column("Status")
    fates.add_column("Rows", justify="right")
    for status, n in st.ledger_rows.items():
        fates.add_row(status, f"{n:,}")
    fates.add_row("[bold]open conflicts[/]", f"{st.conflicts:,}")
    fates.add_row("operator decisions", f"{st.decisions:,}")
    if st.resync_pending:
        fates.add_row("[yellow]rolled back, awaiting sync[/]", f"{st.resync_pending:,}")
    parts: list[Any] = [runs, fates]
    if st.slot is not None:
        parts.append(_render_slot(st.slot))
    if st.quarantined:
        q = Table(title="Quarantined by reason", title_justify="left")
        q.add_column("Model")
        q.add_column("Reason")
        q.add_column("Rows", justify="right")
        for model, reason, n in st.quarantined:
            q.add_row(model, reason or "(none)", f"{n:,}")
        parts.append(q)
    else:
        parts.append(Text("Nothing in quarantine."))
    return Group(*parts)


def _render_slot(slot: SlotStatus) -> Table:
    table = Table(title="Changes from the source's WAL", title_justify="left")
    table.add_column("")
    table.add_column("")
    table.add_row("replication slot", slot.slot)
    table.add_row("last advanced", f"{format_duration(slot.age)} ago")
    if not slot.read:
        table.add_row("lag", "(pass --source to read it)")
    elif not slot.exists:
        table.add_row("lag", "[red]the slot is gone from the source[/]")
    else:
        table.add_row("lag", format_bytes(slot.lag_bytes))
        table.add_row("WAL kept for it", format_bytes(slot.retained_bytes))
        if slot.safe_wal_size is not None:
            table.add_row("WAL until it is invalidated", format_bytes(slot.safe_wal_size))
    if slot.problem:
        table.add_row("[bold yellow]warning[/]", f"[yellow]{slot.problem}[/]")
    return table
