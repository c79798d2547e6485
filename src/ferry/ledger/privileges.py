"""ferry's own schemas stay closed to every role but their owner, at every run.

The stage schema holds raw copies of every legacy row (health data), the ledger keys and
reasons. Closing them once, at creation, is not enough: a project's default privileges
(``ALTER DEFAULT PRIVILEGES ... GRANT SELECT ON TABLES TO anon, authenticated``, common on
Supabase) grant every table ferry creates later to the API roles, and an operator may grant
something by hand. So every run that writes closes them at its start and again at its end
(:func:`closed`): it asks PostgreSQL which roles *effectively* hold a privilege
(``has_*_privilege``: memberships and ``PUBLIC`` included), revokes every grant it can, and
fails naming role and object when one remains.

Per-schema default privileges cannot take back what global ones grant (PostgreSQL adds
them up), so a table created during a run is granted to whomever the owner's global
defaults name until the run's end closes it. It cannot be reached meanwhile: nobody else
holds ``USAGE`` on the schema, which the start of the run checked. Row-level security on
every table (no policy, not forced on the owner) is a second wall behind the grants.

Superusers, members of the owner and holders of ``pg_read_all_data`` /
``pg_write_all_data`` read everything whatever is granted: they are administrators, not
leaks, and :func:`administrators` lists them (``ferry doctor`` shows them) -- unless one of
them is an API role, which fails the run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from ferry.errors import PrivilegeError
from ferry.ledger import API_ROLES
from ferry.spec import Spec

# The privileges checked per kind of object (column privileges are checked for tables too).
_PRIVILEGES = {
    "schema": ("USAGE", "CREATE"),
    "table": ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"),
    "sequence": ("USAGE", "SELECT", "UPDATE"),
    "function": ("EXECUTE",),
}
_OBJECT_WORD = {kind: kind.upper() for kind in _PRIVILEGES}
# pg_default_acl.defaclobjtype -> the word ALTER DEFAULT PRIVILEGES takes.
_DEFAULT_WORD = {"r": "TABLES", "S": "SEQUENCES", "f": "FUNCTIONS", "T": "TYPES"}

# Every object of the schemas: kind, oid, owner, its ACL (the default one when NULL), and
# the SQL that names it (schema-qualified, quoted by the server; functions with arguments).
_OBJECTS = """
SELECT 'schema' AS kind, n.oid, n.nspowner AS owner,
       coalesce(n.nspacl, acldefault('n', n.nspowner)) AS acl,
       quote_ident(n.nspname) AS ident
FROM pg_namespace n WHERE n.nspname = ANY(%(schemas)s)
UNION ALL
SELECT CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END, c.oid, c.relowner,
       coalesce(c.relacl, acldefault(CASE c.relkind WHEN 'S' THEN 's'::"char" ELSE 'r' END,
                                     c.relowner)),
       quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
UNION ALL
SELECT 'function', p.oid, p.proowner, coalesce(p.proacl, acldefault('f', p.proowner)),
       quote_ident(n.nspname) || '.' || quote_ident(p.proname)
           || '(' || pg_get_function_identity_arguments(p.oid) || ')'
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = ANY(%(schemas)s)
"""

# Roles that read everything whatever is granted: superusers, members of the object's
# owner (the owner itself included), holders of the predefined read/write-all roles.
# MEMBER, not USAGE: a NOINHERIT member (Supabase's API roles are) gets the rights by SET ROLE.
_ADMIN = """(r.rolsuper OR pg_has_role(r.oid, o.owner, 'MEMBER')
    OR coalesce(pg_has_role(r.oid, to_regrole('pg_read_all_data'), 'MEMBER'), false)
    OR coalesce(pg_has_role(r.oid, to_regrole('pg_write_all_data'), 'MEMBER'), false))"""

# ``shared``: whether an ACL of the object (a table's columns' too) names a role other than
# its owner. Where none does, only the owner's members hold anything, and they are
# administrators: the role-by-role test (a ``has_*_privilege`` per role, object and
# privilege: 17 ms a run on the demo's 80 objects) is asked only of the others.
_LEAKS = f"""
WITH o AS (
    SELECT o.*, ARRAY(SELECT DISTINCT a.privilege_type::text FROM aclexplode(o.acl) a
                      WHERE a.grantee = 0) AS public,
           EXISTS (SELECT FROM aclexplode(o.acl) a WHERE a.grantee <> o.owner)
           OR (o.kind = 'table' AND EXISTS (
               SELECT FROM pg_attribute att, aclexplode(att.attacl) a
               WHERE att.attrelid = o.oid AND att.attacl IS NOT NULL
               AND a.grantee <> o.owner)) AS shared
    FROM ({_OBJECTS}) o
),
held AS (
    SELECT o.kind, o.ident, o.public, o.owner, r.rolname::text AS role, ARRAY(
        SELECT p FROM unnest(CASE o.kind
            WHEN 'schema' THEN %(schema)s::text[] WHEN 'table' THEN %(table)s::text[]
            WHEN 'sequence' THEN %(sequence)s::text[] ELSE %(function)s::text[] END) p
        WHERE CASE o.kind
            WHEN 'schema' THEN has_schema_privilege(r.oid, o.oid, p)
            WHEN 'table' THEN has_table_privilege(r.oid, o.oid, p)
                OR (p IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
                    AND has_any_column_privilege(r.oid, o.oid, p))
            WHEN 'sequence' THEN has_sequence_privilege(r.oid, o.oid, p)
            ELSE has_function_privilege(r.oid, o.oid, p) END
    ) AS privileges
    FROM o CROSS JOIN pg_roles r
    WHERE o.shared AND NOT {_ADMIN}
)
SELECT kind, ident, 'PUBLIC', public, pg_has_role(current_user, owner, 'USAGE')
FROM o WHERE public <> '{{}}'
UNION ALL
SELECT kind, ident, role, ARRAY(SELECT unnest(privileges) EXCEPT SELECT unnest(public)),
       pg_has_role(current_user, owner, 'USAGE')
