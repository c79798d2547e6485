"""Target keys: the SQL function gives Python's UUIDs, and stays cheap enough to inline."""

from __future__ import annotations

import uuid

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.embedded import LocalCluster
from ferry.engine import keys
from tests.helpers import fresh_db

NS = uuid.UUID("8a1f5c3e-2b7d-4e60-9c14-6f0d3a2b7e91")
KEYS = ["1", "42", "-7", "", "patient é", "日本", "a\\b", "x'y", "12345678901234567890"]


def test_sql_keys_equal_python_keys_and_the_function_is_inlined(cluster: LocalCluster) -> None:
    with psycopg.connect(fresh_db(cluster, "keys"), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA k")
        conn.execute(keys.function_ddl("k"))
        got = conn.execute(
            "SELECT k.key_uuid(%s, 'dispatch_file', key) FROM unnest(%s::text[]) key",
            [NS, KEYS],
        ).fetchall()
        assert [r[0] for r in got] == [keys.key_uuid(NS, "dispatch_file", k) for k in KEYS]
        assert all(u.version == 8 and u.variant == uuid.RFC_4122 for (u,) in got)
        # A call would cost a function invocation per row: the planner must see through it.
        plan = conn.execute(
            "EXPLAIN VERBOSE SELECT k.key_uuid(%s, 'dispatch_file', g::text) "
            "FROM generate_series(1, 3) g",
            [NS],
        ).fetchall()
        assert "key_uuid" not in "\n".join(r[0] for r in plan)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(
    st.lists(
        st.tuples(
            st.none() | st.integers(-(2**31), 2**31 - 1),
            st.none() | st.text(st.characters(blacklist_characters="\x00",
                                              blacklist_categories=("Cs",))),
            st.none() | st.dates(),
        ),
        min_size=1, max_size=40,
    )
)  # fmt: skip
def test_a_composite_keys_text_is_the_same_in_python_and_sql(
    cluster: LocalCluster, values: list[tuple]
) -> None:
    """Any parts, any text: ``composite_text`` prints what PostgreSQL's ``ROW(...)::text``
    prints (Python's ``str.isspace`` took U+001F for a space, PostgreSQL does not: a sync
    named such a key one way and its model the other, and the row was lost)."""
    with psycopg.connect(cluster.conninfo("postgres")) as conn:
        conn.execute("SET DateStyle = 'ISO, YMD'")
        got = conn.execute(
            "SELECT ROW(a, b, c)::text FROM unnest(%s::int[], %s::text[], %s::date[]) "
            "WITH ORDINALITY AS u(a, b, c, n) ORDER BY n",
            [[v[0] for v in values], [v[1] for v in values], [v[2] for v in values]],
        ).fetchall()
    assert [r[0] for r in got] == [keys.composite_text(list(v)) for v in values]
