"""Tables with no reliable key (issue 21, item 3), end to end on real PostgreSQL.

A declared key that repeats (one column, or composite) quarantines every row that shares it
(``duplicate_key``) and stops nothing else; when the repetition goes, the survivor gets its
normal fate. A table with no key (``key = "*"``) is migrated and synced by row identity, its
identical rows being two rows. After every sync the ledger and the target equal what one
fresh migrate of the current source yields.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ferry import ledger
from ferry.embedded import LocalCluster
from ferry.engine import keys, stage
from ferry.engine.pipeline import migrate
from ferry.ops import report
from ferry.ops.quarantine import list_entries, show_row
from ferry.ops.verify import verify
from ferry.spec import Spec, load_spec
from ferry.sync.loop import sync
from tests.helpers import fresh_db

SPEC = Path(__file__).parent / "specs" / "keyless"
OWNER = "keyless_owner"
TABLES = ("members", "lines", "visits", "tags", "notes", "codes", "staff", "guests")
Fates = dict[tuple[str, str], tuple[str, str | None]]
DUP = ("quarantined", "duplicate_key")
OK = ("migrated", None)


def _world(cluster: LocalCluster, name: str, tmp: Path) -> tuple[str, str, Spec]:
    source = fresh_db(cluster, f"{name}_src", SPEC / "source.sql")
    for f in ("spec.toml", "notes.csv", "codes.csv"):  # the files change in a delta
        shutil.copy(SPEC / f, tmp / f)
    return source, _target(cluster, f"{name}_tgt"), load_spec(tmp / "spec.toml")


def _target(cluster: LocalCluster, name: str) -> str:
    fresh_db(cluster, name, SPEC / "target.sql", owner=OWNER)
    return cluster.conninfo(name, user=OWNER)


def _identity(row: str, n: int) -> str:
    """A keyless row's identity, as docs/spec.md says: md5 of its text, its ordinal."""
    return f"{hashlib.md5(row.encode()).hexdigest()}:{n}"


def _fates(target: str) -> Fates:
    with psycopg.connect(target) as conn:
        rows = conn.execute(
            "SELECT model, source_key, status, reason FROM ferry.ledger WHERE status <> 'deleted'"
        ).fetchall()
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def _of(model: str, fates: dict[str, tuple[str, str | None]]) -> Fates:
    return {(model, k): v for k, v in fates.items()}


def _snapshot(target: str) -> tuple[Any, ...]:
    """The live ledger and every target table, as comparable values."""
    with psycopg.connect(target) as conn:
        led = conn.execute(
            "SELECT model, source_key, status, reason, target_uuid, row_hash FROM ferry.ledger"
            " WHERE status <> 'deleted' ORDER BY 1, 2"
        ).fetchall()
        tables = [
            conn.execute(
                sql.SQL("SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t.id)) FROM {} t")
                .format(sql.Identifier(t))
            ).fetchone()
            for t in TABLES
        ]  # fmt: skip
    return tuple(led), tuple(tables)


def _adds_up(target: str, spec: Spec) -> None:
    """Every staged row (a repeated key's rows once between them) has exactly one fate."""
    with psycopg.connect(target) as conn:
        counts = ledger.check_invariant(conn, spec)
    for c in counts.values():
        assert c.staged == c.accounted and c.staged_keys == c.fate_keys, c


def _converges(cluster: LocalCluster, source: str, target: str, spec: Spec, name: str) -> None:
    """Verify is clean; the ledger and target equal one fresh migrate's; a sync finds nothing
    and a second migrate writes nothing."""
    _adds_up(target, spec)
    result = verify(target, spec)
    assert result.ok, result.problems
    fresh = _target(cluster, f"{name}_fresh")
    migrate(source, fresh, spec)
    assert _snapshot(fresh) == _snapshot(target)
    before = _snapshot(target)
    assert not sync(source, target, spec).changed
    second = migrate(source, target, spec)
    assert sum(m.written for m in second.models) == 0
    assert _snapshot(target) == before


