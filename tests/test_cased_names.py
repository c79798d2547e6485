"""Tables and columns whose names are not lowercase (an ORM that quotes its names: EF Core's
``"Owners"``, Prisma's ``"createdAt"``), in the source and in the target, end to end: doctor,
check, plan, a first load that sets the keys aside, verify, a sync of changes read from the
WAL with a deletion under a foreign key, rollback. ``public.Person`` is that table, not
``public.person``: ferry read such names unquoted, and refused the source as missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from ferry.embedded import LocalCluster
from ferry.engine import execute
from ferry.engine.pipeline import migrate
from ferry.ops.check import check
from ferry.ops.doctor import diagnose
from ferry.ops.plan import plan
from ferry.ops.rollback import rollback
from ferry.ops.scaffold import scaffold
from ferry.ops.verify import verify
from ferry.spec import load_spec
from ferry.sync.loop import sync
from tests.helpers import fresh_db

SPEC = Path(__file__).parent / "specs" / "cased"
OWNER = "cased_owner"


def _rows(conninfo: str, table: str) -> list[tuple]:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(
            f"SELECT \"legacyId\", to_jsonb(t) - 'id' - 'personId' FROM public.\"{table}\" t "
            "ORDER BY 1"
        ).fetchall()


def test_quoted_names_everywhere(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = fresh_db(cluster, "cased_src", SPEC / "source.sql")
    target = fresh_db(cluster, "cased_tgt", SPEC / "target.sql", owner=OWNER)
    target = cluster.conninfo("cased_tgt", user=OWNER)
    shutil.copy(SPEC / "spec.toml", tmp_path / "spec.toml")
    spec = load_spec(tmp_path / "spec.toml")
    found = diagnose(source, target, spec)
    assert not [f for f in found.findings if f.level == "error"], found.render()
    checked = check(tmp_path / "spec.toml", source, target)
    assert checked.ok, checked.render()
    # ``ferry init`` reads them as tables a spec can name (it used to leave them out).
    first = scaffold(source, target, tmp_path / "init")
    assert {(t.table, t.key[0]) for t in first.sources} == {("Owners", "Id"), ("Pets", "Id")}
    assert {t for t, _ in first.unmatched} <= {"public.Person", "public.Animal"}
    assert not first.keyless
    planned = plan(source, target, spec)
    assert planned.data["totals"]["adds_up"]
    assert planned.data["plan"]["refusals"] == []
    monkeypatch.setattr(execute, "DEFER_MIN_ROWS", 1)  # keys and indexes set aside, put back
    migrate(source, target, spec, changes="wal")
    assert len(_rows(target, "Animal")) == 30
    assert _rows(target, "Person")[0] == (1, {"legacyId": 1, "displayName": "owner 1"})
    report = verify(target, spec)
    assert report.ok, report.summary()
    assert report.checked["foreign_keys"] == 1
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute('DELETE FROM "Pets" WHERE "OwnerId" = 2')
        conn.execute('DELETE FROM "Owners" WHERE "Id" = 2')
        conn.execute('UPDATE "Pets" SET "Name" = \'renamed\', "Order" = NULL WHERE "Id" = 3')
        conn.execute("INSERT INTO \"Pets\" VALUES (31, 3, 'new', 31)")
    result = sync(source, target, spec)
    assert result.counts["changes"] == "wal"
    people, animals = _rows(target, "Person"), _rows(target, "Animal")
    assert [r[0] for r in people] == [1, 3, 4, 5, 6]
    assert len(animals) == 26 and animals[-1][0] == 31
    assert dict(animals)[3] == {"legacyId": 3, "Name": "renamed", "order": None}
    assert 1 not in dict(animals)  # pet 1 was owner 2's
    report = verify(target, spec)
    assert report.ok, report.summary()
    # The checksum diff of every table, as an audit: it finds nothing the WAL did not say.
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute('UPDATE "Owners" SET "fullName" = \'renamed\' WHERE "Id" = 6')
    audit = sync(source, target, spec, full=True)
    assert audit.counts["source_updated"] == 1
    assert dict(_rows(target, "Person"))[6]["displayName"] == "renamed"
    rollback(target, spec, all_=True, source=source)
    assert _rows(target, "Person") == _rows(target, "Animal") == []
