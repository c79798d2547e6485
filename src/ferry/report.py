"""The migration report: every number counted from the ledger, the stage and the target.

The report this replaces had its numbers typed in, and they did not add up. Here ``collect``
counts everything with SQL when the report is made, and states for each source table the
equation ``staged = migrated + merged + quarantined + excluded`` with its verdict, so a reader
can check it by eye. ``render`` only formats what ``collect`` returned: Markdown, one
self-contained HTML page (inline CSS and SVG, no script, nothing fetched), or JSON whose shape
is documented in ``docs/report.md``.

Only table names, model names, rule names, reasons and counts appear: never row contents.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from psycopg import sql

from ferry import ledger
from ferry.conninfo import connect
from ferry.errors import FerryError
from ferry.spec import Spec

Format = Literal["md", "html", "json"]
FATES = ("migrated", "merged", "quarantined", "excluded")


def collect(target: str, spec: Spec) -> dict[str, Any]:
    """Count everything the report shows, straight from the databases (see docs/report.md)."""
    with connect(target, app="ferry-report") as conn:
        exists = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL",
            [sql.Identifier(spec.ledger_schema, "ledger").as_string(conn)],
        ).fetchone()
        if not exists or not exists[0]:
            raise FerryError(f"no ledger in schema {spec.ledger_schema}: ferry has not run here")
        sources = _sources(conn, spec)
        targets = _targets(conn, spec)
        runs = _runs(conn, spec)
        decisions = _decisions(conn, spec)
    totals: dict[str, Any] = {
        key: sum(s[key] for s in sources)
        for key in ("staged", "migrated", "merged", "repaired_rows", "deleted")
    }
    totals["quarantined"] = sum(s["quarantined_total"] for s in sources)
    totals["excluded"] = sum(s["excluded_total"] for s in sources)
    totals["adds_up"] = all(s["adds_up"] for s in sources)
    totals["completion"] = _ratio(totals["migrated"] + totals["merged"], totals["staged"])
    totals["completion_excl_excluded"] = _ratio(
        totals["migrated"] + totals["merged"], totals["staged"] - totals["excluded"]
    )
    totals["target_rows"] = sum(t["rows"] for t in targets)
    for key in ("written_by_ferry", "kept", "target_only"):
        totals[key] = sum(t[key] for t in targets)
    totals["targets_add_up"] = all(t["adds_up"] for t in targets)
    totals["runs"] = len(runs)
    return {
        "spec": spec.name,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "ledger_schema": spec.ledger_schema,
        "sources": sources,
        "targets": targets,
        "runs": runs,
        "decisions": decisions,
        "totals": totals,
    }


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole > 0 else None


def _sources(conn: psycopg.Connection, spec: Spec) -> list[dict[str, Any]]:
    """Per accounted source: stage count, fates from the ledger, time of its last run."""
    schema = sql.Identifier(spec.ledger_schema)
    fates: dict[str, dict[str, Any]] = defaultdict(
        lambda: (
            {"quarantined": Counter(), "excluded": Counter(), "repaired": Counter()}
            | dict.fromkeys(("migrated", "merged", "deleted", "repaired_rows"), 0)
        )
    )
    for source, status, reason, repairs, n in conn.execute(
        sql.SQL(
            "SELECT source_table, status, coalesce(reason, ''), repairs, count(*) "
            "FROM {}.ledger WHERE accounts GROUP BY 1, 2, 3, 4"
        ).format(schema)
    ):
        f = fates[source]
        if status in ("migrated", "merged", "deleted"):
            f[status] += n
        else:
            f[status][reason] += n
        if status == "migrated" and repairs:
            f["repaired_rows"] += n
            for rule in repairs:
                f["repaired"][rule] += n
    staged_runs = {
        r[0]: r[1:]
        for r in conn.execute(
            sql.SQL("SELECT source, rows, bytes, seconds, run_id FROM {}.staged").format(schema)
        )
    }
    model_runs = {
        (r[0], r[1]): r[2:]
        for r in conn.execute(
            sql.SQL("SELECT run_id, model, rows, seconds FROM {}.model_runs").format(schema)
        )
    }
    out: list[dict[str, Any]] = []
    for src in spec.sources:
        models = [m for m in spec.order() if m.source == src.name]
        if src.lookup or not any(m.accounts for m in models):
            continue
        f = fates[src.name]
        staged = ledger.stage_rows(conn, spec, src.name)
        quarantined, excluded = dict(f["quarantined"]), dict(f["excluded"])
        done = f["migrated"] + f["merged"]
        accounted = done + sum(quarantined.values()) + sum(excluded.values())
        _, nbytes, stage_s, run_id = staged_runs.get(src.name, (0, 0, 0.0, None))
        runs = [model_runs.get((run_id, m.name)) for m in models]
        transform_s = sum(r[1] for r in runs if r is not None)
        processed = sum(r[0] for r, m in zip(runs, models, strict=True) if r and m.accounts)
        seconds = float(stage_s) + float(transform_s)
        out.append(
            {
                "source_table": src.name,
                "targets": sorted({m.target for m in models}),
                "staged": staged,
                "migrated": f["migrated"],
                "merged": f["merged"],
                "quarantined": dict(sorted(quarantined.items())),
                "quarantined_total": sum(quarantined.values()),
                "excluded": dict(sorted(excluded.items())),
                "excluded_total": sum(excluded.values()),
                "repaired": dict(sorted(f["repaired"].items())),
                "repaired_rows": f["repaired_rows"],
                "deleted": f["deleted"],
                "accounted": accounted,
                "adds_up": staged == accounted,
                "completion": _ratio(done, staged),
                "completion_excl_excluded": _ratio(done, staged - sum(excluded.values())),
                "run_id": run_id,
                "stage_bytes": int(nbytes),
                "stage_seconds": round(float(stage_s), 6),
                "transform_seconds": round(float(transform_s), 6),
                "seconds": round(seconds, 6),
                "rows_processed": processed,
                "rows_per_s": round(processed / seconds, 1) if seconds > 0 else None,
            }
        )
    conn.rollback()
    return out


def _targets(conn: psycopg.Connection, spec: Spec) -> list[dict[str, Any]]:
    """Per target table: all rows, ferry's rows (by the ledger), and the application's own."""
    led = sql.Identifier(spec.ledger_schema, "ledger")
    by_table: dict[str, list[Any]] = defaultdict(list)
    for m in spec.order():
        by_table[m.target].append(m)
    out: list[dict[str, Any]] = []
    for table, models in by_table.items():
        schema, name = table.split(".")
        key = sql.Identifier(models[0].key_column)
        written = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM {} WHERE target_table = %s AND status = 'migrated'"
            ).format(led),
            [table],
        ).fetchone()
        # One pass over the table: each row's id either is named by a ledger row of this table
        # (migrated: ferry's; any other status: kept after its source row went) or is not.
        counts = conn.execute(
            sql.SQL(
                "SELECT count(*), count(*) FILTER (WHERE l.u IS NULL), "
                "count(*) FILTER (WHERE l.u IS NOT NULL AND NOT l.migrated) "
                "FROM {t} t LEFT JOIN (SELECT target_uuid AS u, bool_or(status = 'migrated') "
                "AS migrated FROM {led} WHERE target_table = %s AND target_uuid IS NOT NULL "
                "GROUP BY 1) l ON l.u = t.{key}"
            ).format(t=sql.Identifier(schema, name), led=led, key=key),
            [table],
        ).fetchone()
        assert written is not None and counts is not None
        rows, target_only, kept = (int(x) for x in counts)
        out.append(
            {
                "target_table": table,
                "models": [m.name for m in models],
                "sources": sorted({m.source for m in models}),
                "derived": all(not m.accounts for m in models),
                "rows": rows,
                "written_by_ferry": int(written[0]),
                "kept": kept,
                "target_only": target_only,
                "adds_up": rows == int(written[0]) + kept + target_only,
            }
        )
    conn.rollback()
    return out


def _decisions(conn: psycopg.Connection, spec: Spec) -> list[dict[str, Any]]:
    """Rows an operator decided on (``ferry quarantine exclude``): key, who, when, and the
    note, which is the operator's own words and the reason the row was left behind."""
    rows = conn.execute(
        sql.SQL(
            "SELECT model, source_table, source_key, status, reason, decided_by, decided_at, "
            "decision FROM {}.ledger WHERE decided_by IS NOT NULL "
            "ORDER BY decided_at, model, source_key"
        ).format(sql.Identifier(spec.ledger_schema))
    ).fetchall()
    conn.rollback()
    return [
        {"model": m, "source_table": src, "source_key": key, "status": status, "reason": reason,
         "decided_by": by, "decided_at": at.isoformat() if at else None, "note": note}
        for m, src, key, status, reason, by, at, note in rows
    ]  # fmt: skip


