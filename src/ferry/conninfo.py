"""Connection strings: where they come from and how they are shown.

A connection string may hold a password; everything that prints one goes through
:func:`redact`, so the password cannot leak into logs, progress output or errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ferry.errors import ConnectionSettingsError

SOURCE_ENV = "FERRY_SOURCE"
TARGET_ENV = "FERRY_TARGET"

# Settings every session opened on a connection string starts with, while a run holds them.
_PINNED: dict[str, tuple[tuple[str, str], ...]] = {}


@contextmanager
def pinned(conninfo: str, settings: Sequence[tuple[str, str]]) -> Iterator[None]:
    """Sessions that ``connect`` opens on ``conninfo`` in the block start with ``settings``:
    a run's many sessions read and write values alike, whatever the environment says."""
    before = _PINNED.get(conninfo)
    _PINNED[conninfo] = tuple(settings)
    try:
        yield
    finally:
        if before is None:
            _PINNED.pop(conninfo, None)
        else:
            _PINNED[conninfo] = before


def apply(
    conn: psycopg.Connection, settings: Sequence[tuple[str, str]], local: bool = False
) -> None:
    """Set ``settings`` for the rest of the session (the caller commits), or with ``local``
    for the rest of the transaction (which this may begin)."""
    if settings:
        conn.execute(
            "SELECT set_config(n, v, %s) FROM unnest(%s::text[], %s::text[]) s(n, v)",
            [local, [n for n, _ in settings], [v for _, v in settings]],
        )


def redact(conninfo: str) -> str:
    """Return the connection string with any password replaced by ``***``."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<unparseable connection string>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**{k: str(v) for k, v in params.items()})


def resolve(value: str | None, env: str, what: str) -> str:
    """Pick the connection string from the option or the environment, validating its syntax."""
    conninfo = value or os.environ.get(env)
    if not conninfo:
        raise ConnectionSettingsError(f"no {what} database: pass --{what} or set {env}")
    try:
        conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        # psycopg's message may quote the string, password included: do not chain it.
        raise ConnectionSettingsError(f"the {what} connection string is malformed") from None
    return conninfo


# Every ferry session's own settings, whatever the role's or the database's defaults, in one
# statement (one the server lacks is skipped): a policy that would filter a read fails it;
# no idle timeout closes a session that waits while others work (the slot's snapshot);
# read committed unless a snapshot is asked for; and ferry's SQL means what it says
# (array_nulls, quote_all_identifiers, ...), as pg_dump sets them. Why each: docs/spec.md.
_SESSION = (
    "SELECT set_config(n, v, false) FROM (VALUES ('row_security', 'off'), "
    "('statement_timeout', '0'), ('lock_timeout', '60s'), "
    "('max_parallel_maintenance_workers', '0'), ('idle_session_timeout', '0'), "
    "('idle_in_transaction_session_timeout', '0'), "
    "('default_transaction_isolation', 'read committed'), ('array_nulls', 'on'), "
    "('quote_all_identifiers', 'off'), ('standard_conforming_strings', 'on'), "
    "('xmloption', 'content')) s(n, v) "
    "WHERE current_setting(n, true) IS NOT NULL"
)


def connect(conninfo: str, *, autocommit: bool = False, app: str = "ferry") -> psycopg.Connection:
    """Open a connection whose failures never reveal the password.

    Every server is talked to in UTF8, whatever the role's default (``LATIN1`` made a key
    in another script fail to encode, a stage copy fail to convert) or the server's
    (``SQL_ASCII``, which psycopg cannot decode: every name came back as bytes; what the
    data's bytes are, the spec says). ferry sets its own ``statement_timeout`` because
    Supabase may set one on the role that would cut a long COPY short. Its ``--jobs``
    sessions are all the parallelism it wants: parallel workers building an index on top of
    them take the cores those sessions use (the demo's 2M-row indexes: 0.3 s sooner on an
    idle machine, 0.5 s more CPU each).
    """
    try:
        conn = psycopg.connect(
            conninfo, autocommit=autocommit, application_name=app, connect_timeout=15,
            client_encoding="UTF8",
        )  # fmt: skip
    except psycopg.OperationalError as exc:
        detail = str(exc).replace(conninfo_to_dict(conninfo).get("password") or "\0", "***")
        raise ConnectionSettingsError(
            f"cannot connect to {redact(conninfo)}: {detail.strip()}"
        ) from None
    conn.execute(_SESSION)
    apply(conn, _PINNED.get(conninfo, ()))
    if not autocommit:
        conn.commit()
    return conn
