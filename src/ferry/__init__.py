"""ferry: move a live legacy PostgreSQL database into a new UUID-keyed schema, keep it in
step until cutover, and account for every source row in a ledger."""

from ferry.errors import (
    ConnectionSettingsError,
    DuplicateKeysError,
    EmbeddedServerError,
    FerryError,
    InvariantError,
    PrivilegeError,
    SpecError,
    VerifyError,
)
from ferry.keys import key_uuid
from ferry.pipeline import RunResult, migrate
from ferry.spec import Spec, load_spec

__all__ = [
    "ConnectionSettingsError",
    "DuplicateKeysError",
    "EmbeddedServerError",
    "FerryError",
    "InvariantError",
    "PrivilegeError",
    "RunResult",
    "Spec",
    "SpecError",
    "VerifyError",
    "key_uuid",
    "load_spec",
    "migrate",
]