def _decisions_rows(data: dict[str, Any]) -> list[list[object]]:
    return [
        [d["source_table"], d["model"], d["source_key"],
         "excluded by the operator" if d["status"] == "excluded" else d["status"],
         d["decided_by"] or "", _when(d["decided_at"]), d["note"] or ""]
        for d in data.get("decisions", [])
    ]  # fmt: skip


DECISION_HEADER = ["Source", "Model", "Key", "Fate", "Decided by", "When", "Note"]


def _runs(conn: psycopg.Connection, spec: Spec) -> list[dict[str, Any]]:
    rows = conn.execute(
        sql.SQL(
            "SELECT run_id, kind, status, started_at, finished_at, "
            "extract(epoch FROM finished_at - started_at)::float8, counts, error "
            "FROM {}.runs ORDER BY run_id"
        ).format(sql.Identifier(spec.ledger_schema))
    ).fetchall()
    conn.rollback()
    return [
        {
            "run_id": run_id,
            "kind": kind,
            "status": status,
            "started_at": started.isoformat(),
            "finished_at": finished.isoformat() if finished else None,
            "seconds": round(seconds, 6) if seconds is not None else None,
            "counts": counts,
            "error": error,
        }
        for run_id, kind, status, started, finished, seconds, counts, error in rows
    ]


