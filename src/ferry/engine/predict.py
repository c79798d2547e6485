"""What the target would refuse, found by a query before a chunk writes.

A NOT NULL column left empty, a CHECK that does not hold, a value a UNIQUE index already
has: when the server raises these it writes the failing row into its log (``DETAIL:
Failing row contains (...)``), which on a managed database every project member can read.
So the rows that would break them are found first, in the statement that computes the
chunk, and quarantined with the reason and SQLSTATE the server would have given; only what
cannot be predicted (a trigger, a cast, a constraint over a column ferry does not write)
still reaches the server, and bisection.

Of ferry's rows that want one unique value, the lowest key is written, as a migrate that
writes a model in key order would: a row whose value a later key of ferry's holds is
``blocked`` (written again once that holder is gone; ``chunk.Runner`` makes it give the
value up).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from ferry import catalog

NOT_NULL, CHECK, UNIQUE, EXCLUSION = "23502", "23514", "23505", "23P01"
TOO_LONG, LENGTH_MISMATCH = "22001", "22026"
NOT_NULL_REASON = "not_null_violation"
TOO_LONG_REASON = "string_data_right_truncation"
# The type OIDs of bit, bit[], varbit and varbit[]: a value of theirs is cut or padded to a
# bit(n) or varbit(n) column's length by ferry's cast (a text is refused by it).
BIT_TYPES = frozenset({1560, 1561, 1562, 1563})
BLOCKED = "blocked"


def not_null_message(table: str, column: str) -> str:
    """The server's message for a NOT NULL column left empty (no value in it)."""
    relname = table.split(".")[-1]
    return f'null value in column "{column}" of relation "{relname}" violates not-null constraint'


def too_long_message(typ: str) -> str:
    """The server's message for a value longer than its varchar(n) or char(n) column."""
    return f"value too long for type {typ}"


@dataclass(frozen=True)
class Length:
    """A column whose type has a length (under a domain, or an array's elements): ferry
    casts a value to its column's type, and that cast cuts a longer value, and pads a
    shorter bit string, without a word, where the INSERT it stands for refuses it."""

    column: str
    n: int
    type: str  # as the server names it in its message
    array: bool
    kind: str  # "char" (varchar(n), char(n)), "bit" (bit(n)) or "varbit" (varbit(n))

    def refusal(self) -> tuple[str, str, str]:
        """The condition name, SQLSTATE and message of the server's refusal (a bit
        string's own length, which its message gives, left out)."""
        if self.kind == "bit":
            message = f"bit string length does not match type {self.type}"
            return "string_data_length_mismatch", LENGTH_MISMATCH, message
        if self.kind == "varbit":
            return TOO_LONG_REASON, TOO_LONG, f"bit string too long for type {self.type}"
        return TOO_LONG_REASON, TOO_LONG, too_long_message(self.type)

    def refuses(self, value: sql.Composable) -> sql.Composed:
        """Whether the INSERT refuses ``value``: for text, more than n characters but for
        spaces past n (those it cuts, as the cast does); for a bit string, another length
        than n (bit) or a longer one (varbit)."""
        one = {
            "char": "char_length(rtrim({}, ' ')) > {}",
            "bit": "length({}) <> {}",
            "varbit": "length({}) > {}",
        }[self.kind]
        n = sql.Literal(self.n)
        if self.kind == "char":
            value = sql.SQL("({})::text[]" if self.array else "({})::text").format(value)
        if self.array:
            return sql.SQL("EXISTS (SELECT FROM unnest({}) e WHERE {})").format(
                value, sql.SQL(one).format(sql.SQL("e"), n)
            )
        return sql.SQL(one).format(value, n)


@dataclass
class Unique:
    name: str
    exprs: list[str]
    predicate: str | None
    nulls_distinct: bool


