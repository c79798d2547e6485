"""Targets an application's schema makes harder, each a world of its own: enums an ORM
makes again, domains, rules, errors raised by the application's triggers, constraints
checked only at commit, columns the database fills itself, exclusion constraints.

Every world is one source table of twenty rows mapped into ``dst``; a history is compared
with a fresh migrate of the source as it is at its end, into a fresh copy of the target.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ferry import FerryError, SpecError, load_spec, migrate
from ferry.embedded import LocalCluster
from ferry.engine import chunk
from ferry.ops.check import check
from ferry.ops.doctor import diagnose
from ferry.ops.rollback import rollback
from ferry.ops.verify import verify
from ferry.spec import Spec
from ferry.sync.loop import sync
from tests.helpers import fresh_db, one_table_spec

OWNER = "features_owner"
SOURCE = (
    "CREATE TABLE src (id int PRIMARY KEY, name text, kind text, n int); "
    "INSERT INTO src SELECT i, 'Name' || i, (ARRAY['a', 'b', 'c'])[i % 3 + 1], i * 10 "
    "FROM generate_series(1, 20) i;"
)
MODEL = "SELECT s.id AS _key, s.id::text AS legacy_id, s.name, s.kind, s.n FROM src s"
TABLE = "CREATE TABLE dst (id uuid PRIMARY KEY, legacy_id text UNIQUE, name text, {kind}, n int);"


def _world(
    cluster: LocalCluster, tmp: Path, name: str, target_sql: str, model: str = MODEL
) -> tuple[str, str, Spec]:
    """The source, a target made by ``target_sql`` (as its tables' owner), the spec."""
    source = fresh_db(cluster, f"{name}_src")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(SOURCE)
    (tmp / "target.sql").write_text(target_sql)
    fresh_db(cluster, f"{name}_tgt", tmp / "target.sql", owner=OWNER)
    (tmp / "spec.toml").write_text(one_table_spec(model, "legacy_id", chunk_size=5))
    return source, cluster.conninfo(f"{name}_tgt", user=OWNER), load_spec(tmp / "spec.toml")


def _fresh(cluster: LocalCluster, tmp: Path, name: str) -> str:
    fresh_db(cluster, f"{name}_fresh", tmp / "target.sql", owner=OWNER)
    return cluster.conninfo(f"{name}_fresh", user=OWNER)


def _sql(conninfo: str, text: str) -> list[tuple]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cur = conn.execute(text)
        return cur.fetchall() if cur.description else []


def _fates(target: str) -> dict[str, tuple]:
    return {
        r[0]: r[1:]
        for r in _sql(
            target,
            "SELECT source_key, status, reason, sqlstate, target_uuid, row_hash "
            "FROM ferry.ledger WHERE status <> 'deleted'",
        )
    }


def _rows(target: str) -> set[tuple]:
    return set(_sql(target, "SELECT legacy_id, name, kind::text, n FROM dst"))


RECREATE_ENUM = (
    "ALTER TYPE kind_t RENAME TO kind_t_old; "
    "CREATE TYPE kind_t AS ENUM ('a', 'b', 'c', 'd'); "
    "ALTER TABLE dst ALTER COLUMN kind TYPE kind_t USING kind::text::kind_t; "
    "DROP TYPE kind_t_old;"
)


def test_an_enum_made_again_as_an_orm_migrates_it_leaves_ferrys_rows_ferrys(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """An enum's value is the OID of its label: the row hash took it as such, so an enum
    made again (Prisma's migration of an enum; a restored dump) turned every ferry row into
    one the application had edited, and the source's next changes were withheld as
    conflicts, verify passing. Enums enter the hash by their label: the rows and ledger are
    a fresh migrate's, whatever the OIDs."""
    target_sql = "CREATE TYPE kind_t AS ENUM ('a', 'b', 'c'); " + TABLE.format(kind="kind kind_t")
    source, target, spec = _world(cluster, tmp_path, "enum", target_sql)
    migrate(source, target, spec)
    _sql(target, RECREATE_ENUM)
    _sql(source, "UPDATE src SET name = 'Renamed' WHERE id IN (3, 4)")
    result = sync(source, target, spec)
    assert result.counts["conflicts"] == 0, result.counts
    assert {r for r in _rows(target) if r[0] in ("3", "4")} == {
        ("3", "Renamed", "a", 30), ("4", "Renamed", "b", 40),
    }  # fmt: skip
    fresh = _fresh(cluster, tmp_path, "enum")
    _sql(fresh, "CREATE TYPE pad AS ENUM ('x'); " + RECREATE_ENUM)  # other OIDs
    migrate(source, fresh, spec)
    assert _fates(target) == _fates(fresh)
    assert _rows(target) == _rows(fresh)
    assert verify(target, spec).ok


def test_a_domain_that_refuses_null_is_a_column_type_like_any(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Asking whether the row's types hash made a NULL of each: a domain declared NOT NULL
    refused it, and every migrate into such a table failed."""
    target_sql = "CREATE DOMAIN name_t AS text NOT NULL; " + TABLE.format(kind="kind text")
    source, target, spec = _world(
        cluster, tmp_path, "domain", target_sql.replace("name text", "name name_t")
    )
    _sql(source, "UPDATE src SET name = NULL WHERE id = 4")
    migrate(source, target, spec)
    fates = _fates(target)
    assert fates["4"][:3] == ("quarantined", "not_null_violation", "23502")
    assert sum(f[0] == "migrated" for f in fates.values()) == 19
    assert verify(target, spec).ok


REFUSE_NAME = (
    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN IF NEW.name = 'Name4' THEN RAISE EXCEPTION 'name % is not allowed', NEW.name; "
    "END IF; RETURN NULL; END $$; "
)


@pytest.mark.parametrize("when", ["after", "deferred"])
def test_an_error_a_trigger_raises_quarantines_its_row_and_keeps_no_value(
    cluster: LocalCluster, tmp_path: Path, when: str
) -> None:
    """A trigger's own error carries whatever its author put in it (here the name): it was
    kept as the row's message. Raised at COMMIT by a deferred constraint trigger, it failed
    the whole run, its text in the run's error. The row is quarantined, no value kept."""
    trigger = (
        "CREATE TRIGGER refuse AFTER INSERT OR UPDATE ON dst FOR EACH ROW "
        "EXECUTE FUNCTION refuse();"
        if when == "after"
        else "CREATE CONSTRAINT TRIGGER refuse AFTER INSERT OR UPDATE ON dst "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse();"
    )
    target_sql = REFUSE_NAME + TABLE.format(kind="kind text") + trigger
    source, target, spec = _world(cluster, tmp_path, f"raise_{when}", target_sql)
    migrate(source, target, spec)
    said = _sql(
        target, "SELECT source_key, status, sqlstate, message FROM ferry.ledger "
        "WHERE status <> 'migrated'",
    )  # fmt: skip
    assert [r[:3] for r in said] == [("4", "quarantined", "P0001")]
    assert "Name4" not in str(_sql(target, "SELECT * FROM ferry.ledger"))
    assert "Name4" not in str(_sql(target, "SELECT * FROM ferry.runs"))
    assert len(_rows(target)) == 19
    _sql(source, "UPDATE src SET name = 'Four' WHERE id = 4")
    sync(source, target, spec)
    assert len(_rows(target)) == 20
    assert verify(target, spec).ok


@pytest.mark.parametrize(
    "rule",
    [
        "CREATE TABLE dst_real (LIKE dst); "
        "CREATE RULE redirect AS ON INSERT TO dst DO INSTEAD INSERT INTO dst_real VALUES (NEW.*)",
        "CREATE RULE keep AS ON DELETE TO dst DO INSTEAD NOTHING",
        "CREATE RULE frozen AS ON UPDATE TO dst DO INSTEAD NOTHING",
        "CREATE TABLE audit (at timestamptz); "
        "CREATE RULE audit AS ON INSERT TO dst DO ALSO INSERT INTO audit VALUES (now())",
    ],
    ids=["insert_instead", "delete_nothing", "update_nothing", "insert_also"],
)
def test_a_target_whose_rules_rewrite_ferrys_writes_is_refused(
    cluster: LocalCluster, tmp_path: Path, rule: str
) -> None:
    """A rule rewrites the statement: rows sent elsewhere were recorded as migrated, rows
    kept by ``DO INSTEAD NOTHING`` as deleted (verify passing), an update as made; a
    ``DO ALSO`` rule failed the run with a database error. The run refuses such a table and
    says what to do; doctor and check name it; disabled, the rule is no obstacle."""
    target_sql = TABLE.format(kind="kind text") + rule + ";"
    source, target, spec = _world(cluster, tmp_path, "rules", target_sql)
    with pytest.raises(FerryError, match=r"public\.dst: rules rewrite .* DISABLE RULE"):
        migrate(source, target, spec)
    assert _rows(target) == set()
    found = check(tmp_path / "spec.toml", source, target)
    assert [f.check for f in found.findings if f.level == "error"] == ["target_table"]
    diagnosis = diagnose(source, target, spec)
    assert [f.check for f in diagnosis.findings if f.level == "error"] == ["target_rules"]
    name = _sql(target, "SELECT rulename FROM pg_rewrite WHERE ev_class = 'dst'::regclass")[0][0]
    _sql(target, f"ALTER TABLE dst DISABLE RULE {name}")
    migrate(source, target, spec)
    assert len(_rows(target)) == 20


def test_a_column_the_database_generates_is_named_not_written(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Mapped by mistake, a GENERATED ALWAYS column failed the run with the database's
    error; the spec is refused with the column's name, and check says so first."""
    target_sql = TABLE.format(kind="kind text GENERATED ALWAYS AS (upper(name)) STORED")
    source, target, spec = _world(cluster, tmp_path, "generated", target_sql)
    found = check(tmp_path / "spec.toml", source, target)
    assert [f.message for f in found.findings if f.level == "error"] == [
        "model rows: column kind of public.dst is generated by the database (GENERATED "
        "ALWAYS): drop it from the SQL"
    ]
    with pytest.raises(SpecError, match=r"column kind of public\.dst is generated"):
        migrate(source, target, spec)


def test_rows_an_exclusion_constraint_refuses_do_not_depend_on_timing(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Chunks ran at once where only an exclusion constraint could make them collide: which
    of two rows wanting the same value was refused depended on which session came first,
    and two fresh migrates of one source kept different rows. In key order, the lowest key
    wins, every time."""
    target_sql = "CREATE EXTENSION IF NOT EXISTS btree_gist; " + TABLE.format(
        kind="kind text"
    ).replace("n int);", "n int, EXCLUDE USING gist (n WITH =));")
    source, _, spec = _world(cluster, tmp_path, "exclusion", target_sql)
    _sql(source, "INSERT INTO src SELECT i, 'x', 'a', (i % 7) * 10 FROM generate_series(21, 200) i")
    kept = []
    for run in range(3):
        fresh = _fresh(cluster, tmp_path, f"exclusion{run}")
        migrate(source, fresh, spec, jobs=4)
        kept.append(_fates(fresh))
    assert kept[0] == kept[1] == kept[2]
    assert sorted(int(k) for k, f in kept[0].items() if f[0] == "migrated") == list(range(1, 22))


def test_a_trigger_function_that_names_tables_unqualified_runs_as_for_the_application(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A trigger function without a search_path of its own (Supabase's linter names many)
    that names the application's tables unqualified: ferry wrote with only its stage schema
    and pg_catalog on the path, so every insert failed in it (each row quarantined) and a
    sync that deleted a row stopped, every time. ferry's writing sessions now have their
    role's own path after the stage's: the trigger runs as it does for the application,
    in a migrate, a sync and a rollback."""
    target_sql = TABLE.format(kind="kind text") + (
        "CREATE TABLE audit (op text, n int); "
        "CREATE FUNCTION audited() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO audit VALUES (TG_OP, (SELECT count(*) FROM dst)); RETURN NULL; END $$; "
        "CREATE TRIGGER audited AFTER INSERT OR UPDATE OR DELETE ON dst "
        "FOR EACH ROW EXECUTE FUNCTION audited();"
    )
    source, target, spec = _world(cluster, tmp_path, "pathless", target_sql)
    assert not [f for f in diagnose(source, target, spec).findings if "audited" in f.message]
    migrate(source, target, spec)
    assert _sql(target, "SELECT op, count(*) FROM audit GROUP BY 1") == [("INSERT", 20)]
    _sql(source, "UPDATE src SET n = 0 WHERE id IN (2, 3); DELETE FROM src WHERE id = 4")
    synced = sync(source, target, spec)
    counts = synced.counts
    assert (counts["updated"], counts["deleted"], counts["conflicts"]) == (2, 1, 0)
    fresh = _fresh(cluster, tmp_path, "pathless")
    migrate(source, fresh, spec)
    assert _rows(target) == _rows(fresh) and _fates(target) == _fates(fresh)
    rollback(target, spec, run=synced.run_id)
    assert dict(_sql(target, "SELECT op, count(*) FROM audit GROUP BY 1")) == {
        "INSERT": 21, "UPDATE": 4, "DELETE": 1,
    }  # fmt: skip
    sync(source, target, spec)  # the rolled back changes again
    assert _rows(target) == _rows(fresh) and _fates(target) == _fates(fresh)
    assert verify(target, spec).ok


@pytest.mark.parametrize("where", ["sql", "rule"])
def test_a_table_the_target_has_and_no_source_stages_is_not_read_by_a_model(
    cluster: LocalCluster, tmp_path: Path, where: str
) -> None:
    """The application's own path follows the stage's in ferry's writing sessions, where a
    table a model names but no source stages would be the target's: a model (or a rule)
    that names one is refused before it runs, as on the stage's path alone."""
    target_sql = TABLE.format(kind="kind text") + "CREATE TABLE extra (n int); "
    sql_, rule = MODEL + " WHERE s.n NOT IN (SELECT n FROM extra)", "false"
    if where == "rule":
        sql_, rule = MODEL, "n IN (SELECT n FROM extra)"
    source, target, _ = _world(cluster, tmp_path, f"unstaged_{where}", target_sql, sql_)
    text = (tmp_path / "spec.toml").read_text()
    (tmp_path / "spec.toml").write_text(
        text + f"rules = [{{ reject = \"extra\", when = '{rule}' }}]\n"
    )
    spec = load_spec(tmp_path / "spec.toml")
    with pytest.raises(SpecError, match='relation "extra" does not exist'):
        migrate(source, target, spec)
    assert _sql(target, "SELECT count(*) FROM dst") == [(0,)]


# A target partitioned by kind, without a partition for 'c'.
BY_KIND = (
    "CREATE TABLE dst (id uuid, legacy_id text, name text, kind text, n int, "
    "PRIMARY KEY (id, kind), UNIQUE (legacy_id, kind)) PARTITION BY LIST (kind); "
    "CREATE TABLE dst_a PARTITION OF dst FOR VALUES IN ('a'); "
    "CREATE TABLE dst_b PARTITION OF dst FOR VALUES IN ('b'); "
)
TIDY = (
    "CREATE FUNCTION tidy() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN DELETE FROM src; RETURN NULL; END $$; "
    "CREATE TRIGGER tidy AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION tidy();"
)


@pytest.mark.parametrize(
    "table, ddl, function",
    [
        (TABLE.format(kind="kind text"), TIDY.format(table="dst"), "tidy()"),
        (BY_KIND + "CREATE TABLE dst_c PARTITION OF dst FOR VALUES IN ('c'); ",
         TIDY.format(table="dst_c"), "tidy()"),
        (TABLE.format(kind="kind text"),
         "CREATE FUNCTION known(v int) RETURNS boolean LANGUAGE plpgsql AS "
         "$$ BEGIN RETURN v IS NULL OR NOT EXISTS (SELECT FROM src WHERE n = v); END $$; "
         "ALTER TABLE dst ADD CONSTRAINT known CHECK (known(n));",
         "known(integer)"),
    ],
    ids=["trigger", "partition_trigger", "check"],
)  # fmt: skip
def test_a_function_that_names_a_stage_table_unqualified_stops_the_run(
    cluster: LocalCluster, tmp_path: Path, table: str, ddl: str, function: str
) -> None:
    """The target has a table named as a source (``src``, staged as ``ferry_stage.src``),
    and a trigger (or a CHECK) whose function names it unqualified, with no search_path of
    its own: on ferry's search_path it read and wrote the stage. The trigger's DELETE
    emptied it, and the run took every row for deleted in the source. The run now stops
    before it writes, naming the function and the fix; a trigger on a partition too."""
    target_sql = table + "CREATE TABLE src (n int); " + ddl
    source, target, spec = _world(cluster, tmp_path, "stage_named", target_sql)
    errors = [f.message for f in diagnose(source, target, spec).findings if f.level == "error"]
    assert any(function in m and "stage tables" in m for m in errors), errors
    with pytest.raises(FerryError, match=re.escape(function) + ".* name src, which on ferry"):
        migrate(source, target, spec)
    _sql(target, f"ALTER FUNCTION {function} SET search_path = public")
    migrate(source, target, spec)
    assert _sql(target, "SELECT status, count(*) FROM ferry.ledger GROUP BY 1") == [
        ("migrated", 20)
    ]
    assert _sql(target, "SELECT count(*) FROM ferry_stage.src") == [(20,)]


@pytest.mark.parametrize(
    "kind, value, widened, name",
    [
        ("varchar(5)", "s.name", "varchar(10)", "name"),
        ("char(5)", "s.name", "varchar(10)", "name"),
        ("short", "s.name", "varchar(10)", "name"),  # a domain over varchar(5)
        ("varchar(5)[]", "ARRAY[s.name] AS name", "varchar(10)[]", "name[1]"),
    ],
    ids=["varchar", "char", "domain", "array"],
)  # fmt: skip
def test_a_value_too_long_for_its_column_is_refused_not_cut(
    cluster: LocalCluster, tmp_path: Path, kind: str, value: str, widened: str, name: str
) -> None:
    """ferry casts each value to its column's type, and a cast to varchar(n) or char(n) (or
    a domain over one, or an array of one) cuts a longer value without a word, where the
    application's INSERT is refused: the legacy 'Name10' was written as 'Name1', its fate
    migrated, verify ok. Refused now, as the server refuses it (22001, its message naming
    the type, not the value); spaces past the length are cut, as the server cuts them.
    Widened, the column takes the rows."""
    table = "CREATE DOMAIN short AS varchar(5); " + TABLE.format(kind="kind text").replace(
        "name text", f"name {kind}"
    )
    model = MODEL.replace("s.name", value)
    source, target, spec = _world(cluster, tmp_path, f"too_long_{kind[:4]}", table, model)
    _sql(source, "UPDATE src SET name = 'Nm3    ' WHERE id = 3")  # 7 characters
    migrate(source, target, spec)
    fates = dict(
        _sql(
            target,
            "SELECT source_key, concat_ws(':', status, reason, sqlstate, message) "
            "FROM ferry.ledger WHERE model = 'rows'",
        )
    )
    typ = "character(5)" if kind == "char(5)" else "character varying(5)"
    refused = f"quarantined:string_data_right_truncation:22001:value too long for type {typ}"
    assert {k: fates[k] for k in map(str, range(10, 21))} == dict.fromkeys(
        map(str, range(10, 21)), refused
    )
    assert {fates[str(i)] for i in range(1, 10)} == {"migrated"}
    assert _sql(target, f"SELECT {name} FROM dst WHERE legacy_id = '3'") == [("Nm3  ",)]
    report = verify(target, spec)
    assert report.ok, report.summary()
    # Stored as computed: a sync with no change writes nothing.
    counts = sync(source, target, spec).counts
    assert (counts["inserted"], counts["updated"]) == (0, 0)
    _sql(target, f"ALTER TABLE dst ALTER COLUMN name TYPE {widened}")
    sync(source, target, spec)
    assert _sql(target, f"SELECT count(*) FROM dst WHERE {name} LIKE 'Name__'") == [(11,)]


@pytest.mark.parametrize(
    "kind, value, reason",
    [
        ("bit(3)", "(s.n % 8)::bit(3)::varbit || B'1'", "string_data_length_mismatch:22026:"
         "bit string length does not match type bit(3)"),
        ("bit(3)", "substring((s.n % 8)::bit(3)::varbit FROM 1 FOR 2)",
         "string_data_length_mismatch:22026:bit string length does not match type bit(3)"),
        ("varbit(3)", "(s.n % 8)::bit(3)::varbit || B'01'", "string_data_right_truncation:"
         "22001:bit string too long for type bit varying(3)"),
        ("bit(3)[]", "ARRAY[(s.n % 8)::bit(3)::varbit || B'1']", "string_data_length_mismatch:"
         "22026:bit string length does not match type bit(3)"),
    ],
    ids=["bit_cut", "bit_padded", "varbit_cut", "array"],
)  # fmt: skip
def test_a_bit_string_of_another_length_is_refused_not_cut_or_padded(
    cluster: LocalCluster, tmp_path: Path, kind: str, value: str, reason: str
) -> None:
    """A cast to bit(n) cuts a longer bit string and pads a shorter one with zeros, and
    one to varbit(n) cuts a longer one, where the application's INSERT refuses both:
    '0101' was written '010', as migrated. Rows 11-20 carry such a value, rows 1-10 one of
    the column's own length, written as it is."""
    table = TABLE.format(kind="kind text").replace("n int", f"n {kind}")
    model = MODEL.replace(
        "s.n", f"CASE WHEN s.id > 10 THEN {value} ELSE (s.n % 8)::bit(3)::varbit END AS n"
    )
    if kind.endswith("[]"):
        model = model.replace("::bit(3)::varbit END", "::bit(3)::varbit] END").replace(
            "ELSE (s.n", "ELSE ARRAY[(s.n"
        )
    source, target, spec = _world(cluster, tmp_path, f"bits_{kind[:6]}", table, model)
    migrate(source, target, spec)
    fates = dict(
        _sql(
            target,
            "SELECT source_key::int, concat_ws(':', status, reason, sqlstate, message) "
            "FROM ferry.ledger WHERE model = 'rows'",
        )
    )
    assert {k: v for k, v in fates.items() if k > 10} == dict.fromkeys(
        range(11, 21), f"quarantined:{reason}"
    )
    assert {v for k, v in fates.items() if k <= 10} == {"migrated"}
    shown = "n::text" if not kind.endswith("[]") else "n[1]::text"
    assert _sql(target, f"SELECT {shown} FROM dst WHERE legacy_id = '3'") == [("110",)]
    assert verify(target, spec).ok
    counts = sync(source, target, spec).counts
    assert (counts["inserted"], counts["updated"]) == (0, 0)


@pytest.mark.parametrize("run", ["migrate", "sync"])
@pytest.mark.parametrize(
    "column, refused, fix",
    [
        ("kind mood", "UPDATE src SET kind = 'meh' WHERE id = 4",
         "ALTER TYPE mood ADD VALUE 'meh'"),
        ("kind short", "UPDATE src SET kind = 'long' WHERE id = 4",
         "ALTER DOMAIN short DROP CONSTRAINT short_len"),
        ("kind text CONSTRAINT one CHECK (length(kind) = 1)",
         "UPDATE src SET kind = 'long' WHERE id = 4", "ALTER TABLE dst DROP CONSTRAINT one"),
    ],
    ids=["enum_value_added", "domain_check_dropped", "check_dropped"],
)  # fmt: skip
def test_a_row_refused_for_its_type_is_tried_again_once_the_type_takes_it(
    cluster: LocalCluster, tmp_path: Path, column: str, refused: str, fix: str, run: str
) -> None:
    """A row refused for its own values is sent again once the target's rules change, by
    the next migrate and by a sync with no source change: a fresh migrate writes it. An
    enum's labels and a domain's constraints were not among the rules; a sync never looked."""
    target_sql = (
        "CREATE TYPE mood AS ENUM ('a', 'b', 'c'); "
        "CREATE DOMAIN short AS text CONSTRAINT short_len CHECK (length(VALUE) = 1); "
        + TABLE.format(kind=column)
    )
    source, target, spec = _world(cluster, tmp_path, "typed", target_sql)
    _sql(source, refused)
    migrate(source, target, spec)
    assert _fates(target)["4"][0] == "quarantined"
    sync(source, target, spec)  # nothing changed: the row is not sent again for nothing
    tries = "SELECT tries FROM ferry.ledger WHERE source_key = '4'"
    assert _fates(target)["4"][0] == "quarantined" and _sql(target, tries) == [(1,)]
    _sql(target, fix)
    if run == "migrate":
        migrate(source, target, spec)
    else:
        assert sync(source, target, spec).counts["fixed_on_retry"] == 1
    assert _fates(target)["4"][0] == "migrated"
    fresh = _fresh(cluster, tmp_path, "typed")
    _sql(fresh, fix)
    migrate(source, fresh, spec)
    assert _rows(target) == _rows(fresh)
    assert _fates(target)["4"][:3] == _fates(fresh)["4"][:3]


CHECKED = "CREATE FUNCTION ok(int) RETURNS bool IMMUTABLE LANGUAGE sql AS $$ SELECT $1 <> 40 $$;"
VALIDATE = (
    "CREATE FUNCTION validate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF NEW.n = 40 THEN RAISE EXCEPTION 'not allowed'; END IF; RETURN NEW; END $$;"
)


@pytest.mark.parametrize(
    "target_sql, fix",
    [
        (VALIDATE + TABLE.format(kind="kind text") + "CREATE TRIGGER validate BEFORE INSERT "
         "OR UPDATE ON dst FOR EACH ROW EXECUTE FUNCTION validate();",
         VALIDATE.replace("CREATE", "CREATE OR REPLACE").replace("= 40", "= 41")),
        (CHECKED + TABLE.format(kind="kind text").replace("n int", "n int CHECK (ok(n))"),
         CHECKED.replace("CREATE", "CREATE OR REPLACE").replace("<> 40", "<> 41")),
        (BY_KIND, "CREATE TABLE dst_c PARTITION OF dst FOR VALUES IN ('c')"),
        (BY_KIND + "CREATE TABLE dst_c PARTITION OF dst FOR VALUES IN ('c'); "
         "ALTER TABLE dst_c ADD CONSTRAINT small CHECK (n < 100);",
         "ALTER TABLE dst_c DROP CONSTRAINT small"),
        (TABLE.format(kind="kind text").replace(
            "n int", "n int, g int GENERATED ALWAYS AS (100 / (n - 40)) STORED"),
         "ALTER TABLE dst DROP COLUMN g; "
         "ALTER TABLE dst ADD COLUMN g int GENERATED ALWAYS AS (n / 10) STORED"),
    ],
    ids=["trigger_function_replaced", "check_function_replaced", "partition_added",
         "partition_check_dropped", "generated_expression_changed"],
)  # fmt: skip
def test_a_row_refused_is_tried_again_once_what_refused_it_changed(
    cluster: LocalCluster, tmp_path: Path, target_sql: str, fix: str
) -> None:
    """The rules a row is refused under are not all on its table: a trigger's or a CHECK's
    function replaced (same OID), a partition added or its CHECK dropped, a generated
    column's expression changed. None changed the digest of the target's rules, so a sync
    never sent the refused rows again, where a fresh migrate writes them."""
    source, target, spec = _world(cluster, tmp_path, "refused_by", target_sql)
    migrate(source, target, spec)
    refused = {k for k, f in _fates(target).items() if f[0] == "quarantined"}
    assert refused and all(_fates(target)[k][2] for k in refused)  # the database's refusals
    _sql(target, fix)
    assert sync(source, target, spec).counts["fixed_on_retry"] == len(refused)
    fresh = _fresh(cluster, tmp_path, "refused_by")
    _sql(fresh, fix)
    migrate(source, fresh, spec)
    assert _rows(target) == _rows(fresh) and len(_rows(target)) == 20
    assert {k: f[:4] for k, f in _fates(target).items()} == {
        k: f[:4] for k, f in _fates(fresh).items()
    }
    assert verify(target, spec).ok


@pytest.mark.parametrize(
    "ddl",
    [
        "ALTER TABLE dst ADD CONSTRAINT small CHECK (n < 100) NOT VALID",
        "ALTER DOMAIN amount ADD CONSTRAINT small CHECK (VALUE < 100) NOT VALID",
    ],
    ids=["table_check", "domain_check"],
)
def test_a_check_added_not_valid_holds_the_rows_ferry_wrote_before(
    cluster: LocalCluster, tmp_path: Path, ddl: str
) -> None:
    """A CHECK added NOT VALID holds new writes only: the rows ferry wrote before stayed
    migrated, where a fresh migrate refuses them; verify said so after every sync, and no
    sync changed it. The model is computed whole once its target's rules changed."""
    target_sql = "CREATE DOMAIN amount AS int; " + TABLE.format(kind="kind text").replace(
        "n int", "n amount"
    )
    source, target, spec = _world(cluster, tmp_path, "not_valid", target_sql)
    migrate(source, target, spec)
    _sql(target, ddl)
    assert sync(source, target, spec).counts["rules_changed"] == ["rows"]
    fresh = _fresh(cluster, tmp_path, "not_valid")
    _sql(fresh, ddl)
    migrate(source, fresh, spec)
    refused = {k for k, f in _fates(fresh).items() if f[0] == "quarantined"}
    assert refused == set(map(str, range(10, 21)))
    assert _fates(target) == _fates(fresh)
    assert _rows(target) == _rows(fresh)
    assert verify(target, spec).ok
    counts = sync(source, target, spec).counts
    assert (counts["inserted"], counts["updated"], counts["deleted"]) == (0, 0, 0)
    assert "rules_changed" not in counts


def test_a_trigger_on_a_partition_of_the_target_is_one_on_the_target(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A BEFORE trigger on one partition changes the rows routed there as one on the table
    would; ferry looked for such triggers on the table alone, so it kept the hash of the
    row it computed, the stored row passed for one the application edited, and the next
    change of its source row was withheld as a conflict."""
    target_sql = BY_KIND + (
        "CREATE TABLE dst_c PARTITION OF dst FOR VALUES IN ('c'); "
        "CREATE FUNCTION up() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.name = upper(NEW.name); RETURN NEW; END $$; "
        "CREATE TRIGGER up BEFORE INSERT OR UPDATE ON dst_a FOR EACH ROW EXECUTE FUNCTION up();"
    )
    source, target, spec = _world(cluster, tmp_path, "part_trigger", target_sql)
    migrate(source, target, spec)
    _sql(source, "UPDATE src SET n = 7 WHERE id IN (2, 3)")  # 3 is of kind 'a'
    counts = sync(source, target, spec).counts
    assert (counts["updated"], counts["conflicts"]) == (2, 0)
    fresh = _fresh(cluster, tmp_path, "part_trigger")
    migrate(source, fresh, spec)
    assert _rows(target) == _rows(fresh)
    assert ("3", "NAME3", "a", 7) in _rows(target)
    assert _fates(target) == _fates(fresh)
    counts = sync(source, target, spec).counts
    assert (counts["inserted"], counts["updated"], counts["conflicts"]) == (0, 0, 0)
    report = verify(target, spec)
    assert [p.kind for p in report.problems] == ["content"] and "triggers" in report.summary()


@pytest.mark.parametrize(
    "trigger",
    [
        "CREATE FUNCTION public.low() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "UPDATE public.dst SET name = lower(name) WHERE id = NEW.id AND name <> lower(name); "
        "RETURN NULL; END $$; CREATE TRIGGER low AFTER INSERT OR UPDATE ON dst "
        "FOR EACH ROW EXECUTE FUNCTION public.low();",
        "CREATE FUNCTION public.low() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF pg_trigger_depth() = 1 THEN UPDATE public.dst SET name = lower(name) "
        "WHERE name <> lower(name); END IF; RETURN NULL; END $$; CREATE TRIGGER low AFTER "
        "INSERT OR UPDATE ON dst FOR EACH STATEMENT EXECUTE FUNCTION public.low();",
    ],
    ids=["after_row", "after_statement"],
)
def test_a_trigger_that_changes_a_row_after_it_is_written_keeps_its_changes_coming(
    cluster: LocalCluster, tmp_path: Path, trigger: str
) -> None:
    """A trigger that runs after the write and updates the row (or a statement's, the
    rows) changes what is stored as one before each row does; ferry looked for the latter
    only, kept the hash of the row it wrote, and took every such row for one the
    application had edited: each change of its source row was withheld as a conflict."""
    source, target, spec = _world(cluster, tmp_path, "after_trigger", TABLE.format(
        kind="kind text") + trigger)  # fmt: skip
    migrate(source, target, spec)
    _sql(source, "UPDATE src SET name = 'Other' || id WHERE id IN (2, 3); DELETE FROM src "
                 "WHERE id = 4; INSERT INTO src VALUES (30, 'New', 'a', 1)")  # fmt: skip
    counts = sync(source, target, spec).counts
    assert (counts["updated"], counts["inserted"], counts["conflicts"]) == (2, 1, 0)
    fresh = _fresh(cluster, tmp_path, "after_trigger")
    migrate(source, fresh, spec)
    assert _rows(target) == _rows(fresh)
    assert {("3", "other3", "a", 30), ("30", "new", "a", 1)} <= _rows(target)
    assert _fates(target) == _fates(fresh)
    counts = sync(source, target, spec).counts
    assert (counts["inserted"], counts["updated"], counts["conflicts"]) == (0, 0, 0)


def test_the_target_rules_digest_sees_enum_labels_and_domain_constraints(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A row refused for its own values is not sent again as it was until the digest of
    the target's rules changes: an enum's new label and a domain's dropped CHECK did not
    change it, so a row computed again (its parent changed, say) stayed refused."""
    from ferry.engine import predict

    target_sql = (
        "CREATE TYPE mood AS ENUM ('a', 'b', 'c'); "
        "CREATE DOMAIN short AS text CONSTRAINT short_len CHECK (length(VALUE) = 1); "
        + TABLE.format(kind="kind mood, other short")
    )
    _, target, _ = _world(cluster, tmp_path, "digest", target_sql)

    def digest() -> str:
        with psycopg.connect(target) as conn:
            written = dict.fromkeys(["kind", "other"])
            return predict.refusals(conn, "public.dst", written, set()).digest

    first = digest()
    _sql(target, "ALTER TYPE mood ADD VALUE 'meh'")
    second = digest()
    _sql(target, "ALTER DOMAIN short DROP CONSTRAINT short_len")
    assert len({first, second, digest()}) == 3


def test_a_sync_that_gives_a_lower_key_a_value_a_later_one_holds_keeps_the_lower(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Under an exclusion constraint, a sync that gave row 1 the value row 11 held kept 11
    and refused 1, where a fresh migrate keeps 1 and refuses 11. As for a unique value,
    the later key's row gives the value up."""
    target_sql = "CREATE EXTENSION IF NOT EXISTS btree_gist; " + TABLE.format(
        kind="kind text"
    ).replace("n int);", "n int, EXCLUDE USING gist (int4range(n, n + 5) WITH &&));")
    source, target, spec = _world(cluster, tmp_path, "overlap", target_sql)
    migrate(source, target, spec)
    _sql(source, "UPDATE src SET n = 112 WHERE id = 1")  # overlaps row 11's [110, 115)
    sync(source, target, spec)
    fates = _fates(target)
    assert (fates["1"][0], fates["11"][:3]) == (
        "migrated", ("quarantined", "exclusion_violation", "23P01"),
    )  # fmt: skip
    fresh = _fresh(cluster, tmp_path, "overlap")
    migrate(source, fresh, spec)
    assert {k: f[:3] for k, f in _fates(target).items()} == {
        k: f[:3] for k, f in _fates(fresh).items()
    }
    assert _rows(target) == _rows(fresh)
    assert verify(target, spec).ok


def test_the_target_rules_digest_does_not_follow_the_roles_search_path(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """The digest of the target's rules is catalog text (a type's name, a CHECK's, an
    index's), which names a schema only where it is not on the search_path; a writing
    session has its role's own path, so a DBA's ALTER ROLE ... SET search_path changed the
    digest of every model, and the next sync computed them all whole (the demo: 48 s)."""
    target_sql = (
        "CREATE TYPE mood AS ENUM ('a', 'b', 'c'); "
        "CREATE FUNCTION ok(n int) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT n >= 0 $$; "
        + TABLE.format(kind="kind mood CHECK (ok(n))")
        + "CREATE INDEX dst_mood ON dst (kind) WHERE ok(n);"
    )
    source, target, spec = _world(cluster, tmp_path, "digest_path", target_sql)
    migrate(source, target, spec)
    assert "rules_changed" not in sync(source, target, spec).counts
    _sql(target, f"ALTER ROLE {OWNER} SET search_path = pg_catalog")
    try:
        assert "rules_changed" not in sync(source, target, spec).counts
    finally:
        _sql(target, f"ALTER ROLE {OWNER} RESET search_path")


def test_an_application_edit_racing_a_sync_write_is_kept_and_flagged(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ferry checks that a row it is about to change is still as it wrote it, then changes
    it; an edit the application committed between the two was overwritten, unflagged. The
    rows are locked before the check now: the edit waits for the write and is kept, and the
    next change of the source row is withheld as a conflict."""
    source, target, spec = _world(cluster, tmp_path, "race", TABLE.format(kind="kind text"))
    migrate(source, target, spec)
    _sql(source, "UPDATE src SET n = 7 WHERE id = 2")
    check = chunk.Runner._flag_conflicts
    edits: list[threading.Thread] = []

    def racing(self: chunk.Runner, w: Any) -> None:
        check(self, w)
        edit = "UPDATE dst SET name = 'app' WHERE legacy_id = '2'"
        edits.append(threading.Thread(target=_sql, args=(target, edit)))
        edits[-1].start()
        edits[-1].join(0.3)  # committed by now, unless it waits for ferry's lock

    monkeypatch.setattr(chunk.Runner, "_flag_conflicts", racing)
    assert sync(source, target, spec).counts["updated"] == 1
    for edit in edits:
        edit.join()
    assert len(edits) == 1
    monkeypatch.undo()
    assert _sql(target, "SELECT name, n FROM dst WHERE legacy_id = '2'") == [("app", 7)]
    _sql(source, "UPDATE src SET n = 8 WHERE id = 2")
    assert sync(source, target, spec).counts["conflicts"] == 1
    assert _sql(target, "SELECT name, n FROM dst WHERE legacy_id = '2'") == [("app", 7)]


def test_an_application_edit_racing_a_rollback_is_kept(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback checks that each row it restores is still as ferry wrote it, then
    restores it: the rows are locked before the check, so an edit the application commits
    meanwhile waits for the rollback and is kept, not overwritten by the before-image."""
    import ferry.ops.rollback as undo

    source, target, spec = _world(cluster, tmp_path, "race_undo", TABLE.format(kind="kind text"))
    migrate(source, target, spec)
    _sql(source, "UPDATE src SET n = 7 WHERE id = 2")
    synced = sync(source, target, spec)
    scalar = undo._scalar
    edits: list[threading.Thread] = []

    def racing(*args: Any) -> int:
        n = scalar(*args)
        if not edits:
            edit = "UPDATE dst SET name = 'app' WHERE legacy_id = '2'"
            edits.append(threading.Thread(target=_sql, args=(target, edit)))
            edits[-1].start()
            edits[-1].join(0.3)  # committed by now, unless it waits for the rollback's lock
        return n

    monkeypatch.setattr(undo, "_scalar", racing)
    rollback(target, spec, run=synced.run_id)
    for edit in edits:
        edit.join()
    assert _sql(target, "SELECT name, n FROM dst WHERE legacy_id = '2'") == [("app", 20)]


def test_an_application_row_racing_a_delete_is_not_cascaded_away(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ferry deletes a row whose source row went only if no row of the application's
    references it; one the application wrote between that look and the delete went with it,
    by the foreign key's ON DELETE CASCADE. The rows are locked before the look now: the
    application's insert waits, then fails on its foreign key, as had it come after."""
    from ferry.engine import deletes

    target_sql = TABLE.format(kind="kind text") + (
        "CREATE TABLE note (id serial PRIMARY KEY, dst_id uuid REFERENCES dst ON DELETE CASCADE);"
    )
    source, target, spec = _world(cluster, tmp_path, "race_delete", target_sql)
    migrate(source, target, spec)
    _sql(source, "DELETE FROM src WHERE id = 4")
    look = deletes._referenced
    outcome: list[str] = []
    edits: list[threading.Thread] = []

    def insert() -> None:
        try:
            _sql(target, "INSERT INTO note (dst_id) SELECT id FROM dst WHERE legacy_id = '4'")
            outcome.append("written")
        except psycopg.errors.ForeignKeyViolation:
            outcome.append("refused")

    def racing(*args: Any) -> Any:
        found = look(*args)
        edit = threading.Thread(target=insert)
        edit.start()
        edit.join(0.3)  # committed by now, unless it waits for ferry's lock
        edits.append(edit)
        return found

    monkeypatch.setattr(deletes, "_referenced", racing)
    counts = sync(source, target, spec).counts
    for edit in edits:
        edit.join()
    notes = _sql(target, "SELECT count(*) FROM note")[0][0]
    assert (outcome, counts["deleted"], notes) == (["refused"], 1, 0)