def _members(target: str) -> dict[int, str]:
    with psycopg.connect(target) as conn:
        return dict(conn.execute("SELECT legacy_id, name FROM members").fetchall())


MEMBER_1 = "(1,2024-01-01,first)"
VISITS = {
    _identity(MEMBER_1, 1): OK,
    _identity(MEMBER_1, 2): OK,  # two identical rows are two rows
    _identity("(2,2024-01-02,)", 1): OK,
    _identity('(3,2024-01-03,"of a duplicate")', 1): ("quarantined", "parent_quarantined"),
    _identity('(4,2024-01-04,"")', 1): OK,
}


def _migrated(cluster: LocalCluster, name: str, tmp: Path) -> tuple[str, str, Spec]:
    source, target, spec = _world(cluster, name, tmp)
    migrate(source, target, spec)
    fates = _fates(target)
    assert {k: v for k, v in fates.items() if k[0] == "members"} == _of(
        "members", {"1": OK, "2": OK, "3": DUP, "4": OK, "5": DUP}
    )
    assert {k: v for k, v in fates.items() if k[0] == "lines"} == _of(
        "lines", {"(1,1)": OK, "(1,2)": DUP, "(2,1)": OK}
    )
    assert {k: v for k, v in fates.items() if k[0] == "visits"} == _of("visits", VISITS)
    assert {k: v for k, v in fates.items() if k[0] == "tags"} == _of("tags", {"x": OK, "y": OK})
    assert {k: v for k, v in fates.items() if k[0] == "codes"} == _of("codes", {"A": OK, "B": DUP})
    # one source, two models: a repeated key has one fate, the first model's to yield it
    assert {k: v for k, v in fates.items() if k[0] == "staff"} == _of(
        "staff", {"10": OK, "12": DUP}
    )
    assert {k: v for k, v in fates.items() if k[0] == "guests"} == _of(
        "guests", {"11": OK, "13": DUP}
    )
    notes = {
        _identity("(ann,hi)", 1): OK,
        _identity("(ann,hi)", 2): OK,
        _identity("(bob,yo)", 1): OK,
    }
    assert {k: v for k, v in fates.items() if k[0] == "notes"} == _of("notes", notes)
    assert _members(target) == {1: "ann", 2: "bob", 4: "di"}  # none of a repeated key's rows
    with psycopg.connect(target) as conn:
        ids = {r[0] for r in conn.execute("SELECT id FROM visits").fetchall()}
    assert keys.key_uuid(spec.namespace, "visits", _identity(MEMBER_1, 2)) in ids
    _adds_up(target, spec)
    return source, target, spec