@dataclass
class Exclusion:
    """An exclusion constraint: no two rows whose ``exprs`` all hold under ``operators``
    (``OPERATOR(schema.op)``), among the rows ``predicate`` takes."""

    exprs: list[str]
    operators: list[str]
    predicate: str | None


def exclusion(conn: psycopg.Connection, table: str, name: str) -> Exclusion | None:
    """The exclusion constraint ``name`` of ``table`` (None: not one)."""
    row = conn.execute(
        "SELECT ARRAY(SELECT pg_get_indexdef(c.conindid, k, true) "
        "             FROM generate_series(1, i.indnkeyatts) k ORDER BY k), "
        "       ARRAY(SELECT format('OPERATOR(%%I.%%s)', o.oprnamespace::regnamespace, o.oprname) "
        "             FROM unnest(c.conexclop) WITH ORDINALITY x(op, k) "
        "             JOIN pg_operator o ON o.oid = x.op ORDER BY x.k), "
        "       pg_get_expr(i.indpred, i.indrelid) "
        "FROM pg_constraint c JOIN pg_index i ON i.indexrelid = c.conindid "
        "WHERE c.conrelid = to_regclass(%s) AND c.conname = %s AND c.contype = 'x'",
        [catalog.regclass(table), name],
    ).fetchone()
    return None if row is None else Exclusion(list(row[0]), list(row[1]), row[2])


@dataclass
class Refusals:
    """The constraints of a target table that can be checked on the rows ferry writes."""

    table: str
    # A digest of every rule the table holds rows to (constraints, indexes, triggers, column
    # types): a row it refused is sent again only once it changed.
    digest: str = ""
    not_null: list[str] = field(default_factory=list)
    # The written columns whose type has a length, whose cast would cut or pad a value.
    lengths: list[Length] = field(default_factory=list)
    checks: list[tuple[str, str]] = field(default_factory=list)  # (name, expression)
    uniques: list[Unique] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.not_null or self.lengths or self.checks or self.uniques)

    @property
    def predicted_in_fate(self) -> bool:
        """Whether the fate's CASE refuses rows (``query.Plan.fate_case``)."""
        return bool(self.not_null or self.lengths)


def refusals(
    conn: psycopg.Connection, table: str, written: Mapping[str, int | None],
    skip_unique: set[str],
) -> Refusals:  # fmt: skip
    """The NOT NULL and length-limited columns among ``written`` (each with the type OID of
    the value that fills it, if known), the CHECKs that read only ``written`` columns, and
    the unique indexes over them (but those on ``skip_unique`` alone: the primary key and
    the legacy key, which only ferry fills from keys that are unique).
    Read in one statement: a sync plans each model it runs, and 7 + 2 per unique index
    round trips were most of a plan's cost."""
    catalog.print_qualified(conn)
    row = conn.execute(_REFUSALS, {"t": catalog.regclass(table)}).fetchone()
    conn.commit()
    assert row is not None
    digest, not_null, lengths, checks, uniques = row
    out = Refusals(table, digest=digest or "")
    ours = set(written)
    out.not_null = [c for c in not_null or [] if c in ours]
    out.lengths = [
        Length(c, n, typ, arr, kind)
        for c, n, typ, arr, kind in lengths or []
        if c in ours and (kind == "char" or written[c] in BIT_TYPES)
    ]
    # PostgreSQL checks them in name order; the first that fails names the refusal.
    for name, cols, expr in checks or []:
        if cols and all(c in ours for c in cols):
            out.checks.append((name, expr))
    for name, used, has_expr, pred, distinct, exprs, deps in uniques or []:
        used_set = set(used or [])
        if not has_expr and not pred and used_set <= skip_unique:
            continue
        # An expression's columns are not in indkey (a 0 there): the server says which of
        # the table's columns it depends on.
        if used_set | set(deps or []) <= ours:
            out.uniques.append(Unique(name, list(exprs or []), pred, distinct))
    return out


