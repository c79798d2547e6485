"""Any table, generatively: a key of any kind and columns of many types, random rows and
random changes to them. The properties: a migrate writes every row exactly (its values in
the target, one ``migrated`` fate each), and after the changes a sync gives what one fresh
migrate of the changed table gives (ledger and rows), with verify content.

The convergence state machine (``test_convergence.py``) drives histories through one world
with integer keys; here the world itself is drawn: integer keys over the whole range (the
range diff's key buckets, and hashed buckets past 2**63), text keys in any script, UUIDs,
dates and composite keys (hashed buckets), and values at the edges of their types (NaN,
infinities, -0, empty and odd text, nested JSON, bytes). Bulk tables of a few thousand rows
take the diff below its first level. The target table may have a trigger that changes every
row as it is written, and the databases defaults a DBA set (``DEFAULTS``). Profiles as
``test_convergence.py``'s: ``ci`` (the default, derandomized) and ``long``. Below them,
targets the application's schema makes harder: triggers that change, skip or re-key rows,
row-level security forced on ferry's role.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from ferry.embedded import LocalCluster
from ferry.engine import execute
from ferry.engine.pipeline import migrate
from ferry.errors import FerryError
from ferry.ops.rollback import rollback
from ferry.ops.verify import VerifyReport, verify
from ferry.spec import load_spec
from ferry.sync.loop import sync
from tests.helpers import fresh_db

OWNER = "anykey_owner"
_SUPPRESS = [
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture,
]  # fmt: skip
settings.register_profile(
    "anykey_ci", max_examples=10, deadline=None, derandomize=True, database=None,
    suppress_health_check=_SUPPRESS,
)  # fmt: skip
settings.register_profile(
    "anykey_long", max_examples=200, deadline=None, suppress_health_check=_SUPPRESS
)
PROFILE = "anykey_long" if os.environ.get("HYPOTHESIS_PROFILE") == "long" else "anykey_ci"

TEXT = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
# Each key kind: its columns' types and a strategy of one key (a tuple of its parts).
KEYS: dict[str, tuple[list[str], st.SearchStrategy[tuple]]] = {
    "int": (["integer"], st.tuples(st.integers(-(2**31), 2**31 - 1))),
    "dense": (["integer"], st.tuples(st.integers(1, 200))),
    "bigint": (["bigint"], st.tuples(st.integers(-(2**63), 2**63 - 1))),
    "text": (["text"], st.tuples(TEXT)),
    "uuid": (["uuid"], st.tuples(st.uuids())),
    "date": (["date"], st.tuples(st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)))),
    "composite": (["integer", "text"], st.tuples(st.integers(-3, 3), TEXT)),
    "numeric": (
        ["numeric"],
        st.tuples(
            st.decimals(
                allow_nan=False, allow_infinity=False, places=7, min_value=-(10**6), max_value=10**6
            )
        ),
    ),
    "timestamptz": (["timestamptz"], st.tuples(st.datetimes(timezones=st.just(dt.UTC)))),
    # Dates Python cannot hold, as text the server reads: its chunk bounds and the diff's
    # keys were read into Python, and the migrate failed.
    "date_edge": (
        ["date"],
        st.tuples(
            st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)).map(dt.date.isoformat)
            | st.sampled_from(["infinity", "-infinity", "0044-03-15 BC", "4713-01-01 BC"])
        ),
    ),
    # Padded to its length, read without it as text: the ledger's name for a key.
    "char": (
        ["character(4)"],
        st.tuples(st.text("ab ", min_size=1, max_size=4).map(str.rstrip).filter(bool)),
    ),
}
# Each value type: its SQL type and a strategy of a value (None is NULL).
VALUES: dict[str, tuple[str, st.SearchStrategy[Any]]] = {
    "text": ("text", TEXT),
    "numeric": (
        "numeric",
        st.decimals(allow_infinity=False, places=3, max_value=10**9, min_value=-(10**9)),
    ),
    "float8": ("double precision", st.floats()),
    "bool": ("boolean", st.booleans()),
    "timestamptz": ("timestamptz", st.datetimes(timezones=st.just(dt.UTC))),
    "jsonb": ("jsonb", JSON.map(Jsonb)),
    "bytea": ("bytea", st.binary(max_size=12)),
    "int[]": ("integer[]", st.lists(st.none() | st.integers(-5, 5), max_size=3)),
    "float8[]": ("double precision[]", st.lists(st.none() | st.floats(), max_size=3)),
    "dfloat": ("dfloat", st.floats()),  # a domain (``PREAMBLE``)
}
# Types only the explicit cases use, and what every world's two databases have first: a
# nondeterministic collation needs ICU, which a server may lack.
TYPES = {**{n: t for n, (t, _) in VALUES.items()}, "text_ci": "text COLLATE ci"}
PREAMBLE = "CREATE DOMAIN dfloat AS double precision;"
CI = "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);"


# A column the model writes and a trigger of the target's sets to another value at every
# insert and update: before it (``NEW``), or after it, by writing the row again (its table
# named unqualified: found on the path ferry's writing sessions keep from their role).
STAMP = {
    "before": (
        "ALTER TABLE dst ADD COLUMN stamp text; "
        "CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.stamp = 'trigger'; RETURN NEW; END $$; "
        "CREATE TRIGGER stamp BEFORE INSERT OR UPDATE ON dst "
        "FOR EACH ROW EXECUTE FUNCTION stamp();"
    ),
    "after": (
        "ALTER TABLE dst ADD COLUMN stamp text; "
        "CREATE FUNCTION public.stamp() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN UPDATE dst SET stamp = 'trigger' WHERE id = NEW.id "
        "AND stamp IS DISTINCT FROM 'trigger'; RETURN NULL; END $$; "
        "CREATE TRIGGER stamp AFTER INSERT OR UPDATE ON dst "
        "FOR EACH ROW EXECUTE FUNCTION public.stamp();"
    ),
}

SHELLS = (None, ("Asia/Tokyo", "ISO, DMY"), ("America/New_York", "SQL, DMY"),
          ("Pacific/Chatham", "Postgres, MDY"))  # fmt: skip
# Defaults a DBA gave the databases (``ALTER DATABASE ... SET``), which every session there
# starts with, ferry's among them: the same on the source and on both targets, so that the
# test's own reads compare alike.
DEFAULTS = (
    "DateStyle = 'SQL, DMY'", "TimeZone = 'Asia/Kolkata'", "IntervalStyle = 'sql_standard'",
    "extra_float_digits = -3", "bytea_output = 'escape'", "array_nulls = off",
    "quote_all_identifiers = on", "default_transaction_isolation = 'serializable'",
    "standard_conforming_strings = off", "xmloption = document",
    "search_path = public, \"$user\"",
)  # fmt: skip


@st.composite
def worlds(draw: st.DrawFn) -> dict[str, Any]:
    """A table (key kind, value columns), its rows, and changes to make to them."""
    kind = draw(st.sampled_from(sorted(KEYS)))
    key_types, key = KEYS[kind]
    names = draw(st.lists(st.sampled_from(sorted(VALUES)), min_size=1, max_size=3, unique=True))
    value = st.tuples(*(st.none() | VALUES[n][1] for n in names))
    bulk = kind in ("int", "bigint", "dense") and draw(st.booleans())
    # Whether the first load sets the table's keys and autovacuum aside, as one of 50,000
    # rows or more does (the fresh migrate it is compared with never does).
    defer = draw(st.booleans())
    # The shell the sync runs from: its PGTZ and PGDATESTYLE (the migrate's are the server's).
    shell = draw(st.sampled_from(SHELLS))
    # Whether a trigger of the target's changes each row as it is written, and when
    # (``STAMP``).
    rewrite = draw(st.sampled_from([None, *STAMP]))
    defaults = draw(st.lists(st.sampled_from(DEFAULTS), max_size=3, unique=True))
    if bulk:  # thousands of rows from one statement: ids i * step + offset
        n, step, offset = (
            draw(st.integers(1500, 4000)),
            draw(st.integers(1, 9)),
            draw(st.integers(-(2**31) // 2, 2**31 // 4)),
        )
        rows: dict[tuple, tuple] = {}
        ids = [(i * step + offset,) for i in range(n)]
        changed = draw(st.lists(st.sampled_from(ids), max_size=12, unique=True))
        updates = {k: draw(value) for k in changed[: len(changed) // 2]}
        deletes = changed[len(changed) // 2 :]
        inserts = draw(st.dictionaries(key, value, max_size=6))
        return {
            "kind": kind, "key_types": key_types, "names": names, "rows": rows,
            "bulk": (n, step, offset), "updates": updates, "deletes": deletes,
            "inserts": {k: v for k, v in inserts.items() if k not in set(ids)}, "defer": defer,
            "shell": shell, "rewrite": rewrite, "defaults": defaults,
        }  # fmt: skip
    rows = draw(st.dictionaries(key, value, max_size=40))
    existing = sorted(rows, key=repr)
    updates = {
        k: draw(value) for k in draw(st.lists(st.sampled_from(existing), unique=True))
    } if existing else {}  # fmt: skip
    deletes = draw(st.lists(st.sampled_from(existing), unique=True)) if existing else []
    inserts = draw(st.dictionaries(key, value, max_size=8))
    return {
        "kind": kind, "key_types": key_types, "names": names, "rows": rows, "bulk": None,
        "updates": {k: v for k, v in updates.items() if k not in deletes},
        "deletes": deletes, "inserts": {k: v for k, v in inserts.items() if k not in rows},
        "defer": defer, "shell": shell, "rewrite": rewrite, "defaults": defaults,
    }  # fmt: skip


def _columns(w: dict[str, Any]) -> tuple[list[str], list[str]]:
    keys = [f"k{i}" for i in range(len(w["key_types"]))]
    return keys, [f"c_{n.replace('[]', '_arr')}" for n in w["names"]]


def _build(cluster: LocalCluster, tmp: Path, w: dict[str, Any]) -> tuple[str, str, Path]:
    keys, cols = _columns(w)
    source = fresh_db(cluster, "anykey_src")
    defs = [f"{k} {t} NOT NULL" for k, t in zip(keys, w["key_types"], strict=True)]
    defs += [f"{c} {TYPES[n]}" for c, n in zip(cols, w["names"], strict=True)]
    preamble = PREAMBLE + (CI if "text_ci" in w["names"] else "")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(preamble)
        conn.execute(f"CREATE TABLE src ({', '.join(defs)}, PRIMARY KEY ({', '.join(keys)}))")
        _write(conn, keys, cols, w["rows"])
        if w["bulk"]:
            n, step, offset = w["bulk"]
            fill = ", ".join(
                "md5(i::text)" if TYPES[name] == "text" else "NULL" for name in w["names"]
            )
            conn.execute(
                f"INSERT INTO src SELECT i * {step} + {offset}, {fill} "
                f"FROM generate_series(0, {n - 1}) i"
            )
        conn.execute("ANALYZE src")
    composite = len(keys) > 1
    legacy = "s._ferry_key" if composite else "s.k0::text"
    target_cols = ", ".join(f"{c} {TYPES[n]}" for c, n in zip(cols, w["names"], strict=True))
    ddl = (
        f"{preamble}CREATE TABLE dst (id uuid PRIMARY KEY, legacy_key text UNIQUE, {target_cols});"
    )
    stamp = ""
    if w.get("rewrite"):
        ddl += STAMP[w["rewrite"]]
        stamp = "'ferry' AS stamp, "
    (tmp / "target.sql").write_text(ddl)
    key_line = f"key = {json.dumps(keys if composite else keys[0])}\n"
    (tmp / "spec.toml").write_text(
        'name = "anykey"\nnamespace = "0c7f1a2e-5b4d-4e8f-9a1b-2c3d4e5f6a7b"\nchunk_size = 5\n\n'
        f'[[sources]]\nname = "src"\ntable = "public.src"\n{key_line}\n'
        '[[models]]\nname = "rows"\ntarget = "public.dst"\nsource = "src"\n'
        'legacy_column = "legacy_key"\n'
        f'sql = "SELECT {"s._ferry_key" if composite else "s.k0"} AS _key, {legacy} AS legacy_key, '
        f'{stamp}{", ".join(f"s.{c}" for c in cols)} FROM src s"\n'
    )
    fresh_db(cluster, "anykey_tgt", tmp / "target.sql", owner=OWNER)
    _set_defaults(source, ["anykey_src", "anykey_tgt"], w)
    return source, cluster.conninfo("anykey_tgt", user=OWNER), tmp / "spec.toml"


def _set_defaults(superuser: str, databases: list[str], w: dict[str, Any]) -> None:
    """The world's ``DEFAULTS`` for every later session in ``databases``."""
    with psycopg.connect(superuser, autocommit=True) as conn:
        for db in databases:
            for setting in w.get("defaults", ()):
                conn.execute(f"ALTER DATABASE {db} SET {setting}")


