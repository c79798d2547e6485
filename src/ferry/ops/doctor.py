"""``ferry doctor``: what will go wrong, said before a run, in plain words.

Each check yields findings: ``error`` (a run would fail, or would read less than the
source holds), ``warn`` (a run works, but something is exposed or risky), ``info`` (what
was found). Findings carry names, settings and counts -- never row contents or passwords
(connection strings go through ``conninfo.redact``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ferry.catalog import functions_naming, regclass, rls_applies, write_rules
from ferry.conninfo import connect
from ferry.engine.columns import SOURCE_RLS
from ferry.engine.query import RLS_FORCED, RULES_REWRITE, STAGE_NAMED, rewrites
from ferry.errors import FerryError
from ferry.ledger import privileges
from ferry.spec import Spec

# A chunk's transaction can take minutes on a big table: a shorter timeout cuts it off.
CHUNK_SECONDS = 300
# Supabase's transaction pooler (Supavisor and PgBouncer in transaction mode).
TRANSACTION_POOLER_PORT = 6543
# ferry's default schemas, checked when no spec names others.
DEFAULT_SCHEMAS = ("ferry_stage", "ferry")
_SHOWN = 5  # names listed in one finding; the rest are counted


@dataclass(frozen=True)
class Finding:
    level: str  # error, warn, info
    side: str  # source or target
    check: str  # a short name, stable for automation
    message: str


@dataclass
class Diagnosis:
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing that would break a run."""
        return not any(f.level == "error" for f in self.findings)

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "findings": [asdict(f) for f in self.findings]}

    def render(self) -> str:
        width = max((len(f.check) for f in self.findings), default=0)
        lines = [
            f"{f.level.upper():5}  {f.side:6}  {f.check:{width}}  {f.message}"
            for f in self.findings
        ]
        errors = sum(f.level == "error" for f in self.findings)
        warnings = sum(f.level == "warn" for f in self.findings)
        verdict = (
            "ok: nothing found that would break a run"
            if self.ok
            else f"{errors} problem(s) would break a run"
        )
        return "\n".join([*lines, f"{verdict} ({warnings} warning(s))"])


def diagnose(source: str, target: str, spec: Spec | None = None) -> Diagnosis:
    """Every check on both databases; a database that cannot be reached is one finding."""
    found = Diagnosis()
    for side, conninfo in (("source", source), ("target", target)):
        found.findings += _pooler(side, conninfo)
        try:
            conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError:  # its message may quote the password: not shown
            found.findings.append(
                Finding("error", side, "connect", f"the {side} connection string is malformed")
            )
            continue
        try:
            with connect(conninfo, app="ferry-doctor") as conn:
                checks = _source(conn, spec) if side == "source" else _target(conn, spec)
                found.findings += [Finding(lvl, side, name, msg) for lvl, name, msg in checks]
        except FerryError as exc:  # cannot connect: the message is redacted already
            found.findings.append(Finding("error", side, "connect", str(exc)))
        except psycopg.Error as exc:
            found.findings.append(
                Finding("error", side, "query", f"a check failed: {type(exc).__name__}")
            )
    return found


Check = Iterator[tuple[str, str, str]]  # (level, check, message)


def _error(check: str, message: str) -> tuple[str, str, str]:
    return "error", check, message


def _warn(check: str, message: str) -> tuple[str, str, str]:
    return "warn", check, message


def _info(check: str, message: str) -> tuple[str, str, str]:
    return "info", check, message


def _pooler(side: str, conninfo: str) -> list[Finding]:
    """A transaction pooler drops what ferry keeps per session: SET, advisory locks."""
    ports: list[str] = []
    flags: list[str] = []
    if conninfo.startswith(("postgres://", "postgresql://")):
        url = urlsplit(conninfo)
        for host in url.netloc.rpartition("@")[2].split(","):
            ports.append(host.rpartition(":")[2] if ":" in host else "")
        flags = parse_qs(url.query).get("pgbouncer", [])
    else:
        try:
            ports = str(conninfo_to_dict(conninfo).get("port") or "").split(",")
        except psycopg.ProgrammingError:
            return []  # reported as such by diagnose
    out = []
    if str(TRANSACTION_POOLER_PORT) in ports:
        out.append(Finding(
            "error", side, "pooler",
            f"port {TRANSACTION_POOLER_PORT} is Supabase's transaction pooler, which drops the "
            "session state ferry needs (SET, advisory locks): connect directly or through the "
            "session pooler (port 5432)",
        ))  # fmt: skip
    if any(f.lower() == "true" for f in flags):
        out.append(Finding(
            "error", side, "pooler",
            "pgbouncer=true names a transaction pooler, and libpq refuses the parameter: "
            "connect directly or through a session pooler, without it",
        ))  # fmt: skip
    return out


def _one(conn: psycopg.Connection, query: str, params: object = None) -> tuple:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return tuple(row)


