-- dispatch_agent.roles is comma-separated text: one target row per distinct role.
SELECT DISTINCT a.id || ':' || btrim(r.role) AS _key,
       a.id || ':' || btrim(r.role) AS legacy_agent_role,
       a.id AS _agent_id,
       btrim(r.role) AS role
FROM dispatch_agent a
CROSS JOIN unnest(string_to_array(a.roles, ',')) AS r(role)
WHERE btrim(r.role) <> ''
