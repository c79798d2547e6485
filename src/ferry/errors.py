"""One error hierarchy, as psycopg has: callers catch ``FerryError`` and get everything.

Messages carry table names, keys, counts and reasons -- never row contents and never a
password -- because they end up in terminals, CI logs and tickets.
"""


class FerryError(Exception):
    """Base class of every error ferry raises on purpose."""


class SpecError(FerryError):
    """The migration spec is invalid: the message names the file, the place and the problem."""


class ConnectionSettingsError(FerryError):
    """A connection string is missing or malformed (the message never echoes a password)."""


class EmbeddedServerError(FerryError):
    """The local PostgreSQL cluster could not be created, started or stopped."""


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
