"""``ferry init``: a first spec written from the two catalogs, and what it left for the user.

Why: the largest cost of using ferry is the first spec (the dispatch spec took 22 hand-written
models). Most of it can be read off the databases: which legacy table feeds which target
table (a ``legacy_*`` column, the names, the columns in common), which columns map by name,
the casts, the parents from the target's foreign keys. What cannot be read off (business
rules, free text into an enum, casts that may fail) is written down as a comment with a rule
stub, commented out, so that the spec loads and migrates as it is and its fates show where
rules are needed. Only catalog facts and row counts are read: no row contents.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from rich.console import Group
from rich.table import Table

from ferry import catalog, conninfo
from ferry.catalog import ColumnInfo, ForeignKey
from ferry.engine.columns import source_columns
from ferry.errors import FerryError, InitError
from ferry.spec import Source

#: A table of at most this many rows that no target table matches, and that another table
#: refers to, is a lookup (staged for joins only).
SMALL = 1000
#: The least score of a match: a legacy column naming the table, or the table's name, or
#: about four distinctive columns in common.
THRESHOLD = 4.0
#: Column names too common to be evidence of a match on their own.
GENERIC = {
    "id", "name", "created", "updated", "created_at", "updated_at", "modified", "modified_at",
    "active", "is_active", "status", "note", "notes", "description", "deleted_at",
}  # fmt: skip
#: A name a spec can hold as a table's schema or name (the engine quotes it, case kept).
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Words too vague to match a column by a word more or less (name -> group_name).
_VAGUE = {"id", "name", "type", "key", "code", "value", "data", "kind", "no", "at"}
#: The rule helpers a spec may call live in its ledger schema (default ``ferry``).
LEDGER_SCHEMA = "ferry"
_INT_RANGE = {
    "smallint": (-32768, 32767),
    "integer": (-2147483648, 2147483647),
    "bigint": (-9223372036854775808, 9223372036854775807),
}
_INT_DIGITS = {"smallint": 5, "integer": 10, "bigint": 19}
_UUID_RE = r"^\{?[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}\}?$"
_INT_RE = r"^\s*[-+]?[0-9]+\s*$"
_NUM_RE = r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"
_DATE_RE = r"^\s*[0-9]{4}-[0-9]{2}-[0-9]{2}"


# --- what the catalogs say ------------------------------------------------------------------
@dataclass
class SourceTable:
    """A legacy table (or view) as a source of the spec."""

    schema: str
    table: str
    kind: str  # table | view
    name: str  # the spec's source name
    stage: str  # its stage table's name, which model SQL reads
    columns: dict[str, ColumnInfo]
    stage_types: dict[str, str]
    key: list[str] | None
    key_note: str
    fks: list[ForeignKey]
    rows: int  # counted up to SMALL + 1
    lookup: bool = False
    note: str = ""

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def stems(self) -> list[str]:
        """Its name's endings, singular, longest first: dispatch_office_members gives
        dispatch_office_member, office_member, member."""
        return stems(self.table)


@dataclass
class TargetTable:
    schema: str
    table: str
    columns: dict[str, ColumnInfo]
    pk: tuple[str, ...]
    fks: list[ForeignKey]
    unique_alone: set[str]  # columns with a unique index of their own
    checks: list[tuple[str, str]]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


# --- what init decides ------------------------------------------------------------------------
@dataclass
class Stub:
    """A suggested rule, written commented out."""

    kind: str  # reject | repair | exclude
    name: str
    when: str

    def toml(self) -> str:
        return f"{{ {self.kind} = {_toml_str(self.name)}, when = {_toml_str(self.when)} }}"


@dataclass
class Flag:
    """Something about one column the user must look at."""

    column: str
    problem: str
    stub: Stub | None = None


@dataclass
class ParentPlan:
    model: str
    keys: list[str]  # output columns holding the parent's key
    column: str
    missing: str
    evidence: str


@dataclass
class ModelPlan:
    name: str
    target: TargetTable
    source: SourceTable
    score: float
    evidence: list[str]
    accounts: bool = True
    legacy_column: str | None = None
    select: list[tuple[str, str, str]] = field(default_factory=list)  # expr, alias, note
    parents: list[ParentPlan] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    @property
    def file(self) -> str:
        return f"{self.name}.sql"


@dataclass
class InitResult:
    """What ``scaffold`` wrote and what it left for the user, and why."""

    out: Path
    files: list[Path]
    sources: list[SourceTable]
    models: list[ModelPlan]
    unmatched: list[tuple[str, str]]  # target table, why
    keyless: list[tuple[str, str]]  # source table, why


# --- names ----------------------------------------------------------------------------------
def singular(word: str) -> str:
    """A rough English singular, enough to match table names (offices, categories)."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if w.endswith(("sses", "ches", "shes", "xes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def _norm(name: str) -> str:
    return "_".join(singular(t) for t in name.lower().split("_") if t)


