"""Session fixtures: one real PostgreSQL cluster for the whole test session.

The cluster lives under a temporary directory (or FERRY_TEST_WORKDIR, to inspect it after a
run). Tests create their own databases on it, so they stay independent of each other. It runs
with ``wal_level = logical``, for the tests of change capture from the WAL (``test_wal.py``).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.embedded import LocalCluster, running
from tests.helpers import outside_pytest


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    base = os.environ.get("FERRY_TEST_WORKDIR")
    if base:
        workdir = Path(base)
        workdir.mkdir(parents=True, exist_ok=True)
        with running(workdir, logical=True) as c:
            yield c
    else:
        tmp = tempfile.mkdtemp(prefix="ferry-test-")
        try:
            with running(Path(tmp), logical=True, discard=True) as c:
                yield c
        finally:
            # Its gigabytes of databases took 11 s to delete at the end of every session:
            # a process of its own deletes them while pytest exits.
            subprocess.Popen(
                ["rm", "-rf", tmp], start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    """A fresh directory for a test that starts a cluster of its own (``outside_pytest``)."""
    with outside_pytest("ferry-test-own-") as tmp:
        yield Path(tmp)