FROM held WHERE NOT privileges <@ public
ORDER BY 1, 2, 3
"""

# The direct grants ferry can take back: every grantee but the owner, on objects whose
# owner's privileges ferry's role has.
_GRANTS = f"""
WITH o AS ({_OBJECTS}),
acls AS (  -- a table's column grants too: REVOKE ON TABLE takes them back with it
    SELECT o.kind, o.ident, o.owner, o.acl FROM o
    UNION ALL
    SELECT o.kind, o.ident, o.owner, att.attacl FROM o
    JOIN pg_attribute att ON att.attrelid = o.oid AND att.attacl IS NOT NULL
    WHERE o.kind = 'table'
)
SELECT DISTINCT o.kind, o.ident, a.grantee = 0 AS public,
       (SELECT r.rolname::text FROM pg_roles r WHERE r.oid = a.grantee) AS grantee
FROM acls o, aclexplode(o.acl) a
WHERE a.grantee <> o.owner AND pg_has_role(current_user, o.owner, 'USAGE')
ORDER BY 1, 2, 4
"""

_DEFAULTS = """
SELECT (SELECT r.rolname::text FROM pg_roles r WHERE r.oid = d.defaclrole),
       n.nspname::text, d.defaclobjtype::text, a.grantee = 0,
       (SELECT r.rolname::text FROM pg_roles r WHERE r.oid = a.grantee)
FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace,
     aclexplode(d.defaclacl) a
WHERE n.nspname = ANY(%s) AND a.grantee <> d.defaclrole
  AND pg_has_role(current_user, d.defaclrole, 'USAGE')
"""

_NO_RLS = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity
  AND pg_has_role(current_user, c.relowner, 'USAGE')
ORDER BY 1
"""

_EXPOSED_ADMINS = f"""
WITH o AS ({_OBJECTS})
SELECT DISTINCT r.rolname::text, CASE
    WHEN r.rolsuper THEN 'is a superuser'
    WHEN pg_has_role(r.oid, o.owner, 'MEMBER')
        THEN 'has the privileges of ' || o.owner::regrole::text || ', the owner of ' || o.ident
    ELSE 'holds pg_read_all_data or pg_write_all_data' END
FROM o CROSS JOIN pg_roles r
WHERE r.rolname = ANY(%(api)s) AND {_ADMIN}
ORDER BY 1
"""

_ADMINS = f"""
WITH o AS ({_OBJECTS})
SELECT DISTINCT r.rolname::text FROM o CROSS JOIN pg_roles r
WHERE {_ADMIN} AND NOT pg_has_role(current_user, r.oid, 'MEMBER') AND r.rolname !~ '^pg_'
ORDER BY 1
"""


@dataclass(frozen=True)
class Leak:
    """A privilege on one of ferry's objects held by a role that is not its owner."""

    role: str  # a role's name, or PUBLIC
    kind: str  # schema, table, sequence or function
    name: str  # the object, schema-qualified (a function with its argument types)
    privileges: tuple[str, ...]
    revocable: bool = True  # ferry's role has the owner's privileges: a run revokes it

    def __str__(self) -> str:
        return f"{self.role} holds {', '.join(self.privileges)} on {self.kind} {self.name}"


def schemas_of(spec: Spec) -> tuple[str, ...]:
    """ferry's own schemas: the stage (raw legacy rows) and the ledger."""
    return tuple(dict.fromkeys((spec.stage_schema, spec.ledger_schema)))


def leaks(conn: psycopg.Connection, schemas: Sequence[str]) -> list[Leak]:
    """Every privilege on the schemas and what they hold that a role other than the
    owner effectively has (memberships included; a privilege ``PUBLIC`` holds is listed
    once, for ``PUBLIC``). Administrators are not listed: see :func:`administrators`."""
    params = {"schemas": list(schemas), **{k: list(v) for k, v in _PRIVILEGES.items()}}
    rows = conn.execute(_LEAKS, params).fetchall()
    return [Leak(role, kind, name, tuple(privs), ok) for kind, name, role, privs, ok in rows]