def stems(name: str) -> list[str]:
    """The endings of a name, each word singular, longest first."""
    tokens = _norm(name).split("_")
    return ["_".join(tokens[i:]) for i in range(len(tokens))]


def _word(name: str) -> str:
    """A name as a spec names sources, models and helper columns: a plain identifier."""
    word = re.sub(r"[^a-z0-9_]+", "_", name.lower())
    return word if re.match(r"[a-z_]", word) else f"_{word}"


def _toml_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


class _Quoter:
    """Identifiers as model SQL and rules write them: bare when they can be."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.keywords = {
            r[0] for r in conn.execute("SELECT word FROM pg_get_keywords() WHERE catcode <> 'U'")
        }

    def __call__(self, name: str) -> str:
        if re.fullmatch(r"[a-z_][a-z0-9_]*", name) and name not in self.keywords:
            return name
        return '"' + name.replace('"', '""') + '"'


# --- reading ----------------------------------------------------------------------------------
def read_sources(
    conn: psycopg.Connection, schemas: list[str], views: bool
) -> tuple[list[SourceTable], list[tuple[str, str]]]:
    """Every legacy table of ``schemas`` (and view, with ``views``), with its key; and the
    ones without a key, which a spec cannot name yet."""
    rels = catalog.relations(conn, schemas, views)
    names = [t for _, t, _ in rels]
    out, keyless = [], []
    for schema, table, kind in rels:
        qualified = f"{schema}.{table}"
        if not (_PLAIN.fullmatch(schema) and _PLAIN.fullmatch(table)):
            keyless.append((qualified, "a spec names tables by plain names (letters, digits, _)"))
            continue
        cols = {c.name: c for c in catalog.table_columns(conn, qualified)}
        if not cols:
            keyless.append((qualified, "it has no columns"))
            continue
        name = _word(table if names.count(table) == 1 else f"{schema}_{table}")
        stage = Source(name=name, table=qualified).stage_table
        key: list[str] | None = None
        note = ""
        if kind == "table":
            found = catalog.unique_keys(conn, qualified)
            if found:
                key = list(found[0])
                pk = catalog.primary_key(conn, qualified)
                note = "primary key" if pk and tuple(key) == pk else "unique index, not null"
        elif "id" in cols:
            key, note = ["id"], "column id (a view declares no key: check it is unique)"
        if key is None:
            why = (
                "no primary key and no unique index over NOT NULL columns"
                if kind == "table"
                else "a view with no column id"
            )
            keyless.append((qualified, why))
            continue
        stage_types = {c.name: c.type for c in source_columns(conn, qualified)}
        rows = catalog.rows_up_to(conn, sql.Identifier(schema, table), SMALL + 1)
        fks = catalog.foreign_keys(conn, qualified) if kind == "table" else []
        out.append(
            SourceTable(schema, table, kind, name, stage, cols, stage_types, key, note, fks, rows)
        )
    conn.commit()
    return out, keyless


def read_targets(
    conn: psycopg.Connection, schemas: list[str]
) -> tuple[list[TargetTable], list[tuple[str, str]]]:
    """The tables of the target's ``schemas``; and those a spec cannot name, and why."""
    out: list[TargetTable] = []
    skipped: list[tuple[str, str]] = []
    for schema, table, _ in catalog.relations(conn, schemas):
        qualified = f"{schema}.{table}"
        if not (_PLAIN.fullmatch(schema) and _PLAIN.fullmatch(table)):
            skipped.append((qualified, "a spec names tables by plain names (letters, digits, _)"))
            continue
        keys = catalog.unique_keys(conn, qualified, not_null=False)
        out.append(
            TargetTable(
                schema,
                table,
                {c.name: c for c in catalog.table_columns(conn, qualified)},
                catalog.primary_key(conn, qualified),
                catalog.foreign_keys(conn, qualified),
                {k[0] for k in keys if len(k) == 1},
                catalog.checks(conn, qualified),
            )
        )
    conn.commit()
    return out, skipped


# --- matching ---------------------------------------------------------------------------------
def _legacy_names(target: TargetTable) -> list[tuple[str, str]]:
    """``(column, what it names)`` of the target's legacy columns: legacy_office_id names
    office; legacy_id names nothing."""
    out = []
    for col in target.columns:
        if col.startswith("legacy_"):
            what = re.sub(r"_(id|key|pk|code|no)$", "", col.removeprefix("legacy_"))
            out.append((col, "" if what in ("id", "key", "pk") else _norm(what)))
    return out


