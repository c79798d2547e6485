"""The report on the library world: every number equals a count taken directly with SQL, the
renderings carry those numbers and no row contents, and the HTML page loads cleanly."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ferry.embedded import LocalCluster
from ferry.engine.pipeline import migrate
from ferry.ops.report import collect, render
from ferry.ops.verify import verify
from ferry.spec import Spec, load_spec
from tests.helpers import fresh_db

SPEC_DIR = Path(__file__).parent / "specs" / "library"
OWNER = "lib_owner"
MARKER = "PHI-MARKER-7731"


@pytest.fixture()
def world(cluster: LocalCluster) -> tuple[str, Spec]:
    """Migrated twice (two runs of history), with a marker in migrated and quarantined rows."""
    source = fresh_db(cluster, "rep_src", SPEC_DIR / "source.sql")
    with psycopg.connect(source, autocommit=True) as conn:
        # Book 10 migrates, book 16 is refused by a CHECK, author 4 is quarantined.
        conn.execute("UPDATE lib_book SET title = %s || title WHERE id IN (10, 16)", [MARKER])
        conn.execute("UPDATE lib_author SET name = %s WHERE id = 4", [MARKER])
    fresh_db(cluster, "rep_tgt", SPEC_DIR / "target.sql", owner=OWNER)
    target = cluster.conninfo("rep_tgt", user=OWNER)
    spec = load_spec(SPEC_DIR / "spec.toml")
    migrate(source, target, spec)
    migrate(source, target, spec)
    return target, spec


def scalar(conn: psycopg.Connection, query: sql.Composable, params: list[Any] | None = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def by_reason(conn: psycopg.Connection, source: str, status: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT reason, count(*) FROM ferry.ledger WHERE accounts AND source_table = %s "
        "AND status = %s GROUP BY 1",
        [source, status],
    ).fetchall()
    return dict(rows)


def test_every_number_is_a_direct_count(world: tuple[str, Spec]) -> None:
    target, spec = world
    data = collect(target, spec)
    assert data["spec"] == "library"
    assert [s["source_table"] for s in data["sources"]] == ["lib_author", "lib_book", "loans.csv"]
    with psycopg.connect(target) as conn:
        for s in data["sources"]:
            name = s["source_table"]
            stage = sql.Identifier("ferry_stage", spec.source(name).stage_table)
            staged = scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(stage))

            def status(st: str, name: str = name) -> int:
                return scalar(
                    conn,
                    sql.SQL(
                        "SELECT count(*) FROM ferry.ledger WHERE accounts AND source_table = %s "
                        "AND status = %s"
                    ),
                    [name, st],
                )

            repaired = dict(
                conn.execute(
                    "SELECT r, count(*) FROM ferry.ledger, unnest(repairs) r WHERE accounts "
                    "AND source_table = %s AND status = 'migrated' GROUP BY 1",
                    [name],
                ).fetchall()
            )
            repaired_rows = scalar(
                conn,
                sql.SQL(
                    "SELECT count(*) FROM ferry.ledger WHERE accounts AND source_table = %s "
                    "AND status = 'migrated' AND cardinality(repairs) > 0"
                ),
                [name],
            )
            quarantined = by_reason(conn, name, "quarantined")
            excluded = by_reason(conn, name, "excluded")
            migrated, merged = status("migrated"), status("merged")
            assert s["staged"] == staged
            assert s["migrated"] == migrated
            assert s["merged"] == merged
            assert s["quarantined"] == quarantined
            assert s["quarantined_total"] == sum(quarantined.values())
            assert s["excluded"] == excluded
            assert s["excluded_total"] == sum(excluded.values())
            assert s["repaired"] == repaired
            assert s["repaired_rows"] == repaired_rows
            assert s["deleted"] == status("deleted")
            accounted = migrated + merged + sum(quarantined.values()) + sum(excluded.values())
            assert s["accounted"] == accounted
            assert s["adds_up"] is (staged == accounted) is True
            assert s["completion"] == (migrated + merged) / staged
            assert s["completion_excl_excluded"] == (migrated + merged) / (
                staged - sum(excluded.values())
            )
            run_id, stage_s = conn.execute(
                "SELECT run_id, seconds FROM ferry.staged WHERE source = %s", [name]
            ).fetchone() or (None, None)
            model_s, processed = conn.execute(
                "SELECT sum(mr.seconds), sum(mr.rows)::bigint FROM ferry.model_runs mr "
                "WHERE mr.run_id = %s AND mr.model = ANY(%s)",
                [run_id, [m.name for m in spec.models if m.source == name]],
            ).fetchone() or (None, None)
            assert s["run_id"] == run_id == 2
            assert s["stage_seconds"] == pytest.approx(stage_s, abs=1e-6)
            assert s["transform_seconds"] == pytest.approx(model_s, abs=1e-6)
            assert s["seconds"] == pytest.approx(stage_s + model_s, abs=1e-5)
            assert s["rows_processed"] == processed == staged
            assert s["rows_per_s"] == pytest.approx(processed / (stage_s + model_s), abs=0.1)

        for t in data["targets"]:
            table = t["target_table"]
            ident = sql.Identifier(*table.split("."))
            rows = scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(ident))
            written = scalar(
                conn,
                sql.SQL(
                    "SELECT count(*) FROM ferry.ledger WHERE target_table = %s "
                    "AND status = 'migrated'"
                ),
                [table],
            )
            target_only = scalar(
                conn,
                sql.SQL(
                    "SELECT count(*) FROM {} t WHERE t.id NOT IN (SELECT target_uuid FROM "
                    "ferry.ledger WHERE target_uuid IS NOT NULL)"
                ).format(ident),
            )
            assert (t["rows"], t["written_by_ferry"], t["target_only"], t["kept"]) == (
                rows, written, target_only, 0
            )  # fmt: skip
            assert t["adds_up"] is True

        runs = conn.execute(
            "SELECT run_id, kind, status, extract(epoch FROM finished_at - started_at)::float8 "
            "FROM ferry.runs ORDER BY run_id"
        ).fetchall()
    assert [(r["run_id"], r["kind"], r["status"]) for r in data["runs"]] == [
        (r[0], r[1], r[2]) for r in runs
    ]
    for got, row in zip(data["runs"], runs, strict=True):
        assert got["seconds"] == pytest.approx(row[3], abs=1e-5)
        assert got["counts"]["staged"] == {"lib_author": 5, "lib_book": 8, "loans.csv": 4}

    # The same numbers, known by hand for this little world.
    book = data["sources"][1]
    assert (book["staged"], book["migrated"], book["merged"]) == (8, 3, 0)
    assert book["quarantined"] == {
        "check_violation": 1, "orphan_author": 1, "parent_quarantined": 1, "unique_violation": 1
    }  # fmt: skip
    assert book["excluded"] == {"draft": 1}
    assert data["sources"][0]["repaired"] == {"country_normalized": 2}
    authors = data["targets"][0]
    assert (authors["rows"], authors["written_by_ferry"], authors["target_only"]) == (4, 3, 1)
    totals = data["totals"]
    assert (totals["staged"], totals["migrated"], totals["merged"]) == (17, 8, 1)
    assert (totals["quarantined"], totals["excluded"], totals["adds_up"]) == (6, 2, True)
    assert (totals["target_rows"], totals["target_only"], totals["runs"]) == (9, 1, 2)


class _Page(HTMLParser):
    """Collects tags and checks that every opened element is closed (void elements aside)."""

    VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "rect", "line"})

    def __init__(self) -> None:
        super().__init__()
        self.tags: Counter[str] = Counter()
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()


def test_renderings(world: tuple[str, Spec]) -> None:
    target, spec = world
    data = collect(target, spec)
    outputs = {fmt: render(data, fmt) for fmt in ("md", "html", "json")}
    for text in outputs.values():
        assert MARKER not in text
        assert MARKER.lower() not in text.lower()
    assert json.loads(outputs["json"]) == data

    md = outputs["md"]
    assert "| `lib_book` | 8 | 3 | 0 | 0 | 4 | 1 | 37.50% | 42.85% | migrate 2: " in md
    assert "✓ 8 = 3 + 0 + 4 + 1" in md
    assert "| `lib_book` | quarantined | `unique_violation` | 1 |" in md
    assert "✓ 4 = 3 + 0 + 1" in md  # public.authors: 3 by ferry, 1 the application's own

    page = outputs["html"]
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.stack == []
    assert parser.tags["svg"] == 2
    assert parser.tags["script"] == 0 and parser.tags["link"] == 0 and parser.tags["img"] == 0
    assert "http" not in page and "url(" not in page and "@import" not in page
    assert "@media print" in page
    assert page.count('class="bar"') == 3
    assert "✓ 8 = 3 + 0 + 4 + 1" in page
    with pytest.raises(ValueError):
        render(data, "pdf")  # type: ignore[arg-type]


def test_html_is_a_template_that_escapes_every_value(world: tuple[str, Spec]) -> None:
    """The page comes from the packaged Jinja2 template with autoescaping: a name or an
    operator's note that looks like markup is shown as text, never run."""
    from importlib.resources import files

    assert files("ferry").joinpath("templates", "report.html.j2").is_file()
    target, spec = world
    data = collect(target, spec)
    evil = '<script>alert("x")</script>'
    data["sources"][0]["source_table"] = evil
    data["decisions"] = [
        {"model": "books", "source_table": "lib_book", "source_key": "12", "status": "excluded",
         "reason": "operator", "decided_by": "ann", "decided_at": data["generated_at"],
         "note": f"see {evil} & more"}
    ]  # fmt: skip
    page = render(data, "html")
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "see &lt;script&gt;" in page and " &amp; more" in page
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.stack == [] and parser.tags["script"] == 0


