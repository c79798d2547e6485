"""``ferry check``: a spec against both live databases, before anything is staged or written.

A spec that loads can still fail on the databases: a source table renamed, a column the SQL
reads that is not there, a model whose output the target cannot take, keys that repeat. A
migrate finds these one at a time, minutes in; ``check`` finds them all at once, each at its
place: the spec's line for what the spec says, the model's SQL file and line for what its SQL
does. It writes nothing on either side: both sessions are read-only. The model SQL runs on
zero rows over empty stand-ins of the stage tables (``WITH`` queries of the stage's columns
and types, which shadow the stage names), so no stage needs to exist. A spec whose SQL calls
the engine's helpers (``ferry.is_json``) before any run has made them gets them as temporary
functions, in a target transaction that is rolled back.

Findings carry names, types, counts and keys -- never row contents.
"""

from __future__ import annotations

import csv
import re
import tomllib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ferry import catalog, ledger
from ferry.conninfo import connect
from ferry.engine import columns
from ferry.engine.keys import text_sql
from ferry.engine.query import GENERATED, RULES_REWRITE, use_stage
from ferry.errors import SpecError, describe
from ferry.spec import COMPOSITE_KEY, Model, Source, Spec, load_spec
from ferry.sqltext import tokens

BOOL_OID = 16
_SHOWN = 3  # duplicate keys named in one finding; the rest are counted


@dataclass(frozen=True)
class Finding:
    level: str  # error (a run would fail or lose rows) or warn (it runs, but look)
    check: str  # a short name, stable for automation
    file: str
    line: int | None
    message: str
    column: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        return f"{where}: {self.level} [{self.check}]: {self.message}"


@dataclass
class CheckResult:
    spec: str
    findings: list[Finding] = field(default_factory=list)
    sources: int = 0
    models: int = 0

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    def as_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "ok": self.ok,
            "sources": self.sources,
            "models": self.models,
            "findings": [asdict(f) for f in self.findings],
        }

    def render(self) -> str:
        errors = sum(f.level == "error" for f in self.findings)
        warnings = len(self.findings) - errors
        verdict = (
            f"ok: {self.sources} sources and {self.models} models check against both databases"
            if self.ok
            else f"{errors} error(s): a migrate would fail or lose rows"
        )
        return "\n".join([*map(str, self.findings), f"{verdict} ({warnings} warning(s))"])


class Lines:
    """Where things are in the spec's TOML, which ``tomllib`` does not say: the block of
    the n-th ``[[sources]]`` or ``[[models]]``, and a key or a text within it."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text
        self.lines = text.splitlines()
        self.blocks: dict[str, list[int]] = {"sources": [], "models": []}
        for i, line in enumerate(self.lines):
            m = re.match(r"\s*\[\[\s*(sources|models)\s*\]\]", line)
            if m:
                self.blocks[m.group(1)].append(i)

    def block(self, kind: str, index: int) -> tuple[int, int] | None:
        """First and past-the-last line index of a block, if it is written as one."""
        starts = self.blocks[kind]
        if index >= len(starts):
            return None
        later = [s for k in self.blocks.values() for s in k if s > starts[index]]
        return starts[index], min(later, default=len(self.lines))

    def line(self, kind: str, index: int, key: str | None = None, text: str | None = None) -> int:
        """1-based line, in the block, of the first line holding ``text`` from ``key = ``
        on; of ``key = ``; or of the block's header. 1 if the block is not written as one."""
        span = self.block(kind, index)
        if span is None:
            return 1
        first, end = span
        at = next(
            (
                i
                for i in range(first, end)
                if key is not None and re.match(rf"\s*{re.escape(key)}\s*=", self.lines[i])
            ),
            None,
        )
        if text is not None:
            for i in range(first if at is None else at, end):
                if text in self.lines[i]:
                    return i + 1
        return (first if at is None else at) + 1


