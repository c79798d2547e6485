"""ferry: move a live legacy PostgreSQL database into a new UUID-keyed schema, keep it in
step until cutover, and account for every source row in a ledger."""

from ferry.engine.keys import key_uuid
from ferry.engine.pipeline import RunResult, migrate
from ferry.errors import (
    ChangeCaptureError,
    ConnectionSettingsError,
    DemoError,
    DuplicateKeysError,
    EmbeddedServerError,
    FerryError,
    InitError,
    InvariantError,
    PrivilegeError,
    QuarantineError,
    RollbackError,
    SpecError,
    StatusError,
    VerifyError,
    WatchError,
    describe,
)
from ferry.spec import Spec, load_spec

__all__ = [
    "ChangeCaptureError",
    "ConnectionSettingsError",
    "DemoError",
    "DuplicateKeysError",
    "EmbeddedServerError",
    "FerryError",
    "InitError",
    "InvariantError",
    "PrivilegeError",
    "QuarantineError",
    "RollbackError",
    "RunResult",
    "Spec",
    "SpecError",
    "StatusError",
    "VerifyError",
    "WatchError",
    "describe",
    "key_uuid",
    "load_spec",
    "migrate",
]