def test_a_broken_ledger_does_not_add_up(world: tuple[str, Spec]) -> None:
    target, spec = world
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("DELETE FROM ferry.ledger WHERE model = 'books' AND source_key = '12'")
        conn.execute("DELETE FROM loans WHERE legacy_loan_id = 'L-1'")
    data = collect(target, spec)
    book = next(s for s in data["sources"] if s["source_table"] == "lib_book")
    loans = next(t for t in data["targets"] if t["target_table"] == "public.loans")
    assert (book["adds_up"], book["staged"], book["accounted"]) == (False, 8, 7)
    assert (loans["adds_up"], loans["rows"], loans["written_by_ferry"]) == (False, 1, 2)
    assert data["totals"]["adds_up"] is False and data["totals"]["targets_add_up"] is False
    md = render(data, "md")
    assert "✗ DOES NOT ADD UP 8 = 3 + 0 + 4 + 0" in md
    assert "✗ DOES NOT ADD UP 1 = 2 + 0 + 0" in md


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_html_loads_in_chromium(world: tuple[str, Spec], tmp_path: Path) -> None:
    target, spec = world
    page = tmp_path / "report.html"
    page.write_text(render(collect(target, spec), "html"))
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'class="chart fates"' in dom and 'class="chart runs"' in dom
    assert dom.count("<rect") > 5 and "lib_book" in dom
    console = [
        line for line in proc.stderr.splitlines()
        if "CONSOLE" in line or "Uncaught" in line or "net::ERR" in line
    ]  # fmt: skip
    assert console == []