def score(target: TargetTable, source: SourceTable) -> tuple[float, list[str], str | None]:
    """How likely ``source`` feeds ``target``, the evidence, and the legacy column."""
    points, evidence, legacy = 0.0, [], None
    ends = source.stems
    whole = len(ends[0].split("_"))
    for col, what in _legacy_names(target):
        if not what:
            legacy = legacy or col
            continue
        if what in ends:
            p = 8 + 2 * len(what.split("_")) / whole
            if p > points:
                points, legacy = p, col
                evidence = [f"legacy column {col} names {source.table}"]
            continue
        words = what.split("_")
        for i in range(len(words) - 1, 0, -1):
            if "_".join(words[:i]) in ends and points < 5:
                points, legacy = 5.0, col
                evidence = [f"legacy column {col} begins with a name of {source.table}"]
                break
    name = _norm(target.table)
    if name in ends[:2]:
        points += 6
        evidence.append(f"table names {target.table} ~ {source.table}")
    elif name in ends:
        points += 5
        evidence.append(f"table names {target.table} ~ {source.table}")
    elif name.split("_")[-1] in ends:
        points += 3
        evidence.append(f"table names end alike ({target.table} ~ {source.table})")
    common = [
        c for c in target.columns
        if c in source.columns and c not in target.pk and not c.startswith("legacy_")
    ]  # fmt: skip
    if common:
        distinct = [c for c in common if c not in GENERIC]
        points += min(6.0, len(distinct) + 0.3 * (len(common) - len(distinct)))
        evidence.append(f"{len(common)} columns in common ({', '.join(common[:6])}"
                        + (", ...)" if len(common) > 6 else ")"))  # fmt: skip
    return points, evidence, legacy


def match(
    targets: list[TargetTable], sources: list[SourceTable]
) -> tuple[list[ModelPlan], list[tuple[str, str]]]:
    """Each target table to the source it most likely comes from; the source's best target
    accounts for its rows, any other is derived from them (``accounts = false``)."""
    models: list[ModelPlan] = []
    unmatched: list[tuple[str, str]] = []
    tables = [t.table for t in targets]
    for t in targets:
        key = [t.pk[0]] if len(t.pk) == 1 else []
        if not key or t.columns[key[0]].base != "uuid":
            unmatched.append((t.qualified, "its primary key is not one uuid column"))
            continue
        scored = sorted(((*score(t, s), s) for s in sources), key=lambda x: (-x[0], x[3].qualified))
        if not scored or scored[0][0] < THRESHOLD:
            best = f" (best: {scored[0][3].table}, {scored[0][0]:.1f})" if scored else ""
            unmatched.append(
                (
                    t.qualified,
                    "no legacy column, name or enough columns in common point to a "
                    f"legacy table{best}",
                )
            )
            continue
        points, evidence, legacy, src = scored[0]
        if len(scored) > 1 and scored[1][0] >= THRESHOLD and scored[1][0] > points - 1:
            evidence.append(f"runner-up: {scored[1][3].table} ({scored[1][0]:.1f})")
        name = _word(t.table if tables.count(t.table) == 1 else f"{t.schema}_{t.table}")
        m = ModelPlan(name, t, src, points, evidence)
        m.legacy_column = legacy
        models.append(m)
    by_source: dict[str, list[ModelPlan]] = {}
    for m in models:
        by_source.setdefault(m.source.name, []).append(m)
    for group in by_source.values():
        group.sort(key=lambda m: (-m.score, m.name))
        for m in group[1:]:
            m.accounts = False
            m.notes.append(
                f"{m.source.name} also feeds {group[0].name}, which accounts for its rows: "
                "this model is derived from them (accounts = false), one row per source "
                "row; filter it (WHERE) or split the rows as the business needs"
            )
    return models, unmatched