def test_a_key_that_repeats_quarantines_its_rows(cluster: LocalCluster, tmp_path: Path) -> None:
    source, target, spec = _migrated(cluster, "dupkey", tmp_path)
    entries, total = list_entries(target, spec, reason="duplicate_key")
    assert total == 6 and {(e.model, e.source_key) for e in entries} == {
        ("members", "3"),
        ("members", "5"),
        ("lines", "(1,2)"),
        ("codes", "B"),
        ("staff", "12"),
        ("guests", "13"),
    }
    with psycopg.connect(target) as conn:
        assert stage.unique_key(conn, spec, spec.source("tags"))
        assert not stage.unique_key(conn, spec, spec.source("members"))
    data = report.collect(target, spec)
    members = next(s for s in data["sources"] if s["source_table"] == "members")
    assert members["quarantined"] == {"duplicate_key": 2} and members["adds_up"]
    assert "duplicate_key" in report.render(data, "md")
    _, values, shown = show_row(target, spec, "members", "5")
    assert values is not None and [(e.status, e.reason) for e in shown] == [DUP]

    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("DELETE FROM members WHERE name = 'cy again'")  # 3 is unique again
        conn.execute("INSERT INTO members VALUES (1, 'ann twin'), (6, 'fay')")  # 1 repeats
        conn.execute("UPDATE members SET name = 'bobby' WHERE id = 2")
        # one of three rows of 5 goes: two still share it
        conn.execute(
            "DELETE FROM members WHERE ctid = (SELECT ctid FROM members WHERE id = 5 LIMIT 1)"
        )
        conn.execute(
            "DELETE FROM lines WHERE ctid = (SELECT ctid FROM lines WHERE line_no = 2 LIMIT 1)"
        )
        conn.execute("INSERT INTO lines VALUES (2, 1, 'c2')")
        conn.execute("INSERT INTO tags VALUES ('x', 'ex again')")  # its stage held x once
        conn.execute("DELETE FROM people WHERE id = 12 AND kind = 'staff'")  # a guest, once
        conn.execute("UPDATE people SET kind = 'staff' WHERE name = 'gil'")  # 13: across
        conn.execute("INSERT INTO people VALUES (10, 'guest', 'sam twin')")  # staff's fate
    (tmp_path / "codes.csv").write_text("code,label\nA,alpha\nA,alpha\nB,beta\n")
    result = sync(source, target, spec)
    assert result.diffs["members"].updated == [(1,), (2,), (3,), (5,)]
    assert result.diffs["members"].inserted == [(6,)]
    fates = _fates(target)
    assert {k: v for k, v in fates.items() if k[0] == "members"} == _of(
        "members", {"1": DUP, "2": OK, "3": OK, "4": OK, "5": DUP, "6": OK}
    )
    assert {k: v for k, v in fates.items() if k[0] == "lines"} == _of(
        "lines", {"(1,1)": OK, "(1,2)": OK, "(2,1)": DUP}
    )
    parent = ("quarantined", "parent_quarantined")
    assert {k: v for k, v in fates.items() if k[0] == "visits"} == _of(
        "visits", VISITS | {k: parent for k in list(VISITS)[:2]} | {list(VISITS)[3]: OK}
    )
    assert {k: v for k, v in fates.items() if k[0] == "tags"} == _of("tags", {"x": DUP, "y": OK})
    assert {k: v for k, v in fates.items() if k[0] == "codes"} == _of("codes", {"A": DUP, "B": OK})
    assert _members(target) == {2: "bobby", 3: "cy", 4: "di", 6: "fay"}
    assert {k: v for k, v in fates.items() if k[0] == "staff"} == _of(
        "staff", {"10": DUP, "13": DUP}
    )
    assert {k: v for k, v in fates.items() if k[0] == "guests"} == _of(
        "guests", {"11": OK, "12": OK}
    )
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM staff").fetchone() == (0,)
        assert sorted(conn.execute("SELECT legacy_id, name FROM guests").fetchall()) == [
            (11, "gus"), (12, "stan too")
        ]  # fmt: skip
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT legacy_code FROM tags").fetchall() == [("y",)]
        # the stage's primary key gave way to an index: both rows of x are staged
        assert not stage.unique_key(conn, spec, spec.source("tags"))
        assert conn.execute("SELECT count(*) FROM ferry_stage.tags").fetchone() == (3,)
    _converges(cluster, source, target, spec, "dupkey")


