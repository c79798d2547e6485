"""The old home of the model step, split into ``query`` (the SQL of a model), ``chunk`` (running
its chunks), ``dependencies`` (what a row depends on) and ``deletes``. Kept as re-exports for
code written against it; new code imports those modules."""

from ferry.chunk import BISECTABLE, LEDGER_COLUMNS, Chunk, ModelResult, Runner, Slots
from ferry.deletes import apply_pending_deletes, referencing, undo_first_load
from ferry.dependencies import Reads, dependents, own_dependencies, reads
from ferry.query import HELD, PENDING, SURVIVOR_REASONS, Fates, Plan, with_rules

__all__ = [
    "BISECTABLE", "HELD", "LEDGER_COLUMNS", "PENDING", "SURVIVOR_REASONS", "Chunk", "Fates",
    "ModelResult", "Plan", "Reads", "Runner", "Slots", "apply_pending_deletes", "dependents",
    "own_dependencies", "reads", "referencing", "undo_first_load", "with_rules",
]  # fmt: skip