def _write(conn: psycopg.Connection, keys: list[str], cols: list[str], rows: dict) -> None:
    if not rows:
        return
    names = ", ".join(keys + cols)
    marks = ", ".join(["%s"] * (len(keys) + len(cols)))
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO src ({names}) VALUES ({marks}) ON CONFLICT ({', '.join(keys)}) "
            f"DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in cols)}",
            [(*k, *v) for k, v in rows.items()],
        )


def _change(source: str, w: dict[str, Any]) -> None:
    keys, cols = _columns(w)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("SET array_nulls = on")  # psycopg sends [None] as '{NULL}'
        _write(conn, keys, cols, {**w["updates"], **w["inserts"]})
        with conn.cursor() as cur:
            match = " AND ".join(f"{k} = %s" for k in keys)
            cur.executemany(f"DELETE FROM src WHERE {match}", list(w["deletes"]))


SETTINGS = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 1"


def _rows(conninfo: str, key: str, cols: list[str], table: str) -> dict[str, tuple]:
    """Each row's values as text, by its key's text."""
    with psycopg.connect(conninfo) as conn:
        conn.execute(SETTINGS)
        rows = conn.execute(
            f"SELECT {key}, {', '.join(f'{c}::text' for c in cols)} FROM {table}"
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def _source_rows(source: str, w: dict[str, Any]) -> dict[str, tuple]:
    keys, cols = _columns(w)
    legacy = f"ROW({', '.join(keys)})::text" if len(keys) > 1 else "k0::text"
    return _rows(source, legacy, cols, "src")


def _target_rows(target: str, w: dict[str, Any]) -> dict[str, tuple]:
    return _rows(target, "legacy_key", _columns(w)[1], "dst")


def _ledger(target: str) -> dict[str, tuple]:
    with psycopg.connect(target) as conn:
        rows = conn.execute(
            "SELECT source_key, status, reason, target_uuid, row_hash FROM ferry.ledger "
            "WHERE status <> 'deleted'"
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def _known(kind: str, rows: dict, deletes: list, inserts: dict) -> dict[str, Any]:
    """An explicit world: the kinds of key whose text Python and PostgreSQL once printed
    differently, with a row deleted and one inserted."""
    return {
        "kind": kind, "key_types": KEYS[kind][0], "names": ["text"], "rows": rows,
        "bulk": None, "updates": {}, "deletes": deletes, "inserts": inserts,
    }  # fmt: skip


AT = dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@settings(settings.get_profile(PROFILE))
@given(w=worlds())
@example(w=_known("composite", {(0, "a"): ("x",)}, [(0, "a")], {(0, "\x1f"): ("y",)}))
@example(w=_known("timestamptz", {(AT,): ("x",), (AT + dt.timedelta(1),): ("z",)}, [(AT,)],
                  {(AT + dt.timedelta(2),): ("y",)}))  # fmt: skip
@example(w=_known("numeric", {(Decimal("0.0000001"),): ("x",), (Decimal("1E+3"),): ("z",)},
                  [(Decimal("0.0000001"),)], {(Decimal("-0.0000020"),): ("y",)}))  # fmt: skip
@example(w=_known("date_edge", {("infinity",): ("x",), ("2020-01-01",): ("z",)}, [("infinity",)],
                  {("0044-03-15 BC",): ("y",)}))  # fmt: skip
@example(w=_known("char", {("ab",): ("x",), ("a",): ("z",), ("b a",): ("w",)}, [("ab",)],
                  {("ba",): ("y",)}))  # fmt: skip
def test_any_table_migrates_exactly_and_syncs_as_a_fresh_migrate(
    cluster: LocalCluster, tmp_path_factory: Any, w: dict[str, Any]
) -> None:
    tmp = tmp_path_factory.mktemp("anykey")
    source, target, spec_path = _build(cluster, tmp, w)
    spec = load_spec(spec_path)
    with pytest.MonkeyPatch.context() as m:
        if w.get("defer"):
            m.setattr(execute, "DEFER_MIN_ROWS", 1)
        migrate(source, target, spec)
    want = _source_rows(source, w)
    assert _target_rows(target, w) == want
    assert {k: v[0] for k, v in _ledger(target).items()} == {k: "migrated" for k in want}
    _verified(verify(target, spec), w, len(want))
    _change(source, w)
    with pytest.MonkeyPatch.context() as m:
        if w.get("shell"):  # the ledger's settings hold (``ledger.session_settings``)
            m.setenv("PGTZ", w["shell"][0])
            m.setenv("PGDATESTYLE", w["shell"][1])
        sync(source, target, spec)
        report = verify(target, spec)
    want = _source_rows(source, w)
    assert _target_rows(target, w) == want
    _verified(report, w, len(want))
    fresh_db(cluster, "anykey_fresh", tmp / "target.sql", owner=OWNER)
    _set_defaults(source, ["anykey_fresh"], w)
    fresh = cluster.conninfo("anykey_fresh", user=OWNER)
    migrate(source, fresh, spec)
    assert _ledger(target) == _ledger(fresh)
    assert _target_rows(target, w) == _target_rows(fresh, w)


def _verified(report: VerifyReport, w: dict[str, Any], rows: int) -> None:
    """Verify holds; where the trigger stamps every row, it names each of them as differing
    from the spec (and nothing else)."""
    if not w.get("rewrite"):
        assert report.ok, report.summary()
        return
    assert {p.kind for p in report.problems} <= {"content"}, report.summary()
    assert sum(p.count for p in report.problems) == rows, report.summary()


# Values whose hashes are alike by construction, each changed into the other: each stayed as
# it was in the target, and verify saw nothing. ``hash_record_extended`` counts a NULL field
# as 0, as the float hash counts zero and jsonb's an empty container (found by the long
# profile above); jsonb's hash does not see its brackets (``5`` and ``[5]``); an array's hash
# sees neither a zero from a NULL inside it; a nondeterministic collation's hash no case.
# Such columns enter ferry's row hash and verify's fingerprint by their text
# (``query.hash_kinds``).
HASHED_ALIKE = [
    (
        ["numeric", "jsonb"],
        {(1,): (None, None), (2,): (None, None), (3,): (None, Jsonb([]))},
        {(1,): (Decimal(0), Jsonb({})), (2,): (None, Jsonb([])), (3,): (None, Jsonb({}))},
    ),
    (
        ["float8", "numeric"],
        {(1,): (None, None), (2,): (None, None), (3,): (0.0, Decimal(0))},
        {(1,): (0.0, None), (2,): (None, Decimal(0)), (3,): (None, None)},
    ),
    (
        ["jsonb", "float8[]"],
        {(1,): (Jsonb(5), [None]), (2,): (Jsonb("x"), [0.0]), (3,): (Jsonb([[1], 2]), None),
         (4,): (None, [[1.0, 2.0]])},
        {(1,): (Jsonb([5]), [0.0]), (2,): (Jsonb(["x"]), [None]), (3,): (Jsonb([[1, 2]]), []),
         (4,): (Jsonb([[]]), [1.0, 2.0])},
    ),
    (["dfloat", "text"], {(1,): (None, "a"), (2,): (0.0, "b")},
     {(1,): (0.0, "a"), (2,): (None, "b")}),
    (["text_ci"], {(1,): ("Bob@Example.org",)}, {(1,): ("bob@example.org",)}),
]  # fmt: skip


@pytest.mark.parametrize(("names", "rows", "updates"), HASHED_ALIKE)
def test_a_change_between_values_hashed_alike_reaches_the_target(
    cluster: LocalCluster, tmp_path: Path, names: list[str], rows: dict, updates: dict
) -> None:
    w = _known("int", {}, [], {})
    w["names"], w["rows"], w["updates"] = names, rows, updates
    source, target, spec_path = _build(cluster, tmp_path, w)
    spec = load_spec(spec_path)
    migrate(source, target, spec)
    _change(source, w)
    sync(source, target, spec)
    assert _target_rows(target, w) == _source_rows(source, w)
    report = verify(target, spec)
    assert report.ok, report.summary()


# A ledger of form 2, its row hashes without the form's number: a jsonb world (``5`` to
# ``[5]`` hashed alike), and one whose columns all enter by their value (every hash of form
# 3 differs from form 2's all the same).
EARLIER = [
    (
        ["text", "jsonb"],
        {(1,): ("a", Jsonb(5)), (2,): ("b", Jsonb([])), (3,): ("c", Jsonb(7))},
        {(1,): ("a", Jsonb([5]))},
        't.c_jsonb::text COLLATE "C"',
    ),
    (
        ["text", "bool"],
        {(1,): ("a", True), (2,): ("b", None), (3,): ("c", False)},
        {(1,): ("a", False)},
        "t.c_bool",
    ),
]


@pytest.mark.parametrize(("names", "rows", "updates", "last"), EARLIER)
def test_a_ledger_of_an_earlier_hash_form_is_rehashed_from_ferrys_rows(
    cluster: LocalCluster, tmp_path: Path, names: list[str], rows: dict, updates: dict,
    last: str,
) -> None:  # fmt: skip
    """A ledger written before ``query.HASH_FORM`` 3: its first run rehashes the rows
    ferry's hash still holds (``rehash``), so that a change its hashes could not see (``5``
    to ``[5]``) is written, and the others are not written again; an empty jsonb stored in
    the form before that is ferry's too; a row the application edited keeps its hash and is
    not taken for a change of its source."""
    w = _known("int", {}, [], {})
    w["names"], w["rows"], w["updates"] = names, rows, updates
    source, target, spec_path = _build(cluster, tmp_path, w)
    spec = load_spec(spec_path)
    migrate(source, target, spec)
    old = f"hash_record_extended(ROW(t.legacy_key, t.c_text, t.c_{names[1]}), 0)::text"
    new = (
        f'hash_record_extended(ROW(3, t.legacy_key COLLATE "C", t.c_text COLLATE "C", '
        f"{last}), 0)::text"
    )
    with psycopg.connect(target) as conn:
        conn.execute(
            f"UPDATE ferry.ledger l SET row_hash = {old} FROM dst t WHERE t.id = l.target_uuid"
        )
        conn.execute("DELETE FROM ferry.hash_forms")
        conn.execute("UPDATE dst SET c_text = 'edited' WHERE legacy_key = '3'")
    kept = _ledger(target)["3"][3]
    _change(source, w)
    done = sync(source, target, spec)
    assert done.counts["updated"] == 1 and done.counts["conflicts"] == 0, done.counts
    want = _source_rows(source, w)
    want["3"] = ("edited", *want["3"][1:])
    assert _target_rows(target, w) == want
    with psycopg.connect(target) as conn:
        flags = conn.execute(
            f"SELECT l.source_key, l.conflict, l.row_hash = {new}, l.row_hash = %s "
            "FROM ferry.ledger l JOIN dst t ON t.id = l.target_uuid ORDER BY 1",
            [kept],
        ).fetchall()
        forms = conn.execute("SELECT model, form FROM ferry.hash_forms").fetchall()
    assert flags == [
        ("1", False, True, False),
        ("2", False, True, False),
        ("3", False, False, True),
    ]
    assert forms == [("rows", 3)]


# A trigger of the target's that changes a row as it is written (here: lowercases a name),
# before inserts and updates, as a Supabase schema's normalizing or ``updated_at`` triggers do.
LOWER = (
    "CREATE FUNCTION lower_text() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN NEW.c_text = lower(NEW.c_text); RETURN NEW; END $$; "
    "CREATE TRIGGER lower_text BEFORE INSERT OR UPDATE ON dst "
    "FOR EACH ROW EXECUTE FUNCTION lower_text();"
)

# Skips one row (it returns NULL) and stores another under a key of its own.
SKIP = (
    "CREATE FUNCTION skip() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF NEW.c_text = 'skip' THEN RETURN NULL; END IF; "
    "IF NEW.c_text = 'rekey' THEN NEW.id = gen_random_uuid(); END IF; RETURN NEW; END $$; "
    "CREATE TRIGGER skip BEFORE INSERT ON dst FOR EACH ROW EXECUTE FUNCTION skip();"
)

# Row-level security that applies to the tables' owner, and hides one row from it.
FORCED = (
    "ALTER TABLE dst ENABLE ROW LEVEL SECURITY; ALTER TABLE dst FORCE ROW LEVEL SECURITY;"
    "CREATE POLICY ins ON dst FOR INSERT WITH CHECK (true);"
    "CREATE POLICY sel ON dst FOR SELECT USING (c_text <> 'hidden');"
)

# Changes a row on every write, as an ``updated_at`` set to now does.
MARK = (
    "CREATE FUNCTION mark() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN NEW.c_text = NEW.c_text || '!'; RETURN NEW; END $$; "
    "CREATE TRIGGER mark BEFORE INSERT OR UPDATE ON dst "
    "FOR EACH ROW EXECUTE FUNCTION mark();"
)


def _with(cluster: LocalCluster, tmp: Path, w: dict[str, Any], target_sql: str) -> tuple:
    """``_build``'s world, ``target_sql`` run on its target (as the target tables' owner),
    and its spec loaded."""
    source, target, spec_path = _build(cluster, tmp, w)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(target_sql)
    return source, target, load_spec(spec_path)


def test_rows_a_target_trigger_changes_keep_their_sources_changes_flowing(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """The ledger keeps the hash of the row as the trigger let it be stored: before, each
    row the trigger changed passed for one the application edited, and its source's next
    change was withheld as a conflict (the target kept ``alice, true``), its deletion too.
    A real edit still is one; the rows end as a fresh migrate's, and verify names the rows
    the trigger made differ from the spec, saying why."""
    w = _known("int", {}, [], {})
    w["names"] = ["text", "bool"]
    w["rows"] = {(1,): ("Alice", True), (2,): ("Bob", True), (3,): ("carol", True)}
    w["updates"] = {(1,): ("Alice", False), (2,): ("Bob", False)}
    w["deletes"], w["inserts"] = [(3,)], {(4,): ("Dan", True)}
    source, target, spec = _with(cluster, tmp_path, w, LOWER)
    migrate(source, target, spec)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("UPDATE dst SET c_bool = NULL WHERE legacy_key = '2'")  # the app's edit
    _change(source, w)
    result = sync(source, target, spec)
    assert result.counts["new_conflicts"] == 1
    assert _target_rows(target, w) == {
        "1": ("alice", "false"), "2": ("bob", None), "4": ("dan", "true"),
    }  # fmt: skip
    report = verify(target, spec)
    content = [p for p in report.problems if p.kind == "content"]
    assert [sorted(p.keys) for p in content] == [["1", "4"]], report.summary()
    assert "triggers" in content[0].detail
    # Against a fresh migrate of the source as it is now, on a target with the trigger: the
    # same rows and fates (the application's edit aside).
    fresh_db(cluster, "anykey_fresh", tmp_path / "target.sql", owner=OWNER)
    fresh = cluster.conninfo("anykey_fresh", user=OWNER)
    with psycopg.connect(fresh, autocommit=True) as conn:
        conn.execute(LOWER)
    migrate(source, fresh, spec)
    mine, theirs = _ledger(target), _ledger(fresh)
    assert {k: v[:3] for k, v in mine.items()} == {k: v[:3] for k, v in theirs.items()}
    assert {k: v for k, v in mine.items() if k != "2"} == {
        k: v for k, v in theirs.items() if k != "2"
    }
    want = _target_rows(fresh, w)
    assert {k: v for k, v in _target_rows(target, w).items() if k != "2"} == {
        k: v for k, v in want.items() if k != "2"
    }


def test_a_row_a_target_trigger_skips_is_quarantined_not_recorded_as_migrated(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A trigger that returns NULL skips the row without an error: it was recorded as
    migrated and was not there; one that sets its own key stores it where ferry does not
    look. Each is quarantined as refused (SQLSTATE 02000) and nothing of it stays in the
    target; verify holds, and once its source changes so that the trigger takes it as it
    is, a sync writes it."""
    w = _known("int", {}, [], {})
    w["names"] = ["text", "bool"]
    w["rows"] = {(1,): ("a", True), (2,): ("skip", True), (3,): ("rekey", True)}
    w["updates"] = {(2,): ("b", True), (3,): ("c", True)}
    source, target, spec = _with(cluster, tmp_path, w, SKIP)
    migrate(source, target, spec)
    with psycopg.connect(target) as conn:
        fates = conn.execute(
            "SELECT source_key, status, reason, sqlstate, message FROM ferry.ledger "
            "WHERE status <> 'migrated' ORDER BY 1"
        ).fetchall()
    said = ("quarantined", "skipped_by_trigger", "02000",
            "a trigger on public.dst skipped the row, or changed its key")  # fmt: skip
    assert fates == [("2", *said), ("3", *said)]
    assert list(_target_rows(target, w)) == ["1"]
    report = verify(target, spec)
    assert report.ok, report.summary()
    _change(source, w)
    sync(source, target, spec)
    assert _target_rows(target, w) == _source_rows(source, w)
    assert _ledger(target)["2"][0] == "migrated"
    assert verify(target, spec).ok


def test_a_target_whose_row_level_security_hides_rows_from_ferry_is_refused(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Forced on the table ferry owns, a policy hid a row ferry wrote: verify called it
    missing, and a sync would take it for deleted by the application. The run refuses to
    start and says what to do; without the force it runs."""
    w = _known("int", {(1,): ("a",), (2,): ("hidden",)}, [], {})
    source, target, spec = _with(cluster, tmp_path, w, FORCED)
    with pytest.raises(FerryError, match=r"row-level security is forced on public\.dst"):
        migrate(source, target, spec)
    assert _target_rows(target, w) == {}
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("ALTER TABLE dst NO FORCE ROW LEVEL SECURITY")
    migrate(source, target, spec)
    assert _target_rows(target, w) == _source_rows(source, w)
    assert verify(target, spec).ok


def test_a_row_a_trigger_changes_again_as_a_rollback_puts_it_back_is_not_an_edit(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A trigger that changes a row on every write (an ``updated_at`` set to now; here a
    mark appended): the row a rollback puts back is not its before-image. The ledger takes
    the hash of what was stored, so the source's next change still reaches the row."""
    w = _known("int", {(1,): ("a", True)}, [], {})
    w["names"] = ["text", "bool"]
    w["rows"], w["updates"] = {(1,): ("a", True)}, {(1,): ("b", True)}
    source, target, spec = _with(cluster, tmp_path, w, MARK)
    migrate(source, target, spec)
    _change(source, w)
    done = sync(source, target, spec)
    assert _target_rows(target, w) == {"1": ("b!", "true")}
    rollback(target, spec, run=done.run_id)
    assert _target_rows(target, w) == {"1": ("a!!", "true")}  # put back, and marked again
    w["updates"] = {(1,): ("c", False)}
    _change(source, w)
    result = sync(source, target, spec)
    assert result.counts["new_conflicts"] == 0
    assert _target_rows(target, w) == {"1": ("c!", "false")}
