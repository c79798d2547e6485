from pathlib import Path

import psycopg
import pytest

from ferry.conninfo import redact
from ferry.embedded import LocalCluster, running


def test_cluster_serves_fresh_databases(cluster: LocalCluster) -> None:
    conninfo = cluster.create_database("embedded_smoke", drop=True)
    with psycopg.connect(conninfo) as conn:
        major = conn.execute("SHOW server_version_num").fetchone()[0]
        assert int(major) >= 150000
        assert conn.execute("SHOW fsync").fetchone()[0] == "off"
        assert conn.execute("SHOW wal_buffers").fetchone()[0] == "64MB"


def test_redact_hides_password() -> None:
    shown = redact("host=db.example port=5432 user=postgres password=s3cr3t dbname=app")
    assert "s3cr3t" not in shown
    assert "***" in shown
    assert "s3cr3t" not in redact("postgresql://postgres:s3cr3t@db.example:5432/app")


def test_relative_workdir(cluster_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's demo runs with a relative work directory: the server must still start."""
    monkeypatch.chdir(cluster_dir)
    with running(Path("rel/demo")) as cluster:
        assert cluster.workdir.is_absolute()
        with psycopg.connect(cluster.create_database("rel")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