# The digest of every rule a target table (``t.oid``) holds rows to: constraints, indexes,
# triggers, column types, an enum's labels, a domain's constraints; and, where there are
# any, its partitions with their bounds and their own rules, the expressions of its
# generated columns, and the text of the functions a write to it runs
# (``catalog.WRITE_FUNCTIONS``: CREATE OR REPLACE keeps a function's OID, so a trigger
# fixed to take a row it refused changed nothing else). The parts a plain table without
# such functions has none of are NULL, which concat_ws leaves out: its digest is as it was.
# A relation's own constraints, indexes and triggers (``{rel}``): the table's, and each of
# its partitions'.
_OWN_RULES = """
    (SELECT string_agg(conname || pg_get_constraintdef(c.oid), ',' ORDER BY conname)
     FROM pg_constraint c WHERE conrelid = {rel}),
    (SELECT string_agg(pg_get_indexdef(indexrelid), ',' ORDER BY indexrelid::regclass::text)
     FROM pg_index WHERE indrelid = {rel}),
    (SELECT string_agg(tgname || tgfoid::regprocedure::text || tgenabled::text, ','
     ORDER BY tgname) FROM pg_trigger WHERE tgrelid = {rel} AND NOT tgisinternal)"""
RULES_DIGEST = (
    "\n  md5(concat_ws('|',"
    + _OWN_RULES.format(rel="t.oid")
    + """,
    (SELECT string_agg(attname || format_type(atttypid, atttypmod) || attnotnull::text
       -- an enum's labels and a domain's constraints: a value added, a CHECK relaxed
       || coalesce((SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum
                    WHERE enumtypid = atttypid), '')
       || coalesce((SELECT string_agg(pg_get_constraintdef(oid), ',' ORDER BY conname)
                    FROM pg_constraint WHERE contypid = atttypid), ''), ','
     ORDER BY attnum) FROM pg_attribute WHERE attrelid = t.oid AND attnum > 0
     AND NOT attisdropped),
    (SELECT pg_get_partkeydef(t.oid) || ':' || string_agg(concat_ws(' ', r.relname,
       pg_get_expr(r.relpartbound, r.oid),"""
    + _OWN_RULES.format(rel="p.relid")
    + """), ',' ORDER BY r.relnamespace, r.relname)
     FROM pg_partition_tree(t.oid) p JOIN pg_class r ON r.oid = p.relid
     WHERE p.relid <> t.oid),
    (SELECT string_agg(a.attname || pg_get_expr(d.adbin, d.adrelid), ',' ORDER BY a.attnum)
     FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
     WHERE d.adrelid = t.oid AND a.attgenerated <> ''),
    (SELECT string_agg(f.proname || '(' || pg_get_function_identity_arguments(f.oid) || ')'
       || md5(f.prosrc
       || coalesce(array_to_string(f.proconfig, ','), '')), ',' ORDER BY f.oid)
     FROM pg_proc f WHERE f.oid IN (SELECT w.fn FROM (SELECT t.oid) r, LATERAL ("""
    + catalog.WRITE_FUNCTIONS
    + """) w))))"""
)