# --- columns and casts ------------------------------------------------------------------------
class _Types:
    """What the target server says about types: casts that exist, categories."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._cast: dict[tuple[str, str], bool] = {}
        self._info: dict[str, tuple[str, str]] = {}
        self.version = conn.info.server_version

    def castable(self, src: str, dst: str) -> bool:
        if (src, dst) not in self._cast:
            try:
                with self.conn.transaction():
                    self.conn.execute(
                        sql.SQL("SELECT CAST(NULL::{} AS {})").format(sql.SQL(src), sql.SQL(dst))
                    )
                ok = True
            except psycopg.Error:
                ok = False
            self._cast[(src, dst)] = ok
        return self._cast[(src, dst)]

    def info(self, typ: str) -> tuple[str, str]:
        """``(typcategory, typname)`` of a built-in type written as format_type writes it."""
        if typ not in self._info:
            row = self.conn.execute(
                "SELECT typcategory::text, typname::text FROM pg_type WHERE oid = %s::regtype",
                [typ],
            ).fetchone()
            self._info[typ] = (row[0], row[1]) if row else ("X", typ)
        return self._info[typ]


def _length(typ: str) -> int | None:
    m = re.fullmatch(r"(?:character varying|character|bit varying|bit)\((\d+)\)(\[\])?", typ)
    return int(m.group(1)) if m else None


def _numeric(typ: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"numeric\((\d+),(\d+)\)", typ)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _int_name(typ: str) -> str | None:
    return typ if typ in _INT_RANGE else None


def convert(
    types: _Types, q: _Quoter, expr: str, stage_type: str, src: ColumnInfo, dst: ColumnInfo,
    out: str,
) -> tuple[str, list[Flag], list[str]] | None:  # fmt: skip
    """How a source column (read from the stage as ``stage_type``) feeds a target column:
    the expression, what may fail (with a rule stub over the output column ``out``), and
    notes. None: no cast exists. ferry casts every output column to the target's type itself,
    so most columns are selected as they are."""
    col = q(out)
    flags: list[Flag] = []
    notes: list[str] = []
    target = dst.base
    if stage_type == dst.type:
        return expr, flags, notes
    if not types.castable(stage_type, dst.type):
        return None
    s_cat, _ = types.info(stage_type)
    if stage_type == "timestamp without time zone" and target == "timestamp with time zone":
        notes.append(f"{out}: the legacy timestamp is read as UTC (AT TIME ZONE 'UTC')")
        return f"{expr} AT TIME ZONE 'UTC'", flags, notes
    if stage_type == "timestamp with time zone" and target == "timestamp without time zone":
        notes.append(f"{out}: written as UTC time (AT TIME ZONE 'UTC')")
        return f"{expr} AT TIME ZONE 'UTC'", flags, notes
    if dst.typtype == "e":
        labels = ", ".join("'" + lb.replace("'", "''") + "'" for lb in dst.labels)
        if src.typtype == "e" and set(src.labels) <= set(dst.labels):
            return expr, flags, notes
        flags.append(
            Flag(
                out,
                f"free text into the enum {dst.base} ({', '.join(dst.labels)}): another value "
                "fails the cast and its row is quarantined with the database's error; map the "
                "values in the SQL (a CASE, named by a repair rule) or reject them",
                Stub(
                    "reject",
                    f"{out}_unknown",
                    f"{col} IS NOT NULL AND {col}::text NOT IN ({labels})",
                ),
            )
        )
        return expr, flags, notes
    if s_cat == "S" and dst.category != "S":
        flags.append(_text_cast_flag(types, out, col, dst))
        return expr, flags, notes
    if dst.category == "S":
        n = _length(target)
        m = _length(stage_type) if s_cat == "S" else None
        if n is not None and (m is None or m > n):
            flags.append(
                Flag(
                    out,
                    f"{target} is shorter than {stage_type}: the cast cuts a longer value to "
                    f"{n} characters, silently",
                    Stub("reject", f"{out}_too_long", f"length({col}::text) > {n}"),
                )
            )
        return expr, flags, notes
    if dst.category == "N" and s_cat == "N":
        bound = _numeric(target)
        if bound is not None:
            p, s = bound
            sp = _numeric(stage_type)
            digits = (sp[0] - sp[1]) if sp else _INT_DIGITS.get(stage_type)
            if digits is None or digits > p - s:
                flags.append(
                    Flag(out, f"{stage_type} into {target}: a value of {p - s} digits or more "
                         "before the point does not fit (numeric_value_out_of_range)",
                         Stub("reject", f"{out}_out_of_range", f"abs({col}) >= 1e{p - s}")),
                )  # fmt: skip
            if (sp is None or sp[1] > s) and not _int_name(stage_type):
                notes.append(f"{out}: rounded to {s} decimals by the cast")
        elif _int_name(target):
            lo, hi = _INT_RANGE[target]
            wider = _int_name(stage_type) and _INT_DIGITS[stage_type] <= _INT_DIGITS[target]
            if not wider:
                flags.append(
                    Flag(out, f"{stage_type} into {target}: out of range values fail the cast",
                         Stub("reject", f"{out}_out_of_range",
                              f"{col} NOT BETWEEN {lo} AND {hi}")),
                )  # fmt: skip
                if not _int_name(stage_type):
                    notes.append(f"{out}: a fraction is rounded by the cast")
        return expr, flags, notes
    if dst.category == "D" and types.info(stage_type)[1] in ("timestamp", "timestamptz"):
        notes.append(f"{out}: the time of day is dropped by the cast to {target}")
    if dst.domain:
        notes.append(f"{out}: the domain {dst.type} may refuse values (its CHECK)")
    return expr, flags, notes


def _text_cast_flag(types: _Types, out: str, col: str, dst: ColumnInfo) -> Flag:
    """Text into another type: the cast may fail; the stub says which values would."""
    target = dst.base
    if types.version >= 160000:
        test = f"NOT pg_input_is_valid({col}, '{target}')"
    elif target in ("json", "jsonb"):
        test = f"NOT {LEDGER_SCHEMA}.is_json({col})"
    elif target == "uuid":
        test = f"{col} !~ '{_UUID_RE}'"
    elif _int_name(target):
        test = f"{col} !~ '{_INT_RE}'"
    elif target.startswith("numeric") or target in ("real", "double precision"):
        test = f"{col} !~ '{_NUM_RE}'"
    elif target == "boolean":
        test = (f"lower(btrim({col})) NOT IN ('t', 'true', 'y', 'yes', 'on', '1', 'f', 'false', "
                "'n', 'no', 'off', '0')")  # fmt: skip
    elif dst.category == "D":
        test = f"{col} !~ '{_DATE_RE}'"  # ISO dates only: adjust to the legacy format
    else:
        test = f"FALSE  -- write the test for {target}"
    name = f"{out}_not_{re.sub(r'[^a-z0-9]+', '_', target.lower()).strip('_')}"
    return Flag(
        out,
        f"text into {target}: a value that does not parse fails the cast and its row is "
        "quarantined with the database's error",
        Stub("reject", name, f"{col} IS NOT NULL AND {test}"),
    )


def _affix(target: str, candidates: list[str]) -> str | None:
    """The one source column whose name is the target's with a word more or less (country ->
    country_code, path -> storage_path, template_context -> context, roles -> role)."""
    t = _norm(target)
    found = []
    for c in candidates:
        n = _norm(c)
        if min(t, n, key=len) in _VAGUE:
            continue
        if n == t or any(a.startswith(b + "_") or a.endswith("_" + b) for a, b in ((t, n), (n, t))):
            found.append(c)
    return found[0] if len(found) == 1 else None


# --- parents ----------------------------------------------------------------------------------
def locate(
    model: ModelPlan, fk_cols: tuple[str, ...], parent: ModelPlan
) -> tuple[list[str], str] | None:
    """The source columns of ``model``'s row that hold ``parent``'s source key, and how they
    were found: a declared legacy foreign key, the same column name, or the parent table's
    name + ``_id``; or the row's own key, when the model is derived from its parent's source."""
    src, psrc = model.source, parent.source
    key = psrc.key or []
    if psrc is src and parent is not model:
        if not model.accounts and parent.accounts:
            return list(key), f"the same {src.table} row (derived from it)"
        return None
    declared = [
        fk for fk in src.fks if fk.ref_table == psrc.qualified and list(fk.ref_columns) == key
    ]
    if len(declared) > 1:
        declared = [fk for fk in declared if fk.columns == fk_cols]
    if len(declared) == 1:
        cols = list(declared[0].columns)
        return cols, f"legacy foreign key {src.table} ({', '.join(cols)})"
    if len(key) == 1 and len(fk_cols) == 1:
        own = src.key or []
        col = fk_cols[0]
        if col in src.columns and not (parent is model and [col] == own):
            return [col], f"{src.table}.{col} (the same name)"
        for stem in [*psrc.stems, singular(parent.target.table), singular(parent.name)]:
            cand = f"{stem}_id"
            if cand in src.columns and not (parent is model and [cand] == own):
                return [cand], f"{src.table}.{cand} (named after {psrc.table})"
        return None
    if len(key) > 1 and psrc is not src and all(k in src.columns for k in key):
        return list(key), f"{src.table} ({', '.join(key)}), named as the key of {psrc.table}"
    return None


def _break_cycles(models: list[ModelPlan]) -> None:
    """Drop the parents that close a cycle between models (the engine orders models by
    parents; a model that is its own parent is fine), nullable columns first."""
    while True:
        graph = {m.name: {p.model for p in m.parents if p.model != m.name} for m in models}
        done: set[str] = set()
        progress = True
        while progress:
            progress = False
            for n, ps in graph.items():
                if n not in done and ps <= done:
                    done.add(n)
                    progress = True
        stuck = [m for m in models if m.name not in done]
        if not stuck:
            return
        edges = [
            (not m.target.columns[p.column].not_null, m, p)
            for m in stuck
            for p in m.parents
            if p.model in {s.name for s in stuck} and p.model != m.name
        ]
        edges.sort(key=lambda e: (not e[0], e[1].name, e[2].column))
        _, m, p = edges[0]
        m.parents.remove(p)
        m.select = [s for s in m.select if s[1] not in p.keys or _used(m, s[1])]
        col = m.target.columns[p.column]
        if col.not_null and not col.has_default:
            m.select.append(("NULL", p.column, "parent dropped to break a cycle"))
        names = ", ".join(sorted(s.name for s in stuck))
        m.flags.append(
            Flag(
                p.column,
                f"parent {p.model} dropped: the parents of {names} form a cycle; "
                "set it in a second model or an update",
            )
        )


def _used(m: ModelPlan, alias: str) -> bool:
    return any(alias in p.keys for p in m.parents)


# --- one model ----------------------------------------------------------------------------------
def plan_model(m: ModelPlan, models: dict[str, ModelPlan], types: _Types, q: _Quoter) -> None:
    """The model's SELECT: its key, legacy column, parents' keys and target columns."""
    src, tgt = m.source, m.target
    key = src.key or []
    alias = "s"
    key_expr = f"{alias}.{q(key[0])}" if len(key) == 1 else f"{alias}._ferry_key"
    m.select.append((key_expr, "_key", f"the source key ({src.key_note})"))
    written: set[str] = {tgt.pk[0]}
    used: set[str] = set()
    if m.legacy_column:
        lc = tgt.columns[m.legacy_column]
        ktype = src.stage_types[key[0]] if len(key) == 1 else "text"
        kcat = types.info(ktype)[0]
        fits = ktype == lc.type or lc.category == "S" or (kcat == "N" == lc.category)
        if fits and (len(key) == 1 or lc.category == "S"):
            m.select.append((key_expr, m.legacy_column, "the legacy key"))
            written.add(m.legacy_column)
            if m.legacy_column not in tgt.unique_alone:
                m.notes.append(f"{m.legacy_column} has no unique index: no legacy_column set")
                m.legacy_column = None
        else:
            m.notes.append(f"{m.legacy_column} cannot hold the key {', '.join(key)}: not filled")
            m.legacy_column = None
    # Parents, from the target's foreign keys to the primary key of another model's table.
    targets = {mm.target.qualified: mm for mm in models.values()}
    helpers: dict[str, str] = {}
    for fk in tgt.fks:
        parent = targets.get(fk.ref_table)
        if len(fk.columns) != 1 or fk.columns[0] in written:
            continue
        col = fk.columns[0]
        if parent is None or fk.ref_columns != parent.target.pk:
            why = "not a table init matched" if parent is None else "not its primary key"
            _unwritten(m, col, f"foreign key to {fk.ref_table} ({why})")
            written.add(col)
            continue
        found = locate(m, fk.columns, parent)
        if found is None:
            _unwritten(m, col, f"foreign key to {parent.name}: no legacy column found for it")
            written.add(col)
            continue
        cols, evidence = found
        outs = []
        for c in cols:
            name = helpers.setdefault(c, "_" + _word(c))
            if name not in [s[1] for s in m.select]:
                m.select.append((f"{alias}.{q(c)}", name, ""))
            outs.append(name)
            used.add(c)
        m.parents.append(
            ParentPlan(parent.name, outs, col, f"orphan_{singular(parent.name)}", evidence)
        )
        written.add(col)
    _columns(m, written, used, types, q)
    for name, definition in tgt.checks:
        m.notes.append(f"target {name} {definition}: a row that fails it is quarantined "
                       "(check_violation)")  # fmt: skip


def _take(
    m: ModelPlan, col: str, name: str, how: str, used: set[str], types: _Types, q: _Quoter
) -> bool:
    """Fill target column ``col`` from legacy column ``name`` (False: there is no cast)."""
    src, info = m.source, m.target.columns[col]
    got = convert(types, q, f"s.{q(name)}", src.stage_types[name], src.columns[name], info, col)
    if got is None:
        m.notes.append(f"{col}: {name} is {src.stage_types[name]}, no cast to {info.type}")
        return False
    expr, flags, notes = got
    m.select.append((expr, col, how))
    m.flags += [Flag(col, how)] if how else []
    m.flags += flags
    m.notes += notes
    used.add(name)
    if info.not_null and not src.columns[name].not_null and not info.has_default:
        m.flags.append(
            Flag(col, f"NOT NULL in the target, {name} may be NULL in the legacy table: such "
                 "a row is quarantined (not_null_violation)",
                 Stub("reject", f"{col}_missing", f"{q(col)} IS NULL")),
        )  # fmt: skip
    return True


def _columns(m: ModelPlan, written: set[str], used: set[str], types: _Types, q: _Quoter) -> None:
    """The target's other columns: by name, by a name with a word more or less, and one
    NOT NULL column from the one legacy column of its kind left (content <- text)."""
    src, tgt = m.source, m.target
    key = src.key or []
    needed: list[str] = []
    for col, info in tgt.columns.items():
        if col in written:
            continue
        if not info.writable:
            m.notes.append(f"{col}: generated by the target, not written")
            continue
        if col.startswith("legacy_"):
            m.notes.append(f"{col}: another legacy column, not filled")
            continue
        name = col if col in src.columns else None
        if name is None:  # "Full Name" -> full_name
            name = next((c for c in src.columns if c not in used and _word(c) == col), None)
        if name is not None and _take(m, col, name, "", used, types, q):
            continue
        free = [c for c in src.columns if c not in used and c not in key and c not in tgt.columns]
        name = _affix(col, free)
        how = f"from {name}, a name with a word more or less: check it"
        if name is not None and _take(m, col, name, how, used, types, q):
            continue
        if info.not_null and not info.has_default:
            needed.append(col)
        else:
            _unwritten(m, col, "no legacy column of that name")
    if len(needed) == 1:
        target = tgt.columns[needed[0]]
        left = [
            c for c in src.columns
            if c not in used and c not in key and c not in tgt.columns
            and types.info(src.stage_types[c])[0] == target.category
            and types.castable(src.stage_types[c], target.type)
        ]  # fmt: skip
        how = f"from {left[0] if left else ''}, the one legacy column of its kind left: check it"
        if len(left) == 1 and _take(m, needed[0], left[0], how, used, types, q):
            needed = []
    for col in needed:
        _unwritten(m, col, "no legacy column of that name")


def _plain(name: str) -> str:
    """A column name in a rule stub: bare when it is a plain lower-case identifier."""
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def _unwritten(m: ModelPlan, col: str, why: str) -> None:
    """A target column init cannot fill: NULL and flagged when the target needs a value (so
    ferry predicts the refusal instead of the server logging it), else left out."""
    info = m.target.columns[col]
    if info.not_null and not info.has_default:
        m.select.append(("NULL", col, "FIXME: NOT NULL, no source"))
        m.flags.append(
            Flag(col, f"NOT NULL in the target and not filled ({why}): every row is "
                 "quarantined (not_null_violation) until the SQL gives it a value",
                 Stub("reject", f"{col}_missing", f"{_plain(col)} IS NULL")),
        )  # fmt: skip
    else:
        default = "its default" if info.has_default else "NULL"
        m.notes.append(f"{col}: left to {default} ({why})")


# --- writing ----------------------------------------------------------------------------------
def model_sql(m: ModelPlan, q: _Quoter) -> str:
    """The model's SQL file: the match and its evidence, what to check, the SELECT."""
    lines = [
        f"-- ferry init: {m.target.qualified} <- {m.source.qualified}"
        + ("" if m.accounts else " (derived: accounts = false)"),
        f"-- match (score {m.score:.1f}): " + "; ".join(m.evidence),
    ]
    for p in m.parents:
        lines.append(f"-- parent {p.model} -> {p.column}: through {p.evidence}")
    for f in m.flags:
        lines.append(f"-- TODO {f.column}: {f.problem}")
    for n in m.notes:
        lines.append(f"-- note: {n}")
    if m.unused:
        lines.append(f"-- legacy columns not used: {', '.join(m.unused)}")
    items = [
        f"{expr} AS {q(alias)}" + ("," if i < len(m.select) - 1 else "")
        for i, (expr, alias, _) in enumerate(m.select)
    ]
    width = max(len(item) for item in items)
    for i, (item, (_, _, note)) in enumerate(zip(items, m.select, strict=True)):
        line = ("SELECT " if i == 0 else "       ") + item.ljust(width)
        lines.append((line + f"  -- {note}" if note else line).rstrip())
    lines.append(f"FROM {q(m.source.stage)} s")
    return "\n".join(lines) + "\n"