# -- rendering --------------------------------------------------------------------------------


def render(data: dict[str, Any], fmt: Format) -> str:
    """Format what ``collect`` returned; no database access, so any saved JSON re-renders."""
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "md":
        return _markdown(data)
    if fmt == "html":
        return _html(data)
    raise ValueError(f"unknown report format {fmt!r}: use md, html or json")


def _n(value: int | float | None) -> str:
    return "-" if value is None else f"{value:,}"


def _pct(value: float | None) -> str:
    """Percent, floored: 99.996% shows as 99.99%, never as a 100% that was not reached."""
    if value is None:
        return "n/a"
    floored = math.floor(value * 10000) / 100
    if floored == 0 and value > 0:
        return "<0.01%"
    return f"{floored:.2f}%"


def _last_run(s: dict[str, Any], data: dict[str, Any]) -> str:
    """``sync 7: 1.48 s``: a sync's few seconds must not read as the load's."""
    kind = {r["run_id"]: r["kind"] for r in data["runs"]}.get(s["run_id"])
    return f"{kind} {s['run_id']}: {_secs(s['seconds'])}" if kind else _secs(s["seconds"])


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.1f} s"
    minutes, s = divmod(value, 60)
    if minutes < 60:
        return f"{int(minutes)} min {s:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"


def _equation(s: dict[str, Any]) -> str:
    mark = "✓" if s["adds_up"] else "✗ DOES NOT ADD UP"
    return (
        f"{mark} {_n(s['staged'])} = {_n(s['migrated'])} + {_n(s['merged'])} + "
        f"{_n(s['quarantined_total'])} + {_n(s['excluded_total'])}"
    )


def _target_equation(t: dict[str, Any]) -> str:
    mark = "✓" if t["adds_up"] else "✗ DOES NOT ADD UP"
    return f"{mark} {_n(t['rows'])} = {_n(t['written_by_ferry'])} + {_n(t['kept'])} + " + _n(
        t["target_only"]
    )


