SELECT a.id AS _key,
       a.id AS legacy_agent_id,
       a.user_id AS _user_id,
       a.active AS is_active,
       a.created_at AT TIME ZONE 'UTC' AS created_at
FROM dispatch_agent a