def administrators(conn: psycopg.Connection, schemas: Sequence[str]) -> list[str]:
    """Roles that read the schemas whatever is granted (superusers, members of an owner,
    holders of ``pg_read_all_data``/``pg_write_all_data``), ferry's own role and the roles
    it belongs to aside."""
    return [r[0] for r in conn.execute(_ADMINS, {"schemas": list(schemas)}).fetchall()]


def without_rls(conn: psycopg.Connection, schemas: Sequence[str]) -> list[str]:
    """Tables of the schemas, owned by ferry's role, with row-level security off."""
    return [r[0] for r in conn.execute(_NO_RLS, [list(schemas)]).fetchall()]


def exposed_administrators(conn: psycopg.Connection, schemas: Sequence[str]) -> list[str]:
    """API roles that read the schemas whatever is granted, each with why."""
    rows = conn.execute(_EXPOSED_ADMINS, {"schemas": list(schemas), "api": list(API_ROLES)})
    return [f"role {role} {why}" for role, why in rows.fetchall()]


def default_grantees(conn: psycopg.Connection) -> list[str]:
    """Roles that ferry's role's global default privileges grant new objects to: they hold
    what ferry creates during a run until its end closes it."""
    rows = conn.execute(
        "SELECT DISTINCT coalesce((SELECT r.rolname::text FROM pg_roles r "
        "WHERE r.oid = a.grantee), 'PUBLIC') FROM pg_default_acl d, aclexplode(d.defaclacl) a "
        "WHERE d.defaclnamespace = 0 AND d.defaclrole = (SELECT oid FROM pg_roles "
        "WHERE rolname = current_user) AND a.grantee <> d.defaclrole ORDER BY 1"
    )
    return [r[0] for r in rows.fetchall()]


def close(conn: psycopg.Connection, schemas: Sequence[str]) -> None:
    """Revoke every grant on the schemas and their objects from every role but the owner,
    take back per-schema default privileges, enable row-level security on every table,
    commit, and check: raises :class:`PrivilegeError` naming role and object for any
    privilege that remains (an object ferry's role does not own, an API role that is an
    administrator)."""
    exposed = exposed_administrators(conn, schemas)
    if exposed:
        raise PrivilegeError(
            f"{exposed[0]}: it can read ferry's schemas ({', '.join(schemas)}) whatever "
            "ferry revokes; an API role must not (revoke that membership or attribute)"
        )
    for kind, ident, public, grantee in conn.execute(
        _GRANTS, {"schemas": list(schemas)}
    ).fetchall():
        conn.execute(
            sql.SQL("REVOKE ALL ON {} {} FROM {} CASCADE").format(
                sql.SQL(_OBJECT_WORD[kind]),
                sql.SQL(ident),  # quoted by the server (quote_ident, regprocedure arguments)
                sql.SQL("PUBLIC") if public else sql.Identifier(grantee),
            )
        )
    _close_defaults(conn, schemas)
    for table in without_rls(conn, schemas):
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(sql.SQL(table)))
    conn.commit()
    left = leaks(conn, schemas)
    conn.commit()
    if left:
        shown = "; ".join(str(leak) for leak in left[:5])
        more = f" (and {len(left) - 5} more)" if len(left) > 5 else ""
        raise PrivilegeError(
            f"ferry's schemas are not closed and ferry cannot close them: {shown}{more}. "
            "Have the object's owner (or a superuser) revoke it, or drop the object"
        )


def _close_defaults(conn: psycopg.Connection, schemas: Sequence[str]) -> None:
    """Take back what per-schema default privileges grant (to ``PUBLIC`` too).

    Only per-schema entries can be changed per schema: the global defaults of the role
    still apply to objects created in these schemas, which is why each run closes again.
    A per-schema REVOKE reverses only a per-schema GRANT (the PostgreSQL manual): with no
    entry, it would change nothing.
    """
    for owner, schema, objtype, public, grantee in conn.execute(
        _DEFAULTS, [list(schemas)]
    ).fetchall():
        if objtype not in _DEFAULT_WORD:
            continue
        conn.execute(
            sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} REVOKE ALL ON {} FROM {}")
            .format(
                sql.Identifier(owner), sql.Identifier(schema), sql.SQL(_DEFAULT_WORD[objtype]),
                sql.SQL("PUBLIC") if public else sql.Identifier(grantee),
            )
        )  # fmt: skip


@contextmanager
def closed(conn: psycopg.Connection, spec: Spec) -> Iterator[None]:
    """A run that writes, between two closings of ferry's schemas (:func:`close`).

    The end closes the tables the run created. After a failed run it closes too, as best
    it can, and the run's own error is the one raised; the next run's start checks again.
    """
    schemas = schemas_of(spec)
    close(conn, schemas)
    try:
        yield
    except BaseException:
        try:
            _fresh(conn)
            close(conn, schemas)
        except (psycopg.Error, PrivilegeError):
            pass
        raise
    _fresh(conn)
    close(conn, schemas)


def _fresh(conn: psycopg.Connection) -> None:
    """Out of whatever transaction the run left (the run lock's end rolls it back, too)."""
    if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
        conn.rollback()
