"""The dispatch spec's rules against what PostgreSQL itself decides.

A reject rule that lets through a row the target refuses does not lose it (the chunk is
bisected and the row quarantined with the database's error), but the row then gets the
wrong reason and its chunk is written row by row: the rule must say exactly what the target
would refuse.
"""

from __future__ import annotations

import random

import psycopg
import pytest
from psycopg import sql

from ferry import ledger
from ferry.demo.run import dispatch_spec
from ferry.embedded import LocalCluster
from tests.helpers import fresh_db

# Hand-picked edges of the fast path (a regular expression for the flat objects the old app
# wrote) and of JSON itself; every planted kind of plant.sql is here too.
EDGES = [
    '{"case_id": 4556, "verb": "shipped", "seen_by": 1}',
    '{"case_id": 0, "verb": "", "seen_by": -0}',
    '{"case_id": 007, "verb": "paid"}',  # JSON has no leading zeros
    '{"case_id": -01}',
    '{"case_id": 1.5}',
    '{"case_id": 1e3}',
    '{"case_id": -}',
    '{"case_id": 4556, }',
    '{"case_id": 4556, ',
    '{"case_id": 4556',
    "{'case_id': 4556}",
    '{"case_id": "a\\"b"}',
    '{"case_id": "a\\u0041"}',
    '{"case_id": "a\\u0000"}',  # jsonb cannot hold NUL
    '{"case_id": "tab\there"}',
    '{"case_id": "é ☃ \u2028"}',
    '{"case_id": true, "x": null}',
    '{"a": {"b": 1}}',
    '{"a": 1, "a": 2}',
    "{}",
    '{"a":1}',
    ' {"a": 1}',
    '{"a": 1}\n',
    "None",
    "",
    "[1, 2]",
    '"text"',
    "42",
]


def _mutations(rng: random.Random, n: int) -> list[str]:
    """Valid contexts with one character deleted, inserted or replaced: near misses."""
    alphabet = ['"', "'", "\\", "{", "}", ",", ":", " ", "0", "1", "-", "a", "\x01", "\x7f"]
    out: list[str] = []
    for _ in range(n):
        text = (
            f'{{"case_id": {rng.randint(0, 9999)}, "verb": "{rng.choice(["paid", "x y", ""])}", '
            f'"seen_by": {rng.randint(-3, 3)}}}'
        )
        i = rng.randrange(len(text))
        match rng.randrange(4):
            case 0:
                text = text[:i] + text[i + 1 :]
            case 1:
                text = text[:i] + rng.choice(alphabet) + text[i:]
            case 2:
                text = text[:i] + rng.choice(alphabet) + text[i + 1 :]
        out.append(text)
    return out


@pytest.fixture(scope="module")
def target(cluster: LocalCluster) -> str:
    conninfo = fresh_db(cluster, "dispatch_rules")
    with psycopg.connect(conninfo) as conn:
        ledger.ensure_schema(conn, dispatch_spec())
        conn.commit()
    return conninfo


def test_invalid_json_rule_rejects_exactly_what_jsonb_refuses(target: str) -> None:
    model = next(m for m in dispatch_spec().models if m.name == "system_messages")
    rule = next(r for r in model.rules if r.reject == "invalid_json")
    texts = EDGES + _mutations(random.Random(7), 3000)
    query = sql.SQL(
        "SELECT context, ({rule}) AS rejected FROM unnest(%s::text[]) AS t(context)"
    ).format(rule=sql.SQL(rule.when))  # spec SQL, as the engine runs it
    with psycopg.connect(target) as conn:
        got = dict(conn.execute(query, [texts]).fetchall())
        wrong = []
        for text, rejected in got.items():
            try:
                with conn.transaction():
                    conn.execute("SELECT %s::text::jsonb", [text])
                parses = True
            except psycopg.DataError:
                parses = False
            if rejected == parses:
                wrong.append(text)
    # Several of the mutations must be refused by jsonb, or this tests only the happy path.
    assert sum(got.values()) > 500
    assert not wrong, f"{len(wrong)} texts get the wrong fate, e.g. {wrong[:3]!r}"