_REFUSALS = (
    """
WITH t AS (SELECT to_regclass(%(t)s) AS oid)
SELECT
  """
    + RULES_DIGEST
    + """,
  ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = t.oid AND attnum > 0
        AND NOT attisdropped AND attnotnull ORDER BY attnum),
  (WITH RECURSIVE d (num, name, typ, mod, arr) AS (
     SELECT a.attnum, a.attname::text, CASE WHEN y.typcategory = 'A' THEN y.typelem
            ELSE a.atttypid END, a.atttypmod, y.typcategory = 'A'
     FROM pg_attribute a JOIN pg_type y ON y.oid = a.atttypid
     WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
     UNION ALL SELECT d.num, d.name, p.typbasetype,
            CASE WHEN p.typtypmod >= 0 THEN p.typtypmod ELSE d.mod END, d.arr
     FROM d JOIN pg_type p ON p.oid = d.typ WHERE p.typtype = 'd')
   SELECT json_agg(json_build_array(name, CASE WHEN typ IN ('varchar'::regtype,
       'bpchar'::regtype) THEN mod - 4 ELSE mod END, format_type(typ, mod), arr,
       CASE typ WHEN 'bit'::regtype THEN 'bit' WHEN 'varbit'::regtype THEN 'varbit'
       ELSE 'char' END) ORDER BY num)
   FROM d WHERE (typ IN ('varchar'::regtype, 'bpchar'::regtype) AND mod >= 4)
   OR (typ IN ('bit'::regtype, 'varbit'::regtype) AND mod >= 0)),
  (SELECT json_agg(json_build_array(conname::text,
     ARRAY(SELECT a.attname::text FROM unnest(c.conkey) k JOIN pg_attribute a
           ON a.attrelid = c.conrelid AND a.attnum = k AND NOT a.attisdropped),
     pg_get_expr(conbin, conrelid)) ORDER BY conname)
   FROM pg_constraint c WHERE conrelid = t.oid AND contype = 'c'),
  (SELECT json_agg(json_build_array(x.relname::text,
     ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) k JOIN pg_attribute a
           ON a.attrelid = i.indrelid AND a.attnum = k WHERE k > 0),
     i.indexprs IS NOT NULL, pg_get_expr(i.indpred, i.indrelid),
     NOT coalesce((to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false),
     ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true)
           FROM generate_series(1, i.indnkeyatts) k ORDER BY k),
     ARRAY(SELECT a.attname::text FROM pg_depend d JOIN pg_attribute a
           ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
           WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
           AND d.refobjid = t.oid AND d.refobjsubid > 0)) ORDER BY x.relname::text)
   FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
   WHERE i.indrelid = t.oid AND i.indisunique AND i.indisvalid)
FROM t
"""
)


