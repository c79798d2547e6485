"""The migration spec: what to stage, which models build the target, and their rules.

A spec is a TOML file (stdlib ``tomllib``: no extra dependency) validated by pydantic. Model
SQL lives in ``.sql`` files beside it, as dbt models do: SQL is the clearest way to say how
target rows come from staged rows, and a reviewer can read it without knowing ferry.
Errors name the file, the place (``models[3].parents[0].model``) and the problem.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
import uuid
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ferry.errors import SpecError
from ferry.sqltext import ShapeError, one_expression, one_query

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The stage column holding a composite key's text, or the identity of a row of a table
# declared without a key (``rowid.py``).
COMPOSITE_KEY = "_ferry_key"
# ``key = "*"``: the table has no reliable key; a row is known by its content.
ROW_KEY = "*"


def _ident(value: str) -> str:
    if not _IDENT.match(value):
        raise ValueError(f"{value!r} is not a plain SQL identifier")
    return value


def _key_columns(v: str | list[str]) -> str | list[str]:
    """A key of one column or several (named once each); a list of one is that column."""
    if isinstance(v, str):
        return _ident(v)
    if not v or len(set(v)) != len(v):
        raise ValueError("a key names its columns, each once")
    return [_ident(c) for c in v] if len(v) > 1 else _ident(v[0])


def _as_list(v: str | list[str]) -> list[str]:
    return [v] if isinstance(v, str) else list(v)


# A key of one column or several, validated by ``_key_columns``.
KeyColumns = Annotated[str | list[str], AfterValidator(_key_columns)]


def _source_key(v: str | list[str]) -> str | list[str]:
    return v if v == ROW_KEY else _key_columns(v)


# A source's key: columns, or ``"*"`` for a table without one.
SourceKey = Annotated[str | list[str], AfterValidator(_source_key)]


class Source(_Strict):
    """A source table (or CSV file) copied into the stage schema."""

    name: str = Field(description="Name of the stage table and of the source in the ledger.")
    table: str | None = Field(None, description="schema.table in the source database.")
    csv: str | None = Field(None, description="CSV file, relative to the data directory.")
    key: SourceKey = Field(
        "id",
        description="Key column, or columns (a composite key): not null; rows that repeat a "
        'key are quarantined (duplicate_key). "*": no key, a row is known by its content.',
    )
    columns: tuple[str, ...] | None = Field(
        None, description="CSV only: the header's column names, in order (staged as text)."
    )
    lookup: bool = Field(
        False, description="Staged for joins only; its rows have no fate of their own."
    )
    encoding: str | None = Field(
        None,
        description="Table only: what the source's bytes are (e.g. latin1) when its server "
        "encoding is SQL_ASCII; default UTF8. Elsewhere it must match the server's.",
    )

    @property
    def keyless(self) -> bool:
        """Declared without a key (``key = "*"``): a row's identity is its content."""
        return self.key == ROW_KEY

    @property
    def keys(self) -> list[str]:
        """The key's columns, one or several (none for a table without a key)."""
        return [] if self.keyless else _as_list(self.key)

    @property
    def stage_key(self) -> str:
        """The stage table's key column: the key itself, or for a composite key (and a table
        without one) the column ``_ferry_key`` that holds its text (the row's identity): one
        value to chunk, diff and record fates by."""
        return self.key if isinstance(self.key, str) and not self.keyless else COMPOSITE_KEY

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r}: use letters, digits, '_', '.', '-'")
        return v

    @model_validator(mode="after")
    def _one_origin(self) -> Source:
        if (self.table is None) == (self.csv is None):
            raise ValueError("give exactly one of 'table' or 'csv'")
        if self.csv is not None and self.columns is None:
            raise ValueError("a CSV source needs 'columns': its header's names, in order")
        return self

    @property
    def stage_table(self) -> str:
        """Stage tables are named after the source; dots and dashes become underscores."""
        return re.sub(r"[^A-Za-z0-9_]", "_", self.name.removesuffix(".csv"))

    @property
    def definition(self) -> str:
        """A digest of how the source is read and keyed: a sync stages it again whole when
        it changed since it was staged (``stage.redefined``), as a migrate would. Without
        the defaults: a setting a later ferry adds does not restage every source."""
        text = json.dumps(self.model_dump(mode="json", exclude_defaults=True), sort_keys=True)
        return hashlib.md5(text.encode()).hexdigest()