def _common(conn: psycopg.Connection) -> Check:
    """Version, role attributes and timeouts: the same on both sides."""
    version, number = _one(conn, "SELECT current_setting('server_version'), "
                                 "current_setting('server_version_num')::int")  # fmt: skip
    yield _info("version", f"PostgreSQL {version}")
    if number < 150000:
        yield _warn("version", "ferry is tested on PostgreSQL 15 and later")
    role, superuser, bypass = _one(
        conn, "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
    )
    if superuser or bypass:
        what = "a superuser" if superuser else "a role with BYPASSRLS"
        yield _warn(
            "role",
            f"{role} is {what}: ferry needs neither (a role that owns the target tables and "
            "reads the source is enough), and any mistake then reaches the whole server",
        )
    else:
        yield _info("role", f"{role}: not a superuser, no BYPASSRLS (ferry needs neither)")
    # reset_val: the session's own value before ferry's connect set statement_timeout.
    for name, value in conn.execute(
        "SELECT name, reset_val::bigint FROM pg_settings WHERE name IN ('statement_timeout', "
        "'idle_in_transaction_session_timeout', 'idle_session_timeout', 'transaction_timeout') "
        "AND unit = 'ms' ORDER BY name"
    ).fetchall():
        if not 0 < value < CHUNK_SECONDS * 1000:
            continue
        if name == "statement_timeout":
            yield _warn(
                "timeout",
                f"statement_timeout is {value / 1000:g} s for this role: ferry sets its own (none) "
                "in each session, which works on a direct or session-pooler connection only",
            )
        else:
            yield _error(
                "timeout",
                f"{name} is {value / 1000:g} s: a chunk's transaction, or a session waiting "
                f"on the others, may take longer (allow at least {CHUNK_SECONDS // 60} min, or "
                "0, for ferry's role)",
            )


def _source(conn: psycopg.Connection, spec: Spec | None) -> Check:
    yield from _common(conn)
    (encoding,) = _one(conn, "SHOW server_encoding")
    if encoding == "SQL_ASCII":
        yield _warn(
            "encoding",
            "the source's encoding is SQL_ASCII: its bytes may be in any encoding, and text "
            "that is not UTF-8 fails or is quarantined; say what they are in the spec",
        )
    else:
        yield _info("encoding", f"source encoding {encoding}")
    if spec is None:
        return
    missing, unreadable, hidden = [], [], []
    for src in spec.sources:
        if src.table is None:
            continue
        exists, readable = _one(
            conn,
            "SELECT c.oid IS NOT NULL, has_table_privilege(c.oid, 'SELECT') "
            "FROM (SELECT to_regclass(%s) AS oid) r LEFT JOIN pg_class c ON c.oid = r.oid",
            [regclass(src.table)],
        )
        if not exists:
            missing.append(src.table)
        elif not readable:
            unreadable.append(src.table)
        elif rls_applies(conn, src.table):
            hidden.append(src.table)
    if missing:
        yield (
            "error",
            "source_tables",
            f"not found (or not visible to this role): {_names(missing)}",
        )
    if unreadable:
        yield _error("source_tables", f"this role cannot SELECT from {_names(unreadable)}")
    if hidden:
        yield _error("source_tables", SOURCE_RLS.format(tables=_names(hidden)))
    tables = sum(src.table is not None for src in spec.sources)
    if not (missing or unreadable or hidden):
        yield _info("source_tables", f"this role reads all {tables} source tables of the spec")


def _target(conn: psycopg.Connection, spec: Spec | None) -> Check:
    yield from _common(conn)
    (encoding,) = _one(conn, "SHOW server_encoding")
    if encoding != "UTF8":
        yield _error("encoding", f"the target's encoding is {encoding}: ferry needs UTF8")
    yield from _exposed_rls(conn)
    schemas = privileges.schemas_of(spec) if spec is not None else DEFAULT_SCHEMAS
    yield from _ferry_schemas(conn, schemas)
    if spec is not None:
        yield from _target_tables(conn, spec)


def _exposed_rls(conn: psycopg.Connection) -> Check:
    """Tables an API can serve (``public`` and PostgREST's ``pgrst.db_schemas``) without RLS."""
    (setting,) = _one(conn, "SELECT current_setting('pgrst.db_schemas', true)")
    exposed = ["public", *(s.strip() for s in (setting or "").split(",") if s.strip())]
    exposed = list(dict.fromkeys(exposed))
    rows = conn.execute(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), "
        "has_table_privilege(r.oid, c.oid, 'SELECT') OR has_table_privilege(a.oid, c.oid, "
        "'SELECT') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_roles r ON r.rolname = 'anon' "
        "LEFT JOIN pg_roles a ON a.rolname = 'authenticated' "
        "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity "
        "ORDER BY 1",
        [exposed],
    ).fetchall()
    if not rows:
        yield _info("rls", f"row-level security is on for every table in {', '.join(exposed)}")
        return
    granted = [name for name, api in rows if api]
    yield _warn(
        "rls",
        f"row-level security is off on {len(rows)} table(s) in exposed schemas "
        f"({', '.join(exposed)}): {_names([name for name, _ in rows])}; anyone with the API "
        "key reads what the grants allow"
        + (f", and anon or authenticated may SELECT from {_names(granted)}" if granted else ""),
    )


