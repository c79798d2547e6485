SELECT t.id AS _key,
       t.id AS legacy_template_id,
       t.name,
       t.subject,
       t.body,
       t.created_at AT TIME ZONE 'UTC' AS created_at,
       t.updated_at AT TIME ZONE 'UTC' AS updated_at
FROM dispatch_template t