class Rule(_Strict):
    """A named predicate over the model's output row ``m``.

    ``exclude`` is a business decision, ``reject`` a known defect (quarantine), ``repair`` a
    fix that the model's SQL already applied and that the ledger should name.
    """

    exclude: str | None = None
    reject: str | None = None
    repair: str | None = None
    when: str = Field(description="SQL boolean over the model's output columns.")

    @field_validator("when")
    @classmethod
    def _one_expression(cls, v: str) -> str:
        try:
            return one_expression(v)
        except ShapeError as exc:
            raise ValueError(f"not one expression: {exc}") from None

    @model_validator(mode="after")
    def _one_kind(self) -> Rule:
        if sum(x is not None for x in (self.exclude, self.reject, self.repair)) != 1:
            raise ValueError("a rule has exactly one of 'exclude', 'reject' or 'repair'")
        return self

    @property
    def kind(self) -> Literal["exclude", "reject", "repair"]:
        if self.exclude is not None:
            return "exclude"
        return "reject" if self.reject is not None else "repair"

    @property
    def name(self) -> str:
        return self.exclude or self.reject or self.repair or ""


class Parent(_Strict):
    """A reference to a row of another model, resolved through the ledger.

    The foreign key is taken from the parent's ledger row, so a merged parent resolves to the
    row it was merged into, and an excluded or quarantined parent takes this row with it.
    """

    model: str
    key: KeyColumns = Field(
        description="Output column holding the parent's source key, or columns holding the "
        "parts of its composite key, in the parent source's key order (NULL: none)."
    )
    column: str | None = Field(None, description="Target column that receives the parent UUID.")
    missing: str | None = Field(
        None, description="Quarantine reason when the parent key is set but unknown."
    )

    @field_validator("column")
    @classmethod
    def _cols(cls, v: str | None) -> str | None:
        return None if v is None else _ident(v)

    @property
    def keys(self) -> list[str]:
        return _as_list(self.key)


class Reads(_Strict):
    """A source a model's SQL reads besides its own, and how: ``key`` is the output column
    (or columns, for a composite key) holding the key of the row of ``source`` it reads."""

    source: str
    key: KeyColumns

    @property
    def keys(self) -> list[str]:
        return _as_list(self.key)


class Model(_Strict):
    """One target table fed by one source table: ``sql`` yields its rows, one per source key.

    The SQL selects from stage tables by their plain names and must return ``_key`` (the
    source key). Columns starting with ``_`` are for rules only and are not written.
    """

    name: str
    target: str = Field(description="schema.table in the target database.")
    source: str = Field(description="The source whose rows this model accounts for.")
    sql: str = Field(description="Inline SQL, or a path to a .sql file beside the spec.")
    key_column: str = Field("id", description="Target primary key (a UUID).")
    legacy_column: str | None = Field(
        None,
        description="Target column holding the legacy key. When it and the primary key are the "
        "target's only unique columns, no two chunks can collide, so chunks run in parallel "
        "(and a first load into an empty table may build both keys after the rows).",
    )
    accounts: bool = Field(
        True,
        description="Each row of this model is a source row's fate. False for rows derived "
        "from another model's source rows (a split list, a role row).",
    )
    parents: tuple[Parent, ...] = ()
    rules: tuple[Rule, ...] = ()
    merge_into: str | None = Field(
        None, description="Output column with the key of the row this one merges into."
    )
    merge_rule: str = "merged"
    on_delete: Literal["delete", "keep", "flag"] = "delete"
    chunk_size: int | None = Field(None, ge=1)
    reads: list[Reads] = Field(
        default_factory=list,
        description="Other sources the SQL reads, each with the output column(s) holding the "
        "key of the row it reads: a sync then looks again only at the rows a change there "
        "reaches, instead of computing the model whole.",
    )

    @field_validator("name")
    @classmethod
    def _name_ident(cls, v: str) -> str:
        return _ident(v)

    @field_validator("target")
    @classmethod
    def _qualified(cls, v: str) -> str:
        parts = v.split(".")
        if len(parts) != 2 or not all(_IDENT.match(p) for p in parts):
            raise ValueError(f"{v!r}: write the target as schema.table")
        return v

    @property
    def target_schema(self) -> str:
        return self.target.split(".")[0]

    @property
    def target_table(self) -> str:
        return self.target.split(".")[1]