def spec_toml(name: str, result: InitResult, keyless: list[tuple[str, str]]) -> str:
    out = [
        f"# Written by ferry init: {len(result.models)} models, {len(result.sources)} sources.",
        "# Matches, casts and what to check are in each model's SQL file; rule stubs are",
        "# commented out, so this spec loads and migrates as it is (see docs/spec.md).",
        f"name = {_toml_str(name)}",
        f'namespace = "{uuid.uuid4()}"',
        "",
        "# --- sources ---",
    ]
    for s in result.sources:
        out.append("[[sources]]")
        out.append(f"name = {_toml_str(s.name)}")
        out.append(f"table = {_toml_str(s.qualified)}")
        key = s.key or []
        if key != ["id"]:
            out.append(
                f"key = {_toml_str(key[0])}"
                if len(key) == 1
                else "key = [" + ", ".join(_toml_str(k) for k in key) + "]"
            )
        if s.lookup:
            out.append(f"lookup = true  # {s.note}")
        elif s.note:
            out.append(f"# {s.note}")
        out.append("")
    for table, why in keyless:
        out.append(f"# {table}: not a source yet: {why}")
        out.append("# [[sources]]")
        out.append(f"# name = {_toml_str(table.split('.')[-1])}")
        out.append(f"# table = {_toml_str(table)}")
        out.append('# key = ["...", "..."]')
        out.append("")
    out.append("# --- models ---")
    for m in result.models:
        out.append("[[models]]")
        out.append(f"name = {_toml_str(m.name)}")
        out.append(f"target = {_toml_str(m.target.qualified)}")
        out.append(f"source = {_toml_str(m.source.name)}")
        if m.target.pk[0] != "id":
            out.append(f"key_column = {_toml_str(m.target.pk[0])}")
        if not m.accounts:
            out.append("accounts = false  # see the note in its SQL")
        if m.legacy_column:
            out.append(f"legacy_column = {_toml_str(m.legacy_column)}")
        out.append(f"sql = {_toml_str(m.file)}")
        if m.parents:
            out.append("parents = [")
            for p in m.parents:
                key = (
                    _toml_str(p.keys[0])
                    if len(p.keys) == 1
                    else "[" + ", ".join(_toml_str(k) for k in p.keys) + "]"
                )
                out.append(
                    f"  {{ model = {_toml_str(p.model)}, key = {key}, "
                    f"column = {_toml_str(p.column)}, missing = {_toml_str(p.missing)} }},"
                )
            out.append("]")
        stubs = [f.stub for f in m.flags if f.stub is not None]
        if stubs:
            out.append("# Rules to consider (see the TODO lines of its SQL), commented out:")
            out.append("# rules = [")
            seen = set()
            for st in stubs:
                if st.name not in seen:
                    seen.add(st.name)
                    out.append(f"#   {st.toml()},")
            out.append("# ]")
        out.append("")
    return "\n".join(out)


