"""Any legacy schema (issue 21, items 4 and 5), end to end on real PostgreSQL.

Every column type (enums, domains, arrays, ranges, bytea, interval, money, inet, timestamptz
in any zone, a generated column, partitioned and inherited tables), values at the edges of
their types, and sources whose server is in LATIN1 or SQL_ASCII: migrate, a delta of
inserts, updates and deletes (dirty values among them), sync, verify, a second migrate that
writes nothing. Each dirty value is a row with its expected fate.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ferry.embedded import LocalCluster
from ferry.engine.pipeline import migrate
from ferry.errors import FerryError
from ferry.ops.rollback import rollback
from ferry.ops.verify import verify
from ferry.spec import Spec, load_spec
from ferry.sync.loop import sync
from tests.helpers import fresh_db

SPEC = Path(__file__).parent / "specs" / "anyschema"
OWNER = "any_owner"
SETTINGS = (
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres';"
    " SET extra_float_digits = 1; SET lc_monetary = 'C'; SET client_encoding = 'UTF8'"
)
Fates = dict[tuple[str, str], tuple[str, str | None]]

# The fates of the type world's rows after migrate: JSON that jsonb refuses is quarantined
# with the database's reason; NaN, -0, infinities, BC dates and 1 MB of text arrive.
THINGS = {str(i): ("migrated", None) for i in (1, 2, 3, 4, 5)} | {
    "6": ("quarantined", "untranslatable_character"),  # "\u0000": jsonb cannot hold it
    "7": ("quarantined", "invalid_text_representation"),  # a lone surrogate
}


def _source_db(cluster: LocalCluster, name: str, encoding: str) -> str:
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            ).format(sql.Identifier(name), sql.Literal(encoding))
        )
    source = cluster.conninfo(name)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute((SPEC / "source.sql").read_text())
    return source


def _world(
    cluster: LocalCluster, tmp: Path, name: str, encoding: str, declared: str | None = None
) -> tuple[str, str, Spec]:
    source = _source_db(cluster, f"{name}_src", encoding)
    fresh_db(cluster, f"{name}_tgt", SPEC / "target.sql", owner=OWNER)
    for f in ("spec.toml", "things.sql"):
        shutil.copy(SPEC / f, tmp / f)
    if declared:
        text = (tmp / "spec.toml").read_text()
        text = text.replace('key = "code"', f'key = "code"\nencoding = "{declared}"')
        (tmp / "spec.toml").write_text(text)
    return source, cluster.conninfo(f"{name}_tgt", user=OWNER), load_spec(tmp / "spec.toml")


def _fates(target: str, model: str) -> Fates:
    with psycopg.connect(target) as conn:
        rows = conn.execute(
            "SELECT model, source_key, status, reason FROM ferry.ledger WHERE model = %s",
            [model],
        ).fetchall()
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def _of(model: str, fates: dict[str, tuple[str, str | None]]) -> Fates:
    return {(model, k): v for k, v in fates.items()}


_THINGS_TEXT = sql.SQL(
    "k::text, ks::text, d::text, lbl::text, tags::text, r::text, period::text,"
    " encode(blob, 'hex'), iv::text, m::text, ip::text, seen::text, amount::text, ratio::text,"
    " at::text, born::text, md5(body), length(body), doc::jsonb::text, twice::text"
)
_OTHERS = {"readings": sql.SQL("note, v::text"), "events": sql.SQL("note")}


def _rows(
    conninfo: str, query: sql.Composable, params: list[Any] | None = None
) -> set[tuple[Any, ...]]:
    with psycopg.connect(conninfo) as conn:
        conn.execute(SETTINGS)
        return set(conn.execute(query, params).fetchall())


def _assert_exact(source: str, target: str) -> None:
    """Every migrated row of the type world holds exactly its source row's values."""
    migrated = [k for (_, k), f in _fates(target, "things").items() if f[0] == "migrated"]
    src = _rows(
        source,
        sql.SQL("SELECT id::text, {} FROM things WHERE id = ANY(%s::int[])").format(_THINGS_TEXT),
        [migrated],
    )
    tgt = _rows(target, sql.SQL("SELECT legacy_id::text, {} FROM things").format(_THINGS_TEXT))
    assert src == tgt
    for table, cols in _OTHERS.items():
        query = sql.SQL("SELECT {}::text, {} FROM {}")
        src = _rows(source, query.format(sql.Identifier("id"), cols, sql.Identifier(table)))
        tgt = _rows(target, query.format(sql.Identifier("legacy_id"), cols, sql.Identifier(table)))
        assert src == tgt, table


def _snapshot(target: str) -> tuple[Any, ...]:
    with psycopg.connect(target) as conn:
        ledger = conn.execute(
            "SELECT model, source_key, status, reason, target_uuid, row_hash FROM ferry.ledger"
            " ORDER BY 1, 2"
        ).fetchall()
        tables = [
            conn.execute(
                sql.SQL("SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM {} t").format(
                    sql.Identifier(t)
                )
            ).fetchone()
            for t in ("things", "readings", "events", "words")
        ]
    return tuple(ledger), tuple(tables)


