"""Key lists as one array literal, cast by the statement to the key's type.

Why: ``sql.Literal(list_of_keys)`` dumps each element through psycopg's array adapter,
which built about 12 MB of intermediate bytes to compose a 50,000-key chunk of a sync (the
peak of a sync of 90,000 changed keys). Here the array's text is one ``join`` over the keys
as they are (only a key that needs quoting gets a new string), then quoted once as any
other literal: the same untyped string constant ``sql.Literal`` of the list yields.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from psycopg import sql

# Elements that need no double quotes in an array's text: no separator, brace, quote,
# backslash or white space, and not NULL (any case). Keys as text (integers, UUIDs) are.
_PLAIN = re.compile(r"[A-Za-z0-9_.:+\-]+")


def _element(key: str) -> str:
    if _PLAIN.fullmatch(key) and not (len(key) == 4 and key.upper() == "NULL"):
        return key
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def text(keys: Iterable[str]) -> str:
    """The array's text (``{k1,k2}``), also as one parameter (``%s::text[]``): psycopg
    dumps a list parameter element by element too (5 MB for 20,000 keys)."""
    return "{" + ",".join(map(_element, keys)) + "}"


def literal(keys: Iterable[str]) -> sql.Literal:
    """The array ``keys`` as an untyped literal (``'{k1,k2}'``): follow it with a cast,
    ``{}::bigint[]``, as a literal of the list would be."""
    return sql.Literal(text(keys))