# --- the whole ----------------------------------------------------------------------------------
def scaffold(
    source: str, target: str, out: Path, *, views: bool = False,
    source_schemas: tuple[str, ...] = ("public",), target_schemas: tuple[str, ...] = ("public",),
    name: str | None = None,
) -> InitResult:  # fmt: skip
    """Read both catalogs and write ``out/spec.toml`` and one SQL file per matched target
    table; refuse, writing nothing, when any of those files exists."""
    out = Path(out)
    with conninfo.connect(source, app="ferry init") as sconn:
        sources, keyless = read_sources(sconn, list(source_schemas), views)
        source_db = sconn.info.dbname
    with conninfo.connect(target, app="ferry init") as tconn:
        targets, skipped = read_targets(tconn, list(target_schemas))
        target_db = tconn.info.dbname
        models, unmatched = match(targets, sources)
        unmatched += skipped
        by_name = {m.name: m for m in models}
        types, q = _Types(tconn), _Quoter(tconn)
        for m in models:
            plan_model(m, by_name, types, q)
        tconn.rollback()
    _break_cycles(models)
    models = _ordered(models)
    accounted = {m.source.name for m in models if m.accounts}
    for s in sources:
        if s.name in accounted:
            continue
        s.lookup = True
        s.note = _lookup_note(s, sources, models)
    result = InitResult(out, [], sources, models, unmatched, keyless)
    files = {out / "spec.toml": spec_toml(name or f"{source_db}-to-{target_db}", result, keyless)}
    for m in models:
        files[out / m.file] = model_sql(m, q)
    existing = [p for p in files if p.exists()]
    if existing:
        raise InitError(
            "ferry init writes no file that exists: "
            + ", ".join(str(p) for p in existing)
            + " (choose another --out, or move them away)"
        )
    out.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        with path.open("x") as fh:  # "x": never overwrite, even a file made meanwhile
            fh.write(text)
        result.files.append(path)
    return result