def overlay(
    ref: Refusals, rows: sql.Composable, columns: list[str], target: sql.Identifier,
    key_column: str, own_led: sql.Composable, model: str, key_type: str,
) -> sql.Composed:  # fmt: skip
    """``rows`` (a computed chunk: ``_ferry_*`` columns, the target's ``columns`` typed, and
    the typed key ``_ferry_k``) with the rows the target would refuse turned into
    refusals: ``_ferry_fate`` -1, status quarantined, the condition name as reason, and
    ``_ferry_sqlstate`` and ``_ferry_message`` as the server would give them. A row whose
    unique value a later key of ferry's holds, or a row of the chunk whose own outcome is
    being written, is ``blocked`` (``_ferry_fate`` -2), naming in ``_ferry_holder`` the
    later key that holds it: it gives the value up unless the chunk writes it
    (``chunk.Runner``)."""
    ident = sql.Identifier
    relname = ref.table.split(".")[-1]
    # (test, reason, state, message); NOT NULL columns are tested where the fate is decided
    # (``query.Plan.fate_case``), which costs no pass over the rows.
    simple: list[tuple[sql.Composable, str, str, str]] = []
    for name, expr in ref.checks:
        simple.append(
            (sql.SQL("({}) IS FALSE").format(sql.SQL(expr)), "check_violation", CHECK,  # type: ignore[arg-type]
             f'new row for relation "{relname}" violates check constraint "{name}"')
        )  # fmt: skip

    def pick(i: int) -> sql.Composable:
        """The reason, SQLSTATE or message of the first test that fails (NULL: none)."""
        return sql.SQL("({}::text[])[x._ferry_i]").format(sql.Literal([t[i] for t in simple]))

    # Each test once per row, in a fenced subquery: flattened, PostgreSQL would copy the
    # CASE into every expression that reads its result, and run the tests again there.
    first = sql.SQL("CASE WHEN x._ferry_fate = 0 THEN CASE {} ELSE 0 END ELSE 0 END").format(
        sql.SQL(" ").join(
            sql.SQL("WHEN {} THEN {}").format(t[0], sql.Literal(i + 1))
            for i, t in enumerate(simple)
        )
    ) if simple else sql.SQL("0")  # fmt: skip
    chunk = sql.SQL("_ferry_chunk") if ref.uniques else sql.SQL("({})").format(rows)
    tested = sql.SQL("SELECT x.*, {} AS _ferry_i FROM {} x OFFSET 0").format(first, chunk)
    if not ref.uniques and not simple:
        # Nothing to test: no pass over the rows (on 2M rows each is a copy of every row).
        return sql.SQL("SELECT x.*, NULL::text AS _ferry_holder FROM ({}) x").format(rows)
    if not ref.uniques:
        # One fenced layer that tests each row, one that shapes it.
        return sql.SQL(
            "SELECT x._ferry_key, x._ferry_n, x._ferry_k, "
            "CASE WHEN {r} THEN -1 ELSE x._ferry_fate END AS _ferry_fate, "
            "CASE WHEN {r} THEN 'quarantined' ELSE x._ferry_status END AS _ferry_status, "
            "CASE WHEN {r} THEN {reason} ELSE x._ferry_reason END AS _ferry_reason, "
            "CASE WHEN {r} THEN '{{}}'::text[] ELSE x._ferry_repairs END AS _ferry_repairs, "
            "CASE WHEN {r} THEN NULL ELSE x._ferry_uuid END AS _ferry_uuid{cols}, "
            "x._ferry_hash, CASE WHEN {r} THEN {state} ELSE x._ferry_sqlstate END "
            "AS _ferry_sqlstate, CASE WHEN {r} THEN {message} ELSE x._ferry_message END "
            "AS _ferry_message, NULL::text AS _ferry_holder FROM ({tested}) x"
        ).format(
            r=sql.SQL("x._ferry_i > 0"), reason=pick(1), state=pick(2), message=pick(3),
            cols=sql.SQL("").join(sql.SQL(", x.{}").format(ident(c)) for c in columns),
            tested=tested,
        )  # fmt: skip
    # The unique indexes' values of each row still to be written, and whether a lower key
    # of the chunk wants the same ones.
    live = sql.SQL("x._ferry_fate = 0 AND x._ferry_i = 0")
    extra: list[sql.Composable] = []
    for u, un in enumerate(ref.uniques):
        exprs = [sql.SQL("({})").format(sql.SQL(e)) for e in un.exprs]  # type: ignore[arg-type]
        wants: list[sql.Composable] = [live]
        if un.predicate:
            wants.append(sql.SQL("({}) IS TRUE").format(sql.SQL(un.predicate)))  # type: ignore[arg-type]
        if un.nulls_distinct:
            wants += [sql.SQL("{} IS NOT NULL").format(e) for e in exprs]
        want = sql.SQL(" AND ").join(wants)
        extra += [
            sql.SQL("{} AS {}").format(e, ident(f"_ferry_u{u}_{i}")) for i, e in enumerate(exprs)
        ]
        extra.append(sql.SQL("{} AS {}").format(want, ident(f"_ferry_w{u}")))
        extra.append(
            sql.SQL(
                "CASE WHEN {w} THEN row_number() OVER (PARTITION BY {w}, {k} "
                "ORDER BY x._ferry_k) > 1 ELSE false END AS {d}"
            ).format(w=want, k=sql.SQL(", ").join(exprs), d=ident(f"_ferry_d{u}"))
        )
    null = sql.SQL("NULL::text")
    step1 = sql.SQL(
        "SELECT x.*, x._ferry_i > 0 AS _ferry_bad, {reason} AS _ferry_rreason, "
        "{state} AS _ferry_rstate, {message} AS _ferry_rmessage{extra} FROM ({tested}) x "
        "OFFSET 0"
    ).format(
        reason=pick(1) if simple else null, state=pick(2) if simple else null,
        message=pick(3) if simple else null,
        extra=sql.SQL("").join(sql.SQL(", ") + e for e in extra), tested=tested,
    )  # fmt: skip
    # Against the target: who holds each index's values (for the rows still wanting them).
    held: list[sql.Composable] = []
    for u, un in enumerate(ref.uniques):
        same = [
            sql.SQL("({}) = y.{}").format(sql.SQL(e), ident(f"_ferry_u{u}_{i}"))  # type: ignore[arg-type]
            for i, e in enumerate(un.exprs)
        ]
        if un.predicate:
            same.append(sql.SQL("({})").format(sql.SQL(un.predicate)))  # type: ignore[arg-type]
        held.append(
            sql.SQL(
                "CASE WHEN y.{w} AND NOT y.{d} THEN (SELECT {k} FROM {t} WHERE {same} "
                "AND {k} IS DISTINCT FROM y._ferry_uuid LIMIT 1) END AS {h}"
            ).format(
                w=ident(f"_ferry_w{u}"), d=ident(f"_ferry_d{u}"), k=ident(key_column), t=target,
                same=sql.SQL(" AND ").join(same), h=ident(f"_ferry_h{u}"),
            )
        )  # fmt: skip
    step2 = sql.SQL("SELECT y.*, {} FROM ({}) y OFFSET 0").format(sql.SQL(", ").join(held), step1)
    n = range(len(ref.uniques))
    holder = sql.SQL("coalesce({})").format(
        sql.SQL(", ").join(sql.SQL("z.{}").format(ident(f"_ferry_h{u}")) for u in n)
    )

    def named(test: str) -> sql.Composable:
        return sql.SQL("CASE {} END").format(
            sql.SQL(" ").join(
                sql.SQL("WHEN z.{} {} THEN {}").format(
                    ident(f"_ferry_{test}{u}"),
                    sql.SQL("" if test == "d" else "IS NOT NULL"),
                    sql.Literal(ref.uniques[u].name),
                )
                for u in n
            )
        )

    # Which of ferry's rows holds a value: the ledger's key of the holding target row, found
    # for all the chunk's held values in one semi-join (the ledger has no index on
    # target_uuid): asked row by row, it was a scan of the model's ledger per held row, which
    # grows with the table times the refused rows (50 rows of 49k profiles: 138 ms). The
    # EXISTS is a one-time filter: when no value is held (nearly every chunk) the ledger is
    # not read at all. Without it, a misestimated ledger made it a nested loop of the model's
    # ledger times the chunk (104 changed rows, 8.7k attachments: 118 ms of a 1 s sync).
    step3 = sql.SQL(
        "SELECT z.*, {dup} AS _ferry_dup, {dn} AS _ferry_dname, {h} AS _ferry_held, "
        "{hn} AS _ferry_hname, hk.source_key AS _ferry_hkey FROM _ferry_probed z "
        "LEFT JOIN (SELECT DISTINCT ON (l.target_uuid) l.target_uuid, l.source_key "
        "FROM {led} l WHERE l.model = {m} AND l.status = 'migrated' "
        "AND l.target_uuid IN (SELECT {h} FROM _ferry_probed z WHERE {h} IS NOT NULL) "
        "AND EXISTS (SELECT FROM _ferry_probed z WHERE {h} IS NOT NULL)) hk "
        "ON hk.target_uuid = {h} OFFSET 0"
    ).format(
        dup=sql.SQL(" OR ").join(sql.SQL("z.{}").format(ident(f"_ferry_d{u}")) for u in n),
        dn=named("d"), h=holder, hn=named("h"), led=own_led, m=sql.Literal(model),
    )  # fmt: skip
    mine = sql.SQL("EXISTS (SELECT FROM _ferry_chunk k WHERE k._ferry_key = w._ferry_hkey)")
    later = sql.SQL("w._ferry_hkey::{} > w._ferry_k").format(sql.SQL(key_type))
    dup_message = sql.SQL(
        "'duplicate key value violates unique constraint \"' || "
        "coalesce(w._ferry_dname, w._ferry_hname) || '\"'"
    )
    blocks = sql.SQL(
        "w._ferry_held IS NOT NULL AND NOT w._ferry_dup AND w._ferry_hkey IS NOT NULL "
        "AND ({} OR {})"
    ).format(mine, later)
    final = _final(
        step3,
        columns,
        unique=sql.SQL("w._ferry_dup OR (w._ferry_held IS NOT NULL AND NOT ({}))").format(blocks),
        blocked_by=sql.SQL("CASE WHEN {} THEN w._ferry_held END").format(blocks),
        holder=sql.SQL("CASE WHEN {} THEN w._ferry_hkey END").format(later),
        unique_message=dup_message,
    )
    return sql.SQL(
        "WITH _ferry_chunk AS MATERIALIZED ({}), _ferry_probed AS MATERIALIZED ({}) {}"
    ).format(rows, step2, final)


