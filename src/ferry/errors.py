"""One error hierarchy, as psycopg has: callers catch ``FerryError`` and get everything;
and the one rule for what a database error may show (``describe``).

Messages carry table names, keys, counts and reasons -- never row contents and never a
password -- because they end up in terminals, CI logs, the ledger and tickets.
"""

from __future__ import annotations

import re

import psycopg


class FerryError(Exception):
    """Base class of every error ferry raises on purpose."""


class SpecError(FerryError):
    """The migration spec is invalid: the message names the file, the place and the problem."""


class ConnectionSettingsError(FerryError):
    """A connection string is missing or malformed (the message never echoes a password)."""


class EmbeddedServerError(FerryError):
    """The local PostgreSQL cluster could not be created, started or stopped."""


class InitError(FerryError):
    """``ferry init`` would overwrite a file: it writes nothing, and says which."""


class InvariantError(FerryError):
    """The ledger does not account for every staged row: a run must fail loudly."""


class VerifyError(FerryError):
    """The target differs from what the spec yields, or a fate differs from the ground truth."""


class DuplicateKeysError(FerryError):
    """A unique key set aside for a first load cannot be built again: two rows share a value.

    ``model`` is the model whose load set it aside, whose rows ferry can take out and load
    again with the key in place (None if the table's own rows collide).
    """

    def __init__(self, table: str, name: str, model: str | None) -> None:
        super().__init__(
            f"{table}: unique key {name} cannot be built again: rows written while it was set "
            "aside share a value"
        )
        self.table, self.name, self.model = table, name, model


class PrivilegeError(FerryError):
    """ferry's schemas are readable by a role other than their owner and ferry cannot close
    them: the message names the role and the object (never a row)."""


class QuarantineError(FerryError):
    """A review command could not do what was asked; the ledger is unchanged."""


class RollbackError(FerryError):
    """A rollback was refused or failed; the target and the ledger are as they were."""


class StatusError(FerryError):
    """Status could not be read, or a duration could not be parsed."""


class WatchError(FerryError):
    """Continuous sync could not start (a bad interval, the metrics port taken)."""


class ChangeCaptureError(FerryError):
    """Change capture from the source's WAL cannot be used (no logical decoding, no
    REPLICATION privilege, no free slot): the message says what the source lacks."""


class DemoError(FerryError):
    """The demo world cannot be built or changed as asked (wrong scale, delta twice, ...)."""


def condition_name(exc: psycopg.Error) -> str:
    """``UniqueViolation`` -> ``unique_violation``: PostgreSQL's own condition names."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


class SkippedByTrigger(psycopg.errors.NoData):
    """A row the target's trigger skipped (it returned NULL): no error, and no row. Raised
    by ferry, with a message of its own, so that the row is quarantined as a refusal."""


# Where the server reports an error a function's own code raised (PL/pgSQL's RAISE, an
# exception in PL/Python, PL/Perl, PL/Tcl, PL/v8): its text is the function's, values and all.
_RAISED_BY_CODE = re.compile(r"^(pl_|plpy|plperl|pltcl|plv8)")


def safe_message(exc: psycopg.Error) -> str:
    """The primary message without quoted values: it may be stored and shown, row data not
    (a DETAIL, which may print the whole row, never is). The text of an error a trigger or
    function raised itself is not kept at all: ``RAISE EXCEPTION 'name % not allowed',
    NEW.name`` puts a value anywhere in it."""
    diag = exc.diag
    own = str(exc) if isinstance(exc, SkippedByTrigger) else None
    if _RAISED_BY_CODE.match(diag.source_file or "") or (exc.sqlstate or "").startswith("P0"):
        text = "raised by a trigger or function of the database's own (its text is not kept)"
        if diag.constraint_name:
            text += f" (constraint {diag.constraint_name})"
        return text
    text = diag.message_primary or own or type(exc).__name__
    text = re.sub(r':\s*".*$', "", text, flags=re.S)
    text = re.sub(r":? ?0x[0-9a-f]{2}(?: 0x[0-9a-f]{2})*", "", text)  # an encoding error's bytes
    if diag.constraint_name and diag.constraint_name not in text:
        text += f" (constraint {diag.constraint_name})"
    return text[:300]


# Lost the server: a crash, a failover, pg_terminate_backend, a restart, a network cut.
_LOST = ("08", "57P01", "57P02", "57P03")


def lost(exc: BaseException) -> bool:
    """Whether a database error means the connection to the server is gone."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate or ""
    return not state or state.startswith(_LOST)


def describe(exc: BaseException, doing: str | None = None) -> str:
    """What may be shown or stored of a failure: ferry's own messages (they carry names,
    keys and counts only); of a database error, its condition, SQLSTATE and primary message
    with quoted values cut; of a lost connection, which server, what ferry was doing, and
    that the same command goes on from where it stopped; else the exception's class."""
    if isinstance(exc, FerryError):
        return str(exc)
    if lost(exc):
        assert isinstance(exc, psycopg.Error)
        pg = exc.pgconn
        where = (
            f"{(pg.host or b'').decode()}:{(pg.port or b'').decode()}/{(pg.db or b'').decode()}"
            if pg is not None
            else "the database server"
        )
        what = f" during {doing}" if doing else ""
        return (
            f"lost the connection to {where}{what} ({exc.sqlstate or 'no SQLSTATE'}: the server "
            "crashed, restarted or ended the session): run the same command again, it goes on "
            "from where it stopped"
        )
    if isinstance(exc, psycopg.Error):
        return f"{condition_name(exc)} ({exc.sqlstate or '-'}): {safe_message(exc)}"
    return type(exc).__name__