def _converges(source: str, target: str, spec: Spec) -> None:
    """Verify is clean, a sync finds nothing, and a migrate writes nothing."""
    report = verify(target, spec)
    assert report.ok, report.problems
    before = _snapshot(target)
    again = sync(source, target, spec)
    assert not again.changed
    second = migrate(source, target, spec)
    assert sum(m.written for m in second.models) == 0
    assert _snapshot(target) == before


def test_every_column_type_and_edge_value(cluster: LocalCluster, tmp_path: Path) -> None:
    source, target, spec = _world(cluster, tmp_path, "anytypes", "UTF8")
    migrate(source, target, spec)
    assert _fates(target, "things") == _of("things", THINGS)
    # partitions and inheriting children are rows of their parent
    assert _fates(target, "readings") == _of("readings", dict.fromkeys(
        ("1", "2", "150", "151"), ("migrated", None)))  # fmt: skip
    assert _fates(target, "events") == _of("events", dict.fromkeys(
        ("1", "2", "3"), ("migrated", None)))  # fmt: skip
    _assert_exact(source, target)

    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("UPDATE things SET ratio = '-0' WHERE id = 1")  # float8 has a -0: seen
        conn.execute(  # an enum, an enum array, a range written in another zone, 1 MB
            "UPDATE things SET k = 'c', ks = '{c,a}', body = repeat('y', 1048576),"
            " period = '[2021-01-01 00:00+09,2021-01-01 00:00+09]' WHERE id = 2"
        )
        # the same instant in another zone, and -0.00 for 0.00: numeric has no negative
        # zero, so neither is a change, and the diff must not see one
        conn.execute(
            "UPDATE things SET seen = '2020-06-01 10:00:00+00', amount = -0.00 WHERE id = 3"
        )
        conn.execute("UPDATE things SET amount = 'NaN', born = '4713-01-01 BC' WHERE id = 4")
        conn.execute("UPDATE things SET doc = '{\"a\": 2}' WHERE id = 6")  # fixed
        conn.execute("DELETE FROM things WHERE id = 5")  # the 1 MB row
        conn.execute(
            "INSERT INTO things (id, k, d, amount, ratio, at, born, seen, doc) VALUES"
            " (8, 'a', 8, 1, 1, NULL, NULL, NULL, '{\"bad\": \"\\u0000\"}'),"
            " (9, 'c', 9, 'NaN', '-Infinity', '-infinity', '0001-01-01 BC',"
            " '2000-01-01 00:00-12', '[]')"
        )
        conn.execute("INSERT INTO readings VALUES (152, 'high', '-0.0'), (3, 'low', 1e-30)")
        conn.execute("UPDATE readings SET v = 2.5 WHERE id = 2")
        conn.execute("DELETE FROM readings WHERE id = 151")
        conn.execute("INSERT INTO events_archive VALUES (4, 'child')")
        conn.execute("UPDATE events SET note = 'edited child' WHERE id = 2")
        conn.execute("DELETE FROM events WHERE id = 1")

    result = sync(source, target, spec)
    things = result.diffs["things"]
    assert things.updated == [(1,), (2,), (4,), (6,)]  # not 3: nothing of it changed
    assert things.inserted == [(8,), (9,)] and things.deleted == [(5,)]
    assert result.diffs["readings"].changed == 4 and result.diffs["events"].changed == 3
    expected = dict(THINGS) | {
        "6": ("migrated", None),
        "8": ("quarantined", "untranslatable_character"),
        "9": ("migrated", None),
    }
    expected.pop("5")
    fates = {k: v for k, v in _fates(target, "things").items() if v[0] != "deleted"}
    assert fates == _of("things", expected)
    _assert_exact(source, target)
    _converges(source, target, spec)


def _plant(conn: psycopg.Connection, server: str, key: bytes, word: bytes) -> None:
    """A words row with these exact bytes (the server's own encoding, or unchecked)."""
    conn.execute(
        "INSERT INTO words SELECT convert_from(%s::bytea, %s), convert_from(%s::bytea, %s), 'b'",
        [key, server, word, server],
    )


def _expected(codec: str, raw: dict[bytes, bytes]) -> dict[str, tuple[str, str | None]]:
    """A row arrives as its bytes read in ``codec``, or is quarantined if they do not read."""
    out: dict[str, tuple[str, str | None]] = {}
    for key, word in raw.items():
        try:
            word.decode(codec)
            out[key.decode(codec)] = ("migrated", None)
        except UnicodeDecodeError:
            out[key.decode(codec)] = ("quarantined", "character_not_in_repertoire")
    return out