class Spec(_Strict):
    name: str
    namespace: uuid.UUID = Field(description="UUID namespace of this migration's keys.")
    stage_schema: str = "ferry_stage"
    ledger_schema: str = "ferry"
    chunk_size: int = Field(50_000, ge=1)
    sources: tuple[Source, ...]
    models: tuple[Model, ...]
    base_dir: Path = Field(Path("."), exclude=True)

    @field_validator("stage_schema", "ledger_schema")
    @classmethod
    def _schemas(cls, v: str) -> str:
        return _ident(v)

    @model_validator(mode="after")
    def _references(self) -> Spec:
        sources = {s.name: s for s in self.sources}
        if len(sources) != len(self.sources):
            raise ValueError("two sources share a name")
        # As PostgreSQL keeps a name: its first 63 bytes (a longer one is cut, and the two
        # sources would share one stage table).
        if len({s.stage_table.encode()[:63] for s in self.sources}) != len(self.sources):
            raise ValueError(
                "two sources map to the same stage table name (the same, or the same first "
                "63 bytes, where PostgreSQL cuts a name)"
            )
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("two models share a name")
        for i, m in enumerate(self.models):
            if m.source not in sources:
                raise ValueError(f"models[{i}] ({m.name}): unknown source {m.source!r}")
            if sources[m.source].lookup and m.accounts:
                raise ValueError(
                    f"models[{i}] ({m.name}): source {m.source!r} is a lookup; "
                    "set accounts = false or make the source migrated"
                )
            for j, r in enumerate(m.reads):
                if r.source not in sources:
                    raise ValueError(f"models[{i}].reads[{j}]: unknown source {r.source!r}")
            for j, p in enumerate(m.parents):
                if p.model not in names:
                    raise ValueError(
                        f"models[{i}].parents[{j}]: unknown model {p.model!r} (in {m.name})"
                    )
        self.order()  # raises on cycles
        return self

    def source(self, name: str) -> Source:
        return next(s for s in self.sources if s.name == name)

    def model(self, name: str) -> Model:
        return next(m for m in self.models if m.name == name)

    def model_sql(self, model: Model) -> str:
        """The model's query, refused unless it is one query (``sqltext.one_query``): ferry
        wraps it into statements of its own."""
        text, where = model.sql.strip(), f"model {model.name}: its sql"
        if text.endswith(".sql") and "\n" not in text:
            path = self.base_dir / text
            try:
                text = path.read_text()
            except OSError as exc:
                raise SpecError(f"model {model.name}: cannot read {path}: {exc.strerror}") from None
            where = f"model {model.name}: {path}"
        try:
            return one_query(text).lstrip()  # a trailing newline ends a comment
        except ShapeError as exc:
            raise SpecError(f"{where}: not one query: {exc}") from None

    def definition(self, model: Model) -> str:
        """A digest of all in the spec that decides a model's rows and fates: the model but
        how it is chunked and what it declares it reads, its SQL's text, its source, the
        namespace of its keys. A sync computes a model whole when it changed since the
        model last ran whole, as a migrate with this spec would (``settle``)."""
        kept = model.model_dump(mode="json", exclude={"chunk_size", "reads", "sql"})
        text = json.dumps(
            [str(self.namespace), self.stage_schema, kept, self.model_sql(model),
             self.source(model.source).model_dump(mode="json")],
            sort_keys=True,
        )  # fmt: skip
        return hashlib.md5(text.encode()).hexdigest()

    def reads(self, model: Model) -> set[str]:
        """The sources a model reads: its own and those whose stage table its SQL or rules
        name (as a whole word, in any case; a name in a comment only makes it wait)."""
        text = "\n".join([self.model_sql(model), *(r.when for r in model.rules)])
        return {model.source} | {
            s.name
            for s in self.sources
            if re.search(rf"\b{re.escape(s.stage_table)}\b", text, flags=re.IGNORECASE)
        }

    def order(self) -> list[Model]:
        """Models in dependency order (parents first), stable in file order otherwise."""
        done: list[str] = []
        pending = list(self.models)
        while pending:
            ready = [
                m for m in pending if all(p.model in done or p.model == m.name for p in m.parents)
            ]
            if not ready:
                cycle = ", ".join(m.name for m in pending)
                raise ValueError(f"the parents of these models form a cycle: {cycle}")
            for m in ready:
                done.append(m.name)
                pending.remove(m)
        return [self.model(n) for n in done]

    def children(self, model: str) -> list[Model]:
        return [m for m in self.models if any(p.model == model for p in m.parents)]


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "top level"


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; every problem becomes a :class:`SpecError`."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    raw["base_dir"] = path.parent
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise SpecError(f"{path}: {problems}") from None
    for m in spec.models:
        try:
            spec.model_sql(m)  # fail now, not halfway through a run
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from None
    return spec
