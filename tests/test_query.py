"""The SQL a spec yields, without a database: golden files of the library spec's plans.

A change to how a model's query is composed shows here as a diff to read. After a change
meant to alter the SQL, write the files again with ``FERRY_GOLDEN=write`` and review them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from psycopg import sql

from ferry.engine import predict
from ferry.engine.query import Plan, Shape
from ferry.errors import SpecError
from ferry.spec import load_spec

SPEC = Path(__file__).parent / "specs" / "library" / "spec.toml"
GOLDEN = Path(__file__).parent / "golden"
TEXT, INT, BOOL, TS = 25, 23, 16, 1114

# What ``Shape.read`` would find on the library world's target (tests/specs/library).
SHAPES = {
    "authors": Shape(
        output={"_key": INT, "legacy_author_id": INT, "name": TEXT, "country_code": TEXT,
                "_country_fixed": BOOL, "_same_as": INT},
        target={"id": "uuid", "legacy_author_id": "bigint", "name": "text",
                "country_code": "character(2)"},
        key_type="integer", hashable=True, parallel_safe=True,
        refusals=predict.Refusals(
            "public.authors", digest="d1", not_null=["name", "country_code"],
            checks=[("authors_country_code_check", "(country_code ~ '^[A-Z]{2}$'::text)")],
        ),
        parent_led=[], own_led=sql.Identifier("ferry", "ledger_authors"),
        hashed_as={"id": "value", "legacy_author_id": "value", "name": "collated",
                   "country_code": "text"},
    ),
    "books": Shape(
        output={"_key": INT, "legacy_book_id": INT, "_author_id": INT, "_status": TEXT,
                "title": TEXT, "isbn": TEXT, "price": 1700, "published_at": TS},
        target={"id": "uuid", "legacy_book_id": "bigint", "author_id": "uuid", "title": "text",
                "isbn": "text", "price": "numeric(8,2)",
                "published_at": "timestamp with time zone"},
        key_type="integer", hashable=True, parallel_safe=False,
        refusals=predict.Refusals(
            "public.books", digest="d2", not_null=["author_id", "title", "price"],
            checks=[("books_price_check", "(price >= (0)::numeric)")],
            uniques=[predict.Unique("books_isbn_key", ["lower(isbn)"], None, True)],
        ),
        parent_led=[sql.Identifier("ferry", "ledger_authors")],
        own_led=sql.Identifier("ferry", "ledger_books"),
        hashed_as={"id": "value", "legacy_book_id": "value", "author_id": "value",
                   "title": "collated", "isbn": "collated", "price": "value",
                   "published_at": "value"},
    ),
}  # fmt: skip


def _plan(model: str) -> Plan:
    spec = load_spec(SPEC)
    return Plan(None, spec, spec.model(model), SHAPES[model])


def _statements(plan: Plan) -> str:
    bounds = sql.SQL("m0._key >= 10 AND m0._key < 20")
    parts = [
        ("expected", plan.expected(bounds)),
        *((f"candidates[{i}]", s) for i, s in enumerate(plan.candidates(bounds, plan.own_led))),
        ("first load", plan.candidates(bounds, plan.own_led, fresh=True)[0]),
    ]
    return "".join(f"-- {name}\n{_lines(s.as_string(None))}\n\n" for name, s in parts)


def _lines(text: str) -> str:
    """One clause a line, so that a change reads as a diff of a few lines."""
    return re.sub(
        r" (?=(SELECT|FROM|WHERE|LEFT JOIN|JOIN|GROUP BY|ORDER BY|WHEN|ELSE) )", "\n", text
    )


@pytest.mark.parametrize("model", sorted(SHAPES))
def test_plan_sql_matches_golden(model: str) -> None:
    got = _statements(_plan(model))
    path = GOLDEN / f"library_{model}.sql"
    if os.environ.get("FERRY_GOLDEN") == "write":
        path.write_text(got)
    assert got == path.read_text(), f"the SQL of {model} changed: see {path}"


def test_plan_composes_what_the_spec_says() -> None:
    """Read beside the golden text: the parts a reader looks for are where they belong."""
    books = _plan("books")
    text = books.expected(sql.SQL("true")).as_string(None)
    # The parent's fate is read from the authors' ledger rows, by the parent key as text.
    assert '"ferry"."ledger_authors" "p0"' in text
    assert '"p0".source_key = "m"."_author_id"::text' in text
    # The rule, the unique index and the check are all in the one statement.
    assert "(_status = 'draft') AS \"_ferry_r0\"" in text
    assert "lower(isbn)" in text and "books_price_check" in text
    assert [c for c, _, _ in books.columns] == [
        "legacy_book_id",
        "title",
        "isbn",
        "price",
        "published_at",
        "author_id",
    ]
    fates = list(zip(books.fates.statuses, books.fates.reasons, strict=True))
    assert fates[0] == ("migrated", None) and ("excluded", "draft") in fates
    # A NOT NULL column left empty is a fate of its own, decided with the others.
    assert fates[-2:] == [("quarantined", "not_null_violation")] * 2


def test_a_shape_that_does_not_fit_the_spec_is_refused() -> None:
    spec = load_spec(SPEC)
    shape = SHAPES["books"]
    bad = Shape(**{**shape.__dict__, "target": {k: v for k, v in shape.target.items()
                                                 if k != "isbn"}})  # fmt: skip
    with pytest.raises(SpecError, match=r"output column isbn is not a column of public\.books"):
        Plan(None, spec, spec.model("books"), bad)