def _final(
    rows: sql.Composable, columns: list[str], unique: sql.Composable,
    blocked_by: sql.Composable, holder: sql.Composable, unique_message: sql.Composable,
) -> sql.Composed:  # fmt: skip
    """The chunk's rows as ``Plan.expected`` gives them, refusals folded in: refused alone
    (``_ferry_bad``), refused for a unique value (``unique``), or blocked (``blocked_by``
    names the holding row, ``holder`` the later key that must give it up)."""
    fate = sql.SQL(
        "CASE WHEN w._ferry_bad OR {u} THEN -1 WHEN {b} IS NOT NULL THEN -2 ELSE w._ferry_fate END"
    ).format(u=unique, b=blocked_by)
    return sql.SQL(
        "SELECT v._ferry_key, v._ferry_n, v._ferry_k, v._ferry_f AS _ferry_fate, "
        "CASE v._ferry_f WHEN -1 THEN 'quarantined' WHEN -2 THEN {blocked} "
        "ELSE v._ferry_status END AS _ferry_status, "
        "CASE v._ferry_f WHEN -1 THEN v._ferry_rr WHEN -2 THEN NULL "
        "ELSE v._ferry_reason END AS _ferry_reason, "
        "CASE WHEN v._ferry_f < 0 THEN '{{}}'::text[] ELSE v._ferry_repairs END "
        "AS _ferry_repairs, CASE WHEN v._ferry_f < 0 THEN NULL ELSE v._ferry_uuid END "
        "AS _ferry_uuid{cols}, v._ferry_hash, "
        "CASE WHEN v._ferry_f = -1 THEN v._ferry_rs ELSE v._ferry_sqlstate END "
        "AS _ferry_sqlstate, "
        "CASE WHEN v._ferry_f = -1 THEN v._ferry_rm ELSE v._ferry_message END AS _ferry_message, "
        "CASE WHEN v._ferry_f = -2 THEN v._ferry_hold END AS _ferry_holder "
        "FROM (SELECT w.*, {fate} AS _ferry_f, "
        "CASE WHEN w._ferry_bad THEN w._ferry_rreason ELSE 'unique_violation' END AS _ferry_rr, "
        "CASE WHEN w._ferry_bad THEN w._ferry_rstate ELSE {us} END AS _ferry_rs, "
        "CASE WHEN w._ferry_bad THEN w._ferry_rmessage ELSE {um} END AS _ferry_rm, "
        "({holder})::text AS _ferry_hold FROM ({rows}) w OFFSET 0) v"
    ).format(
        blocked=sql.Literal(BLOCKED),
        cols=sql.SQL("").join(sql.SQL(", v.{}").format(sql.Identifier(c)) for c in columns),
        fate=fate, us=sql.Literal(UNIQUE), um=unique_message, holder=holder, rows=rows,
    )  # fmt: skip
