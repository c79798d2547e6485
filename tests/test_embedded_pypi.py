"""The fallback for a machine without PostgreSQL: the server binaries from PyPI."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ferry.embedded import pypi_bindir, running
from ferry.engine.pipeline import migrate
from ferry.spec import load_spec

LIB = Path(__file__).parent / "specs" / "library"


@pytest.mark.skipif(pypi_bindir() is None, reason="the 'embedded' extra is not installed")
def test_pypi_server_runs_a_migration(cluster_dir: Path) -> None:
    with running(cluster_dir / "cluster", bindir=pypi_bindir()) as cluster:
        assert cluster.bindir == pypi_bindir()
        source = cluster.create_database("src")
        target = cluster.create_database("tgt")
        with psycopg.connect(source, autocommit=True) as conn:
            version = conn.execute("SHOW server_version_num").fetchone()
            conn.execute((LIB / "source.sql").read_text())
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute((LIB / "target.sql").read_text())
        result = migrate(source, target, load_spec(LIB / "spec.toml"))
    assert version is not None and int(version[0]) >= 160000
    assert result.counts["lib_book"].staged == 8
    assert result.counts["lib_book"].migrated == 3
