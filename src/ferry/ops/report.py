"""The migration report: every number counted from the ledger, the stage and the target.

The report this replaces had its numbers typed in, and they did not add up. Here ``collect``
counts everything with SQL when the report is made, and states for each source table the
equation ``staged = migrated + merged + quarantined + excluded`` with its verdict, so a reader
can check it by eye. ``render`` only formats what ``collect`` returned: Markdown, one
self-contained HTML page (inline CSS and SVG, no script, nothing fetched; its layout is the
Jinja2 template ``templates/report.html.j2``), or JSON whose shape is documented in
``docs/report.md``.

Only table names, model names, rule names, reasons and counts appear: never row contents.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal

import jinja2
import psycopg
from psycopg import sql

from ferry import ledger
from ferry.conninfo import connect
from ferry.ledger.runs import require_ledger
from ferry.spec import Spec

Format = Literal["md", "html", "json"]
FATES = ("migrated", "merged", "quarantined", "excluded")


def collect(target: str, spec: Spec) -> dict[str, Any]:
    """Count everything the report shows, straight from the databases (see docs/report.md)."""
    with connect(target, app="ferry-report") as conn:
        require_ledger(conn, spec)
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
    led = ledger.table(spec, "ledger")
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
# The page's layout is templates/report.html.j2, read and changed as HTML; here only the
# geometry of its two charts is computed. Jinja2 escapes every value (autoescape).

COLORS = {
    "migrated": "#1b9e77",
    "merged": "#7570b3",
    "quarantined": "#d95f02",
    "excluded": "#9a9a9a",
}
RUN_COLORS = {"ok": "#1b9e77", "failed": "#d95f02", "running": "#9a9a9a"}
MAX_RUN_BARS = 60


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ferry", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt field fails the render, not the page
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(n=_n, pct=_pct, secs=_secs, when=_when)
    env.globals.update(
        last_run=_last_run,
        equation=_equation,
        target_equation=_target_equation,
        counts_brief=_counts_brief,
    )
    return env.get_template("report.html.j2")


def _fates_chart(sources: list[dict[str, Any]]) -> dict[str, Any]:
    """One stacked bar per source table: its fates as shares of its staged rows.

    A fate with any rows gets at least 2 px, so 40 quarantined rows among two million are
    still seen; the exact counts are in each segment's tooltip and in the table below.
    """
    label_w, bar_w, right_w, row_h = 220, 680, 190, 26
    bars = []
    for i, s in enumerate(sources):
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
        x, segments = float(label_w), []
        for k, v in counts.items():
            if v:
                w = max(widths[k], 0.0)
                segments.append({"fate": k, "rows": v, "x": x, "w": w})
                x += w
        bars.append(
            {
                "name": s["source_table"],
                "y": 4 + i * row_h,
                "segments": segments,
                "staged": s["staged"],
                "completion": s["completion"],
            }
        )
    return {
        "width": label_w + bar_w + right_w,
        "height": max(1, len(sources)) * row_h + 8,
        "label_w": label_w,
        "bar_w": bar_w,
        "bars": bars,
    }


def _runs_chart(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The last MAX_RUN_BARS runs as bars of their durations, oldest left."""
    shown = runs[-MAX_RUN_BARS:]
    left, top, plot_h, bottom = 60, 12, 160, 44
    slot = max(14, min(60, 900 // max(1, len(shown))))
    longest = max((r["seconds"] or 0.0 for r in shown), default=0.0) or 1.0
    bars = []
    for i, r in enumerate(shown):
        h = max(1.0, plot_h * (r["seconds"] or 0.0) / longest)
        bars.append(
            {
                "run_id": r["run_id"],
                "kind": r["kind"],
                "status": r["status"],
                "seconds": r["seconds"],
                "x": left + i * slot + slot * 0.15,
                "y": top + plot_h - h,
                "w": slot * 0.7,
                "h": h,
                "cx": left + i * slot + slot / 2,
            }
        )
    return {
        "width": left + slot * max(1, len(shown)) + 20,
        "height": top + plot_h + bottom,
        "left": left,
        "top": top,
        "axis_y": top + plot_h,
        "longest": longest,
        "bars": bars,
        "show_kind": slot >= 40,
    }


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
    return _template().render(
        data=data,
        cards=cards,
        colors=COLORS,
        run_colors=RUN_COLORS,
        fates=_fates_chart(data["sources"]),
        runs=_runs_chart(data["runs"]) if data["runs"] else None,
        breakdown=[
            (s["source_table"], fate, reason, n)
            for s in data["sources"]
            for fate, reason, n in _breakdown(s)
        ],
        decision_header=DECISION_HEADER,
        decisions=_decisions_rows(data),
    )
