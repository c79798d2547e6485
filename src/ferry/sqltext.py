"""What a model's SQL and a rule's ``when`` may be: one query, one expression.

ferry wraps a model's SQL into its own statements (``SELECT ... FROM (<sql>) m``) and a
rule into a select list (``(<when>) AS _ferry_r0``). Text that closes the parenthesis ferry
opened, or that ends one statement and starts another (``) m; DROP TABLE ...``), would run
as ferry's own SQL. So the text is split into tokens the way PostgreSQL's lexer does
(comments, nested block comments, quoted identifiers, strings, ``E''`` escapes and
dollar quotes are one token each, whatever they hold) and its shape is checked on the
tokens: parentheses balanced and never closing one they did not open, no ``;`` but
trailing ones, and a query that starts as a query. A regex on the raw text would be fooled
by a ``;`` in a string or a ``)`` in a comment.

This is the first wall; the second is that ferry sends model SQL with the extended
protocol, where the server itself refuses a second statement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

# PostgreSQL's identifier characters: ASCII letters, "_" and every character past ASCII;
# digits (and "$" in a word) after the first. Spelled as the ASCII they exclude: a class of
# the ranges past ASCII took 20-30 ms to compile, at the start of every ferry command.
_NOT_START = r"\x00-\x40\x5b-\x5e\x60\x7b-\x7f"
_NOT_PART = r"\x00-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f"
_NOT_WORD_PART = r"\x00-\x23\x25-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f"
_WORD = re.compile(rf"[^{_NOT_START}][^{_NOT_WORD_PART}]*")
_DOLLAR = re.compile(rf"\$([^{_NOT_START}][^{_NOT_PART}]*)?\$")
_PARAM = re.compile(r"\$[0-9]+")
_NUMBER = re.compile(r"[0-9.][0-9A-Za-z_.]*")
_OPERATOR = re.compile(r"[+\-*/<>=~!@#%^&|`?]+")
_SPACE = re.compile(r"[ \t\n\r\f\v]+")

# A query starts with one of these; anything else is a statement of another kind.
_QUERY_START = {"select", "with", "values", "table", "("}
# Verbs that start a statement that writes. In a WITH query the first of these (or SELECT,
# VALUES, TABLE) found outside any parenthesis is its main statement.
_WRITES = {"insert", "update", "delete", "merge"}
_VERBS = _WRITES | {"select", "values", "table"}


class ShapeError(ValueError):
    """The text is not one query (or one expression); ``offset`` is where, in characters."""

    def __init__(self, text: str, offset: int, problem: str) -> None:
        line = text.count("\n", 0, offset) + 1
        column = offset - (text.rfind("\n", 0, offset) + 1) + 1
        super().__init__(f"line {line} column {column}: {problem}")
        self.offset, self.line, self.column, self.problem = offset, line, column, problem


@dataclass(frozen=True)
class Token:
    kind: str  # word, quoted, string, number, param, operator, punct
    text: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    @property
    def word(self) -> str | None:
        """The keyword or unquoted identifier, lower-cased; None for anything else."""
        return self.text.lower() if self.kind == "word" else None


def tokens(text: str) -> list[Token]:
    """The significant tokens of ``text`` (comments and whitespace dropped)."""
    out: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if m := _SPACE.match(text, i):
            i = m.end()
        elif text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/*", i):
            i = _block_comment(text, i)
        elif c == "'":
            j = _quoted(text, i, "'", backslash=False)
            out.append(Token("string", text[i:j], i))
            i = j
        elif c == '"':
            j = _quoted(text, i, '"', backslash=False)
            out.append(Token("quoted", text[i:j], i))
            i = j
        elif c == "$" and (m := _DOLLAR.match(text, i)):
            close = text.find(m.group(0), m.end())
            if close < 0:
                raise ShapeError(text, i, f"dollar quote {m.group(0)} is never closed")
            j = close + len(m.group(0))
            out.append(Token("string", text[i:j], i))
            i = j
        elif c == "$" and (m := _PARAM.match(text, i)):
            out.append(Token("param", m.group(0), i))
            i = m.end()
        elif m := _WORD.match(text, i):
            j = m.end()
            if m.group(0) in ("E", "e") and text.startswith("'", j):  # E'...': \ escapes
                j = _quoted(text, j, "'", backslash=True)
                out.append(Token("string", text[i:j], i))
            else:
                out.append(Token("word", m.group(0), i))
            i = j
        elif m := _NUMBER.match(text, i):
            out.append(Token("number", m.group(0), i))
            i = m.end()
        elif m := _OPERATOR.match(text, i):
            op = m.group(0)
            # As PostgreSQL's lexer does: a comment start ends the operator before it.
            # (It cannot start the operator: comments are matched before operators.)
            cut = min((k for k in (op.find("--"), op.find("/*")) if k > 0), default=len(op))
            op = op[:cut]
            out.append(Token("operator", op, i))
            i += len(op)
        else:
            out.append(Token("punct", c, i))
            i += 1
    return out


def _block_comment(text: str, start: int) -> int:
    """The end of the block comment at ``start``; they nest in PostgreSQL."""
    depth, i = 0, start
    while i < len(text):
        if text.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    raise ShapeError(text, start, "a /* comment is never closed")


def _quoted(text: str, start: int, quote: str, *, backslash: bool) -> int:
    """The end of the string or quoted identifier at ``start`` (a doubled quote is one)."""
    i = start + 1
    while i < len(text):
        c = text[i]
        if backslash and c == "\\":
            i += 2
        elif c == quote:
            if text.startswith(quote, i + 1):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    what = "string" if quote == "'" else "quoted identifier"
    raise ShapeError(text, start, f"a {what} is never closed")


def _balanced(text: str, toks: list[Token], semicolon: str) -> None:
    """Parentheses and brackets close in order, none closes one opened outside, and no
    ``;`` (``semicolon`` says why); the first problem in the text is the one reported."""
    stack: list[Token] = []
    pairs = {")": "(", "]": "["}
    for tok in toks:
        if tok.kind != "punct":
            continue
        if tok.text == ";":
            raise ShapeError(text, tok.start, semicolon)
        if tok.text in "([":
            stack.append(tok)
        elif tok.text in pairs:
            if not stack:
                raise ShapeError(text, tok.start, f"'{tok.text}' closes what the text never opened")
            if stack.pop().text != pairs[tok.text]:
                raise ShapeError(text, tok.start, f"'{tok.text}' does not match its opening")
    if stack:
        raise ShapeError(text, stack[-1].start, f"'{stack[-1].text}' is never closed")


def _depths(toks: list[Token]) -> list[int]:
    """Each token's nesting depth (an opening parenthesis is at its outer depth)."""
    out, depth = [], 0
    for tok in toks:
        if tok.kind == "punct" and tok.text in ")]":
            depth -= 1
        out.append(depth)
        if tok.kind == "punct" and tok.text in "([":
            depth += 1
    return out