def check(
    spec_path: str | Path, source: str, target: str, data_dir: Path | None = None
) -> CheckResult:
    """Every check; the spec's own errors (it does not load) stop before the databases."""
    path = Path(spec_path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    lines = Lines(path, text)
    result = CheckResult(spec=str(path))
    try:
        spec = load_spec(path)
    except SpecError as exc:
        result.findings += _spec_findings(path, text, lines, exc)
        return result
    result.sources, result.models = len(spec.sources), len(spec.models)
    shapes: dict[str, list[tuple[str, str]]] = {}
    with connect(source, app="ferry-check") as conn:
        conn.read_only = True
        for i, src in enumerate(spec.sources):
            if src.table is not None:
                try:
                    result.findings += _source_table(conn, lines, i, src, shapes)
                except psycopg.Error as exc:  # a table this role may not read, say
                    conn.rollback()
                    result.findings.append(
                        Finding(
                            "error",
                            "source_table",
                            str(path),
                            lines.line("sources", i, "table"),
                            f"source {src.name}: {src.table} cannot be read: {describe(exc)}",
                        )
                    )
            else:
                result.findings += _source_csv(lines, i, src, data_dir or spec.base_dir, shapes)
        conn.rollback()
    with connect(target, app="ferry-check") as conn:
        use_stage(conn, spec.stage_schema)
        conn.commit()  # the setting outlives the transactions the checks end
        calls = any(
            move_helpers(text, spec.ledger_schema, "pg_temp")[1]
            for m in spec.models
            for text in [spec.model_sql(m), *(r.when for r in m.rules)]
        )
        helpers = "pg_temp" if calls and not _has_helpers(conn, spec) else spec.ledger_schema
        # Read-only, unless the engine's helpers are not made yet (no run yet): then made as
        # temporary functions in a transaction that is rolled back.
        conn.read_only = helpers != "pg_temp"
        for ddl in ledger.helpers(helpers) if helpers == "pg_temp" else []:
            conn.execute(ddl)
        for i, model in enumerate(spec.models):
            result.findings += _model(conn, spec, lines, i, model, shapes, helpers)
        conn.rollback()
    return result


def _has_helpers(conn: psycopg.Connection, spec: Spec) -> bool:
    """Whether the helpers model SQL may call are made, in the ledger schema."""
    row = conn.execute(
        "SELECT to_regprocedure(%s) IS NOT NULL AND to_regprocedure(%s) IS NOT NULL",
        [f"{sql.Identifier(spec.ledger_schema).as_string(conn)}.{f}" for f in _HELPERS],
    ).fetchone()
    conn.rollback()
    return bool(row and row[0])


_HELPERS = ("key_uuid(uuid, text, text)", "is_json(text)")


def move_helpers(text: str, schema: str, to: str) -> tuple[str, list[int]]:
    """``text`` with each ``schema.`` that qualifies a name (not in a string or a comment)
    written ``to.``, and the offsets in ``text`` where it was: a spec calls the engine's
    helpers in its ledger schema, which a check or a plan has elsewhere."""
    starts = [
        a.start
        for a in tokens(text)
        if (a.word == schema or (a.kind == "quoted" and a.text == f'"{schema}"'))
        and re.match(r'\s*\.\s*[A-Za-z_"]', text[a.end :])
    ]
    out, at = [], 0
    for start in starts:
        out += [text[at:start], sql.Identifier(to).as_string(None)]
        at = start + len(schema) + (2 if text[start] == '"' else 0)
    return "".join([*out, text[at:]]), starts


# -- the spec ---------------------------------------------------------------------------------


def _spec_findings(path: Path, text: str, lines: Lines, exc: SpecError) -> list[Finding]:
    """A spec that does not load: its cycles of parents, each at its place, or the error."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raw = {}
    cycles = list(_cycles(raw))
    if cycles:
        return [
            Finding(
                "error",
                "cycle",
                str(path),
                lines.line("models", first, "parents", f'"{after}"'),
                f"the parents of models {' -> '.join([*names, names[0]])} form a cycle: none of "
                "them can be written first (a model may be its own parent; two may not be each "
                "other's)",
            )
            for first, names, after in cycles
        ]
    message = str(exc).removeprefix(f"{path}: ")
    place = re.search(r"\b(sources|models)\[(\d+)\]", message)
    line = lines.line(place.group(1), int(place.group(2))) if place else None
    return [Finding("error", "spec", str(path), line, message)]


def _cycles(raw: dict[str, Any]) -> Iterator[tuple[int, list[str], str]]:
    """Each cycle of parents between models (a model that is its own parent is not one):
    (index of its first model, the models in order, the parent the first one names)."""
    models = [m for m in raw.get("models", []) if isinstance(m, dict)]
    names = [str(m.get("name")) for m in models]
    parents = {
        n: [str(p.get("model")) for p in m.get("parents", []) if isinstance(p, dict)]
        for n, m in zip(names, models, strict=True)
    }
    seen: set[str] = set()
    for start in names:
        if start in seen:
            continue
        path: list[str] = []
        stack = [(start, iter(parents.get(start, [])))]
        on_path = {start}
        path.append(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_path.discard(path.pop())
                seen.add(node)
                continue
            if child == node or child in seen or child not in parents:
                continue
            if child in on_path:
                cycle = path[path.index(child) :]
                seen.update(cycle)
                yield names.index(cycle[0]), cycle, cycle[1] if len(cycle) > 1 else cycle[0]
                continue
            on_path.add(child)
            path.append(child)
            stack.append((child, iter(parents.get(child, []))))


# -- sources ----------------------------------------------------------------------------------


def _source_table(
    conn: psycopg.Connection,
    lines: Lines,
    i: int,
    src: Source,
    shapes: dict[str, list[tuple[str, str]]],
) -> list[Finding]:
    assert src.table is not None
    file = str(lines.path)
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", [catalog.regclass(src.table)]
    ).fetchone()
    if not row or not row[0]:
        return [
            Finding(
                "error",
                "source_table",
                file,
                lines.line("sources", i, "table"),
                f"source {src.name}: table {src.table} does not exist in the source database "
                "(or this role cannot see it)",
            )
        ]
    cols = columns.source_columns(conn, src.table)
    names = {c.name for c in cols}
    missing = [k for k in src.keys if k not in names]
    if missing:
        return [
            Finding(
                "error",
                "source_column",
                file,
                lines.line("sources", i, "key"),
                f"source {src.name}: key column {', '.join(missing)} is not a column of "
                f"{src.table}",
            )
        ]
    shapes[src.name] = [(c.name, c.type) for c in cols]
    if src.stage_key == COMPOSITE_KEY:  # a composite key's text (or a row's identity)
        shapes[src.name].append((COMPOSITE_KEY, "text"))
    if src.lookup or not src.keys:
        return []
    line = lines.line("sources", i, "key")
    return [
        Finding(level, "source_key", file, line, msg) for level, msg in _key_problems(conn, src)
    ]


def _key_problems(conn: psycopg.Connection, src: Source) -> list[tuple[str, str]]:
    """(level, message) for a key that is not unique and not null in the source. A NULL
    stops staging (an error); a repeated key quarantines its rows, ``duplicate_key`` (a
    warning). A unique index on some of the key's columns with every key column NOT NULL
    proves the key without a scan."""
    assert src.table is not None
    proven = conn.execute(
        "SELECT bool_and(a.attnotnull) AND EXISTS (SELECT FROM pg_index i "
        " WHERE i.indrelid = r.oid AND i.indisunique AND i.indpred IS NULL "
        " AND i.indexprs IS NULL AND ARRAY(SELECT x.attname::text FROM pg_attribute x "
        "  WHERE x.attrelid = r.oid AND x.attnum = ANY((i.indkey::int2[])[0:i.indnkeyatts - 1])) "
        "  <@ %(keys)s::text[]) "
        "AND NOT EXISTS (SELECT FROM pg_inherits h WHERE h.inhparent = r.oid) "
        "FROM (SELECT to_regclass(%(rel)s) AS oid) r "
        "JOIN pg_attribute a ON a.attrelid = r.oid AND a.attname = ANY(%(keys)s::text[]) "
        "GROUP BY r.oid",
        {"rel": catalog.regclass(src.table), "keys": src.keys},
    ).fetchone()
    if proven and proven[0]:
        return []
    table = sql.Identifier(*src.table.split("."))
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in src.keys)
    nulls = conn.execute(
        sql.SQL("SELECT count(*) FROM {} t WHERE {}").format(
            table,
            sql.SQL(" OR ").join(
                sql.SQL("t.{} IS NULL").format(sql.Identifier(k)) for k in src.keys
            ),
        )
    ).fetchone()
    dups = conn.execute(
        sql.SQL(
            "SELECT count(*), (array_agg(k ORDER BY k))[1:{}] FROM (SELECT min({}) AS k FROM {} t "
            "GROUP BY {} HAVING count(*) > 1) d"
        ).format(sql.Literal(_SHOWN), text_sql("t", src.keys), table, keys)
    ).fetchone()
    conn.rollback()
    what = f"source {src.name}: key {', '.join(src.keys)} of {src.table}"
    problems = []
    if nulls and nulls[0]:
        problems.append(
            ("error", f"{what} is not null: {nulls[0]:,} row(s) with a NULL in the key: staging "
             'would stop (key = "*" names rows by their content)')
        )  # fmt: skip
    if dups and dups[0]:
        shown = ", ".join(dups[1] or [])
        more = f" and {dups[0] - _SHOWN:,} more" if dups[0] > _SHOWN else ""
        problems.append(
            ("warning", f"{what} is not unique: {dups[0]:,} key value(s) held by more than one "
             f"row ({shown}{more}): all their rows would be quarantined (duplicate_key)")
        )  # fmt: skip
    return problems


def _source_csv(
    lines: Lines, i: int, src: Source, data_dir: Path, shapes: dict[str, list[tuple[str, str]]]
) -> list[Finding]:
    """The file is there, its header is the declared one, its key repeats nowhere."""
    assert src.csv is not None and src.columns is not None
    file = str(lines.path)
    path = data_dir / src.csv
    names = list(src.columns)
    shapes[src.name] = [(n, "text") for n in names]
    if src.stage_key == COMPOSITE_KEY:  # a composite key's text (or a row's identity)
        shapes[src.name].append((COMPOSITE_KEY, "text"))
    missing = [k for k in src.keys if k not in names]
    if missing:
        return [
            Finding(
                "error",
                "source_column",
                file,
                lines.line("sources", i, "key"),
                f"source {src.name}: key column {', '.join(missing)} is not among its columns",
            )
        ]
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if header != names:
                return [
                    Finding(
                        "error",
                        "csv",
                        file,
                        lines.line("sources", i, "columns"),
                        f"source {src.name}: the header of {path.name} has columns {header}, "
                        f"the spec declares {names}",
                    )
                ]
            if not src.keys:  # a table without a key: nothing can repeat
                return []
            at = [names.index(k) for k in src.keys]
            seen: set[tuple[str, ...]] = set()
            dups, nulls = 0, 0
            for row in reader:
                key = tuple(row[j] if j < len(row) else "" for j in at)
                if any(v == "" for v in key):
                    nulls += 1
                elif key in seen:
                    dups += 1
                else:
                    seen.add(key)
    except OSError as exc:
        return [
            Finding(
                "error",
                "csv",
                file,
                lines.line("sources", i, "csv"),
                f"source {src.name}: cannot read {path}: {exc.strerror}",
            )
        ]
    except UnicodeDecodeError:
        return [
            Finding(
                "error",
                "csv",
                file,
                lines.line("sources", i, "csv"),
                f"source {src.name}: {path.name} is not UTF-8",
            )
        ]
    if not (dups or nulls):
        return []
    return [
        Finding(
            "error",
            "source_key",
            file,
            lines.line("sources", i, "key"),
            f"source {src.name}: key {', '.join(src.keys)} of {path.name} is not unique and "
            f"not null: {nulls:,} row(s) with an empty key, {dups:,} repeated: those rows would "
            "not migrate",
        )
    ]


# -- models -----------------------------------------------------------------------------------


@dataclass
class _Sql:
    """A model's query and where its text is, to turn a database's error position into the
    file, line and column a person edits."""

    body: str
    file: Path
    text: str  # the file's whole text
    start: int  # offset of the body's first character in ``text``
    run: str = ""  # the body as run: the helpers' schema moved (``move_helpers``)
    moved: tuple[tuple[int, int], ...] = ()  # where in ``body`` it was, how much longer now

    def unmoved(self, offset: int) -> int:
        """An offset into ``run`` as an offset into ``body``."""
        grown = 0
        for at, more in self.moved:
            if offset > at + grown:
                grown += more
        return offset - grown

    def place(self, offset: int) -> tuple[int, int]:
        at = self.start + max(0, min(offset, len(self.body)))
        return self.text.count("\n", 0, at) + 1, at - (self.text.rfind("\n", 0, at) + 1) + 1

    def word(self, name: str) -> int:
        """Offset of where the query names an output column (``AS name``, else the word)."""
        for pattern in (
            rf'\bAS\s+"?{re.escape(name)}"?(?![\w$])',
            rf"(?<![\w$]){re.escape(name)}(?![\w$])",
        ):
            m = re.search(pattern, self.body, flags=re.IGNORECASE)
            if m:
                return m.start()
        return 0


def _model_sql(spec: Spec, lines: Lines, i: int, model: Model, helpers: str) -> _Sql:
    body = spec.model_sql(model)
    run, starts = move_helpers(body, spec.ledger_schema, helpers)
    to = len(sql.Identifier(helpers).as_string(None))
    moved = tuple((at, to - (len(spec.ledger_schema) + 2 * (body[at] == '"'))) for at in starts)
    ref = model.sql.strip()
    if ref.endswith(".sql") and "\n" not in ref:
        path = spec.base_dir / ref
        text = path.read_text()
        return _Sql(body, path, text, len(text) - len(text.lstrip()), run, moved)
    # Inline: the body's first line, looked for in the model's block of the spec.
    span = lines.block("models", i)
    begin = sum(len(x) + 1 for x in lines.lines[: span[0]]) if span else 0
    first = body.splitlines()[0] if body else ""
    at = lines.text.find(first, begin)
    start = at if at >= 0 else begin
    return _Sql(body, lines.path, lines.text, start, run, moved)


def _stand_ins(spec: Spec, shapes: dict[str, list[tuple[str, str]]]) -> sql.Composable:
    """``WITH`` queries named as the stage tables, with their columns and types, and no
    rows: unqualified names in the model's query (and its subqueries) read them."""
    ctes = [
        sql.SQL("{} AS (SELECT {} WHERE false)").format(
            sql.Identifier(spec.source(name).stage_table),
            sql.SQL(", ").join(
                sql.SQL("NULL::{} AS {}").format(sql.SQL(typ), sql.Identifier(col))  # type: ignore[arg-type]
                for col, typ in cols
            ),
        )
        for name, cols in shapes.items()
    ]
    return sql.SQL("WITH {} ").format(sql.SQL(", ").join(ctes)) if ctes else sql.SQL("")


def _run(conn: psycopg.Connection, query: str) -> list[tuple[str, int]]:
    """Run one statement on zero rows; its output columns (name, type OID)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(sql.SQL(query), binary=True)  # type: ignore[arg-type]
        return [(d.name, d.type_code) for d in cur.description or []]


def _position(exc: psycopg.Error, prefix: str) -> int | None:
    pos = exc.diag.statement_position
    if not pos:
        return None
    return int(pos) - 1 - len(prefix)


def _model(
    conn: psycopg.Connection,
    spec: Spec,
    lines: Lines,
    i: int,
    model: Model,
    shapes: dict[str, list[tuple[str, str]]],
    helpers: str,
) -> list[Finding]:
    out: list[Finding] = []
    toml = str(lines.path)
    where = f"model {model.name}"
    tcols, notnull, generated = _target_columns(conn, model.target)
    rules = catalog.write_rules(conn, model.target) if tcols else []
    refused = [RULES_REWRITE.format(tables=model.target, rules=", ".join(rules))] if rules else []
    if not tcols:
        refused.append(
            f"target table {model.target} does not exist in the target database "
            "(or this role cannot see it)"
        )
    for message in refused:
        out.append(
            Finding(
                "error", "target_table", toml, lines.line("models", i, "target"),
                f"{where}: {message}",
            )
        )  # fmt: skip
    for attr in ("key_column", "legacy_column"):
        col = getattr(model, attr)
        if tcols and col is not None and col not in tcols:
            out.append(
                Finding(
                    "error",
                    "target_column",
                    toml,
                    lines.line("models", i, attr),
                    f"{where}: {attr} {col} is not a column of {model.target}",
                )
            )
    unknown = sorted(s for s in spec.reads(model) if s not in shapes)
    if unknown:
        return out  # their sources' own findings say why; the SQL cannot run without them
    q = _model_sql(spec, lines, i, model, helpers)
    prefix = _stand_ins(spec, shapes).as_string(conn) + "SELECT * FROM (\n"
    try:
        output = _run(conn, prefix + q.run + "\n) m LIMIT 0")
    except psycopg.Error as exc:
        pos = _position(exc, prefix)
        line, col = q.place(q.unmoved(pos)) if pos is not None else (None, None)
        out.append(
            Finding(
                "error",
                "model_sql",
                str(q.file),
                line,
                f"{where}: its SQL does not run: {describe(exc)}",
                col,
            )
        )
        return out
    names = dict(output)
    sql_file = str(q.file)

    def at(name: str) -> tuple[int, int]:
        return q.place(q.word(name))

    if "_key" not in names:
        out.append(
            Finding(
                "error",
                "model_sql",
                sql_file,
                q.place(0)[0],
                f"{where}: its SQL must return a column named _key",
            )
        )
    filled = {model.key_column, *(p.column for p in model.parents if p.column)}
    written: set[str] = set()
    for name, _ in output:
        if name.startswith("_"):
            continue
        line, col = at(name)
        if name in filled:
            out.append(
                Finding(
                    "error",
                    "model_sql",
                    sql_file,
                    line,
                    f"{where}: column {name} is filled by ferry; drop it from the SQL",
                    col,
                )
            )
            continue
        if not tcols:
            continue
        unfit = (
            f"output column {name} is not a column of {model.target}"
            if name not in tcols
            else GENERATED.format(column=name, table=model.target)
            if name in generated
            else None
        )
        if unfit:
            out.append(Finding("error", "target_column", sql_file, line, f"{where}: {unfit}", col))
            continue
        written.add(name)
        cast = _cast_problem(conn, prefix, q.run, name, tcols[name])
        if cast:
            out.append(
                Finding(
                    "error",
                    "cast",
                    sql_file,
                    line,
                    f"{where}: output column {name} does not cast to {model.target}."
                    f"{name} ({tcols[name]}): {cast}",
                    col,
                )
            )
    for j, p in enumerate(model.parents):
        for key in p.keys:
            if key not in names:
                out.append(
                    Finding(
                        "error",
                        "model_sql",
                        toml,
                        lines.line("models", i, "parents", f'"{key}"'),
                        f"{where}: parents[{j}] key {key} is not an output column of its SQL",
                    )
                )
        if p.column and tcols and p.column not in tcols:
            out.append(
                Finding(
                    "error",
                    "target_column",
                    toml,
                    lines.line("models", i, "parents", f'"{p.column}"'),
                    f"{where}: parents[{j}] column {p.column} is not a column of {model.target}",
                )
            )
        elif p.column:
            written.add(p.column)
    if model.merge_into and model.merge_into not in names:
        out.append(
            Finding(
                "error",
                "model_sql",
                toml,
                lines.line("models", i, "merge_into"),
                f"{where}: merge_into {model.merge_into} is not an output column",
            )
        )
    for j, r in enumerate(model.reads):
        for key in r.keys:
            if key not in names:
                out.append(
                    Finding(
                        "error",
                        "model_sql",
                        toml,
                        lines.line("models", i, "reads", f'"{key}"'),
                        f"{where}: reads[{j}] key {key} is not an output column of its SQL",
                    )
                )
    for rule in model.rules:
        rule_prefix = prefix.removesuffix("SELECT * FROM (\n") + "SELECT ("
        try:
            when = move_helpers(rule.when, spec.ledger_schema, helpers)[0]
            kind = _run(conn, rule_prefix + when + f") FROM (\n{q.run}\n) m0 LIMIT 0")
            problem = None if kind and kind[0][1] == BOOL_OID else "it is not a boolean"
        except psycopg.Error as exc:
            problem = f"it does not run: {describe(exc)}"
        if problem:
            out.append(
                Finding(
                    "error",
                    "rule",
                    toml,
                    lines.line("models", i, None, rule.when.strip().splitlines()[0][:60]),
                    f"{where}: rule {rule.name} ({rule.kind}): {problem}",
                )
            )
    unfed = sorted(c for c in notnull if c not in written and c != model.key_column)
    if unfed:
        out.append(
            Finding(
                "warn",
                "not_null",
                toml,
                lines.line("models", i, "sql"),
                f"{where}: {model.target} column(s) {', '.join(unfed)} are NOT NULL without a "
                "default and the model does not write them: every row would be quarantined "
                "(not_null_violation)",
            )
        )
    return out


def _target_columns(
    conn: psycopg.Connection, target: str
) -> tuple[dict[str, str], set[str], set[str]]:
    """The target table's columns with their types, those NOT NULL without a default, and
    those only the database fills (``GENERATED ALWAYS``)."""
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), "
        "a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '', "
        "a.attgenerated <> '' OR a.attidentity = 'a' "
        "FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY a.attnum",
        [catalog.regclass(target)],
    ).fetchall()
    return {r[0]: r[1] for r in rows}, {r[0] for r in rows if r[2]}, {r[0] for r in rows if r[3]}


def _cast_problem(
    conn: psycopg.Connection, prefix: str, body: str, name: str, typ: str
) -> str | None:
    """The cast the engine writes the column with (``(m.col)::type``), planned on zero rows."""
    query = (
        prefix.removesuffix("SELECT * FROM (\n")
        + sql.SQL("SELECT (m.{})::{} FROM (\n")
        .format(sql.Identifier(name), sql.SQL(typ))
        .as_string(conn)  # type: ignore[arg-type]
        + body
        + "\n) m LIMIT 0"
    )
    try:
        _run(conn, query)
    except psycopg.Error as exc:
        return describe(exc)
    return None