def _when(iso: str | None) -> str:
    """A timestamp for people: UTC, to the second (the JSON keeps the full ISO value)."""
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _counts_brief(counts: dict[str, Any] | None) -> str:
    """A run's counts in one line: nested per-table numbers are summed."""
    if not isinstance(counts, dict):
        return ""
    parts = []
    for key, value in counts.items():
        if key == "seconds":
            continue
        if isinstance(value, dict):
            nums = [v for v in value.values() if isinstance(v, int | float)]
            value = sum(nums)
        if isinstance(value, int | float):
            parts.append(f"{key} {_n(value)}")
    return ", ".join(parts)


def _breakdown(s: dict[str, Any]) -> list[tuple[str, str, int]]:
    rows = [("quarantined", r or "(no reason)", n) for r, n in s["quarantined"].items()]
    rows += [("excluded", r or "(no rule)", n) for r, n in s["excluded"].items()]
    rows += [("repaired (migrated)", r, n) for r, n in s["repaired"].items()]
    return rows


def _md_cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[object]], right: set[int]) -> list[str]:
    align = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def _markdown(data: dict[str, Any]) -> str:
    t = data["totals"]
    out = [
        f"# Migration report: {data['spec']}",
        "",
        f"Generated {_when(data['generated_at'])} from the ledger "
        f"(schema `{data['ledger_schema']}`), the stage and the target tables. "
        "Every number is counted when the report is made; "
        "none is typed in.",
        "",
        "## Totals",
        "",
    ]
    out += _md_table(
        ["Staged", "Migrated", "Merged", "Quarantined", "Excluded", "Completion",
         "Excl. excluded", "Adds up"],
        [[_n(t["staged"]), _n(t["migrated"]), _n(t["merged"]), _n(t["quarantined"]),
          _n(t["excluded"]), _pct(t["completion"]), _pct(t["completion_excl_excluded"]),
          "✓" if t["adds_up"] else "✗"]],
        set(range(7)),
    )  # fmt: skip
    out += [
        "",
        "## Source tables",
        "",
        "Each row states `staged = migrated + merged + quarantined + excluded`. Completion is "
        "(migrated + merged) / staged, and the same over staged rows less excluded ones. Last run "
        "is the latest run that staged the source, a migrate or a sync (its number is that of "
        "the run history): its staging plus its models, and rows/s over the rows they processed.",
        "",
    ]
    out += _md_table(
        ["Source", "Staged", "Migrated", "Repaired", "Merged", "Quarantined", "Excluded",
         "Completion", "Excl. excluded", "Last run", "Rows/s", "Adds up"],
        [[f"`{s['source_table']}`", _n(s["staged"]), _n(s["migrated"]), _n(s["repaired_rows"]),
          _n(s["merged"]), _n(s["quarantined_total"]), _n(s["excluded_total"]),
          _pct(s["completion"]), _pct(s["completion_excl_excluded"]), _last_run(s, data),
          _n(s["rows_per_s"]), _equation(s)] for s in data["sources"]],
        set(range(1, 11)),
    )  # fmt: skip
    detail = [
        [f"`{s['source_table']}`", fate, f"`{reason}`", _n(n)]
        for s in data["sources"]
        for fate, reason, n in _breakdown(s)
    ]
    out += ["", "### Quarantined by reason, excluded by rule, repaired by rule", ""]
    if detail:
        out += _md_table(["Source", "Fate", "Reason or rule", "Rows"], detail, {3})
    else:
        out.append("No row was quarantined, excluded or repaired.")
    out += [
        "",
        "## Target tables",
        "",
        "`rows = written by ferry + kept + target-only`: written by ferry counts the ledger's "
        "migrated rows; kept, rows ferry wrote whose source row has since gone; target-only, the "
        "new application's own rows, which ferry never touches.",
        "",
    ]
    out += _md_table(
        ["Target", "Rows", "Written by ferry", "Kept", "Target-only", "Models", "Adds up"],
        [[f"`{x['target_table']}`", _n(x["rows"]), _n(x["written_by_ferry"]), _n(x["kept"]),
          _n(x["target_only"]),
          ", ".join(x["models"]) + (" (derived)" if x["derived"] else ""),
          _target_equation(x)] for x in data["targets"]],
        {1, 2, 3, 4},
    )  # fmt: skip
    out += ["", "## Operator decisions", ""]
    if data.get("decisions"):
        out += _md_table(DECISION_HEADER, _decisions_rows(data), set())
    else:
        out.append("No operator decision.")
    out += ["", "## Runs", ""]
    if data["runs"]:
        out += _md_table(
            ["Run", "Kind", "Status", "Started", "Duration", "Counts"],
            [[r["run_id"], r["kind"], r["status"], _when(r["started_at"]), _secs(r["seconds"]),
              _counts_brief(r["counts"]) + (f"; error: {r['error']}" if r["error"] else "")]
             for r in data["runs"]],
            {0, 4},
        )  # fmt: skip
    else:
        out.append("No run recorded.")
    return "\n".join(out) + "\n"