def _ordered(models: list[ModelPlan]) -> list[ModelPlan]:
    """Parents first (then by name): the spec reads in the order the engine runs it."""
    done: list[ModelPlan] = []
    pending = sorted(models, key=lambda m: m.name)
    while pending:
        names = {m.name for m in done}
        ready = [m for m in pending if all(p.model in names or p.model == m.name
                                           for p in m.parents)]  # fmt: skip
        if not ready:
            raise FerryError("ferry init: the models' parents form a cycle")  # _break_cycles
        done.extend(ready)
        pending = [m for m in pending if m not in ready]
    return done


def _lookup_note(s: SourceTable, sources: list[SourceTable], models: list[ModelPlan]) -> str:
    """Why a source with no model of its own is staged for joins only."""
    derived = [m.name for m in models if m.source is s]
    if derived:
        return f"no model accounts for its rows; {', '.join(derived)} derive rows from it"
    referers = [o.table for o in sources if any(fk.ref_table == s.qualified for fk in o.fks)] + [
        o.table for o in sources if o is not s and any(f"{st}_id" in o.columns for st in s.stems)
    ]
    links = all(
        any(c in fk.columns for fk in s.fks) for c in s.columns if c not in (s.key or [])
    ) and bool(s.fks)
    if s.rows <= SMALL and referers:
        return f"a small table ({s.rows} rows) that {sorted(set(referers))[0]} refers to"
    if links:
        return "a link table (its columns are foreign keys)"
    return "no target table matched it: its rows get no fate until a model accounts for them"


def summary(result: InitResult) -> Group:
    """The rich tables ``ferry init`` prints: what it matched, what it left, and why."""
    matched = Table(title=f"ferry init: {len(result.models)} models in {result.out}")
    for col in ("target", "model", "source", "evidence", "parents", "to check"):
        matched.add_column(col)
    for m in result.models:
        matched.add_row(
            m.target.qualified,
            m.name + ("" if m.accounts else " (derived)"),
            m.source.qualified,
            "; ".join(m.evidence),
            str(len(m.parents)),
            ", ".join(sorted({f.column for f in m.flags})) or "-",
        )
    left = Table(title="left for you")
    left.add_column("what")
    left.add_column("why")
    for table, why in result.unmatched:
        left.add_row(f"target {table}: no model", why)
    for table, why in result.keyless:
        left.add_row(f"source {table}: commented out", why)
    for s in result.sources:
        if s.lookup:
            left.add_row(f"source {s.qualified}: lookup", s.note)
    for m in result.models:
        for f in m.flags:
            left.add_row(f"{m.name}.{f.column}", f.problem)
    return Group(matched, left)