@pytest.mark.parametrize(
    ("server", "declared", "codec"),
    [("LATIN1", None, "latin-1"), ("SQL_ASCII", None, "utf-8"), ("SQL_ASCII", "latin1", "latin-1")],
)
def test_a_source_in_another_encoding(
    cluster: LocalCluster, tmp_path: Path, server: str, declared: str | None, codec: str
) -> None:
    name = f"enc_{server.lower()}_{declared or 'default'}"
    source, target, spec = _world(cluster, tmp_path, name, server, declared)
    raw = {
        b"plain": b"ascii",
        b"latin": "café naïve".encode("latin-1"),
        b"utf8": "crème".encode(),
        "clé".encode(codec): "déjà vu".encode(codec),  # a key beyond ASCII, in its encoding
    }
    with psycopg.connect(source, autocommit=True) as conn:
        for key, word in raw.items():
            if key != b"plain":
                _plant(conn, server, key, word)
    migrate(source, target, spec)
    assert _fates(target, "words") == _of("words", _expected(codec, raw))
    assert _fates(target, "things") == _of("things", THINGS)  # every type, read raw or not
    _assert_words(target, codec, raw)
    _assert_exact(source, target)
    with psycopg.connect(target) as conn:  # a reason, and no byte of the row in the message
        messages = conn.execute(
            "SELECT message FROM ferry.ledger WHERE model = 'words' AND status = 'quarantined'"
        ).fetchall()
    assert all("0x" not in m[0] for m in messages)

    delta = {
        b"plain": "à la".encode("latin-1"),  # dirty where the bytes should be UTF-8
        b"latin": b"fixed",  # clean again
        b"new": "sûr".encode(codec),
    }
    with psycopg.connect(source, autocommit=True) as conn:
        for key in (b"plain", b"latin"):
            conn.execute(
                "UPDATE words SET word = convert_from(%s::bytea, %s)"
                " WHERE code = convert_from(%s::bytea, %s)",
                [delta[key], server, key, server],
            )
        _plant(conn, server, b"new", delta[b"new"])
        conn.execute("DELETE FROM words WHERE code = 'utf8'")
        conn.execute("UPDATE things SET lbl = 'edited', k = 'b' WHERE id = 1")
    result = sync(source, target, spec)
    assert result.diffs["words"].changed == 4
    assert result.diffs["things"].updated == [(1,)]
    now = {k: v for k, v in raw.items() if k != b"utf8"} | delta
    fates = {k: v for k, v in _fates(target, "words").items() if v[0] != "deleted"}
    assert fates == _of("words", _expected(codec, now))
    _assert_words(target, codec, now)
    _converges(source, target, spec)
    # every run undone (the raw stage emptied too), then migrated again: the same fates
    fates_now = _fates(target, "words")
    rollback(target, spec, all_=True)
    migrate(source, target, spec)
    assert {k: v for k, v in _fates(target, "words").items() if v[0] != "deleted"} == {
        k: v for k, v in fates_now.items() if v[0] != "deleted"
    }


def _assert_words(target: str, codec: str, raw: dict[bytes, bytes]) -> None:
    """Migrated words hold their bytes read in ``codec``: exactly, nothing else."""
    want = {}
    for key, word in raw.items():
        try:
            want[key.decode(codec)] = word.decode(codec)
        except UnicodeDecodeError:
            continue
    with psycopg.connect(target) as conn:
        got = dict(conn.execute("SELECT legacy_code, word FROM words").fetchall())
    assert got == want


def test_a_key_that_does_not_convert_quarantines_its_row(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A key whose bytes do not read as the declared UTF-8 is named by them (``\\x`` and
    hex), and its row quarantined; every other row and table goes on, in migrate and sync."""
    source, target, spec = _world(cluster, tmp_path, "enc_badkey", "SQL_ASCII")
    with psycopg.connect(source, autocommit=True) as conn:
        _plant(conn, "SQL_ASCII", "clé".encode("latin-1"), b"x")
    migrate(source, target, spec)
    named = "\\x" + "clé".encode("latin-1").hex()
    assert _fates(target, "words") == _of(
        "words",
        {"plain": ("migrated", None), named: ("quarantined", "character_not_in_repertoire")},
    )
    assert _fates(target, "things") == _of("things", THINGS)
    with psycopg.connect(source, autocommit=True) as conn:
        _plant(conn, "SQL_ASCII", "sûr".encode("latin-1"), b"y")  # another, in a sync
        _plant(conn, "SQL_ASCII", "déjà".encode(), b"z")  # UTF-8: reads
        conn.execute("DELETE FROM words WHERE code = convert_from('\\x636ce9', 'SQL_ASCII')")
    result = sync(source, target, spec)
    assert result.diffs["words"].changed == 3
    fates = {k: v for k, v in _fates(target, "words").items() if v[0] != "deleted"}
    assert fates == _of(
        "words",
        {
            "plain": ("migrated", None),
            "déjà": ("migrated", None),
            "\\x" + "sûr".encode("latin-1").hex(): ("quarantined", "character_not_in_repertoire"),
        },
    )
    _converges(source, target, spec)


def test_a_declared_encoding_must_match_a_real_servers(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    source, target, spec = _world(cluster, tmp_path, "enc_mismatch", "UTF8", "latin1")
    with pytest.raises(FerryError, match="the spec says its bytes are LATIN1, its server holds"):
        migrate(source, target, spec)