def _no_writes(text: str, toks: list[Token]) -> None:
    """No statement that writes, nested either (``(DELETE ... RETURNING ...)`` in a WITH):
    a write verb right after an opening parenthesis or a closing one starts a statement."""
    for prev, tok in zip([None, *toks], toks, strict=False):
        if tok.word in _WRITES and (prev is None or prev.text in ("(", ")", ";")):
            raise ShapeError(text, tok.start, f"{tok.text.upper()} writes: a model only reads")


def one_query(text: str) -> str:
    """``text`` if it is one query (``SELECT``, ``WITH ... SELECT``, ``VALUES``, ``TABLE``),
    without trailing ``;`` (see :func:`_ending`); else :class:`ShapeError`."""
    return _one_query(text)


@lru_cache(maxsize=256)
def _one_query(text: str) -> str:
    toks = tokens(text)
    trailing: list[Token] = []
    while toks and toks[-1].text == ";" and toks[-1].kind == "punct":
        trailing.append(toks.pop())
    if not toks:
        raise ShapeError(text, 0, "there is no query")
    first = toks[0]
    if (first.word or first.text) not in _QUERY_START:
        raise ShapeError(
            text, first.start, f"starts with {first.text!r}: a model is one SELECT (or WITH ... "
            "SELECT, VALUES, TABLE)"
        )  # fmt: skip
    _balanced(text, toks, "a second statement follows this ';'")
    _no_writes(text, toks)
    if first.word == "with":
        depth = _depths(toks)
        main = next((t for t, d in zip(toks, depth, strict=True) if d == 0 and t.word in _VERBS
                     and t is not first), None)  # fmt: skip
        if main is not None and main.word in _WRITES:
            raise ShapeError(text, main.start, f"{main.text.upper()} writes: a model only reads")
    return _ending(text, toks[-1].end, trailing)


def _ending(text: str, end: int, semicolons: list[Token]) -> str:
    """The text up to ``end`` (its last token), then what follows it -- comments, which a
    reader of the spec may rely on (``Spec.reads`` counts a stage table a comment names) --
    without the ``;`` and ending in a newline, so that a trailing ``--`` comment cannot
    swallow what ferry appends after the text."""
    cut = {tok.start for tok in semicolons}
    tail = "".join(c for i, c in enumerate(text[end:], start=end) if i not in cut).rstrip()
    return text[:end] + (tail + "\n" if tail else "")


def one_expression(text: str) -> str:
    """``text`` if it is one expression that stays inside the parenthesis ferry puts it in
    (ending as :func:`_ending` says); else :class:`ShapeError`."""
    toks = tokens(text)
    if not toks:
        raise ShapeError(text, 0, "there is no expression")
    _balanced(text, toks, "';' ends a statement: a rule is one expression")
    _no_writes(text, toks)
    return _ending(text, toks[-1].end, [])