def test_derived_model_counts_per_target_not_per_source(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A model with accounts = false (one member row per distinct loan member) adds a target
    table, not a source: its rows are no source row's fate."""
    for name in ("books.sql", "loans.csv"):
        shutil.copy(SPEC_DIR / name, tmp_path / name)
    (tmp_path / "spec.toml").write_text(
        (SPEC_DIR / "spec.toml").read_text()
        + '\n[[models]]\nname = "members"\ntarget = "public.members"\nsource = "loans.csv"\n'
        'accounts = false\nsql = "SELECT DISTINCT l.member AS _key, l.member AS name '
        'FROM loans l"\n'
    )
    spec = load_spec(tmp_path / "spec.toml")
    source = fresh_db(cluster, "rep_src", SPEC_DIR / "source.sql")
    fresh_db(cluster, "rep_tgt", SPEC_DIR / "target.sql", owner=OWNER)
    target = cluster.conninfo("rep_tgt", user=OWNER)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("CREATE TABLE members (id uuid PRIMARY KEY, name text NOT NULL)")
    migrate(source, target, spec)
    data = collect(target, spec)
    assert [s["source_table"] for s in data["sources"]] == ["lib_author", "lib_book", "loans.csv"]
    loans = data["sources"][2]
    assert (loans["staged"], loans["adds_up"], loans["targets"]) == (
        4, True, ["public.loans", "public.members"]
    )  # fmt: skip
    members = next(t for t in data["targets"] if t["target_table"] == "public.members")
    assert (members["derived"], members["rows"], members["written_by_ferry"]) == (True, 4, 4)
    assert members["adds_up"] is True
    assert "members (derived)" in render(data, "md")

    report = verify(target, spec)
    assert report.ok, report.summary()
    assert report.checked["models"] == 4


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_html_fits_a_1280_pixel_window_with_millions_of_rows(
    world: tuple[str, Spec], tmp_path: Path
) -> None:
    target, spec = world
    data = collect(target, spec)
    big = 271_828  # SF=1-sized numbers: the widest cells are the "adds up" equations
    for s in data["sources"]:
        s["source_table"] = s["source_table"].ljust(23, "_")  # as long as DOMAIN's longest
        for key in ("staged", "migrated", "merged", "accounted", "quarantined_total",
                    "excluded_total", "repaired_rows", "rows_processed"):  # fmt: skip
            s[key] *= big
        for key in ("quarantined", "excluded", "repaired"):
            s[key] = {k: v * big for k, v in s[key].items()}
        s["rows_per_s"] = 12_280.8
    page = tmp_path / "report.html"
    probe = (
        "<script>document.body.dataset.overflow = String("
        "document.documentElement.scrollWidth > document.documentElement.clientWidth)</script>"
    )
    page.write_text(render(data, "html").replace("</body>", probe + "</body>"))
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-overflow="false"' in proc.stdout