# -- HTML -------------------------------------------------------------------------------------

COLORS = {
    "migrated": "#1b9e77",
    "merged": "#7570b3",
    "quarantined": "#d95f02",
    "excluded": "#9a9a9a",
}
RUN_COLORS = {"ok": "#1b9e77", "failed": "#d95f02", "running": "#9a9a9a"}
MAX_RUN_BARS = 60

_CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dde5; --bg: #ffffff; --band: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1200px; padding: 24px 32px 48px; color: var(--fg);
  background: var(--bg); font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto,
  "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid var(--line);
  padding-bottom: 4px; }
p.note { color: var(--muted); margin: 4px 0 12px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 16px; }
th, td { padding: 4px 6px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { background: var(--band); font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.n { white-space: nowrap; } td.wrap { white-space: normal; min-width: 6em; }
td.ok { color: #137a5a; } td.bad { color: #b3261e; font-weight: 700; }
td.eq { font-size: 12px; min-width: 11em; }
code { font: 12.5px ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 130px; }
.card b { display: block; font-size: 20px; font-variant-numeric: tabular-nums; }
.card span { color: var(--muted); font-size: 12px; }
.legend { display: flex; gap: 16px; flex-wrap: wrap; color: var(--muted); font-size: 12px; }
.legend i { display: inline-block; width: 11px; height: 11px; margin-right: 5px;
  vertical-align: -1px; border-radius: 2px; }
svg { display: block; max-width: 100%; height: auto; }
svg text { font: 12px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif;
  fill: var(--fg); }
svg text.muted { fill: var(--muted); }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  h2 { break-after: avoid; page-break-after: avoid; }
  table, svg, .cards { break-inside: avoid; page-break-inside: avoid; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  @page { size: A4 landscape; margin: 12mm; }
}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fates_svg(sources: list[dict[str, Any]]) -> str:
    """One horizontal stacked bar per source table: its fates as shares of its staged rows.

    A fate with any rows gets at least 2 px, so 40 quarantined rows among two million are
    still seen; the exact counts are in each segment's tooltip and in the table below.
    """
    label_w, bar_w, right_w, row_h = 220, 680, 190, 26
    width = label_w + bar_w + right_w
    height = max(1, len(sources)) * row_h + 8
    parts = [
        f'<svg class="chart fates" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" aria-label="Fate of staged rows per source table">'
    ]
    for i, s in enumerate(sources):
        y = 4 + i * row_h
        name = _e(s["source_table"])
        parts.append(f'<g class="bar" data-source="{name}">')
        parts.append(f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end">{name}</text>')
        counts = {
            "migrated": s["migrated"],
            "merged": s["merged"],
            "quarantined": s["quarantined_total"],
            "excluded": s["excluded_total"],
        }
        total = sum(counts.values())
        widths = {k: (bar_w * v / total if total else 0.0) for k, v in counts.items()}
        for k, v in counts.items():
            if v and widths[k] < 2:
                widths["migrated"] -= 2 - widths[k]
                widths[k] = 2.0
        x = float(label_w)
        parts.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{bar_w}" height="18" fill="#eef0f4"/>'
        )
        for k, v in counts.items():
            if not v:
                continue
            w = max(widths[k], 0.0)
            parts.append(
                f'<rect class="seg {k}" x="{x:.2f}" y="{y + 3}" width="{w:.2f}" height="18" '
                f'fill="{COLORS[k]}"><title>{name}: {k} {v:,}</title></rect>'
            )
            x += w
        pct = _pct(s["completion"])
        parts.append(
            f'<text class="muted" x="{label_w + bar_w + 8}" y="{y + 16}">'
            f"{_n(s['staged'])} rows · {pct}</text>"
        )
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _runs_svg(runs: list[dict[str, Any]]) -> str:
    """The run history as bars of durations, oldest left; colour by status."""
    shown = runs[-MAX_RUN_BARS:]
    left, top, plot_h, bottom = 60, 12, 160, 44
    slot = max(14, min(60, 900 // max(1, len(shown))))
    width = left + slot * max(1, len(shown)) + 20
    height = top + plot_h + bottom
    longest = max((r["seconds"] or 0.0 for r in shown), default=0.0) or 1.0
    parts = [
        f'<svg class="chart runs" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" aria-label="Duration of each run">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" '
        'stroke="#9aa3b2"/>',
        f'<text class="muted" x="{left - 6}" y="{top + 10}" text-anchor="end">'
        f"{_e(_secs(longest))}</text>",
        f'<text class="muted" x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for i, r in enumerate(shown):
        secs = r["seconds"] or 0.0
        h = max(1.0, plot_h * secs / longest)
        x = left + i * slot + slot * 0.15
        w = slot * 0.7
        color = RUN_COLORS.get(r["status"], "#9a9a9a")
        tip = f"run {r['run_id']} {r['kind']} {r['status']}: {_secs(r['seconds'])}"
        parts.append(
            f'<rect class="run {_e(r["status"])}" x="{x:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{w:.1f}" height="{h:.1f}" fill="{color}"><title>{_e(tip)}</title></rect>'
        )
        cx = left + i * slot + slot / 2
        parts.append(
            f'<text x="{cx:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{r["run_id"]}</text>'
        )
        if slot >= 40:
            parts.append(
                f'<text class="muted" x="{cx:.1f}" y="{top + plot_h + 32}" '
                f'text-anchor="middle">{_e(r["kind"])}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _html_table(header: list[str], rows: list[list[tuple[str, str]]], numeric: set[int]) -> str:
    """Cells are (html, css class) pairs; the html is already escaped by the caller."""
    head = "".join(
        f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
        for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{c}">{v}</td>' if c else f"<td>{v}</td>" for v, c in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(data: dict[str, Any]) -> str:
    t = data["totals"]
    cards = [
        ("staged", _n(t["staged"])),
        ("migrated", _n(t["migrated"])),
        ("merged", _n(t["merged"])),
        ("quarantined", _n(t["quarantined"])),
        ("excluded", _n(t["excluded"])),
        ("completion", _pct(t["completion"])),
        ("excl. excluded", _pct(t["completion_excl_excluded"])),
        ("adds up", "✓ yes" if t["adds_up"] else "✗ no"),
    ]
    cards_html = "".join(
        f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in cards
    )
    legend = "".join(
        f'<span><i style="background:{c}"></i>{_e(k)}</span>' for k, c in COLORS.items()
    )
    run_legend = "".join(
        f'<span><i style="background:{c}"></i>{_e(k)}</span>' for k, c in RUN_COLORS.items()
    )

    def num(v: object) -> tuple[str, str]:
        return _e(v), "n"

    def equation(ok: bool, text: str) -> tuple[str, str]:
        return _e(text), ("ok" if ok else "bad") + " eq"

    def verdict(ok: bool, text: str) -> tuple[str, str]:
        return _e(text), "ok" if ok else "bad"

    sources = _html_table(
        ["Source", "Staged", "Migrated", "Repaired", "Merged", "Quarantined", "Excluded",
         "Completion", "Excl. excluded", "Last run", "Rows/s", "Adds up"],
        [[(f"<code>{_e(s['source_table'])}</code>", ""), num(_n(s["staged"])),
          num(_n(s["migrated"])), num(_n(s["repaired_rows"])), num(_n(s["merged"])),
          num(_n(s["quarantined_total"])), num(_n(s["excluded_total"])),
          num(_pct(s["completion"])), num(_pct(s["completion_excl_excluded"])),
          (_e(_last_run(s, data)), "n wrap"), num(_n(s["rows_per_s"])),
          equation(s["adds_up"], _equation(s))] for s in data["sources"]],
        set(range(1, 11)),
    )  # fmt: skip
    detail_rows = [
        [(f"<code>{_e(s['source_table'])}</code>", ""), (_e(fate), ""),
         (f"<code>{_e(reason)}</code>", ""), num(_n(n))]
        for s in data["sources"]
        for fate, reason, n in _breakdown(s)
    ]  # fmt: skip
    detail = (
        _html_table(["Source", "Fate", "Reason or rule", "Rows"], detail_rows, {3})
        if detail_rows
        else "<p>No row was quarantined, excluded or repaired.</p>"
    )
    targets = _html_table(
        ["Target", "Rows", "Written by ferry", "Kept", "Target-only", "Models",
         "Adds up"],
        [[(f"<code>{_e(x['target_table'])}</code>", ""), num(_n(x["rows"])),
          num(_n(x["written_by_ferry"])), num(_n(x["kept"])), num(_n(x["target_only"])),
          (_e(", ".join(x["models"]) + (" (derived)" if x["derived"] else "")), ""),
          equation(x["adds_up"], _target_equation(x))] for x in data["targets"]],
        {1, 2, 3, 4},
    )  # fmt: skip
    runs = _html_table(
        ["Run", "Kind", "Status", "Started", "Duration", "Counts"],
        [[num(r["run_id"]), (_e(r["kind"]), ""),
          verdict(r["status"] != "failed", r["status"]), (_e(_when(r["started_at"])), ""),
          num(_secs(r["seconds"])),
          (_e(_counts_brief(r["counts"]) + (f"; error: {r['error']}" if r["error"] else "")),
           "")] for r in data["runs"]],
        {0, 4},
    )  # fmt: skip
    decisions = (
        _html_table(
            DECISION_HEADER, [[(_e(c), "") for c in row] for row in _decisions_rows(data)], set()
        )
        if data.get("decisions")
        else "<p>No operator decision.</p>"
    )
    more_runs = (
        f'<p class="note">The chart shows the last {MAX_RUN_BARS} of {len(data["runs"])} runs.</p>'
        if len(data["runs"]) > MAX_RUN_BARS
        else ""
    )
    body = f"""
<h1>Migration report: {_e(data["spec"])}</h1>
<p class="note">Generated {_e(_when(data["generated_at"]))} from the ledger (schema
<code>{_e(data["ledger_schema"])}</code>), the stage and the target tables. Every number is
counted when the report is made; none is typed in.</p>
<div class="cards">{cards_html}</div>
<h2>Fate of every staged row, per source table</h2>
<div class="legend">{legend}</div>
{_fates_svg(data["sources"])}
<h2>Source tables</h2>
<p class="note">Each row states <code>staged = migrated + merged + quarantined + excluded</code>.
Completion is (migrated + merged) / staged, and the same over staged rows less excluded ones.
Last run is the latest run that staged the source, a migrate or a sync (numbered as in the run
history): its staging plus its models, and rows/s over the rows they processed.</p>
{sources}
<h2>Quarantined by reason, excluded by rule, repaired by rule</h2>
{detail}
<h2>Operator decisions</h2>
{decisions}
<h2>Target tables</h2>
<p class="note">Each row states <code>rows = written by ferry + kept + target-only</code>.
Written by ferry counts the ledger's migrated rows; kept, rows ferry wrote whose
source row has since gone; target-only, the new application's own rows, which ferry never
touches.</p>
{targets}
<h2>Runs</h2>
<div class="legend">{run_legend}</div>
{_runs_svg(data["runs"]) if data["runs"] else "<p>No run recorded.</p>"}
{more_runs}
{runs}
"""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>Migration report: {_e(data['spec'])}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>{body}</body>\n</html>\n"
    )
