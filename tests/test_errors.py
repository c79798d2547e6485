"""One error hierarchy, and one rule for what a database error may show."""

from __future__ import annotations

import importlib
import pkgutil

import psycopg
import pytest

import ferry
from ferry import cli
from ferry.embedded import LocalCluster
from ferry.errors import FerryError, describe
from tests.helpers import fresh_db


def test_every_error_class_lives_in_errors_and_is_exported() -> None:
    for info in pkgutil.walk_packages(ferry.__path__, "ferry."):
        importlib.import_module(info.name)
    found = set()
    todo = [FerryError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    assert {c.__module__ for c in found} == {"ferry.errors"}
    assert {c.__name__ for c in found} <= set(ferry.__all__)


def test_a_database_error_shows_no_value(cluster: LocalCluster) -> None:
    dsn = fresh_db(cluster, "err_values")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (email text UNIQUE, n int CHECK (n > 0))")
        conn.execute("INSERT INTO t VALUES ('secret@x', 1)")
        for bad in ("INSERT INTO t VALUES ('secret@x', 1)", "SELECT 'secret'::int"):
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(bad)
            text = describe(caught.value)
            assert "secret" not in text, text
            assert text.startswith(("unique_violation (23505)", "invalid_text_representation"))


def test_a_lost_connection_says_which_server_and_to_run_again(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server crash, a failover or pg_terminate_backend: the operator reads which server,
    what ferry was doing, and that the same command goes on from where it stopped (it read
    ``operational_error (None): OperationalError``)."""
    dsn = fresh_db(cluster, "err_lost")
    with psycopg.connect(dsn, autocommit=True) as victim, psycopg.connect(dsn) as killer:
        killer.execute("SELECT pg_terminate_backend(%s)", [victim.info.backend_pid])
        with pytest.raises(psycopg.OperationalError) as caught:
            victim.execute("SELECT 1")
    text = describe(caught.value, "ferry sync")
    assert text.startswith("lost the connection to the database server during ferry sync"), text
    assert "run the same command again" in text
    monkeypatch.setattr(cli.sys, "argv", ["ferry", "sync", "--spec", "s.toml"])
    monkeypatch.setattr(cli, "_SERVERS", {"source": dsn, "target": "host=127.0.0.1 port=1"})
    assert cli._fail(caught.value).exit_code == 2
    said = capsys.readouterr().err
    assert "during ferry sync" in said and "not answering now: the target server" in said, said