def _ferry_schemas(conn: psycopg.Connection, schemas: tuple[str, ...]) -> Check:
    """Who else can read ferry's schemas now, and whether a run can close them."""
    existing = [
        r[0]
        for r in conn.execute(
            "SELECT nspname::text FROM pg_namespace WHERE nspname = ANY(%s) ORDER BY 1",
            [list(schemas)],
        )
    ]
    names = ", ".join(schemas)
    for problem in privileges.exposed_administrators(conn, schemas):
        yield (
            "error",
            "ferry_schemas",
            f"{problem}: it reads ferry's schemas whatever ferry revokes",
        )
    if not existing:
        (can_create,) = _one(conn, "SELECT has_database_privilege(current_database(), 'CREATE')")
        if not can_create:
            yield _error(
                "ferry_schemas",
                f"ferry's schemas ({names}) do not exist and this role cannot create schemas "
                "in this database",
            )
        else:
            yield _info("ferry_schemas", f"{names}: created, closed, by the first run")
    else:
        leaks = privileges.leaks(conn, existing)
        stuck = [leak for leak in leaks if not leak.revocable]
        if stuck:
            yield _error(
                "ferry_schemas",
                f"readable by others, and ferry's role does not own the object to revoke it: "
                f"{'; '.join(str(leak) for leak in stuck[:_SHOWN])}",
            )
        if len(leaks) > len(stuck):
            shown = [str(leak) for leak in leaks if leak.revocable][:_SHOWN]
            yield _warn(
                "ferry_schemas",
                f"readable by others now (the next run revokes it): {'; '.join(shown)}"
                + (f" ({len(leaks) - len(stuck) - _SHOWN} more)" if len(shown) == _SHOWN else ""),
            )
        if not leaks:
            yield _info("ferry_schemas", f"{', '.join(existing)}: closed to every other role")
        admins = privileges.administrators(conn, existing)
        if admins:
            yield _info(
                "ferry_schemas",
                f"these roles read ferry's schemas whatever is granted (superusers, members of "
                f"the owner, pg_read_all_data): {_names(admins)}",
            )
    grantees = privileges.default_grantees(conn)
    if grantees:
        yield _info(
            "default_privileges",
            f"this role's default privileges grant new objects to {_names(grantees)}: ferry "
            "takes them back at the end of each run (its schemas stay closed meanwhile)",
        )


def _target_tables(conn: psycopg.Connection, spec: Spec) -> Check:
    """ferry runs as the owner of the tables it writes (it sets keys aside, it analyzes)."""
    missing, foreign, hidden, rewritten, ruled = [], [], [], [], []
    staged = [s.stage_table for s in spec.sources]
    named: list[tuple[str, list[tuple[str, list[str]]]]] = []  # per table (``Shape``)
    for target in dict.fromkeys(m.target for m in spec.models):
        exists, owned = _one(
            conn,
            "SELECT c.oid IS NOT NULL, pg_has_role(c.relowner, 'USAGE') "
            "FROM (SELECT to_regclass(%s) AS oid) r LEFT JOIN pg_class c ON c.oid = r.oid",
            [regclass(target)],
        )
        if not exists:
            missing.append(target)
        elif not owned:
            foreign.append(target)
        else:
            if rls_applies(conn, target):
                hidden.append(target)
            if rewrites(conn, target):
                rewritten.append(target)
            rules = write_rules(conn, target)
            if rules:
                ruled.append((target, rules))
            functions = functions_naming(conn, target, staged)
            if functions:
                named.append((target, functions))
    if missing:
        yield _error("target_tables", f"not found: {_names(missing)}")
    if foreign:
        yield _error(
            "target_tables",
            f"this role does not own {_names(foreign)}: connect as the role that owns the "
            "target tables",
        )
    if not (missing or foreign):
        yield _info("target_tables", "this role owns every target table of the spec")
    if hidden:
        yield _error("target_tables", RLS_FORCED.format(tables=_names(hidden)))
    for target, rules in ruled:
        yield _error("target_rules", RULES_REWRITE.format(tables=target, rules=_names(rules)))
    for target, functions in named:
        yield _error(
            "trigger_search_path",
            STAGE_NAMED.format(
                table=target,
                functions=_names([f for f, _ in functions]),
                names=_names(sorted({n for _, ns in functions for n in ns})),
            ),
        )
    if rewritten:
        yield _warn(
            "target_triggers",
            f"{_names(rewritten)} have triggers that run as each row is written and may "
            "change it: ferry keeps what they store, but verify compares with what the spec "
            "yields and names every row they changed",
        )


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