def test_a_table_without_a_key(cluster: LocalCluster, tmp_path: Path) -> None:
    source, target, spec = _migrated(cluster, "nokey", tmp_path)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("INSERT INTO visits VALUES (2, '2024-01-02', NULL)")  # a second copy
        conn.execute("UPDATE visits SET note = 'edited' WHERE member_id = 4")
        conn.execute(  # one of the two identical rows
            "DELETE FROM visits WHERE ctid = (SELECT ctid FROM visits WHERE member_id = 1 LIMIT 1)"
        )
        conn.execute("INSERT INTO visits VALUES (9, '2024-01-09', 'no such member')")
    (tmp_path / "notes.csv").write_text("who,said\nann,hi\nbob,yo\nbob,yo\ncy,hey\n")
    result = sync(source, target, spec)
    diff = result.diffs["visits"]
    came = [
        _identity("(2,2024-01-02,)", 2),
        _identity("(4,2024-01-04,edited)", 1),
        _identity('(9,2024-01-09,"no such member")', 1),
    ]
    gone = [_identity(MEMBER_1, 2), _identity('(4,2024-01-04,"")', 1)]
    assert diff.inserted == sorted((k,) for k in came)
    assert diff.deleted == sorted((k,) for k in gone)
    assert not diff.updated  # an update is a delete and an insert
    notes = result.diffs["notes.csv"]
    assert notes.inserted == sorted([(_identity("(bob,yo)", 2),), (_identity("(cy,hey)", 1),)])
    assert notes.deleted == [(_identity("(ann,hi)", 2),)]
    assert all(d.changed == 0 for n, d in result.diffs.items() if n not in ("visits", "notes.csv"))
    want = {k: v for k, v in VISITS.items() if k not in gone}
    want |= {came[0]: OK, came[1]: OK, came[2]: ("quarantined", "orphan_members")}
    fates = _fates(target)
    assert {k: v for k, v in fates.items() if k[0] == "visits"} == _of("visits", want)
    with psycopg.connect(target) as conn:
        notes = sorted(r[0] or "-" for r in conn.execute("SELECT note FROM visits"))
    assert notes == ["-", "-", "edited", "first"]
    _converges(cluster, source, target, spec, "nokey")


def test_a_spec_declares_a_table_without_a_key() -> None:
    spec = load_spec(SPEC / "spec.toml")
    visits = spec.source("visits")
    assert visits.keyless and visits.stage_key == "_ferry_key" and visits.keys == []
    assert not spec.source("lines").keyless and spec.source("members").stage_key == "id"


def test_a_keyless_table_from_sql_ascii(cluster: LocalCluster, tmp_path: Path) -> None:
    """From a server that never checked its bytes, a keyless row is known by its bytes: one
    that does not read as UTF-8 still has an identity, and is quarantined with the reason."""
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS ascii_src WITH (FORCE)")
        conn.execute(
            "CREATE DATABASE ascii_src ENCODING SQL_ASCII LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )
    source = cluster.conninfo("ascii_src")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute((SPEC / "source.sql").read_text())
        conn.execute(  # 'caf' and a Latin-1 e-acute: not UTF-8
            "INSERT INTO visits VALUES (4, '2024-01-05', convert_from('\\x636166e9', 'SQL_ASCII'))"
        )
    for f in ("spec.toml", "notes.csv", "codes.csv"):
        shutil.copy(SPEC / f, tmp_path / f)
    target, spec = _target(cluster, "ascii_tgt"), load_spec(tmp_path / "spec.toml")
    migrate(source, target, spec)
    visits = {k: v for k, v in _fates(target).items() if k[0] == "visits"}
    assert sorted(visits.values(), key=str) == sorted(
        [OK] * 4 + [("quarantined", "parent_quarantined"),
                    ("quarantined", "character_not_in_repertoire")], key=str,
    )  # fmt: skip
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("INSERT INTO visits VALUES (2, '2024-01-02', NULL)")
        conn.execute("UPDATE visits SET note = 'edited' WHERE day = '2024-01-04'")
        conn.execute("UPDATE visits SET note = 'cafe' WHERE day = '2024-01-05'")  # fixed
    result = sync(source, target, spec)
    assert (len(result.diffs["visits"].inserted), len(result.diffs["visits"].deleted)) == (3, 2)
    visits = {k: v for k, v in _fates(target).items() if k[0] == "visits"}
    assert sorted(visits.values(), key=str) == sorted(
        [OK] * 6 + [("quarantined", "parent_quarantined")], key=str
    )
    _converges(cluster, source, target, spec, "ascii")
